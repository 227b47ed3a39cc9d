"""The paper's translation stream (App. B.1): interleaved ``<F:xx>source<T:yy>target`` pairs.

Stream format: one pair per line, ``<F:{src}>{source sentence}<T:{tgt}>{target sentence}\\n``. For each pair
the direction (a->b or b->a) is drawn with probability 1/2 from ``random.Random(seed)``, so a stream is
deterministic given its pairs and seed. With ``seed=None`` the direction (and, with ``shuffle``, the order)
is instead a hash of the pair text: validation streams are built that way, so the validation set of a
corpus spec never depends on a training seed (``bdh eval`` reproduces a run's own final evaluation).

Sentences are cleaned before use (:func:`clean_sentence`): runs of ASCII whitespace including newlines
become one space and the ends are stripped; a pair with an empty side or a side containing ``<F:`` /
``<T:`` is dropped, so every line parses back unambiguously (:func:`parse_translation_stream`).

Parallel sources, none downloaded:

- the machine's gettext catalogs, ``<locale_dir>/<lang>/LC_MESSAGES/*.mo`` (msgid English -> msgstr), read
  with the stdlib :class:`gettext.GNUTranslations`. The header entry, empty and untranslated
  (msgstr == msgid) entries are skipped; message contexts are stripped; of a plural entry only the singular
  (msgid -> msgstr[0]) is kept; duplicate pairs are kept once.
- Europarl-style line-aligned files (``prefix.en`` + ``prefix.fr``, line i of one translating line i of the
  other) or a two-column TSV file.
"""

from __future__ import annotations

import gettext
import hashlib
import os
import random
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from .text import VAL_FRACTION, CorpusSplits, decode_bytes

__all__ = [
    "DEFAULT_LOCALE_DIR",
    "TranslationPair",
    "clean_sentence",
    "read_mo_pairs",
    "gettext_languages",
    "gettext_pairs",
    "read_parallel_files",
    "read_tsv_pairs",
    "load_parallel",
    "split_pairs",
    "translation_stream",
    "parse_translation_stream",
    "resolve_translation_corpus",
]

DEFAULT_LOCALE_DIR = "/usr/share/locale"
_LANG = re.compile(r"[A-Za-z0-9_@.\-]+")
_WS = re.compile(r"[ \t\r\n\f\v]+")
_LINE = re.compile(r"<F:([^>]+)>(.*)<T:([^>]+)>(.*)")

Pair = tuple[str, str]


class TranslationPair(NamedTuple):
    """One parsed stream line."""

    src_lang: str
    src: str
    tgt_lang: str
    tgt: str


def _check_lang(lang: str) -> str:
    if not isinstance(lang, str) or not _LANG.fullmatch(lang):
        raise ValueError(f"language code {lang!r} is invalid; expected letters, digits, '_', '@', '-' (e.g. 'fr', 'pt_BR')")
    return lang


def clean_sentence(text: str) -> str:
    """Collapse ASCII whitespace (newlines included) to single spaces and strip; '' if unusable in a stream."""
    s = _WS.sub(" ", text).strip()
    return "" if "<F:" in s or "<T:" in s else s


def _is_english(lang: str) -> bool:
    return lang == "en" or lang.startswith(("en_", "en@"))


# ------------------------------------------------------------------------------------------------- gettext


