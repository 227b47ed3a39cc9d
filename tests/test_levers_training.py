"""The training levers of generalisation over time (spec 6d): a curriculum over task sizes
(`data.task_curriculum`), random layer passes in training (`train.layer_passes`) and passes that grow with the
length at evaluation (`evaluate_task(n_layer=scaled_passes(...))`)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bdh.checkpoint import CheckpointError
from bdh.interface import build_model
from bdh.tasks import MAX_PASSES, TaskError, evaluate_task, load_task, scaled_passes, task_run_config, with_layers
from bdh.tasks.run import evaluate_validation
from bdh.tasks.validation import validation_set
from bdh.training import load_run_config, train
from bdh.training.batching import IGNORE_INDEX, TaskSampler
from bdh.training.checkpointing import list_checkpoints
from bdh.training.config import MAX_LAYER_PASSES
from bdh.training.step import draw_layer_passes

QUIET = {"progress": False, "echo": lambda s: None}
TINY = {"bdh": {"n_layer": 2, "n_embd": 32, "n_head": 2, "mlp_internal_dim_multiplier": 4},
        "gpt": {"n_layer": 2, "n_embd": 32, "n_head": 2}}
FAST = ["train.eval_every=0", "train.log_every=1", "train.checkpoint_every=0", "train.batch_size=8",
        "train.eval_batch_size=8", "train.warmup=2"]


def tiny_run(task="parity", model_type="bdh", steps=6, extra=(), model=None):
    return task_run_config(task, model_type=model_type, model={**TINY[model_type], **(model or {})}, steps=steps,
                           overrides=[*FAST, *extra])


def train_records(out: Path) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("split") == "train"]


def step_tokens(out: Path) -> list[int]:
    """Padded tokens of the global batch at each step (from the cumulative "tokens" of the train records)."""
    tokens = [r["tokens"] for r in train_records(out)]
    return [b - a for a, b in zip([0] + tokens, tokens)]


# ------------------------------------------------------------------------------------------ the config
def test_the_new_keys_are_validated_by_name():
    with pytest.raises(ValueError, match="data.task_curriculum = 'fast': expected one of uniform, grow, mixed"):
        tiny_run(extra=["data.task_curriculum=fast"])
    with pytest.raises(ValueError, match="data.task_curriculum = 'grow': expected 'uniform' for a text corpus"):
        load_run_config("tiny", ["data.task_curriculum=grow"])
    with pytest.raises(ValueError, match="data.task_curriculum_steps = 5: expected 0 with data.task_curriculum = "
                                         "'mixed'"):
        tiny_run(extra=["data.task_curriculum=mixed", "data.task_curriculum_steps=5"])
    with pytest.raises(ValueError, match="data.task_curriculum_steps = -1: expected an integer >= 0"):
        tiny_run(extra=["data.task_curriculum=grow", "data.task_curriculum_steps=-1"])
    for bad in ("[3]", "[0, 2]", "[3, 2]", f"[1, {MAX_LAYER_PASSES + 1}]", "[1, 2, 3]"):
        with pytest.raises(ValueError, match=r"train.layer_passes = .*: expected \[lo, hi\] with 1 <= lo <= hi"):
            tiny_run(extra=[f"train.layer_passes={bad}"])
    # a model with per-layer weights is refused by name before training starts (nothing written)
    with pytest.raises(ValueError, match="train.layer_passes = \\[2, 3\\]: model_type 'gpt' has per-layer weights"):
        tiny_run(model_type="gpt", extra=["train.layer_passes=[2, 3]"])
    with pytest.raises(ValueError, match="train.layer_passes .* data.batching = 'random'"):
        load_run_config("tiny", ["data.batching=tbptt", "train.layer_passes=[1, 2]"])
    assert MAX_LAYER_PASSES == MAX_PASSES
    # the defaults: unset, and written to run.toml only when set
    run = tiny_run(extra=["train.layer_passes=[]"])
    assert run.train.passes_range is None and run.data.task_curriculum == "uniform"
    assert "layer_passes" not in tiny_run().to_toml()
    assert "layer_passes = [1, 3]" in tiny_run(extra=["train.layer_passes=[1, 3]"]).to_toml()


# ------------------------------------------------------------------------------------------ the sampler
def _batches(sampler, steps, micro=2):
    out = []
    for _ in range(steps):
        out.append([sampler.next(m) for m in range(micro)])
        sampler.end_step()
    return out


def test_uniform_draws_what_the_sampler_drew_before_the_curriculum():
    task = load_task("parity")
    got = _batches(TaskSampler(task, 2, 9, 4, seed=5), 3)
    rng = random.Random(5)  # the sampler before data.task_curriculum: one generator for sizes and examples
    for step in got:
        for x, y, _ in step:
            size = rng.randint(2, 9)
            xr, yr, m = task.batch(rng, size, 4)
            assert torch.equal(x, xr) and torch.equal(y, yr.masked_fill(~m, IGNORE_INDEX))


def test_grow_raises_the_largest_size_linearly_then_holds_it():
    task = load_task("parity")
    s = TaskSampler(task, 2, 10, 4, seed=0, curriculum="grow", grow_steps=5)
    assert [s.largest(k) for k in range(8)] == [2, 4, 6, 8, 10, 10, 10, 10]
    assert [TaskSampler(task, 1, 4, 4, 0, curriculum="grow", grow_steps=4).largest(k) for k in range(4)] == [1, 2, 3, 4]
    assert TaskSampler(task, 2, 10, 4, 0, curriculum="grow", grow_steps=1).largest(0) == 10
    assert TaskSampler(task, 2, 10, 4, 0).largest(0) == 10  # uniform: no growth
    for step in range(12):
        for micro in range(3):
            sizes = s.sizes(step, micro)
            assert len(set(sizes)) == 1 and 2 <= sizes[0] <= s.largest(step)  # one size per micro-step
    assert {s.sizes(k, m)[0] for k in range(4, 40) for m in range(3)} == set(range(2, 11))  # all of [lo, hi]
    # the batches have the drawn sizes (parity: <bos> + size bits)
    for step, micro_batches in enumerate(_batches(s, 6)):
        for micro, (x, _, _) in enumerate(micro_batches):
            assert x.shape == (4, s.sizes(step, micro)[0] + 1)


def test_sizes_are_a_function_of_seed_step_and_micro_step():
    task = load_task("parity")
    for curriculum in ("grow", "mixed"):
        a = TaskSampler(task, 1, 16, 8, seed=3, curriculum=curriculum, grow_steps=10)
        _batches(a, 4)  # history does not change them
        b = TaskSampler(task, 1, 16, 8, seed=3, curriculum=curriculum, grow_steps=10)
        assert all(a.sizes(k, m) == b.sizes(k, m) for k in range(20) for m in range(2))
        other = TaskSampler(task, 1, 16, 8, seed=4, curriculum=curriculum, grow_steps=10)
        assert any(a.sizes(k, m) != other.sizes(k, m) for k in range(20) for m in range(2))


def test_mixed_gives_every_example_its_own_size_padded_to_the_longest():
    task = load_task("parity")
    s = TaskSampler(task, 1, 12, 16, seed=1, curriculum="mixed")
    sizes = s.sizes(0, 0)
    assert len(set(sizes)) > 1 and all(1 <= k <= 12 for k in sizes)
    x, y, _ = s.next(0)
    xr, yr, m = task.mixed_batch(random.Random(1), sizes)  # the examples come from random.Random(data_seed)
    assert torch.equal(x, xr) and torch.equal(y, yr.masked_fill(~m, IGNORE_INDEX))
    assert x.shape == (16, max(sizes) + 1)
    for row, k in enumerate(sizes):  # <bos> + k bits, then padding that is never an answer
        assert (x[row, k + 1:] == 0).all() and (x[row, :k + 1] != 0).all()
        assert m[row, :k + 1].sum() == k and not m[row, k + 1:].any()
    # one example of each size, in order: the same examples `batch` draws one size at a time
    rng_a, rng_b = random.Random(9), random.Random(9)
    xa, _, _ = task.mixed_batch(rng_a, [3, 5])
    x3, x5 = task.batch(rng_b, 3, 1)[0], task.batch(rng_b, 5, 1)[0]
    assert torch.equal(xa[0, :4], x3[0]) and torch.equal(xa[1], x5[0])
    seen = {k for step in range(30) for k in s.sizes(step, 0)}
    assert seen == set(range(1, 13))
    with pytest.raises(TaskError, match="no sizes"):
        task.mixed_batch(random.Random(0), [])
    with pytest.raises(TaskError, match="length=0"):
        task.mixed_batch(random.Random(0), [3, 0])


# ------------------------------------------------------------------------------------------ training runs
def test_a_grow_run_trains_on_the_curriculum_sizes(tmp_path):
    grow = ["data.task_curriculum=grow", "data.task_min_size=2", "data.task_size=10", "data.task_curriculum_steps=4"]
    run = tiny_run(steps=6, extra=grow)
    s = TaskSampler(load_task("parity"), 2, 10, 8, seed=0, curriculum="grow", grow_steps=4)
    assert [s.largest(k) for k in range(6)] == [2, 5, 7, 10, 10, 10]
    train(run, tmp_path / "g", **QUIET)
    assert step_tokens(tmp_path / "g") == [8 * (s.sizes(k, 0)[0] + 1) for k in range(6)]
    # the default run's sizes are those of the uniform sampler
    train(tiny_run(steps=3), tmp_path / "u", **QUIET)
    u = _batches(TaskSampler(load_task("parity"), 1, 16, 8, seed=0), 3, micro=1)
    assert step_tokens(tmp_path / "u") == [b[0][0].numel() for b in u]


@pytest.mark.parametrize("curriculum", ["grow", "mixed"])
def test_a_curriculum_run_resumes_exactly(tmp_path, curriculum):
    over = ["train.checkpoint_every=3", "train.keep_last=5", "train.eval_every=3", f"data.task_curriculum={curriculum}",
            "train.grad_accum=2"]
    a = tmp_path / "a"
    full = train(tiny_run(steps=6, extra=over), a, **QUIET)
    b = tmp_path / "b"  # as if killed after step 3
    shutil.copytree(a / "checkpoints" / "step-00000003", b / "checkpoints" / "step-00000003")
    resumed = train(tiny_run(steps=6, extra=over), b, resume="latest", **QUIET)
    after = lambda out: [(r["loss"], r["tokens"]) for r in train_records(out) if r["step"] > 3]  # noqa: E731
    assert after(b) == after(a) and len(after(a)) == 3
    assert resumed.summary["val_loss"] == full.summary["val_loss"]
    assert all(torch.equal(p, q) for p, q in zip(full.model.parameters(), resumed.model.parameters()))
    with pytest.raises(CheckpointError, match=f"data.task_curriculum = '{curriculum}' in the checkpoint, 'uniform'"):
        train(tiny_run(steps=9, extra=over[:-2]), b, resume="latest", **QUIET)


def test_fixed_layer_passes_train_as_a_model_of_that_depth(tmp_path):
    """[3, 3] on a 2-layer BDH = training a 3-layer BDH (same weights, same losses); evaluation at n_layer = 2."""
    passes = train(tiny_run(steps=5, extra=["train.layer_passes=[3, 3]"]), tmp_path / "p", **QUIET)
    deep = train(tiny_run(steps=5, model={"n_layer": 3}), tmp_path / "d", **QUIET)
    losses = lambda out: [r["loss"] for r in train_records(out)]  # noqa: E731
    assert losses(tmp_path / "p") == losses(tmp_path / "d")
    assert [r["layer_passes"] for r in train_records(tmp_path / "p")] == [3] * 5
    assert "layer_passes" not in train_records(tmp_path / "d")[0]
    assert all(torch.equal(p, q) for p, q in zip(passes.model.parameters(), deep.model.parameters()))
    assert passes.model.config.n_layer == 2  # the model keeps its depth (saved so)
    from bdh import load_model

    assert load_model(tmp_path / "p").config.n_layer == 2
    # evaluated at its own n_layer = 2: the 3-layer model's weights run at 2 passes
    task = load_task("parity")
    val = evaluate_validation(with_layers(deep.model, 2), validation_set(task, 1, 16, 8), batch_size=8)
    assert passes.summary["val_loss"] == pytest.approx(val["loss"], rel=1e-6)
    assert passes.summary["val_loss"] != deep.summary["val_loss"]


def test_drawn_layer_passes_are_deterministic_cover_the_range_and_resume(tmp_path):
    draws = [draw_layer_passes(7, k, 2, 5) for k in range(200)]
    assert draws == [draw_layer_passes(7, k, 2, 5) for k in range(200)] and set(draws) == {2, 3, 4, 5}
    assert draws != [draw_layer_passes(8, k, 2, 5) for k in range(200)]  # another train.seed, other draws
    assert {draw_layer_passes(0, k, 3, 3) for k in range(20)} == {3}
    over = ["train.layer_passes=[1, 3]", "train.checkpoint_every=3", "train.keep_last=5"]
    a = tmp_path / "a"
    full = train(tiny_run(steps=6, extra=over), a, **QUIET)
    want = [draw_layer_passes(0, k, 1, 3) for k in range(6)]  # task_run_config: train.seed = 0
    assert [r["layer_passes"] for r in train_records(a)] == want and len(set(want)) > 1
    b = tmp_path / "b"
    shutil.copytree(a / "checkpoints" / "step-00000003", b / "checkpoints" / "step-00000003")
    resumed = train(tiny_run(steps=6, extra=over), b, resume="latest", **QUIET)
    after = lambda out: [(r["loss"], r["layer_passes"]) for r in train_records(out) if r["step"] > 3]  # noqa: E731
    assert after(b) == after(a)
    assert all(torch.equal(p, q) for p, q in zip(full.model.parameters(), resumed.model.parameters()))


@pytest.mark.slow
def test_sigkill_and_resume_reproduce_a_grow_run_with_layer_passes(tmp_path):
    """As tests/test_resume.py: a run killed with SIGKILL between checkpoints and resumed logs what the
    uninterrupted run logs at every step (loss, tokens, passes) and ends with the same weights."""
    steps = 90
    args = ["--config", "task-tiny", "--no-progress", "--set", 'data.corpus="task:parity"',
            *[a for kv in [f"train.steps={steps}", "train.checkpoint_every=30", "train.eval_every=40",
                           "train.log_every=1", "train.keep_last=5", "model.dropout=0.1", "data.task_curriculum=grow",
                           "data.task_curriculum_steps=60", "train.layer_passes=[1, 4]", "train.batch_size=16"]
              for a in ("--set", kv)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    run = lambda out, *extra: subprocess.Popen(  # noqa: E731
        [sys.executable, "-m", "bdh.cli", "train", "--out", str(out), *args, *extra], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def last_step(out):
        try:
            return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        except (OSError, ValueError, IndexError):
            return 0

    a, b = tmp_path / "a", tmp_path / "b"
    full, victim = run(a), run(b)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill after the second checkpoint, some steps past it
        if victim.poll() is not None:
            pytest.fail("the run finished before it could be killed:\n" + victim.stdout.read())
        if len(list_checkpoints(b / "checkpoints")) >= 2 and last_step(b) % 30 >= 5:
            break
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    resumed_from = int(list_checkpoints(b / "checkpoints")[-1].name.split("-")[1])
    assert 0 < resumed_from < last_step(b) < steps
    resume = run(b, "--resume")
    out_b, _ = resume.communicate(timeout=180)
    assert resume.returncode == 0, out_b
    out_a, _ = full.communicate(timeout=180)
    assert full.returncode == 0, out_a
    logged = lambda out: {r["step"]: (r["loss"], r["tokens"], r["layer_passes"])  # noqa: E731
                          for r in train_records(out)}
    assert logged(a) == logged(b) and sorted(logged(a)) == list(range(1, steps + 1))
    assert len({v[2] for v in logged(a).values()}) == 4  # every pass count of [1, 4] was trained
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------ evaluation
def test_scaled_passes_grow_with_the_size_up_to_the_cap():
    rule = scaled_passes(3, 16)
    assert [rule(k) for k in (1, 16, 17, 32, 40, 64)] == [3, 3, 6, 6, 9, 12]
    assert scaled_passes(3, 16, cap=8)(64) == 8 and scaled_passes(3, 16)(10_000) == MAX_PASSES
    for bad in ({"passes": 0, "train_size": 4}, {"passes": 2, "train_size": 0},
                {"passes": 2, "train_size": 4, "cap": MAX_PASSES + 1}):
        with pytest.raises(TaskError, match="scaled_passes"):
            scaled_passes(**bad)


def test_evaluate_task_runs_each_size_at_its_passes():
    task = load_task("parity")
    torch.manual_seed(0)
    bdh = build_model(tiny_run().model_config(task.vocab_size)).eval()
    rows = evaluate_task(bdh, task, [4, 8, 12], n_examples=8, batch_size=8, n_layer=scaled_passes(2, 4, cap=5))
    assert [r["n_layer"] for r in rows] == [2, 4, 5]
    for r in rows:  # the same as evaluating that size at that fixed number of passes
        (one,) = evaluate_task(bdh, task, [r["size"]], n_examples=8, batch_size=8, n_layer=r["n_layer"])
        assert (one["accuracy"], one["loss"]) == (r["accuracy"], r["loss"])
    assert [r["n_layer"] for r in evaluate_task(bdh, task, [4, 8], n_examples=2, n_layer=lambda s: s // 4)] == [1, 2]
    with pytest.raises(TaskError, match=r"n_layer\(4\)=0: expected an integer from 1"):
        evaluate_task(bdh, task, [8, 4], n_examples=2, n_layer=lambda s: s // 8)
    torch.manual_seed(0)
    gpt = build_model(tiny_run(model_type="gpt").model_config(task.vocab_size)).eval()
    with pytest.raises(TaskError, match="per-layer weights"):
        evaluate_task(gpt, task, [4, 8], n_examples=2, n_layer=scaled_passes(2, 4))
