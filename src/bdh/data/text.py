"""What every corpus module shares: the split type, the validation fraction, strict UTF-8 decoding."""

from __future__ import annotations

from typing import NamedTuple

VAL_FRACTION = 0.1
_ENCODING_POLICIES = ("strict", "replace")


class CorpusSplits(NamedTuple):
    """Train and validation text of one corpus."""

    train: str
    val: str


def decode_bytes(data: bytes, *, source: str = "<bytes>", encoding_errors: str = "strict") -> str:
    """UTF-8 decode ``data`` (a leading BOM is dropped).

    ``encoding_errors="strict"`` turns invalid UTF-8 into a ValueError naming ``source`` and the byte offset;
    ``"replace"`` substitutes U+FFFD.
    """
    if encoding_errors not in _ENCODING_POLICIES:
        raise ValueError(f"encoding_errors must be one of {_ENCODING_POLICIES}, got {encoding_errors!r}")
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{source}: invalid UTF-8 at byte offset {e.start} ({data[e.start:e.start + 4]!r}: {e.reason}); "
            f"pass encoding_errors='replace' to substitute U+FFFD"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text
