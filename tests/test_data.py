"""Corpora, token cache, and translation stream."""

import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from bdh.data import cache, translation
from bdh.data.cache import build_token_cache, load_tokens, token_dtype
from bdh.data.corpora import (
    SHAKESPEARE_VAL_PLAYS,
    markdown_play_to_text,
    pydoc_english,
    read_documents,
    read_text_source,
    resolve_corpus,
    shakespeare,
    shakespeare_plays,
    split_text,
)
from bdh.data.translation import (
    gettext_languages,
    gettext_pairs,
    load_parallel,
    parse_translation_stream,
    read_mo_pairs,
    read_parallel_files,
    read_tsv_pairs,
    split_pairs,
    translation_stream,
)
from bdh.tokenization import BPETokenizer, ByteTokenizer, gpt2_tokenizer

# ------------------------------------------------------------------------------------------- Shakespeare

PLAY_MD = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and HORATIO, with
Attendants_

**HAMLET**  
Who's there?  
Stand\\--ho!

**HORATIO**  
_\\[Aside]_  
Friends to this ground.

_Exit HAMLET_

And liegemen to the Dane.

**PAGE**  
[Within]_  
Here, my lord; __\\[ ]_ anon.
_\\[To HORATIO]_  
**HORATIO**  
Good.

### SCENE II. Another room.

Chorus without a speaker.

*Sound a horn.*
"""

PLAY_TXT = """HAMLET:
Who's there?
Stand--ho!

HORATIO:
Friends to this ground.
And liegemen to the Dane.

PAGE:
Here, my lord;  anon.

HORATIO:
Good.

