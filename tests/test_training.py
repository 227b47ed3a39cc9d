"""Training: config parsing and type checks, schedule, batching, evaluation, the loop, checkpoints, bad input."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bdh import BDH, BDHConfig
from bdh.cli import main
from bdh.tokenization import BPETokenizer, ByteTokenizer, load_tokenizer
from bdh.training import TrainingDiverged, evaluate, load_run_config, token_byte_lengths, train
from bdh.training.batching import RandomCrops, Streams
from bdh.training.config import SHIPPED_CONFIGS, apply_override
from bdh.training.schedule import lr_factor

QUIET = dict(progress=False, echo=lambda s: None)


FAST = ["train.eval_every=0", "train.sample_tokens=0", "train.checkpoint_every=0"]


def losses(out) -> dict[int, float]:
    recs = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r.get("split") == "train"}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Bytes of every file of the complete checkpoints (hidden staging directories excluded)."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file()]
    rel = {p: p.relative_to(directory) for p in files}
    return {str(r): p.read_bytes() for p, r in rel.items() if not r.parts[0].startswith(".")}


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load_and_build_valid_models(name):
    from bdh.baselines import GPTConfig

    cfg = load_run_config(name)
    assert cfg.name == name
    assert isinstance(cfg.model_config(256), GPTConfig if name.startswith("gpt") else BDHConfig)


def test_gpt_default_is_the_default_run_with_a_param_matched_gpt():
    bdh, gpt = load_run_config("default"), load_run_config("gpt-default")
    assert bdh.to_dict()["data"] == gpt.to_dict()["data"] and bdh.to_dict()["train"] == gpt.to_dict()["train"]
    pb, pg = bdh.model_config(256).num_params(), gpt.model_config(256).num_params()
    assert abs(pg - pb) / pb < 0.05


def test_default_config_values():
    cfg = load_run_config("default")
    assert (cfg.data.corpus, cfg.data.tokenizer, cfg.data.batching) == ("shakespeare", "bytes", "tbptt")
    ref = load_run_config("reference-25m")
    mc = ref.model_config(256)
    assert mc.num_params() == 25_296_896 and ref.data.block_size == 512 and ref.train.lr == 1e-3


def test_overrides_are_parsed_and_type_checked():
    cfg = load_run_config(
        "tiny",
        ["train.lr=3e-4", "train.steps=7", "train.no_bptt=true", "data.corpus=some/file.txt", "train.warmup=0",
         "model.damping=alibi", "train.weight_decay=0", 'train.sample_prompt="A B"', "data.tokenizer=gpt2"],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 7 and cfg.train.no_bptt is True
    assert cfg.data.corpus == "some/file.txt" and cfg.model["damping"] == "alibi"
    assert cfg.train.weight_decay == 0.0 and isinstance(cfg.train.weight_decay, float)  # int accepted for float
    assert cfg.train.sample_prompt == "A B" and cfg.data.tokenizer == "gpt2"
    apply_override(cfg, "data.corpus=2024")  # text fields take the text as written
    assert cfg.data.corpus == "2024"
    apply_override(cfg, "model.damping=[0.9, 0.99]")
    assert cfg.model["damping"] == [0.9, 0.99]
    apply_override(cfg, "model.damping=none")
    assert cfg.model["damping"] is None


@pytest.mark.parametrize(
    "item, words",
    [
        ("train.foo=1", ["train.foo", "unknown"]),
        ("optim.lr=1", ["optim", "section"]),
        ("model.vocab_size=300", ["model.vocab_size", "tokenizer"]),
        ("train.steps=1.5", ["train.steps", "1.5", "int"]),
        ("train.steps=ten", ["train.steps", "'ten'", "int"]),
        ("train.lr=fast", ["train.lr", "'fast'", "float"]),
        ("train.no_bptt=1", ["train.no_bptt", "1", "bool"]),
        ("data.block_size=true", ["data.block_size", "True", "int"]),
        ("lr=3", ["section.key"]),
        ("train.lr", ["section.key=value"]),
        ("train.lr=-1", ["train.lr", "positive"]),
        ("data.batching=shuffled", ["data.batching", "random, tbptt"]),
        ("model.n_head=0", ["n_head", "positive"]),
    ],
)
def test_bad_overrides_raise_naming_key_value_and_type(item, words):
    with pytest.raises(ValueError) as e:
        load_run_config("tiny", [item])
    for w in words:
        assert w in str(e.value)


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_run_config("default", ["model.damping=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]", 'train.sample_prompt="Ünï \\"q\\"\\n"'])
    p = tmp_path / "resolved.toml"
    p.write_text(cfg.to_toml(), encoding="utf-8")
    again = load_run_config(p)
    assert again.to_dict() == {**cfg.to_dict(), "name": "resolved"}
    assert again.train.sample_prompt == 'Ünï "q"\n'


def test_toml_file_unknown_key_and_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(ValueError, match=r"unknown config key train\.learning_rate"):
        load_run_config(p)
    p.write_text("[train\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_run_config(p)
    p.write_text('[model]\nn_layer = "four"\n')
    with pytest.raises(ValueError, match=r"model\.n_layer = 'four' has type str; expected int"):
        load_run_config(p)
    with pytest.raises(FileNotFoundError, match="neither a shipped config"):
        load_run_config(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------------------------- schedule
def test_lr_schedule_values():
    f = dict(warmup=10, steps=110, min_ratio=0.1)
    assert lr_factor(0, decay="linear", **f) == pytest.approx(0.1)
    assert lr_factor(9, decay="linear", **f) == pytest.approx(1.0)
    assert lr_factor(60, decay="linear", **f) == pytest.approx(0.55)
    assert lr_factor(110, decay="linear", **f) == pytest.approx(0.1)
    assert lr_factor(60, decay="cosine", **f) == pytest.approx(0.55)
    assert lr_factor(35, decay="cosine", **f) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, decay="constant", **f) == 1.0


# ------------------------------------------------------------------------------------------------- batching
def test_random_crops_are_seeded_windows_and_ranks_split_the_global_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    a, b = RandomCrops(tokens, 8, 4, seed=3), RandomCrops(tokens, 8, 4, seed=3)
    x, y, reset = a.next(0)
    assert reset and x.shape == (4, 8) and torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x, b.next(0)[0])
    # every process draws the global batch and keeps its rows
    g = RandomCrops(tokens, 8, 4, seed=5)
    p = [RandomCrops(tokens, 8, 4, seed=5, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        assert torch.equal(g.next(0)[0], torch.cat([p[0].next(0)[0], p[1].next(0)[0]]))
    with pytest.raises(ValueError, match="divisible"):
        RandomCrops(tokens, 8, 3, seed=0, rank=0, world=2)
    with pytest.raises(ValueError, match="block_size"):
        RandomCrops(tokens[:8], 8, 4, seed=0)


def test_tbptt_streams_continue_and_wrap():
    tokens = np.arange(101, dtype=np.uint16)  # 2 micro-steps x 2 rows = 4 streams of 25 tokens
    s = Streams(tokens, T=10, batch_size=2, grad_accum=2)
    assert (s.stream_len, s.chunks) == (25, 2)
    x0, y0, reset0 = s.next(0)
    x1, _, _ = s.next(1)
    assert reset0 and x0[:, 0].tolist() == [0, 25] and x1[:, 0].tolist() == [50, 75]
    s.end_step()
    x0b, _, reset = s.next(0)
    assert not reset and torch.equal(x0b[:, 0], y0[:, -1])  # the next chunk continues the stream
    s.end_step()
    x0c, _, reset = s.next(0)
    assert reset and s.epoch == 1 and torch.equal(x0c, x0)
    with pytest.raises(ValueError, match="too short"):
        Streams(tokens[:30], T=10, batch_size=2, grad_accum=2)


# ------------------------------------------------------------------------------------------------- evaluation
def _small_model(vocab=256):
    torch.manual_seed(0)
    return BDH(BDHConfig(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0,
                         vocab_size=vocab, chunk_size=16)).eval()


def test_evaluate_bits_per_byte_and_carried_state():
    model = _small_model()
    tok = ByteTokenizer()
    tokens = np.frombuffer(("Hello world, état " * 40).encode(), dtype=np.uint8)
    lengths = token_byte_lengths(tok)
    r = evaluate(model, tokens, lengths, 16, batch_size=4)
    assert r["tokens"] == r["bytes"] == 4 * ((len(tokens) - 1) // 4)
    assert r["bpb"] == pytest.approx(r["loss"] / math.log(2))
    # one stream read in chunks with the carried state = one pass over the whole stream
    whole = evaluate(model, tokens, lengths, 10_000, batch_size=1)
    chunked = evaluate(model, tokens, lengths, 16, batch_size=1, carry=True)
    assert chunked["tokens"] == whole["tokens"] == len(tokens) - 1
    assert chunked["loss"] == pytest.approx(whole["loss"], abs=1e-5)
    reset = evaluate(model, tokens, lengths, 16, batch_size=1, carry=False)
    assert abs(reset["loss"] - whole["loss"]) > 1e-4  # resetting the state changes the function
    sub = evaluate(model, tokens, lengths, 16, batch_size=4, max_tokens=64)
    assert sub["tokens"] == 64 and sub == evaluate(model, tokens, lengths, 16, batch_size=4, max_tokens=64)


def test_evaluate_bits_per_byte_uses_token_bytes_for_bpe():
    text = "the theatre of the thespians " * 30
    tok = BPETokenizer.train([text], 300)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    model = _small_model(tok.vocab_size)
    r = evaluate(model, ids, token_byte_lengths(tok), 32, batch_size=1)
    targets = ids[1:]
    nbytes = sum(len(tok.token_bytes(int(i))) for i in targets)
    assert r["bytes"] == nbytes > r["tokens"] == len(targets)
    assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / math.log(2) / nbytes)


# ------------------------------------------------------------------------------------------------- training
def test_cli_train_saves_a_loadable_model_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--out", str(out), "--no-progress", "--set", "train.steps=12"]) == 0
    printed = capsys.readouterr()
    assert "val loss" in printed.out and "bits/byte" in printed.out and "sample at step 12" in printed.err
    model = BDH.from_pretrained(out)
    assert isinstance(load_tokenizer(out), ByteTokenizer) and model.config.n_embd == 32
    summary = json.loads((out / "summary.json").read_text())
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(losses(out)) == list(range(1, 13))
    final = [r for r in recs if r.get("split") == "final"][0]
    assert final["loss"] == summary["val_loss"] and final["bpb"] == pytest.approx(final["loss"] / math.log(2))
    assert any("sample" in r for r in recs)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("step,split,loss,bpb")
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["train"]["steps"] == 12 and run["config"]["data"]["corpus"] == "pydoc"
    again = load_run_config(out / "run.toml")  # the resolved config repeats the run
    assert again.to_dict() == {**run["config"], "name": "run"}
    # checkpoints: keep-last-2 (steps 10, 12) and the best model, each loadable
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best", "step-00000010", "step-00000012"]
    ck = BDH.from_pretrained(out / "checkpoints" / "step-00000012")
    assert all(torch.equal(a, b) for a, b in zip(ck.state_dict().values(), model.state_dict().values()))
    # eval and generate on the result
    assert main(["eval", "--model", str(out), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["corpus"] == "pydoc" and ev["bpb"] == pytest.approx(ev["loss"] / math.log(2))
    assert ev["tokens"] == summary["val_tokens"] and ev["loss"] == pytest.approx(summary["val_loss"])  # the run's own
    assert main(["generate", "--model", str(out), "--prompt", "The", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("The")
    # the run directory is not overwritten by accident
    assert main(["train", "--config", "tiny", "--out", str(out), "--no-progress"]) == 1
    assert "--resume" in capsys.readouterr().err


def test_training_reduces_loss_and_grad_accumulation_matches_a_big_batch(tmp_path):
    a = train(load_run_config("tiny", FAST + ["train.steps=3", "train.batch_size=8"]), tmp_path / "a", **QUIET)
    b = train(load_run_config("tiny", FAST + ["train.steps=3", "train.batch_size=4", "train.grad_accum=2"]),
              tmp_path / "b", **QUIET)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert la.keys() == lb.keys() == {1, 2, 3}
    for s in la:
        assert la[s] == pytest.approx(lb[s], abs=1e-5)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    c = train(load_run_config("tiny", FAST + ["train.steps=40"]), tmp_path / "c", **QUIET)
    lc = losses(tmp_path / "c")
    assert lc[40] < lc[1] - 1.0 and c.summary["val_loss"] < 4.5


def test_no_bptt_and_tbptt_modes(tmp_path):
    base = FAST + ["train.steps=3"]
    train(load_run_config("tiny", base), tmp_path / "a", **QUIET)
    train(load_run_config("tiny", base + ["train.no_bptt=true"]), tmp_path / "b", **QUIET)
    ref, nob = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert nob[1] == ref[1]  # same forward pass ...
    assert nob[2] != ref[2]  # ... different gradients
    tb = train(load_run_config("tiny", base + ["data.batching=tbptt", "train.eval_every=3"]), tmp_path / "c", **QUIET)
    assert len(losses(tmp_path / "c")) == 3 and math.isfinite(tb.summary["val_loss"])


# ------------------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from bdh.training import trainer

    out = tmp_path / "run"
    seen = {}
    forward = trainer.LossModule.forward

    def poisoned(self, x, y, state=None):
        objective, loss, new = forward(self, x, y, state)
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 5:  # during step 5
            seen["before"] = snapshot(out / "checkpoints")
            objective, loss = objective * float("nan"), loss * float("nan")
        return objective, loss, new

    monkeypatch.setattr(trainer.LossModule, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss nan at step 5.*step-00000004"):
        train(load_run_config("tiny", FAST + ["train.checkpoint_every=2", "train.steps=10"]), out, **QUIET)
    assert snapshot(out / "checkpoints") == seen["before"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert not (out / "model.safetensors").exists()
    assert sorted(losses(out)) == [1, 2, 3, 4]


def test_diverging_lr_exits_with_a_message(tmp_path, capsys):
    argv = ["train", "--config", "tiny", "--out", str(tmp_path / "r"), "--no-progress", "--set", "train.lr=1e30",
            "--set", "train.warmup=0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "at step" in err


def test_full_disk_while_checkpointing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    out = tmp_path / "run"
    real = safetensors.torch.save_file
    seen = {}

    def save_file(tensors, path, metadata=None):
        if "00000004" in str(path):
            seen["before"] = snapshot(out / "checkpoints")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    argv = ["train", "--config", "tiny", "--out", str(out), "--no-progress", "--set", "train.steps=6",
            "--set", "train.checkpoint_every=2", "--set", "train.eval_every=0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "step-00000002 is intact" in err
    assert snapshot(out / "checkpoints") == seen["before"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]  # no staging leftovers
    BDH.from_pretrained(out / "checkpoints" / "step-00000002")


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ["empty"]),
        (b"short text\n", ["block_size"]),
        (b"\x00\x01\x02binary" * 100, ["binary"]),
        (b"caf\xe9 " * 200, ["UTF-8"]),
    ],
)
def test_bad_corpus_files_are_clear_errors(tmp_path, capsys, content, words):
    f = tmp_path / "corpus.txt"
    f.write_bytes(content)
    out = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--data", str(f), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bdh train: error:") and len(err.splitlines()) == 1
    for w in words:
        assert w in err
    assert not (out / "checkpoints").exists()


def test_cli_rejects_unknown_key_and_wrong_type(capsys):
    assert main(["train", "--config", "tiny", "--set", "train.nope=1"]) == 1
    assert "unknown config key train.nope" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "--set", "train.steps=many"]) == 1
    assert "train.steps = 'many' has type str; expected int" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-config"]) == 1
    assert "neither a shipped config" in capsys.readouterr().err


def test_train_replaces_a_saved_model_only_with_overwrite_and_never_its_init_from(tmp_path, capsys):
    """Before: `bdh train --out DIR` silently replaced a model that DIR held without a run (issue 13, item 1)."""
    from test_audit import tree_hashes

    saved = tmp_path / "saved"
    torch.manual_seed(0)
    BDH(BDHConfig(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, vocab_size=256,
                  chunk_size=32)).save_pretrained(saved)  # the tiny config's model
    before = tree_hashes(saved)
    argv = ["train", "--config", "tiny", "--out", str(saved), "--no-progress", "--set", "train.steps=2",
            "--set", "train.sample_tokens=0", "--set", "train.eval_every=0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"output {str(saved)!r} already holds a model (config.json): pass --overwrite" in err
    assert main(argv + ["--overwrite", "--set", f"train.init_from={saved}"]) == 1
    assert f"output {str(saved)!r} is also an input" in capsys.readouterr().err
    assert tree_hashes(saved) == before  # nothing written: no partial run directory
    assert main(argv + ["--overwrite", "--threads", "1"]) == 0
    assert tree_hashes(saved)["model.safetensors"] != before["model.safetensors"]
    assert json.loads((saved / "run.json").read_text())["config"]["train"]["threads"] == 1


def test_a_failed_metrics_write_names_the_file(tmp_path):
    """A full disk while logging: an OSError naming metrics.jsonl and the errno (before: "[Errno 28] No space left
    on device", no file), and closing the log afterwards does not raise a second, bare error."""
    from bdh.training.trainer import Metrics

    class Full:
        def write(self, *args):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = close = write

    m = Metrics(tmp_path, None)
    m._j.close()
    m._j = Full()
    with pytest.raises(OSError, match=r"\[Errno 28\] could not write .*metrics\.jsonl \(No space left on device\)"):
        m.write({"step": 1, "split": "train", "loss": 1.0})
    m.close()


@pytest.mark.parametrize("carry", [False, True])
def test_evaluation_builds_no_autograd_graph(carry):
    """Evaluation runs without autograd: a graph kept across windows grew to 12 GB per process on the default
    run's full validation split."""
    from bdh.tokenization import ByteTokenizer

    torch.manual_seed(0)
    model = BDH(BDHConfig(n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0))
    seen = []
    model.add_hook("logits", lambda name, t, pos: seen.append((torch.is_grad_enabled(), t.requires_grad)))
    tokens = np.arange(200, dtype=np.int64) % 256
    res = evaluate(model, tokens, token_byte_lengths(ByteTokenizer()), 16, batch_size=4, carry=carry)
    assert seen and not any(g or r for g, r in seen)
    assert math.isfinite(res["loss"])
