"""bdh.hf: our models as transformers AutoModelForCausalLM with a state cache, our tokenizers as fast tokenizers.

Equality with bdh itself: logits, greedy generate, the cache's state; beam search against recomputation without a
cache; directories both ways; trust_remote_code in a fresh process; bad input."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

import bdh.hf  # noqa: E402  (registers the Auto classes)
from bdh import BDH, BDHState, load_model  # noqa: E402
from bdh.baselines import GPT, GPTConfig  # noqa: E402
from bdh.checkpoint import CheckpointError  # noqa: E402
from bdh.generation import generate as bdh_generate  # noqa: E402
from bdh.hf import BDHCache, BDHForCausalLM, BDHTokenizerFast, GPTForCausalLM  # noqa: E402
from bdh.tokenization import BPETokenizer, ByteTokenizer, gpt2_tokenizer  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from conftest import english_bytes, tiny_config, train_briefly, trained_tiny_gpt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_model(kind: str):
    """Untrained weights whose beams part ways (briefly trained tiny models repeat one byte on every beam)."""
    torch.manual_seed(0)
    if kind == "gpt":
        return GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=256, block_size=64)).eval()
    m = BDH(tiny_config(damping="alibi")).eval()
    with torch.no_grad():
        m.lm_head.mul_(40)  # peaked next-token distributions
    return m


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, trained_tiny):
    """Model directories written by our save_pretrained: BDH (with damping, to exercise the lazy scale) and GPT."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    damped = train_briefly(BDH(tiny_config(damping="alibi")), steps=15)
    trained_tiny.save_pretrained(root / "bdh", tokenizer=ByteTokenizer())
    damped.save_pretrained(root / "bdh_damped", tokenizer=ByteTokenizer())
    trained_tiny_gpt().save_pretrained(root / "gpt", tokenizer=ByteTokenizer())
    random_model("bdh").save_pretrained(root / "bdh_random")
    return {k: root / k for k in ("bdh", "bdh_damped", "gpt", "bdh_random")}


PROMPTS = torch.tensor([list(b"ROMEO: What is"), list(b"To be, or not ")])  # (2, 14): equal lengths


@pytest.mark.parametrize("kind", ["bdh", "bdh_damped", "gpt"])
def test_auto_classes_load_our_directory_with_identical_logits(dirs, kind):
    cfg = json.loads((dirs[kind] / "config.json").read_text())
    want = {"bdh": "BDHForCausalLM", "bdh_damped": "BDHForCausalLM", "gpt": "GPTForCausalLM"}[kind]
    assert cfg["architectures"] == [want] and cfg["auto_map"]["AutoModelForCausalLM"] == f"modeling_bdh.{want}"
    hf = AutoModelForCausalLM.from_pretrained(dirs[kind])
    assert type(hf).__name__ == want and not hf.training
    assert type(AutoConfig.from_pretrained(dirs[kind])).model_type == cfg["model_type"]
    ref = load_model(dirs[kind])
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_logits, _ = ref(idx)
        no_cache = hf(idx, use_cache=False).logits
        out = hf(idx)  # prefill with a state, returned in a BDHCache
    assert (no_cache - want_logits).abs().max() <= 1e-6  # loaded weights, not re-initialised ones
    assert (out.logits - want_logits).abs().max() <= 1e-5
    _, want_state = ref.prefill(idx)
    assert isinstance(out.cache, BDHCache) and torch.equal(out.cache.state.pos, want_state.pos)
    for a, b in zip(ref.state_to_tensors(out.cache.state).values(), ref.state_to_tensors(want_state).values()):
        assert torch.equal(a, b)
    # the wrapper holds our module: one set of weights
    assert hf.model.state_dict().keys() == ref.state_dict().keys()
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(hf.model.parameters(), hf.parameters()))


@pytest.mark.parametrize("kind", ["bdh", "bdh_random", "gpt"])
def test_greedy_generate_equals_bdh_generate_and_cache_equals_prefill(dirs, kind):
    hf = AutoModelForCausalLM.from_pretrained(dirs[kind])
    ref = load_model(dirs[kind])
    out = hf.generate(PROMPTS, max_new_tokens=24, do_sample=False, return_dict_in_generate=True)
    want = bdh_generate(ref, PROMPTS.tolist(), 24, temperature=0)
    assert out.sequences[:, PROMPTS.shape[1]:].tolist() == want
    assert len(set(want[0])) > 1 or kind != "bdh_random"  # (the briefly trained tiny models repeat one byte)
    # the cache holds the state after every token fed: the prompt and all but the last generated token
    _, state = ref.prefill(out.sequences[:, :-1])
    assert torch.equal(out.cache.state.pos, state.pos)
    for a, b in zip(ref.state_to_tensors(out.cache.state).values(), ref.state_to_tensors(state).values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["bdh", "gpt"])
