"""What the HTTP servers (`bdh serve`, `bdh view`) share: the listening socket, bound before anything is loaded
(`listen_socket`), and the access keys (`bdh serve`'s API key, `bdh view`'s token): where a key comes from (a
flag, else an environment variable), what a valid one is, the warning for a server reachable beyond this machine
without one, and the constant-time comparison. Standard library only.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it resolves to some interface
        return False


def same_secret(given: str | bytes | None, key: str | bytes) -> bool:
    """`given == key` in constant time (None: False)."""
    if given is None:
        return False
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    return hmac.compare_digest(enc(given), enc(key))


def bearer_ok(authorization: str | bytes | None, key: str) -> bool:
    """Whether an `Authorization` header value is `Bearer <key>`."""
    return same_secret(authorization, "Bearer " + key)


@dataclasses.dataclass(frozen=True)
class AccessKey:
    """One server's access key: the command-line `flag`, the environment variable `env` read when the flag is
    absent, and `what` it is called in messages ("an API key")."""

    flag: str
    env: str
    what: str

    def resolve(self, value: str | None) -> str | None:
        """The key: `value` (the flag's), else $env (empty: unset), else None; a ValueError naming the source when
        it is empty or has spaces or control characters."""
        source, key = (self.flag, value) if value is not None else (f"${self.env}", os.environ.get(self.env) or None)
        if key is not None and not key:
            raise ValueError(f"{source}: expected a non-empty key, got an empty one")
        if key is not None and not all(c.isprintable() and not c.isspace() for c in key):
            raise ValueError(f"{source}: expected a key of printable characters without spaces, got one with a space "
                             "or control character")
        return key

    def warning(self, prog: str, host: str, key: str | None, exposes: str) -> str | None:
        """The warning for serving on `host` without a key (None: `host` is loopback, or there is a key);
        `exposes`: what anyone who reaches the port can then do."""
        if key is not None or is_loopback(host):
            return None
        return (f"{prog}: warning: listening on {host} without {self.what}: anyone who can reach this port can "
                f"{exposes} (pass {self.flag} or set ${self.env})")


def listen_socket(host: str, port: int):
    """A socket bound to host:port (uvicorn's options: SO_REUSEADDR, IPv6 for a host with ':'; port 0: a free
    one), made before anything is loaded or printed; ValueError naming host:port when it cannot be bound (the
    port in use, an address not on this machine, a port out of range)."""
    import errno
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        why = ("the port is in use (another server?)" if getattr(e, "errno", None) == errno.EADDRINUSE
               else getattr(e, "strerror", None) or str(e))
        raise ValueError(f"--host {host} --port {port}: cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock
