"""Task runs through the ordinary trainer (data.corpus = "task:REF"), `evaluate_task`, `bdh tasks train | eval`."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bdh.checkpoint import CheckpointError
from bdh.interface import build_model
from bdh.tasks import Example, Task, TaskError, evaluate_task, exact_match, load_task, masked_loss, task_run_config
from bdh.tasks.evaluate import MAX_PASSES, size_rng, with_layers
from bdh.training import train
from bdh.training.batching import IGNORE_INDEX, TaskSampler

HERE = Path(__file__).resolve()
QUIET = {"progress": False, "echo": lambda s: None}
TINY = {"bdh": {"n_layer": 2, "n_embd": 32, "n_head": 2, "mlp_internal_dim_multiplier": 4},
        "gpt": {"n_layer": 2, "n_embd": 32, "n_head": 2}}
FAST = ["train.eval_every=0", "train.log_every=1", "train.checkpoint_every=0", "train.batch_size=8",
        "train.eval_batch_size=8", "train.warmup=2"]


class Echo(Task):
    """A user task (run by `--task tests/test_tasks_training.py:Echo`): repeat the token just read, but only after
    the marker `|` (answers at the second half)."""

    name = "echo"
    vocab = ("<pad>", "a", "b", "|")
    size_name, train_size = "length", 4

    def example(self, rng, size):
        seq = [rng.choice((1, 2)) for _ in range(size)]
        return Example(seq + [3] + seq, [0] * size + [0] + seq, [False] * (size + 1) + [True] * size)


class Broken(Task):
    """A malformed user task: a target outside its vocabulary."""

    name = "broken"
    vocab = ("<pad>", "a")

    def example(self, rng, size):
        return Example([1] * size, [7] * size, [True] * size)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tiny_run(task="parity", model_type="bdh", steps=6, extra=()):
    return task_run_config(task, model_type=model_type, model=TINY[model_type], steps=steps,
                           overrides=[*FAST, *extra])


@pytest.mark.parametrize("model_type", ["bdh", "gpt"])
def test_a_model_trains_on_a_task_through_the_trainer(tmp_path, model_type):
    res = train(tiny_run("copy", model_type, steps=8, extra=["train.lr=1e-2"]), tmp_path, **QUIET)
    recs = records(tmp_path)
    losses = [r["loss"] for r in recs if r.get("split") == "train"]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0]
    final = [r for r in recs if r.get("split") == "final"][0]
    assert 0.0 <= final["accuracy"] <= 1.0 and "bpb" not in final
    assert res.summary["val_bpb"] is None and res.summary["val_accuracy"] == final["accuracy"]
    from bdh import load_model

    model = load_model(tmp_path)  # the task's vocabulary saved as the tokenizer
    assert model.tokenizer.name == "words" and model.tokenizer.vocab == list(load_task("copy").vocab)
    assert (tmp_path / "metrics.csv").read_text().count("\n") >= 9


def test_only_answer_positions_enter_the_loss():
    task = load_task("copy")
    sampler = TaskSampler(task, 3, 5, 4, seed=0)
    x, y, _ = sampler.next(0)
    # the same draw, unmasked: the sampler's generator starts as random.Random(seed)
    rng = random.Random(0)
    size = rng.randint(3, 5)
    xr, yr, m = task.batch(rng, size, 4)
    assert torch.equal(x, xr) and torch.equal(y[m], yr[m]) and (y[~m] == IGNORE_INDEX).all()
    torch.manual_seed(0)
    model = build_model(tiny_run("copy").model_config(task.vocab_size)).eval()
    with torch.no_grad():
        logits, loss = model(x, y)
        assert torch.allclose(loss, masked_loss(logits, yr, m), atol=1e-6)
        other = yr.clone()
        other[~m] = 1  # another target at a non-answer position changes nothing
        assert torch.allclose(masked_loss(logits, other, m), loss, atol=1e-6)
        with pytest.raises(ValueError, match="-5"):
            model(x, torch.full_like(y, -5))  # only -100 means "ignored"


def test_tbptt_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="data.batching"):
        tiny_run(extra=["data.batching=tbptt"])
    with pytest.raises(TaskError, match="pairs=99"):
        tiny_run("mqar", extra=["data.task_size=99"])
    with pytest.raises(TaskError, match="unknown task"):
        tiny_run("nope")


def test_a_task_run_resumes_exactly(tmp_path):
    over = ["train.checkpoint_every=3", "train.keep_last=5", "train.eval_every=3"]
    a = tmp_path / "a"
    full = train(tiny_run("parity", steps=6, extra=over), a, **QUIET)
    b = tmp_path / "b"  # as if killed after step 3
    shutil.copytree(a / "checkpoints" / "step-00000003", b / "checkpoints" / "step-00000003")
    resumed = train(tiny_run("parity", steps=6, extra=over), b, resume="latest", **QUIET)
    assert resumed.summary["val_loss"] == full.summary["val_loss"]
    assert [r["loss"] for r in records(b) if r.get("split") == "train" and r["step"] > 3] == \
           [r["loss"] for r in records(a) if r.get("split") == "train" and r["step"] > 3]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    # another size range is another data distribution: refused, like another corpus, and nothing written
    before = sorted(p.name for p in (b / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="data.task_size = 0 in the checkpoint, 12 now"):
        train(tiny_run("parity", steps=9, extra=over + ["data.task_size=12"]), b, resume="latest", **QUIET)
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == before


def _tiny(model_type, task):
    torch.manual_seed(0)
    return build_model(tiny_run("parity", model_type).model_config(task.vocab_size)).eval()


def test_evaluate_task_scores_by_exact_match_and_measures_the_state():
    task = load_task("parity")
    bdh, gpt = _tiny("bdh", task), _tiny("gpt", task)
    rows = evaluate_task(bdh, task, [4, 8], n_examples=20, batch_size=8)
    x, y, m = task.batch(size_rng(1234, 8), 8, 20)
    with torch.no_grad():
        logits, _ = bdh(x)
    assert rows[1]["accuracy"] == pytest.approx(float(exact_match(logits, y, m).mean()))
    assert rows[1]["loss"] == pytest.approx(float(masked_loss(logits, y, m)), rel=1e-5)
    hits = (logits.argmax(-1) == y)[m]  # answer positions right: partial credit below exact match
    assert rows[1]["token_accuracy"] == pytest.approx(float(hits.float().mean()))
    assert [r["tokens"] for r in rows] == [5, 9]  # <bos> and the bits
    assert rows[0]["state_bytes"] == rows[1]["state_bytes"] > 0  # BDH: constant state
    g = evaluate_task(gpt, task, [4, 8], n_examples=4)
    assert g[1]["state_bytes"] > g[0]["state_bytes"] > 0  # GPT: the KV cache grows with the length
    with pytest.raises(TaskError, match="length=0"):
        evaluate_task(bdh, task, [4, 0])


def test_layer_passes_change_bdh_and_are_refused_for_gpt():
    task = load_task("parity")
    bdh, gpt = _tiny("bdh", task), _tiny("gpt", task)
    x = task.batch(random.Random(1), 8, 2)[0]
    deeper = with_layers(bdh, 4)
    assert deeper.config.n_layer == 4 and all(torch.equal(p, q) for p, q in zip(bdh.parameters(), deeper.parameters()))
    with torch.no_grad():
        assert not torch.allclose(bdh(x)[0], deeper(x)[0])
    assert evaluate_task(bdh, task, [8], n_examples=4, n_layer=4)[0]["n_layer"] == 4
    with pytest.raises(TaskError, match="per-layer weights"):
        evaluate_task(gpt, task, [8], n_examples=4, n_layer=3)
    with pytest.raises(TaskError, match=f"n_layer={MAX_PASSES + 1}: expected an integer from 1 to {MAX_PASSES}"):
        with_layers(bdh, MAX_PASSES + 1)  # before: a model of MAX_PASSES + 1 layer states, run at that depth


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bdh.cli", "tasks", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_a_user_task_trains_and_evaluates_through_the_cli(tmp_path):
    out = tmp_path / "echo"
    model = [f"model.{k}={v}" for k, v in TINY["bdh"].items()]
    sets = [a for kv in [*model, *FAST] for a in ("--set", kv)]
    r = _cli("train", "--task", f"{HERE}:Echo", "--steps", "3", "--out", str(out), "--no-progress", *sets, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and "val accuracy" in r.stdout
    r = _cli("eval", "--model", str(out), "--multiples", "1,2", "--n", "8", "--passes", "2,3", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["n_layer"], x["size"]) for x in rows] == [(2, 4), (2, 8), (3, 4), (3, 8)]
    r = _cli("eval", "--model", str(out), "--sizes", "4", "--n", "4", cwd=tmp_path)
    assert r.returncode == 0 and "accuracy" in r.stdout
    # more passes on longer inputs, and the drift statistics (bdh.analysis.drift) per size
    r = _cli("eval", "--model", str(out), "--multiples", "1,2,3", "--n", "4", "--scale-passes", "--drift", "--json",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    L = TINY["bdh"]["n_layer"]
    assert [(x["n_layer"], x["size"]) for x in rows] == [(L, 4), (2 * L, 8), (3 * L, 12)]
    from bdh import load_model
    from bdh.analysis.drift import length_drift
    from bdh.tasks import load_task

    want = length_drift(load_model(out), load_task(f"{HERE}:Echo"), [4, 8, 12], n_examples=4)
    for x, d in zip(rows, want):
        assert x["rho_norm"] == pytest.approx(d["rho_norm"]) and x["x_active"] == pytest.approx(d["x_active"])
    r = _cli("list", cwd=tmp_path)
    assert r.returncode == 0 and "parity" in r.stdout and "sudoku4" in r.stdout


def test_bad_task_input_is_one_line_and_writes_nothing(tmp_path):
    for task, want in ((f"{HERE}:Broken", "outside the vocabulary"), ("nope", "unknown task 'nope'")):
        out = tmp_path / "x"
        r = _cli("train", "--task", task, "--out", str(out), "--steps", "2", cwd=tmp_path)
        assert r.returncode == 1 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()


def test_two_processes_train_a_task_like_one(tmp_path):
    """DDP for task runs: 2 local gloo processes (the trainer's own launcher) log the losses of a one-process run
    with the same global batch, and end with the same weights."""
    from safetensors.torch import load_file

    from bdh.training.trainer import launch

    extra = ["train.batch_size=4", "train.eval_every=0", "train.checkpoint_every=0", "train.threads=1"]
    launch(tiny_run(steps=4, extra=extra + ["train.processes=2"]), tmp_path / "ddp", progress=False)
    n = torch.get_num_threads()
    try:
        train(tiny_run(steps=4, extra=extra + ["train.processes=1"]), tmp_path / "one", progress=False,
              echo=lambda s: None)
    finally:
        torch.set_num_threads(n)
    loss = lambda out: {r["step"]: r["loss"] for r in records(out) if r.get("split") == "train"}  # noqa: E731
    ld, l1 = loss(tmp_path / "ddp"), loss(tmp_path / "one")
    assert sorted(ld) == sorted(l1) and ld
    assert all(ld[s] == pytest.approx(l1[s], abs=1e-5) for s in l1)
    wd, w1 = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("ddp", "one"))
    for k, v in w1.items():
        torch.testing.assert_close(wd[k], v, atol=1e-5, rtol=1e-4)