def test_beam_search_reorders_the_cache(kind):
    hf = bdh.hf.wrap(random_model(kind))
    kw = dict(max_new_tokens=12, do_sample=False, num_return_sequences=1)
    greedy = hf.generate(PROMPTS, **kw)
    assert torch.equal(hf.generate(PROMPTS, num_beams=1, **kw), greedy)
    beams = hf.generate(PROMPTS, num_beams=4, return_dict_in_generate=True, output_scores=True, **kw)
    # the same search recomputing every step from the whole sequence (no cache): equal only if the cache's rows
    # followed their beams through every reordering
    recomputed = hf.generate(PROMPTS, num_beams=4, use_cache=False, return_dict_in_generate=True,
                             output_scores=True, **kw)
    assert not torch.equal(beams.sequences, greedy)  # the search did reorder beams
    assert torch.equal(beams.sequences, recomputed.sequences)
    torch.testing.assert_close(beams.sequences_scores, recomputed.sequences_scores, rtol=1e-4, atol=1e-4)
    # beam search found a sequence at least as likely as greedy's
    def logp(seqs):
        with torch.no_grad():
            lp = torch.log_softmax(hf(seqs, use_cache=False).logits[:, :-1].float(), -1)
        return lp.gather(2, seqs[:, 1:, None])[:, PROMPTS.shape[1] - 1 :, 0].sum(1)
    assert bool((logp(beams.sequences) >= logp(greedy) - 1e-4).all())


def test_reorder_cache_selects_rows():
    st = BDHState([torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 2, 2).clone()], torch.tensor([5, 6, 7]))
    c = BDHCache(st)
    c.reorder_cache(torch.tensor([2, 2, 0]))
    assert c.state.pos.tolist() == [7, 7, 5] and c.state.rho[0][:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    c.batch_repeat_interleave(2)
    assert c.state.pos.tolist() == [7, 7, 7, 7, 5, 5] and c.get_seq_length() == 7
    with pytest.raises(ValueError, match="cannot be cropped.*assistant_model"):
        c.crop(1)


def test_sampling_runs_and_is_seeded(dirs):
    hf = AutoModelForCausalLM.from_pretrained(dirs["bdh"])
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(hf.generate(PROMPTS, max_new_tokens=16, do_sample=True, temperature=1.0, top_k=20,
                                num_return_sequences=2))
    assert outs[0].shape == (4, PROMPTS.shape[1] + 16) and torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][::2, : PROMPTS.shape[1]], PROMPTS) and int(outs[0].max()) < 256


def test_pipeline_text_generation_equals_bdh_generate(dirs):
    pipe = pipeline("text-generation", model=str(dirs["bdh"]))
    assert isinstance(pipe.tokenizer, BDHTokenizerFast)
    out = pipe("ROMEO:", max_new_tokens=30, do_sample=False)[0]["generated_text"]
    assert out == "ROMEO:" + load_model(dirs["bdh"]).generate("ROMEO:", 30, temperature=0)


def test_tokenizers_as_fast_tokenizers_give_our_ids(tmp_path):
    text = "Hello wörld, 😀 — to be\n\tor not."
    bpe = BPETokenizer.train([english_bytes(4000).numpy().tobytes().decode("utf-8", "ignore")], 300)
    for tok in (ByteTokenizer(), bpe, gpt2_tokenizer()):
        d = tmp_path / tok.name
        tok.save(d)
        fast = AutoTokenizer.from_pretrained(d, config=bdh.hf.BDHConfigHF())  # via the registration
        assert isinstance(fast, BDHTokenizerFast) and len(fast) == tok.vocab_size
        assert fast(text).input_ids == tok.encode(text)
        assert fast.decode(tok.encode(text)) == text
    assert BDHTokenizerFast.from_bdh(gpt2_tokenizer()).eos_token_id == 50256


def test_round_trip_both_ways(dirs, tmp_path):
    hf = AutoModelForCausalLM.from_pretrained(dirs["bdh"])
    hf.save_pretrained(tmp_path / "back")  # our format: bdh loads it, and so does transformers
    names = sorted(os.listdir(tmp_path / "back"))
    assert names == ["config.json", "model.safetensors", "modeling_bdh.py", "tokenizer_config.json"]
    for f in ("model.safetensors", "config.json", "modeling_bdh.py"):
        assert (tmp_path / "back" / f).read_bytes() == (dirs["bdh"] / f).read_bytes()
    assert BDH.from_pretrained(tmp_path / "back").config == load_model(dirs["bdh"]).config
    wrapped = bdh.hf.wrap(load_model(dirs["gpt"]))  # an in-memory model of ours, as its HF class
    assert isinstance(wrapped, GPTForCausalLM) and wrapped.config.n_embd == 32


