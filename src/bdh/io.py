"""Atomic file writes: the one home for "write a file so that a crash never leaves half of it".

    with atomic_path("dir/model.safetensors") as tmp:   # write tmp by any means (safetensors, tokenizers, ...)
        save_file(tensors, tmp)
    atomic_write_text("dir/config.json", text)          # or JSON directly
    atomic_write_json("dir/manifest.json", obj)

The data goes to a temporary file beside the target, is flushed to disk (fsync), given ordinary permissions
and renamed over the target. A failing write (full disk, exception, kill) never leaves a partial file at the
target, and an existing file there stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp) and str(path) not in str(e):
            # a full disk: "[Errno 28] could not write PATH (No space left on device)", not a bare errno
            raise OSError(e.errno, f"could not write {path} ({e.strerror or e})") from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """`obj` as JSON (UTF-8, trailing newline), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
