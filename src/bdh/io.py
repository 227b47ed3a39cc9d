"""Atomic file writes: the one home for "write a file so that a crash never leaves half of it".

    with atomic_path("dir/model.safetensors") as tmp:   # write tmp by any means (safetensors, tokenizers, ...)
        save_file(tensors, tmp)
    atomic_write_text("dir/config.json", text)          # or JSON directly
    atomic_write_json("dir/manifest.json", obj)

The data goes to a temporary file beside the target, is flushed to disk (fsync), given ordinary permissions
and renamed over the target. A failing write (full disk, exception, kill) never leaves a partial file at the
target, and an existing file there stays intact until the new one is complete. `file_sha256` is the one
checksum of file contents (model fingerprints, token caches).
"""

from __future__ import annotations

import contextlib
import hashlib
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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary directory beside `path`; on success swap it in for `path` (the old directory, if any,
    is renamed aside and removed after the new one is in place), on failure remove it. Readers see the whole old
    or the whole new set of files, never a mix (a kill between the two renames leaves `path` missing and the old
    one beside it as `.NAME.old.*`)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; give the directory ordinary permissions
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


def file_sha256(*paths: str | os.PathLike) -> str:
    """SHA-256 (hex) of the contents of `paths`, read in order as one stream, 1 MiB at a time."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