def test_trust_remote_code_in_a_fresh_process(dirs, tmp_path):
    """transformers alone (no `import bdh.hf` first) loads the directory through auto_map + modeling_bdh.py."""
    idx = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = load_model(dirs["bdh"])(idx)[0]
    torch.save({"idx": idx, "want": want}, tmp_path / "ref.pt")
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained({str(dirs['bdh'])!r})
    sys.exit("loaded without trust_remote_code")
except ValueError as e:
    assert "trust_remote_code" in str(e), e
assert "bdh.hf" not in sys.modules
m = AutoModelForCausalLM.from_pretrained({str(dirs['bdh'])!r}, trust_remote_code=True)
ref = torch.load({str(tmp_path / 'ref.pt')!r})
with torch.no_grad():
    got = m(ref["idx"], use_cache=False).logits
print(type(m).__name__, float((got - ref["want"]).abs().max()))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    name, diff = r.stdout.split()[-2:]
    assert name == "BDHForCausalLM" and float(diff) <= 1e-6


def test_bdh_command_line_does_not_import_transformers():
    code = "import sys, bdh.cli; bdh.cli.build_parser(); print('transformers' in sys.modules, 'bdh.hf' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------------------------- bad input
def test_another_model_type_is_a_clear_error(dirs, tmp_path):
    with pytest.raises(CheckpointError, match="model_type 'gpt', expected 'bdh' for BDHForCausalLM"):
        BDHForCausalLM.from_pretrained(dirs["gpt"])
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (d / "model.safetensors").write_bytes((dirs["bdh"] / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"model_type='llama': expected one of 'bdh', 'gpt'"):
        BDHForCausalLM.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BDHForCausalLM.from_pretrained(tmp_path / "nope")
    other = bdh.hf.hf_config(tiny_config(n_embd=64))
    with pytest.raises(ValueError, match="config=: differs from .*config.json"):
        BDHForCausalLM.from_pretrained(dirs["bdh"], config=other)


def test_tokenizer_not_matching_the_vocabulary(dirs, tmp_path):
    d = tmp_path / "m"
    load_model(dirs["bdh"]).save_pretrained(d, tokenizer=gpt2_tokenizer())  # 50257 tokens, vocab_size 256
    with pytest.raises(CheckpointError, match="tokenizer has 50257 tokens but the model's vocab_size is 256"):
        AutoModelForCausalLM.from_pretrained(d)
    hf = AutoModelForCausalLM.from_pretrained(dirs["bdh"])
    with pytest.raises(ValueError, match=r"token id 300 is outside the vocabulary \[0, 256\)"):
        hf(torch.tensor([[1, 300]]))


def test_unsupported_batches_and_cache_operations(dirs):
    hf = AutoModelForCausalLM.from_pretrained(dirs["bdh"])
    mask = torch.ones_like(PROMPTS)
    mask[1, :3] = 0  # left padding
    with pytest.raises(ValueError, match="attention_mask holds padding.*prompts of equal length"):
        hf.generate(PROMPTS, attention_mask=mask, max_new_tokens=3)
    with pytest.raises(ValueError, match="assisted generation is not supported with stateful models"):
        hf.generate(PROMPTS[:1], assistant_model=hf, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt_lookup_num_tokens=\.\.\.\): assisted generation is not supported"):
        hf.generate(PROMPTS[:1], prompt_lookup_num_tokens=2, max_new_tokens=3)
    with pytest.raises(TypeError, match="cache: expected a BDHCache"):
        from transformers import DynamicCache

        hf(PROMPTS, cache=DynamicCache())
    with pytest.raises(ValueError, match="inputs_embeds are not supported"):
        hf(inputs_embeds=torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match="dtype='float33': expected a torch dtype"):
        BDHForCausalLM.from_pretrained(dirs["bdh"], dtype="float33")
    with pytest.raises(ValueError, match="device_map='auto': expected one device"):
        BDHForCausalLM.from_pretrained(dirs["bdh"], device_map="auto")
    with pytest.raises(TypeError, match=r"unsupported argument\(s\) \['quantization_config'\]"):
        BDHForCausalLM.from_pretrained(dirs["bdh"], quantization_config={"bits": 4})


# ----------------------------------------------------------------------------------------------- issue 23
def save_with_huge_weights(directory, name: str = "encoder") -> None:
    """A model whose parameter `name` is scaled to |w| <= 3e38: finite (bdh.checkpoint loads it), but its logits
    overflow to nan."""
    torch.manual_seed(0)
    m = BDH(tiny_config()).eval()
    with torch.no_grad():
        w = dict(m.named_parameters())[name]
        w.copy_(w.double() * (3e38 / w.double().abs().max()))
    m.save_pretrained(directory, tokenizer=ByteTokenizer())


def test_corrupt_weights_are_an_error_not_token_0(tmp_path):
    """Before: transformers' generate() returned token 0 from nan logits where `bdh generate` stopped."""
    save_with_huge_weights(tmp_path / "huge")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "huge")  # finite weights: loaded
    with pytest.raises(ValueError) as ours:
        load_model(tmp_path / "huge").generate("ROMEO:", 5, temperature=0)
    for run in (lambda: hf.generate(PROMPTS, max_new_tokens=5, do_sample=False),
                lambda: hf.generate(PROMPTS, max_new_tokens=5, num_beams=2),
                lambda: pipeline("text-generation", model=str(tmp_path / "huge"))("ROMEO:", max_new_tokens=5)):
        with pytest.raises(ValueError) as theirs:
            run()
        assert str(theirs.value) == str(ours.value)  # one check, one message
    assert "non-finite logits (nan or inf) after the prompt" in str(ours.value)
    with torch.no_grad(), pytest.raises(ValueError, match="non-finite logits"):
        hf(PROMPTS, use_cache=False)
    out = hf(PROMPTS, use_cache=False)  # with autograd (training): the loss shows it, no check per call
    assert not bool(torch.isfinite(out.logits).all())


