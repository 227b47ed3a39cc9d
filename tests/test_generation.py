"""Generation: recurrent decode equals full recompute, sampling controls, batches, stop strings, bad bytes."""

import copy

import pytest
import torch

from bdh import BDH, generate, stream
from bdh.generation import SamplingParams, sample
from conftest import tiny_config


def greedy_by_recompute(model, ids, n):
    """The reference's generate(): re-run the whole prefix with the parallel form for every token."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]), form="parallel")
            t = int(logits[0, -1].argmax())
            ids.append(t)
            out.append(t)
    return out


def test_greedy_decode_equals_quadratic_recompute(trained_tiny):
    prompt = list(b"The object ")
    got = generate(trained_tiny, prompt, 25, temperature=0)
    assert got == greedy_by_recompute(trained_tiny, prompt, 25)


def test_text_generation_and_streaming_agree(trained_tiny):
    text = generate(trained_tiny, "def f(x):", 30, temperature=0.9, seed=123)
    pieces = list(stream(trained_tiny, "def f(x):", 30, temperature=0.9, seed=123))
    assert isinstance(text, str) and "".join(pieces) == text
    assert len(text.encode("utf-8", errors="surrogatepass")) > 0
    assert generate(trained_tiny, "def f(x):", 30, temperature=0.9, seed=123) == text  # seeded: reproducible
    others = {generate(trained_tiny, "def f(x):", 30, temperature=0.9, seed=s) for s in range(4)}
    assert len(others) > 1  # the seed matters


def test_batch_of_prompts_equals_one_by_one(trained_tiny):
    prompts = ["Hello", "The class statement", "x"]
    batch = generate(trained_tiny, prompts, 20, temperature=0)
    single = [generate(trained_tiny, p, 20, temperature=0) for p in prompts]
    assert batch == single


def test_generation_restores_training_mode(trained_tiny):
    m = copy.deepcopy(trained_tiny).train()  # never mutate the shared fixture
    generate(m, "a", 3, temperature=0)
    assert m.training


def test_stop_strings(trained_tiny):
    full = generate(trained_tiny, "The ", 60, temperature=0)
    stop = full[10:13]
    cut = generate(trained_tiny, "The ", 60, temperature=0, stop=[stop, "never-occurs"])
    assert cut == full[: full.find(stop)]
    streamed = "".join(stream(trained_tiny, "The ", 60, temperature=0, stop=stop))
    assert streamed == cut


def test_invalid_utf8_does_not_crash():
    """Bytes that are not valid UTF-8 become replacement characters, never an exception."""
    # direct check on the text machinery: feed token ids that are not valid UTF-8
    from bdh.generation import RowText
    from bdh.tokenization import ByteTokenizer

    row = RowText(ByteTokenizer(), stop=[])
    text = "".join(row.add(t) for t in [0xFF, 0x80, ord("a"), 0xE2, 0x82]) + row.flush()
    assert text == "\ufffd\ufffda\ufffd"
    # a split multi-byte character is emitted once complete
    row = RowText(ByteTokenizer(), stop=[])
    assert [row.add(t) for t in "€".encode()] == ["", "", "€"]
    # and end-to-end sampling at a high temperature (random bytes, mostly invalid UTF-8) never raises
    torch.manual_seed(0)
    model = BDH(tiny_config()).eval()
    out = generate(model, "x", 200, temperature=5.0, seed=0)
    assert isinstance(out, str) and "\ufffd" in out


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingParams(temperature=0)).item() == 3
    assert {sample(logits, SamplingParams(1.0, top_k=1), g).item() for _ in range(20)} == {3}
    assert {sample(logits, SamplingParams(1.0, top_k=2), g).item() for _ in range(200)} == {2, 3}
    # top_p: p(3)=0.64, p(2)=0.24 -> top_p=0.7 keeps {3, 2}; top_p=0.5 keeps {3}
    assert {sample(logits, SamplingParams(1.0, top_p=0.7), g).item() for _ in range(200)} == {2, 3}
    assert {sample(logits, SamplingParams(1.0, top_p=0.5), g).item() for _ in range(50)} == {3}


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(temperature=-1), "temperature=-1"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(max_new_tokens=-2), "max_new_tokens=-2"),
    ],
)
def test_bad_sampling_arguments(trained_tiny, kw, msg):
    n = kw.pop("max_new_tokens", 5)
    with pytest.raises(ValueError, match=msg):
        generate(trained_tiny, "a", n, **kw)


def test_empty_prompt(trained_tiny):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(trained_tiny, ["a", ""], 5)


def test_eos_ends_row(trained_tiny):
    full = generate(trained_tiny, list(b"The "), 30, temperature=0)
    eos = full[5]
    got = generate(trained_tiny, list(b"The "), 30, temperature=0, eos_token_id=eos)
    assert got == full[: full.index(eos)]


def test_needs_tokenizer_for_non_byte_vocab():
    model = BDH(tiny_config(vocab_size=300))
    with pytest.raises(ValueError, match="vocab_size=300"):
        generate(model, "hi", 3)


def test_decode_loop_checks_prompt_ids_once_and_steps_without_id_checks(trained_tiny, monkeypatch):
    calls = []
    real_step = BDH.step

    def spy(self, token_ids, state, **kw):
        calls.append(kw.get("check_ids", True))
        return real_step(self, token_ids, state, **kw)

    monkeypatch.setattr(BDH, "step", spy)
    got = generate(trained_tiny, [list(b"ab"), list(b"cde")], 6, temperature=0)
    assert len(calls) == 5 and not any(calls)  # every decode step skips the range check (no host sync)
    monkeypatch.setattr(BDH, "step", real_step)
    assert got == [generate(trained_tiny, p, 6, temperature=0) for p in (list(b"ab"), list(b"cde"))]
    with pytest.raises(ValueError, match="256"):  # a bad prompt id is still caught, when stream is called
        generate(trained_tiny, [1, 256], 3)


def test_row_text_uses_the_tokenizer_stream_decoder():
    from bdh.generation import RowText
    from bdh.tokenization import ByteTokenizer, IncrementalDecoder

    made = []

    class Tok(ByteTokenizer):
        def stream_decoder(self):
            made.append(IncrementalDecoder(self))
            return made[-1]

    row = RowText(Tok(), stop=["!"])
    assert len(made) == 1 and row.dec is made[0]
    assert [row.add(t) for t in "é!".encode()] == ["", "é", ""] and row.stopped

    class Bare:  # duck-typed: token_bytes only
        def token_bytes(self, i):
            return bytes([i])

    row = RowText(Bare(), stop=[])
    assert "".join(row.add(t) for t in "€\xff".encode() + b"\xff") + row.flush() == "€ÿ\ufffd"


# ----------------------------------------------------------------------------- issue 13
class _Spelled:
    """A model stand-in that spells out a fixed text, one byte per step (for exact stop-string tests)."""

    def __init__(self, text: str):
        import types

        self.text = list(text.encode())
        self.config = types.SimpleNamespace(vocab_size=256)
        self.device, self.training = torch.device("cpu"), False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def _logits(self, n):
        out = torch.full((1, 256), -1e4)
        out[0, self.text[min(n, len(self.text) - 1)]] = 0.0
        return out

    def prefill(self, idx, state=None, form="auto"):
        n = 0 if state is None else state
        return self._logits(n).unsqueeze(1).expand(1, idx.shape[1], 256), n  # the state: tokens emitted so far

    def step(self, ids, state, **kw):
        return self._logits(state + 1), state + 1


@pytest.mark.parametrize("stops", [["s", "his"], ["his", "s"], ["is", "this is", "s"], ["x", "hi", "h"]])
def test_the_earliest_stop_string_ends_the_text_whatever_their_order(stops):
    """`--stop s --stop his` printed "thi" (the later "s" matched first); the earliest match wins in any order."""
    text = "this is it"
    model = _Spelled(text)
    # the reference: generation ends at the first token that completes a stop string; the text ends where the
    # earliest of the stop strings then present begins
    k = next(k for k in range(1, len(text) + 1) if any(s in text[:k] for s in stops))
    want = text[: min(text[:k].find(s) for s in stops if s in text[:k])]
    for order in (stops, stops[::-1]):
        assert generate(model, "a", 10, temperature=0, stop=order) == want
        pieces = list(stream(model, "a", 10, temperature=0, stop=order))
        assert "".join(pieces) == want


def test_a_stop_string_spanning_streamed_pieces_is_never_printed():
    model = _Spelled("abcabd")
    pieces = list(stream(model, "a", 6, temperature=0, stop=["cabd", "bd"]))  # "cabd" starts first (index 2)
    assert "".join(pieces) == "ab" and all("c" not in p for p in pieces)


def test_prefill_runs_in_bounded_pieces_with_the_same_output(trained_tiny, monkeypatch):
    """A long prompt is prefilled `prefill_piece` tokens at a time (state carried): same tokens, bounded memory."""
    import bdh.generation as G
    from conftest import english_bytes

    prompt = english_bytes(300).tolist()
    with torch.no_grad():  # one-shot prefill, then greedy steps: the reference
        logits, state = trained_tiny.prefill(torch.tensor([prompt]))
        ref, last = [], logits[:, -1]
        for _ in range(12):
            t = last.argmax(-1)
            ref.append(int(t))
            last, state = trained_tiny.step(t, state)
    sizes = []
    real = BDH.prefill

    def spy(self, idx, state=None, **kw):
        sizes.append(idx.shape[1])
        return real(self, idx, state, **kw)

    monkeypatch.setattr(BDH, "prefill", spy)
    monkeypatch.setattr(G, "PREFILL_PIECE", 40)  # rounded down to whole chunks (chunk_size 16): 32 tokens
    assert G.prefill_piece(trained_tiny) == 32
    assert generate(trained_tiny, prompt, 12, temperature=0) == ref
    assert sizes == [32] * 9 + [12]
    sizes.clear()
    assert generate(trained_tiny, [prompt, prompt[:50]], 12, temperature=0)[0] == ref  # ragged batch: one by one
    assert sizes == [32] * 9 + [12] + [32, 18]



def test_read_in_pieces_equals_one_prefill_for_every_keep_and_carry(trained_tiny, monkeypatch):
    """The one home of prefill in pieces (generation, serve, the HF forward, lm_eval): the logits it keeps and
    the state after equal one `prefill` of the whole input, from no state and from a state; `carry` passes the
    state through `carry_state` after every piece; the state given is left unchanged."""
    import bdh.generation as G
    from conftest import english_bytes

    monkeypatch.setattr(G, "PREFILL_PIECE", 40)  # 32-token pieces (chunk_size 16)
    ids = english_bytes(100)[None]  # (1, 100): pieces of 32, 32, 32, 4
    with torch.no_grad():
        _, s0 = trained_tiny.prefill(ids[:, :20])
        before = [r.clone() for r in s0.rho]
        for state in (None, s0):
            ref, ref_state = trained_tiny.prefill(ids, state)
            for keep, want in ((0, ref), (1, ref[:, -1:]), (37, ref[:, -37:]), (100, ref), (500, ref)):
                got, st = G.read_in_pieces(trained_tiny, ids, state, keep=keep)
                assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4), keep
                assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(st.rho, ref_state.rho))
            last, st = G.prefill_in_pieces(trained_tiny, ids, state=state)
            assert torch.allclose(last, ref[:, -1], atol=1e-4) and int(st.pos[0]) == int(ref_state.pos[0])
        assert all(torch.equal(a, b) for a, b in zip(s0.rho, before))  # functional: the given state is unchanged
        carried = []
        real = trained_tiny.carry_state
        monkeypatch.setattr(trained_tiny, "carry_state", lambda s: carried.append(s) or real(s))
        got, _ = G.read_in_pieces(trained_tiny, ids, carry=True)
        assert len(carried) == 4 and torch.allclose(got, trained_tiny.prefill(ids)[0], atol=1e-4)
    with pytest.raises(ValueError, match="empty"):  # an empty input: the model's own check names it
        G.read_in_pieces(trained_tiny, ids[:, :0])

def _nan_model(trained_tiny):
    m = copy.deepcopy(trained_tiny)
    with torch.no_grad():
        m.lm_head[0, 0] = float("nan")
    return m


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_non_finite_logits_end_generation_with_a_clear_error(trained_tiny, temperature):
    """Before: a torch RuntimeError from multinomial, or (greedy) NUL bytes printed as if generated."""
    m = _nan_model(trained_tiny)
    with pytest.raises(ValueError, match="non-finite logits"):
        generate(m, "The ", 5, temperature=temperature)
    with pytest.raises(ValueError, match="non-finite logits"):
        list(stream(m, ["a", "bc"], 5, temperature=temperature))


def test_evaluation_refuses_a_non_finite_loss(trained_tiny):
    import numpy as np

    from bdh.training.evaluation import evaluate, token_byte_lengths
    from bdh.tokenization import ByteTokenizer

    tokens = np.frombuffer(b"some validation text, long enough for two windows.", dtype=np.uint8).astype(np.int64)
    lengths = token_byte_lengths(ByteTokenizer())
    assert np.isfinite(evaluate(trained_tiny, tokens, lengths, 16, batch_size=2)["loss"])
    with pytest.raises(ValueError, match="validation loss is nan"):
        evaluate(_nan_model(trained_tiny), tokens, lengths, 16, batch_size=2)


@pytest.mark.parametrize(
    "prompts,kw,err,msg",
    [
        (123, {}, TypeError, "prompts: expected a string.*got int"),
        (None, {}, TypeError, "got NoneType"),
        (["a", 3], {}, TypeError, "a list mixing int, str"),
        ([[1], ["a"]], {}, TypeError, r"prompt 1: expected integer token ids, got 'a'"),
        ([[1], 5], {}, TypeError, "a list mixing int, list"),
        ([[1, 2.5]], {}, TypeError, "prompt 0: expected integer token ids, got 2.5"),
        ([1.5], {}, TypeError, "prompt 0: expected a list of token ids, got float"),
        (torch.tensor([1.0]), {}, ValueError, "dtype torch.float32"),
        ([300], {}, ValueError, r"token id 300 is outside the vocabulary \[0, 256\)"),
        ("a", dict(stop=5), TypeError, "stop=5: expected a string, a list of strings"),
        ("a", dict(stop=["x", 5]), TypeError, r"stop: expected strings, got 5"),
        ("a", dict(eos_token_id="a"), TypeError, "eos_token_id='a'"),
        ("a", dict(eos_token_id=256), ValueError, r"eos_token_id=256: expected a token id in \[0, 256\)"),
        ("a", dict(seed="x"), ValueError, "seed='x'"),
        ("a", dict(seed=1.5), ValueError, "seed=1.5"),
        ("a", dict(seed=2**70), ValueError, "seed=1180591620717411303424"),
        ("a", dict(temperature=float("inf")), ValueError, "temperature=inf"),
        ("a", dict(top_k=True), ValueError, "top_k=True"),
        ("a", dict(top_p=True), ValueError, "top_p=True"),
        ("a", dict(tokenizer=5), TypeError, "tokenizer: expected a tokenizer.*got int"),
    ],
)
def test_wrong_argument_types_are_named(trained_tiny, prompts, kw, err, msg):
    """Before: bare TypeErrors from deep inside ('int' object is not iterable), AttributeError, RuntimeError."""
    for call in (lambda: generate(trained_tiny, prompts, 3, **kw), lambda: stream(trained_tiny, prompts, 3, **kw)):
        with pytest.raises(err, match=msg):
            call()  # stream checks its arguments when called, before any iteration