Chorus without a speaker.
"""


def test_markdown_play_to_text():
    assert markdown_play_to_text(PLAY_MD) == PLAY_TXT
    assert markdown_play_to_text("# Title\n\n_Exeunt_\n") == ""


@pytest.fixture(scope="module")
def plays():
    return shakespeare_plays("all")


def test_shakespeare_split_by_play(plays):
    names = [n for n, _ in plays]
    assert len(names) == 38 and names == sorted(names)
    val = shakespeare_plays("val")
    train = shakespeare_plays("train")
    assert [n for n, _ in val] == sorted(SHAKESPEARE_VAL_PLAYS)
    assert len(val) >= 3 and len(train) == 38 - len(val)
    assert not {n for n, _ in val} & {n for n, _ in train}
    n_train, n_val = len(shakespeare("train")), len(shakespeare("validation"))
    assert 0.08 < n_val / (n_train + n_val) < 0.12
    assert shakespeare("val") == shakespeare("val")
    with pytest.raises(ValueError, match="'test'"):
        shakespeare("test")


def test_shakespeare_text_is_plain(plays):
    text = dict(plays)["tragedies/hamlet"]
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in text
    assert text.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\n")
    for name, t in plays:
        assert not re.search(r"[*_#\\]|\[[A-Za-z ]*\]", t), name
        assert "Enter " not in t.split("\n")[0]
        assert "\n\n\n" not in t and t.endswith("\n")
    # every speech header line is "NAME:" followed by at least one line of speech
    assert re.search(r"^[A-Z][A-Za-z' ]*:\n\n", text, re.M) is None


def test_pydoc_english_split():
    full, train, val = pydoc_english(), pydoc_english("train"), pydoc_english("val")
    assert len(full) > 300_000 and "The try statement" in full
    assert train + val == full
    assert train.endswith("\n")
    assert 0.08 < len(val) / len(full) < 0.12


def test_split_text():
    text = "".join(f"line {i}\n" for i in range(100))
    tr, va = split_text(text)
    assert tr + va == text and tr.endswith("\n") and va.startswith("line 9")
    assert split_text("abcdefghij") == ("abcdefghi", "j")  # no newline: cut by characters
    with pytest.raises(ValueError, match="val_fraction"):
        split_text(text, 1.5)


# ------------------------------------------------------------------------------------------- user files


def test_read_text_file_dir_glob(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "sub" / "c.log").write_text("ignored: not txt/md")
    (tmp_path / ".hidden.txt").write_text("hidden")
    assert read_text_source(tmp_path / "a.txt") == "alpha\n"
    assert read_text_source(tmp_path) == "alpha\nbeta\n"
    assert [n for n, _ in read_documents(str(tmp_path / "**" / "*.md"))] == [str(tmp_path / "sub" / "b.md")]
    assert read_text_source(str(tmp_path / "sub" / "*")) == "beta\nignored: not txt/md\n"
    other = tmp_path / "logs"
    other.mkdir()
    (other / "x.log").write_text("only logs")
    assert read_text_source(other) == "only logs\n"  # no txt/md: all regular files


def test_read_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n\n{"text": "two\\nlines", "id": 2}\n')
    assert read_text_source(p) == "one\ntwo\nlines\n"
    p.write_text('{"body": "x"}\n')
    assert read_text_source(p, jsonl_field="body") == "x\n"
    with pytest.raises(ValueError, match=r"d.jsonl.*line 1: no field 'text'.*\['body'\]"):
        read_text_source(p)
    p.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match=r"d.jsonl.*line 2: invalid JSON"):
        read_text_source(p)


def test_encoding_policy(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf".encode() + b"\xe9 ok\n")
    with pytest.raises(ValueError, match=r"latin1\.txt.*byte offset 3.*encoding_errors='replace'"):
        read_text_source(p)
    assert read_text_source(p, encoding_errors="replace") == "caf\ufffd ok\n"
    with pytest.raises(ValueError, match="encoding_errors"):
        read_text_source(p, encoding_errors="ignore-all")
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfhi\n")
    assert read_text_source(bom) == "hi\n"


def test_bad_sources(tmp_path):
    binf = tmp_path / "model.bin"
    binf.write_bytes(b"abc\x00\x01\x02" * 10)
    with pytest.raises(ValueError, match=r"model\.bin.*binary"):
        read_text_source(binf)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_text_source(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"glob .*\*\.nothing.* matches no files"):
        read_text_source(str(tmp_path / "*.nothing"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt.* is empty"):
        read_text_source(tmp_path / "empty.txt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ValueError, match="no files"):
        read_text_source(tmp_path / "emptydir")


def test_resolve_corpus(tmp_path):
    p = tmp_path / "t.txt"
    text = "".join(f"sentence number {i}\n" for i in range(50))
    p.write_text(text)
    tr, va = resolve_corpus(str(p))
    assert tr + va == text and va.startswith("sentence number 45")
    py = resolve_corpus("pydoc")
    assert (py.train, py.val) == (pydoc_english("train"), pydoc_english("val"))
    sh = resolve_corpus()
    assert sh.val == shakespeare("val") and sh.train.startswith("THESEUS:\n")
    with pytest.raises(FileNotFoundError, match="no-such-corpus"):
        resolve_corpus("no-such-corpus")


# ------------------------------------------------------------------------------------------- token cache


def test_token_dtype():
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(50257) == np.uint16
    with pytest.raises(ValueError):
        token_dtype(0)


@pytest.fixture(scope="module")
def small_bpe():
    return BPETokenizer.train([pydoc_english("train")[:100_000]], vocab_size=300)


@pytest.mark.parametrize("kind", ["bytes", "bpe", "gpt2"])
def test_cache_values_equal_encode(tmp_path, kind, small_bpe):
    tok = {"bytes": ByteTokenizer, "bpe": lambda: small_bpe, "gpt2": gpt2_tokenizer}[kind]()
    docs = ["Hello world\n", "Ünïcödé 🐉 second document.\n", ""]
    arr = build_token_cache(docs, tok, tmp_path, "train", source_id="unit")
    expected = [i for d in docs for i in tok.encode(d)]
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert arr.dtype == token_dtype(tok.vocab_size)
    assert arr.tolist() == expected
    assert load_tokens(tmp_path, "train", tok).tolist() == expected
    bin_path, man_path = cache.cache_paths(tmp_path, "train", tok.name)
    assert bin_path.stat().st_size == len(expected) * arr.dtype.itemsize
    m = json.loads(man_path.read_text())
    assert m["length"] == len(expected) and m["dtype"] == arr.dtype.name and m["tokenizer"] == kind
    assert m["source_sha256"] == cache.source_hash(docs) and m["source_id"] == "unit"
    assert m["tokenizer_sha256"] == tok.fingerprint() and m["format_version"] == cache.CACHE_FORMAT_VERSION
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_reuse_and_rebuild(tmp_path):
    tok = ByteTokenizer()
    text = pydoc_english("val")
    build_token_cache(text, tok, tmp_path, "val")
    bin_path, man_path = cache.cache_paths(tmp_path, "val", "bytes")
    st1, mt1 = bin_path.stat(), man_path.stat()
    arr = build_token_cache(text, tok, tmp_path, "val")  # reuse: nothing rewritten
    st2, mt2 = bin_path.stat(), man_path.stat()
    assert (st2.st_ino, st2.st_mtime_ns) == (st1.st_ino, st1.st_mtime_ns)
    assert (mt2.st_ino, mt2.st_mtime_ns) == (mt1.st_ino, mt1.st_mtime_ns)
    assert bytes(arr) == text.encode()

    changed = text + "one more line\n"
    arr = build_token_cache(changed, tok, tmp_path, "val")  # source changed: rebuilt
    assert bin_path.stat().st_ino != st1.st_ino
    assert bytes(arr) == changed.encode()
    assert json.loads(man_path.read_text())["source_sha256"] == cache.source_hash(changed)

    # same characters, different document boundaries: a different source
    assert cache.source_hash(["ab", "c"]) != cache.source_hash(["a", "bc"]) != cache.source_hash("abc")

    ino = bin_path.stat().st_ino
    build_token_cache(changed, tok, tmp_path, "val", force=True)
    assert bin_path.stat().st_ino != ino

    with open(bin_path, "r+b") as f:  # truncated data file: load refuses, build repairs
        f.truncate(10)
    with pytest.raises(ValueError, match=r"val\.bytes\.bin.*10 bytes"):
        load_tokens(tmp_path, "val", tok)
    assert bytes(build_token_cache(changed, tok, tmp_path, "val")) == changed.encode()


def test_cache_with_damaged_content_of_the_right_size(tmp_path):
    """A data file zeroed (or edited) in place keeps its size: the recorded SHA-256 catches it (load refuses,
    build rebuilds from the source) instead of training on zeros."""
    tok = ByteTokenizer()
    text = pydoc_english("val")
    build_token_cache(text, tok, tmp_path, "val")
    bin_path, man_path = cache.cache_paths(tmp_path, "val", "bytes")
    assert json.loads(man_path.read_text())["tokens_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    bin_path.write_bytes(bytes(bin_path.stat().st_size))
    with pytest.raises(ValueError, match=r"val\.bytes\.bin.*SHA-256"):
        load_tokens(tmp_path, "val", tok)
    assert bytes(build_token_cache(text, tok, tmp_path, "val")) == text.encode()
    assert bytes(load_tokens(tmp_path, "val", tok)) == text.encode()


def test_cache_many_documents_and_corpus(tmp_path, small_bpe):
    docs = [f"document {i}: {'ü' * (i % 5)} text\n" for i in range(150)]  # crosses encode batches
    arr = build_token_cache(docs, small_bpe, tmp_path, "train")
    assert arr.tolist() == [i for d in docs for i in small_bpe.encode(d)]
    out = cache.cache_corpus(split_text("".join(docs)), ByteTokenizer(), tmp_path / "c", "docs")
    assert bytes(out["train"]) + bytes(out["val"]) == "".join(docs).encode()
    assert json.loads((tmp_path / "c" / "val.bytes.json").read_text())["source_id"] == "docs"


def test_cache_tokenizer_mismatch_and_missing(tmp_path, small_bpe):
    build_token_cache("some text\n", small_bpe, tmp_path, "train")
    other = BPETokenizer.train(["completely different text " * 50], vocab_size=280)
    with pytest.raises(ValueError, match="different 'bpe' tokenizer"):
        load_tokens(tmp_path, "train", other)
    arr = build_token_cache("some text\n", other, tmp_path, "train")  # rebuilt for the new tokenizer
    assert arr.tolist() == other.encode("some text\n")
    assert load_tokens(tmp_path, "train", "bpe").tolist() == other.encode("some text\n")
    with pytest.raises(ValueError, match=r"no token cache manifest.*val\.bpe\.json"):
        load_tokens(tmp_path, "val", other)
    with pytest.raises(ValueError, match="cannot be used"):
        build_token_cache("x", other, tmp_path, "../evil")


# ------------------------------------------------------------------------------------------- translation


def write_mo(path: Path, entries: dict[str, str]) -> None:
    """Minimal msgfmt: GNU .mo (little-endian, no hash table). Plural msgids/msgstrs are NUL-joined."""
    keys = sorted(entries, key=lambda k: k.encode())
    ids = [k.encode() for k in keys]
    strs = [entries[k].encode() for k in keys]
    n = len(keys)
    offset = 28 + 16 * n
    blob, otab, ttab = b"", [], []
    for table, items in ((otab, ids), (ttab, strs)):
        for s in items:
            table.append((len(s), offset + len(blob)))
            blob += s + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    body = b"".join(struct.pack("<2I", *e) for e in otab + ttab)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body + blob)


MO_HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n > 1);\n"


@pytest.fixture
def locale_dir(tmp_path):
    root = tmp_path / "locale"
    write_mo(
        root / "fr" / "LC_MESSAGES" / "app.mo",
        {
            "": MO_HEADER,
            "Open file": "Ouvrir le fichier",
            "Save": "Enregistrer",
            "OK": "OK",  # identical: skipped
            "Untranslated": "",  # empty: skipped
            "menu\x04Quit": "Quitter",  # context stripped
            "%d apple\x00%d apples": "%d pomme\x00%d pommes",  # plural: singular kept
            "Line one\nline two": "Ligne un\nligne deux",  # newline collapsed
        },
    )
    write_mo(root / "fr" / "LC_MESSAGES" / "other.mo", {"": MO_HEADER, "Save": "Enregistrer", "Close": "Fermer"})
    write_mo(root / "de" / "LC_MESSAGES" / "app.mo", {"": MO_HEADER, "Save": "Speichern"})
    write_mo(root / "en_GB" / "LC_MESSAGES" / "app.mo", {"": MO_HEADER, "Color": "Colour"})
    (root / "xx" / "LC_MESSAGES").mkdir(parents=True)
    (root / "xx" / "LC_MESSAGES" / "broken.mo").write_bytes(b"not a catalog")
    return root


def test_write_mo_is_valid_for_stdlib(locale_dir):
    import gettext

    t = gettext.translation("app", localedir=str(locale_dir), languages=["fr"])
    assert t.gettext("Save") == "Enregistrer"
    assert t.ngettext("%d apple", "%d apples", 2) == "%d pommes"
    assert t.pgettext("menu", "Quit") == "Quitter"


def test_read_mo_pairs(locale_dir):
    pairs = read_mo_pairs(locale_dir / "fr" / "LC_MESSAGES" / "app.mo")
    assert sorted(pairs) == sorted(
        [
            ("Open file", "Ouvrir le fichier"),
            ("Save", "Enregistrer"),
            ("Quit", "Quitter"),
            ("%d apple", "%d pomme"),
            ("Line one line two", "Ligne un ligne deux"),
        ]
    )
    with pytest.raises(ValueError, match=r"broken\.mo"):
        read_mo_pairs(locale_dir / "xx" / "LC_MESSAGES" / "broken.mo")


def test_gettext_pairs_and_languages(locale_dir):
    fr = gettext_pairs("fr", locale_dir)
    assert len(fr) == 6 and fr.count(("Save", "Enregistrer")) == 1  # deduplicated across catalogs
    assert gettext_pairs("fr", locale_dir, domains=["other"]) == [("Close", "Fermer"), ("Save", "Enregistrer")]
    assert gettext_languages(locale_dir) == {"de": 1, "fr": 6}  # English variants and broken catalogs left out
    with pytest.raises(ValueError, match=r"'pl'.*available: de, en_GB, fr, xx"):
        gettext_pairs("pl", locale_dir)
    with pytest.raises(ValueError, match="English variant"):
        gettext_pairs("en_GB", locale_dir)
    with pytest.warns(UserWarning, match=r"broken\.mo"), pytest.raises(ValueError, match="no usable"):
        gettext_pairs("xx", locale_dir)


_FR_CATALOGS = sorted(Path("/usr/share/locale/fr/LC_MESSAGES").glob("*.mo"))


@pytest.mark.skipif(not _FR_CATALOGS, reason="no French gettext catalogs on this machine")
def test_machine_gettext_catalogs():
    pairs = gettext_pairs("fr", domains=[p.stem for p in _FR_CATALOGS[:8]])
    assert len(pairs) > 50
    assert all(a and b and a != b and "\n" not in a + b for a, b in pairs)


def test_translation_stream_format_and_determinism():
    pairs = [(f"sentence {i}", f"phrase {i}") for i in range(200)]
    s = translation_stream(pairs, "en", "fr", seed=7)
    assert s == translation_stream(pairs, "en", "fr", seed=7)
    assert s != translation_stream(pairs, "en", "fr", seed=8)
    lines = s.split("\n")
    assert lines[-1] == "" and len(lines) == 201
    assert all(re.fullmatch(r"<F:(en|fr)>[^<\n]+<T:(en|fr)>[^<\n]+", ln) for ln in lines[:-1])
    parsed = parse_translation_stream(s)
    directions = {(p.src_lang, p.tgt_lang) for p in parsed}
    assert directions == {("en", "fr"), ("fr", "en")}
    n_en = sum(p.src_lang == "en" for p in parsed)
    assert 60 < n_en < 140
    back = [(p.src, p.tgt) if p.src_lang == "en" else (p.tgt, p.src) for p in parsed]
    assert back == pairs  # order kept without shuffle
    shuffled = parse_translation_stream(translation_stream(pairs, "en", "fr", seed=7, shuffle=True))
    assert sorted((p.src, p.tgt) if p.src_lang == "en" else (p.tgt, p.src) for p in shuffled) == sorted(pairs)
    assert translation_stream([("a\nb", "c"), ("", "x"), ("<T:fr>", "y")], "en", "fr", 0).count("\n") == 1
    with pytest.raises(ValueError, match="language code 'f r'"):
        translation_stream(pairs, "en", "f r", 0)
    with pytest.raises(ValueError, match="line 1"):
        parse_translation_stream("no delimiters here\n")


def test_parallel_files(tmp_path):
    (tmp_path / "ep.en").write_text("Hello.\n\nResumption of the session\nThird\n")
    (tmp_path / "ep.fr").write_text("Bonjour.\nOrphan\nReprise de la session\nTroisième\n")
    pairs = load_parallel(tmp_path / "ep", "en", "fr")
    assert pairs == [("Hello.", "Bonjour."), ("Resumption of the session", "Reprise de la session"), ("Third", "Troisième")]
    (tmp_path / "bad.en").write_text("a\nb\nc\n")
    (tmp_path / "bad.fr").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"bad\.en.* 3 lines.*bad\.fr.* 2"):
        read_parallel_files(tmp_path / "bad.en", tmp_path / "bad.fr")
    tsv = tmp_path / "p.tsv"
    tsv.write_text("Hi\tSalut\n\nYes\tOui\textra\n")
    assert read_tsv_pairs(tsv) == [("Hi", "Salut"), ("Yes", "Oui")]
    assert load_parallel(tsv, "en", "fr") == [("Hi", "Salut"), ("Yes", "Oui")]
    tsv.write_text("Hi\tSalut\nno tab\n")
    with pytest.raises(ValueError, match=r"p\.tsv.*line 2"):
        read_tsv_pairs(tsv)


def test_split_pairs_and_resolve(tmp_path, locale_dir, monkeypatch):
    pairs = [(f"s{i}", f"t{i}") for i in range(100)]
    tr, va = split_pairs(pairs)
    assert tr == pairs[:90] and va == pairs[90:]
    htr, hva = split_pairs(pairs, by="hash")
    assert sorted(htr + hva) == sorted(pairs) and 0 < len(hva) < 30
    assert split_pairs(pairs + [("s0", "other")], by="hash")[1].count(("s0", "other")) == (("s0", "t0") in hva)

    (tmp_path / "ep.en").write_text("".join(f"English {i}\n" for i in range(20)))
    (tmp_path / "ep.fr").write_text("".join(f"Français {i}\n" for i in range(20)))
    c = resolve_corpus(f"parallel:{tmp_path / 'ep'}:en-fr", seed=1)
    assert len(parse_translation_stream(c.train)) == 18 and len(parse_translation_stream(c.val)) == 2
    assert "English 19" in c.val
    with pytest.raises(ValueError, match="en-fr"):
        resolve_corpus(f"parallel:{tmp_path / 'ep'}:enfr")

    monkeypatch.setattr(translation, "DEFAULT_LOCALE_DIR", str(locale_dir))
    c = translation.resolve_translation_corpus("gettext:en-fr", locale_dir=locale_dir)
    got = parse_translation_stream(c.train) + parse_translation_stream(c.val)
    assert len(got) == 6 and {p.src_lang for p in got} <= {"en", "fr"}
    with pytest.raises(ValueError, match="English-to-X"):
        translation.resolve_translation_corpus("gettext:fr-de", locale_dir=locale_dir)


def test_seed_free_translation_stream():
    pairs = [(f"sentence {i}", f"phrase {i}") for i in range(200)]
    s = translation_stream(pairs, "en", "fr", None)
    assert s == translation_stream(list(pairs), "en", "fr", seed=None)
    parsed = parse_translation_stream(s)
    assert [(p.src, p.tgt) if p.src_lang == "en" else (p.tgt, p.src) for p in parsed] == pairs  # order kept
    assert 60 < sum(p.src_lang == "en" for p in parsed) < 140  # both directions, about half each
    # a pair's direction depends on that pair alone, not on its neighbours or position
    alone = [parse_translation_stream(translation_stream([pr], "en", "fr", None))[0].src_lang for pr in pairs[:20]]
    assert [p.src_lang for p in parsed[:20]] == alone
    shuffled = translation_stream(pairs[::-1], "en", "fr", None, shuffle=True)
    assert shuffled == translation_stream(pairs, "en", "fr", None, shuffle=True) != s  # order = hash of the text
    assert sorted(shuffled.splitlines()) == sorted(s.splitlines())
    with pytest.raises(ValueError, match=r"seed='1'.*integer, or None"):
        translation_stream(pairs, "en", "fr", "1")


def test_translation_validation_stream_does_not_depend_on_the_seed(tmp_path, monkeypatch):
    (tmp_path / "ep.en").write_text("".join(f"English sentence {i}\n" for i in range(400)), encoding="utf-8")
    (tmp_path / "ep.fr").write_text("".join(f"Phrase française {i}\n" for i in range(400)), encoding="utf-8")
    spec = f"parallel:{tmp_path / 'ep'}:en-fr"
    a, b = resolve_corpus(spec, seed=1), resolve_corpus(spec, seed=2)
    assert a.val.encode() == b.val.encode() == resolve_corpus(spec).val.encode()
    assert a.train != b.train  # training directions still follow the seed
    val = parse_translation_stream(a.val)
    assert len(val) == 40 and {p.src_lang for p in val} == {"en", "fr"}

    root = tmp_path / "locale"
    write_mo(root / "fr" / "LC_MESSAGES" / "big.mo",
             {"": MO_HEADER, **{f"Message number {i}": f"Message numéro {i}" for i in range(400)}})
    ga = translation.resolve_translation_corpus("gettext:fr", seed=1, locale_dir=root)
    gb = translation.resolve_translation_corpus("gettext:fr", seed=2, locale_dir=root)
    assert ga.val.encode() == gb.val.encode() and ga.train != gb.train
    gval = parse_translation_stream(ga.val)
    assert 10 < len(gval) < 80 and {p.src_lang for p in gval} == {"en", "fr"}
    monkeypatch.setattr(translation, "DEFAULT_LOCALE_DIR", str(root))  # resolve_corpus reads the default
    monkeypatch.setattr(translation.resolve_translation_corpus, "__kwdefaults__",
                        {**translation.resolve_translation_corpus.__kwdefaults__, "locale_dir": str(root)})
    assert resolve_corpus("gettext:fr", seed=123).val == ga.val


def test_cached_source_hash_reads_the_manifest(tmp_path):
    """What a resumed training run compares its corpus against (issue 13, item 8)."""
    from bdh.data.cache import cached_source_hash, source_hash
    from bdh.tokenization import ByteTokenizer

    assert cached_source_hash(tmp_path, "train", "bytes") is None
    build_token_cache("some text", ByteTokenizer(), tmp_path, "train")
    assert cached_source_hash(tmp_path, "train", "bytes") == source_hash("some text") != source_hash("other text")
    (tmp_path / "train.bytes.json").write_text("{")
    assert cached_source_hash(tmp_path, "train", "bytes") is None