def test_non_finite_logits_during_generation_name_the_token(dirs):
    hf = AutoModelForCausalLM.from_pretrained(dirs["bdh"])
    out = hf.generate(PROMPTS, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert out.cache.steps == 2  # the prompt, then 2 one-token forwards
    with torch.no_grad():
        hf.model.lm_head.mul_(float("inf"))
    with torch.no_grad(), pytest.raises(ValueError, match="after generated token 3:"):
        hf(out.sequences[:, -1:], cache=out.cache)


def test_model_without_its_tokenizer_is_refused_where_text_is_needed(tmp_path):
    """A 50257-token model saved without tokenizer files: before, bytes were assumed (AutoTokenizer, bdh generate,
    lm_eval); the model itself still loads (its weights are fine)."""
    d = tmp_path / "m"
    torch.manual_seed(0)
    BDH(tiny_config(vocab_size=50257)).save_pretrained(d)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "modeling_bdh.py"]
    hf = AutoModelForCausalLM.from_pretrained(d)
    assert hf.generate(PROMPTS, max_new_tokens=2, do_sample=False).shape == (2, PROMPTS.shape[1] + 2)
    words = re.escape(str(d)) + r": holds no tokenizer files, and bytes \(256 tokens\) do not match the model's " \
            r"vocab_size 50257: save the tokenizer the model was trained with into the directory " \
            r"\(tokenizer.save\(DIR\); GPT-2's: bdh.tokenization.gpt2_tokenizer\(\).save\(DIR\)\)$"
    for load in (lambda: AutoTokenizer.from_pretrained(d), lambda: BDHTokenizerFast.from_pretrained(d),
                 lambda: load_model(d).generate("x", 3), lambda: pipeline("text-generation", model=str(d))("x")):
        with pytest.raises(ValueError, match=words):
            load()
    hf.save_pretrained(tmp_path / "again")  # the model saves without a tokenizer, as it was
    assert sorted(os.listdir(tmp_path / "again")) == ["config.json", "model.safetensors", "modeling_bdh.py"]
    gpt2_tokenizer().save(d)  # what the error says to do
    assert AutoTokenizer.from_pretrained(d)("Hello").input_ids == gpt2_tokenizer().encode("Hello")
    # a saved tokenizer of another size: refused by AutoTokenizer (and by loading the model)
    ByteTokenizer().save(d)
    with pytest.raises(CheckpointError, match="tokenizer has 256 tokens but the model's vocab_size is 50257"):
        AutoTokenizer.from_pretrained(d)


