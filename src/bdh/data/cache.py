"""Token cache: a corpus split tokenized once into a flat memory-mapped array plus a JSON manifest.

Layout in ``cache_dir`` for split ``S`` and tokenizer name ``N``:

- ``S.N.bin``: the token ids, raw little-endian, dtype uint8 / uint16 / uint32 (the smallest that holds
  ``vocab_size``); documents are encoded one by one and concatenated with nothing in between.
- ``S.N.json``: the manifest (format version, split, source id, SHA-256 of the source text, tokenizer name,
  tokenizer fingerprint = SHA-256 of its saved config, dtype, length, vocab size, SHA-256 of the data file).

:func:`build_token_cache` reuses the files when the manifest matches and the data file still has the recorded
checksum (one read of the file), and rebuilds otherwise; :func:`load_tokens` refuses a data file that does not. Both files are
written atomically (:mod:`bdh.io`), the data file first; the old manifest is removed before anything else,
so an interrupted build never leaves a manifest that vouches for the wrong tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..io import atomic_path, atomic_write_json, file_sha256
from ..tokenization import ByteTokenizer, Tokenizer

__all__ = [
    "CACHE_FORMAT_VERSION",
    "token_dtype",
    "source_hash",
    "cache_paths",
    "build_token_cache",
    "cache_corpus",
    "load_tokens",
    "read_manifest",
    "cached_source_hash",
]

CACHE_FORMAT_VERSION = 2  # 2: the manifest records tokens_sha256 (caches of version 1 are rebuilt)


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding ids ``0 .. vocab_size-1``."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def _as_docs(text_or_texts: str | Iterable[str]) -> list[str]:
    docs = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"document {i} is {type(d).__name__}, expected str")
    return docs


def source_hash(text_or_texts: str | Iterable[str]) -> str:
    """SHA-256 (hex) of the documents, length-prefixed so document boundaries count."""
    h = hashlib.sha256()
    for d in _as_docs(text_or_texts):
        b = d.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _check_name(what: str, value: str) -> str:
    if not value or any(c in value for c in "/\\\0") or value.startswith("."):
        raise ValueError(f"{what} {value!r} cannot be used in a cache file name")
    return value


def cache_paths(cache_dir: str | os.PathLike, split: str, tokenizer_name: str) -> tuple[Path, Path]:
    """``(tokens.bin, manifest.json)`` paths for one split and tokenizer."""
    d = Path(cache_dir)
    stem = f"{_check_name('split', split)}.{_check_name('tokenizer name', tokenizer_name)}"
    return d / f"{stem}.bin", d / f"{stem}.json"


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest at ``path``, or None when it is missing or unreadable."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def cached_source_hash(cache_dir: str | os.PathLike, split: str, tokenizer_name: str) -> str | None:
    """The SHA-256 of the source text the cache of ``split`` was built from (its manifest), None without one.

    Lets a resumed training run notice a corpus that changed since the cache was built."""
    m = read_manifest(cache_paths(cache_dir, split, tokenizer_name)[1])
    h = None if m is None else m.get("source_sha256")
    return h if isinstance(h, str) else None


def _memmap(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    if length == 0:  # a zero-length file cannot be mapped
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def _encode_into(f, docs: list[str], tokenizer: Tokenizer, dtype: np.dtype, batch: int = 64) -> int:
    n = 0
    for start in range(0, len(docs), batch):
        chunk = docs[start : start + batch]
        if type(tokenizer) is ByteTokenizer:  # fast path: the UTF-8 bytes are the ids
            arrays = [np.frombuffer(_utf8(d), dtype=np.uint8) for d in chunk]
        else:
            arrays = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(chunk)]
        for arr in arrays:
            if arr.size and (arr.min() < 0 or arr.max() >= tokenizer.vocab_size):
                raise ValueError(f"tokenizer {tokenizer.name!r} produced ids outside [0, {tokenizer.vocab_size})")
            f.write(arr.astype(dtype.newbyteorder("<"), copy=False).tobytes())
            n += arr.size
    return n


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not encodable as UTF-8 at character {e.start} (a lone surrogate?)") from None


def build_token_cache(
    text_or_texts: str | Iterable[str],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike,
    split: str,
    source_id: str = "",
    *,
    force: bool = False,
) -> np.ndarray:
    """Tokenize ``text_or_texts`` into ``cache_dir`` (or reuse a matching cache); return a read-only memmap.

    The cache is reused when format version, split, source hash, tokenizer name and fingerprint and dtype all
    match and the data file has the recorded size; ``force=True`` always rebuilds. ``source_id`` is a
    human-readable label stored in the manifest (not part of the match).
    """
    docs = _as_docs(text_or_texts)
    dtype = token_dtype(tokenizer.vocab_size)
    bin_path, man_path = cache_paths(cache_dir, split, tokenizer.name)
    want = {
        "format_version": CACHE_FORMAT_VERSION,
        "split": split,
        "source_sha256": source_hash(docs),
        "tokenizer": tokenizer.name,
        "tokenizer_sha256": tokenizer.fingerprint(),
        "dtype": dtype.name,
    }
    old = read_manifest(man_path)
    if not force and old is not None and all(old.get(k) == v for k, v in want.items()):
        length = old.get("length")
        if (isinstance(length, int) and bin_path.is_file() and bin_path.stat().st_size == length * dtype.itemsize
                and file_sha256(bin_path) == old.get("tokens_sha256")):
            return _memmap(bin_path, dtype, length)

    bin_path.parent.mkdir(parents=True, exist_ok=True)
    man_path.unlink(missing_ok=True)  # no manifest may vouch for a half-replaced data file
    with atomic_path(bin_path) as tmp:
        with open(tmp, "wb") as f:
            length = _encode_into(f, docs, tokenizer, dtype)
        tokens_sha256 = file_sha256(tmp)
    manifest = dict(want, length=length, vocab_size=tokenizer.vocab_size, source_id=str(source_id), documents=len(docs),
                    tokens_sha256=tokens_sha256)
    atomic_write_json(man_path, manifest, sort_keys=True)  # last: it vouches for the data file now in place
    return _memmap(bin_path, dtype, length)


def load_tokens(cache_dir: str | os.PathLike, split: str, tokenizer: Tokenizer | str) -> np.ndarray:
    """Memmap of a cache built by :func:`build_token_cache`.

    ``tokenizer`` is a Tokenizer (its fingerprint must match the manifest) or just a tokenizer name.
    Missing, stale or inconsistent caches raise ValueError naming the file.
    """
    name = tokenizer if isinstance(tokenizer, str) else tokenizer.name
    bin_path, man_path = cache_paths(cache_dir, split, name)
    m = read_manifest(man_path)
    if m is None:
        raise ValueError(f"no token cache manifest at {str(man_path)!r}; build it with build_token_cache()")
    if m.get("format_version") != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"token cache {str(man_path)!r} has format_version {m.get('format_version')!r}, expected {CACHE_FORMAT_VERSION}"
        )
    if not isinstance(tokenizer, str) and m.get("tokenizer_sha256") != tokenizer.fingerprint():
        raise ValueError(f"token cache {str(man_path)!r} was built with a different {name!r} tokenizer; rebuild it")
    try:
        dtype = np.dtype(m["dtype"])
        length = int(m["length"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"token cache manifest {str(man_path)!r} is corrupt (dtype/length)") from None
    size = bin_path.stat().st_size if bin_path.is_file() else None
    if size != length * dtype.itemsize:
        raise ValueError(
            f"token cache {str(bin_path)!r} has {size} bytes, manifest says {length} x {dtype.name}; rebuild it"
        )
    if file_sha256(bin_path) != m.get("tokens_sha256"):
        raise ValueError(f"token cache {str(bin_path)!r} does not have the SHA-256 its manifest records (changed or "
                         "damaged since it was built); rebuild it")
    return _memmap(bin_path, dtype, length)


def cache_corpus(
    splits, tokenizer: Tokenizer, cache_dir: str | os.PathLike, source_id: str = ""
) -> dict[str, np.ndarray]:
    """Build (or reuse) the caches of both splits of a ``CorpusSplits``: ``{"train": ..., "val": ...}``."""
    return {
        split: build_token_cache(text, tokenizer, cache_dir, split, source_id)
        for split, text in (("train", splits.train), ("val", splits.val))
    }