def read_mo_pairs(path: str | os.PathLike) -> list[Pair]:
    """``(english, translation)`` pairs of one compiled gettext catalog; ValueError naming an unreadable file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # the stdlib exposes no public iterator
    except FileNotFoundError:
        raise
    except Exception as e:  # OSError (bad magic), UnicodeDecodeError (wrong charset), IndexError (bad header)
        raise ValueError(f"cannot read gettext catalog {str(p)!r}: {e}") from None
    pairs: list[Pair] = []
    seen: set[Pair] = set()
    for key, value in catalog.items():
        if isinstance(key, tuple):  # plural entry: (singular msgid, form index)
            msgid, index = key
            if index != 0:
                continue
        else:
            msgid = key
        msgid = msgid.rpartition("\x04")[2]  # drop "context\x04"
        src, tgt = clean_sentence(msgid), clean_sentence(value)
        if not src or not tgt or src == tgt or (src, tgt) in seen:
            continue
        seen.add((src, tgt))
        pairs.append((src, tgt))
    return pairs


def _catalogs(lang_dir: Path, domains: Iterable[str] | None) -> list[Path]:
    files = sorted((lang_dir / "LC_MESSAGES").glob("*.mo"))
    if domains is not None:
        wanted = set(domains)
        files = [f for f in files if f.stem in wanted]
    return files


def gettext_pairs(
    lang: str, locale_dir: str | os.PathLike = DEFAULT_LOCALE_DIR, *, domains: Iterable[str] | None = None
) -> list[Pair]:
    """All unique ``(english, lang)`` pairs from ``<locale_dir>/<lang>/LC_MESSAGES/*.mo`` (sorted by file).

    Unreadable catalogs are skipped with a warning. ValueError when the language has no catalogs or no pairs.
    """
    _check_lang(lang)
    if _is_english(lang):
        raise ValueError(f"language {lang!r} is an English variant; gettext msgids are already English")
    root = Path(locale_dir)
    files = _catalogs(root / lang, domains)
    if not files:
        have = sorted(p.name for p in root.iterdir() if (p / "LC_MESSAGES").is_dir()) if root.is_dir() else []
        raise ValueError(
            f"no gettext catalogs for language {lang!r} in {str(root / lang / 'LC_MESSAGES')!r}"
            + (f" (domains {sorted(domains)})" if domains is not None else "")
            + f"; available: {', '.join(have[:50]) or 'none'}{' ...' if len(have) > 50 else ''}"
        )
    pairs: list[Pair] = []
    seen: set[Pair] = set()
    for f in files:
        try:
            file_pairs = read_mo_pairs(f)
        except ValueError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        for pair in file_pairs:
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    if not pairs:
        raise ValueError(f"gettext catalogs for {lang!r} in {str(root)!r} hold no usable translation pairs")
    return pairs


def gettext_languages(locale_dir: str | os.PathLike = DEFAULT_LOCALE_DIR, *, min_pairs: int = 1) -> dict[str, int]:
    """``{lang: unique pair count}`` for every non-English language with catalogs (reads them all: seconds)."""
    root = Path(locale_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"locale directory {str(root)!r} does not exist")
    out: dict[str, int] = {}
    for lang_dir in sorted(p for p in root.iterdir() if (p / "LC_MESSAGES").is_dir()):
        if _is_english(lang_dir.name) or not _LANG.fullmatch(lang_dir.name):
            continue
        seen: set[Pair] = set()
        for f in _catalogs(lang_dir, None):
            try:
                seen.update(read_mo_pairs(f))
            except ValueError:
                continue
        if len(seen) >= min_pairs:
            out[lang_dir.name] = len(seen)
    return out


# --------------------------------------------------------------------------------------------- user files


def _read_lines(path: Path, encoding_errors: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"parallel text file {str(path)!r} does not exist")
    text = decode_bytes(path.read_bytes(), source=repr(str(path)), encoding_errors=encoding_errors)
    return text.splitlines()


def read_parallel_files(
    path_a: str | os.PathLike, path_b: str | os.PathLike, *, encoding_errors: str = "strict"
) -> list[Pair]:
    """Line-aligned pairs (Europarl format); lines empty on either side are skipped.

    ValueError naming both files and their line counts when the counts differ.
    """
    a, b = Path(path_a), Path(path_b)
    la, lb = _read_lines(a, encoding_errors), _read_lines(b, encoding_errors)
    if len(la) != len(lb):
        raise ValueError(
            f"parallel files are not line-aligned: {str(a)!r} has {len(la)} lines, {str(b)!r} has {len(lb)}"
        )
    pairs = [(clean_sentence(x), clean_sentence(y)) for x, y in zip(la, lb)]
    return [(x, y) for x, y in pairs if x and y]


def read_tsv_pairs(
    path: str | os.PathLike, *, columns: tuple[int, int] = (0, 1), encoding_errors: str = "strict"
) -> list[Pair]:
    """Pairs from tab-separated ``columns`` of each non-empty line; ValueError naming file and line if short."""
    p = Path(path)
    need = max(columns) + 1
    pairs = []
    for lineno, line in enumerate(_read_lines(p, encoding_errors), 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < need:
            raise ValueError(f"{str(p)!r} line {lineno}: {len(cells)} tab-separated column(s), expected at least {need}")
        x, y = clean_sentence(cells[columns[0]]), clean_sentence(cells[columns[1]])
        if x and y:
            pairs.append((x, y))
    return pairs


def load_parallel(
    spec: str | os.PathLike, lang_a: str, lang_b: str, *, encoding_errors: str = "strict"
) -> list[Pair]:
    """``(lang_a, lang_b)`` pairs from a ``.tsv`` file or an Europarl prefix (``spec.lang_a`` + ``spec.lang_b``)."""
    _check_lang(lang_a), _check_lang(lang_b)
    s = os.fspath(spec)
    if s.lower().endswith((".tsv", ".tab")):
        pairs = read_tsv_pairs(s, encoding_errors=encoding_errors)
    else:
        pairs = read_parallel_files(f"{s}.{lang_a}", f"{s}.{lang_b}", encoding_errors=encoding_errors)
    if not pairs:
        raise ValueError(f"parallel source {s!r} ({lang_a}-{lang_b}) holds no non-empty pairs")
    return pairs


# ------------------------------------------------------------------------------------------------- streams


def split_pairs(pairs: Sequence[Pair], val_fraction: float = VAL_FRACTION, *, by: str = "tail") -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/validation split of pairs.

    ``by="tail"``: the last ``val_fraction`` of the pairs (for ordered text such as Europarl).
    ``by="hash"``: a pair is validation when a hash of its first side falls below ``val_fraction`` (keeps
    repeated source sentences on one side; for unordered sources such as gettext).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    pairs = list(pairs)
    if by == "tail":
        n_val = max(1, int(round(len(pairs) * val_fraction))) if len(pairs) >= 2 else 0
        return pairs[: len(pairs) - n_val], pairs[len(pairs) - n_val :]
    if by == "hash":
        train, val = [], []
        for pair in pairs:
            h = int.from_bytes(hashlib.sha256(pair[0].encode("utf-8", "surrogatepass")).digest()[:8], "big")
            (val if h / 2**64 < val_fraction else train).append(pair)
        return train, val
    raise ValueError(f"split_pairs by={by!r}; expected 'tail' or 'hash'")


def _unit_hash(tag: bytes, *parts: str) -> float:
    """A number in [0, 1) that is a pure function of ``tag`` and ``parts`` (SHA-256; no seed, no process salt)."""
    h = hashlib.sha256(tag)
    for p in parts:
        b = p.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return int.from_bytes(h.digest()[:8], "big") / 2**64


def translation_stream(
    pairs: Iterable[Pair], lang_a: str, lang_b: str, seed: int | None = 0, *, shuffle: bool = False
) -> str:
    """Interleaved stream, one ``<F:src>source<T:tgt>target`` line per pair, direction drawn per pair.

    ``pairs`` are ``(text in lang_a, text in lang_b)``; ``shuffle`` also permutes the pair order. An integer
    ``seed`` draws directions and order from ``random.Random(seed)``; ``seed=None`` takes both from a hash of
    each pair's text, so the stream depends on the pairs alone.
    """
    _check_lang(lang_a), _check_lang(lang_b)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed={seed!r}: expected an integer, or None for directions hashed from the pair text")
    items = [(clean_sentence(a), clean_sentence(b)) for a, b in pairs]
    if seed is None:
        if shuffle:  # stable sort: equal pairs keep their relative order
            items.sort(key=lambda ab: _unit_hash(b"order\0", *ab))
        a_first = [_unit_hash(b"direction\0", a, b) < 0.5 for a, b in items]
    else:
        rng = random.Random(seed)
        if shuffle:
            rng.shuffle(items)
        a_first = [rng.random() < 0.5 if a and b else False for a, b in items]
    lines = []
    for (a, b), forward in zip(items, a_first):
        if not a or not b:
            continue
        if forward:
            lines.append(f"<F:{lang_a}>{a}<T:{lang_b}>{b}\n")
        else:
            lines.append(f"<F:{lang_b}>{b}<T:{lang_a}>{a}\n")
    return "".join(lines)


def parse_translation_stream(text: str) -> list[TranslationPair]:
    """Inverse of :func:`translation_stream`; ValueError naming the first malformed line."""
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise ValueError(f"translation stream line {lineno} is not '<F:xx>source<T:yy>target': {line[:80]!r}")
        out.append(TranslationPair(*m.groups()))
    return out


def _parse_langs(spec: str, langs: str) -> tuple[str, str]:
    a, sep, b = langs.partition("-")
    if not sep or not a or not b:
        raise ValueError(f"corpus spec {spec!r}: languages {langs!r} must look like 'en-fr'")
    return _check_lang(a), _check_lang(b)


def resolve_translation_corpus(
    spec: str, *, seed: int = 0, val_fraction: float = VAL_FRACTION, encoding_errors: str = "strict",
    locale_dir: str | os.PathLike = DEFAULT_LOCALE_DIR,
) -> CorpusSplits:
    """Train/validation streams for ``gettext:<lang>`` (or ``gettext:en-<lang>``) and
    ``parallel:<prefix|file.tsv>:<a>-<b>`` specs (see :func:`bdh.data.corpora.resolve_corpus`).

    The split and the whole validation stream are functions of the pairs only; ``seed`` shapes the training
    stream (directions, and the order of gettext pairs) and nothing else.
    """
    kind, _, rest = spec.partition(":")
    if kind == "gettext":
        if "-" in rest:
            a, b = _parse_langs(spec, rest)
            if not _is_english(a):
                raise ValueError(f"corpus spec {spec!r}: gettext pairs are English-to-X; write 'gettext:en-{b}'")
            lang = b
        else:
            lang = _check_lang(rest) if rest else ""
            if not lang:
                raise ValueError(f"corpus spec {spec!r}: expected 'gettext:<lang>', e.g. 'gettext:fr'")
        train, val = split_pairs(gettext_pairs(lang, locale_dir), val_fraction, by="hash")
        return CorpusSplits(
            translation_stream(train, "en", lang, seed, shuffle=True),
            translation_stream(val, "en", lang, None, shuffle=True),  # seed-free: see the module docstring
        )
    if kind == "parallel":
        path, sep, langs = rest.rpartition(":")
        if not sep or not path:
            raise ValueError(f"corpus spec {spec!r}: expected 'parallel:<prefix or file.tsv>:<a>-<b>'")
        a, b = _parse_langs(spec, langs)
        train, val = split_pairs(load_parallel(path, a, b, encoding_errors=encoding_errors), val_fraction, by="tail")
        return CorpusSplits(translation_stream(train, a, b, seed), translation_stream(val, a, b, None))
    raise ValueError(f"corpus spec {spec!r} is not a translation spec ('gettext:<lang>' or 'parallel:...')")