def test_tokenizer_bos_and_eos_are_the_prefix_token_and_change_no_ids():
    """lm_eval's `hf` model needs a bos or eos token (its prefix token); "\\n" stays an ordinary token."""
    from bdh.hf.modeling import default_prefix_token  # (also the "bdh" lm_eval model's prefix token)

    text = "To be,\nor not\n\n to be <|endoftext|> \u010a!"
    bpe = BPETokenizer.train([english_bytes(4000).numpy().tobytes().decode("utf-8", "ignore")], 300)
    for tok, want in ((ByteTokenizer(), 10), (bpe, bpe.encode("\n")[0]), (gpt2_tokenizer(), 50256)):
        fast = BDHTokenizerFast.from_bdh(tok)
        assert fast.bos_token_id == fast.eos_token_id == want == default_prefix_token(tok)
        assert len(fast) == tok.vocab_size  # no token added
        assert fast(text).input_ids == fast.encode(text) == tok.encode(text)
        assert fast.decode(tok.encode(text), skip_special_tokens=True) == text


def test_auto_tokenizer_in_a_fresh_process(dirs, tmp_path):
    """Without `import bdh.hf`: tokenizer_config.json's auto_map asks for trust_remote_code (before: a message
    about sentencepiece / tiktoken), and with it loads BDHTokenizerFast, for bytes and for BPE."""
    bpe_dir = tmp_path / "bpe"
    bpe = BPETokenizer.train([english_bytes(4000).numpy().tobytes().decode("utf-8", "ignore")], 300)
    torch.manual_seed(0)
    BDH(tiny_config(vocab_size=300)).save_pretrained(bpe_dir, tokenizer=bpe)
    cfg = json.loads((bpe_dir / "tokenizer_config.json").read_text())
    assert cfg["auto_map"] == {"AutoTokenizer": [None, "modeling_bdh.BDHTokenizerFast"]} and cfg["type"] == "bpe"
    text = "ROMEO: What is\nthe matter?"
    code = f"""
import sys
from transformers import AutoTokenizer
for d in sys.argv[1:]:
    try:
        AutoTokenizer.from_pretrained(d)
        sys.exit("loaded without trust_remote_code")
    except ValueError as e:
        assert "trust_remote_code=True" in str(e) and "sentencepiece" not in str(e), e
assert "bdh.hf" not in sys.modules
for d in sys.argv[1:]:
    t = AutoTokenizer.from_pretrained(d, trust_remote_code=True)
    print(type(t).__name__, t.bos_token_id, len(t), t({text!r}).input_ids)
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", code, str(dirs["bdh"]), str(bpe_dir)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    # (transformers prompts "Do you wish to run the custom code? [y/N] " without a newline: stdin is empty)
    lines = [line[line.index("BDHTokenizerFast"):] for line in r.stdout.splitlines() if "BDHTokenizerFast" in line]
    assert len(lines) == 2
    for line, tok in zip(lines, (ByteTokenizer(), bpe)):
        assert line == f"BDHTokenizerFast {tok.encode(chr(10))[0]} {tok.vocab_size} {tok.encode(text)}"


@pytest.mark.parametrize("kind", ["bdh", "gpt"])
def test_generate_steps_leave_ordinary_tensors(dirs, kind):
    """generate()'s one-token forwards run under inference mode (as bdh generate's loop, issue 23): what they
    return may still be updated in place, and the cache continues a forward with autograd."""
    hf = AutoModelForCausalLM.from_pretrained(dirs[kind])
    out = hf.generate(PROMPTS, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert not out.sequences.is_inference()
    with torch.no_grad():
        step = hf(out.sequences[:, -1:], cache=out.cache)
    assert not step.logits.is_inference()
    step.logits[:, :, 0] = 0.0  # an in-place update (refused on an inference tensor outside inference mode)
    more = torch.tensor([list(b" and"), list(b" or ")])
    loss = hf(more, cache=step.cache, labels=more).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in hf.parameters() if p.requires_grad)


def test_generate_continues_from_a_returned_cache():
    """Our prepare_inputs_for_generation (issue 23) reads only the tokens the cache has not read: from a returned
    cache, with the whole sequence or only the new tokens (and a mask of the whole length), generate() continues
    as it does from scratch."""
    hf = bdh.hf.wrap(random_model("bdh"))
    kw = dict(max_new_tokens=4, do_sample=False)
    seq = hf.generate(PROMPTS, return_dict_in_generate=True, **kw).sequences
    full = torch.cat([seq, torch.tensor([list(b" ok"), list(b" no")])], 1)
    want = hf.generate(full, **kw)[:, full.shape[1]:]
    assert len(set(want[0].tolist())) > 1
    for only_new in (False, True):
        out = hf.generate(PROMPTS, return_dict_in_generate=True, **kw)  # the cache has read all but seq[:, -1]
        ids = full[:, seq.shape[1] - 1 :] if only_new else full
        got = hf.generate(ids, attention_mask=torch.ones_like(full), cache=out.cache, **kw)
        assert torch.equal(got[:, ids.shape[1]:], want)
