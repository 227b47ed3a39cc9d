"""Exact resume: a run killed with SIGKILL and resumed from its last checkpoint logs the same loss at every
step as a run never interrupted (CPU), and ends with bitwise-identical weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bdh.checkpoint import CheckpointError
from bdh.training import load_run_config, train
from bdh.training.checkpointing import list_checkpoints

QUIET = dict(progress=False, echo=lambda s: None)
STEPS = 80
ARGS = ["--config", "tiny", "--no-progress", "--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=20",
        "--set", "train.eval_every=25", "--set", "model.dropout=0.1", "--set", "train.sample_tokens=0"]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_losses(out: Path) -> dict[int, float]:
    recs = [r for r in records(out) if r.get("split") == "train"]
    steps = [r["step"] for r in recs]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in recs}


def bdh_train(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "bdh.cli", "train", "--out", str(out), *ARGS, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def last_logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, IndexError):
        return 0


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = bdh_train(a)  # the uninterrupted run, concurrently with the killed one
    victim = bdh_train(b)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once two checkpoints exist and training has gone on past the second
        if victim.poll() is not None:
            pytest.fail("the run finished before it could be killed:\n" + victim.stdout.read())
        if len(list_checkpoints(b / "checkpoints")) >= 2 and last_logged_step(b) % 20 >= 5:
            break
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = last_logged_step(b)
    resumed_from = int(list_checkpoints(b / "checkpoints")[-1].name.split("-")[1])
    assert 0 < resumed_from < killed_at < STEPS

    resume = bdh_train(b, "--resume")
    out_b, _ = resume.communicate(timeout=180)
    assert resume.returncode == 0, out_b
    assert f"resumed from {b / 'checkpoints'}" in out_b and f"at step {resumed_from}" in out_b
    out_a, _ = full.communicate(timeout=180)
    assert full.returncode == 0, out_a

    la, lb = train_losses(a), train_losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1))
    assert lb == la  # exactly equal at every step, before and after the kill
    val = lambda out: [(r["step"], r["loss"]) for r in records(out) if r.get("split") in ("val", "final")]  # noqa: E731
    assert val(a) == val(b)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise-equal weights


def test_tbptt_with_accumulation_resumes_exactly_from_a_checkpoint(tmp_path):
    """Carried attention states, stream positions, dropout RNG and accumulation survive a restart."""
    over = ["data.batching=tbptt", "train.grad_accum=2", "train.batch_size=2", "model.dropout=0.1",
            "train.steps=12", "train.checkpoint_every=5", "train.keep_last=5", "train.eval_every=6",
            "train.sample_tokens=0", "data.block_size=16"]
    a = tmp_path / "a"
    full = train(load_run_config("tiny", over), a, **QUIET)
    b = tmp_path / "b"  # as if killed after step 5: only its first checkpoint and log survive
    shutil.copytree(a / "checkpoints" / "step-00000005", b / "checkpoints" / "step-00000005")
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(a) if r["step"] <= 7))
    resumed = train(load_run_config("tiny", over), b, resume="latest", **QUIET)
    assert train_losses(b) == train_losses(a)
    assert resumed.summary["val_loss"] == full.summary["val_loss"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_resume_rejects_another_model_config(tmp_path, capsys):
    from bdh.cli import main

    out = tmp_path / "run"
    train(load_run_config("tiny", ["train.steps=2", "train.eval_every=0", "train.sample_tokens=0"]), out, **QUIET)
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"another model config: n_embd=32 in the checkpoint, 64 now"):
        train(load_run_config("tiny", ["model.n_embd=64", "train.steps=4"]), out, resume="latest", **QUIET)
    argv = ["train", "--config", "tiny", "--out", str(out), "--resume", "--no-progress", "--set", "model.n_layer=3"]
    assert main(argv) == 1
    assert "n_layer=2 in the checkpoint, 3 now" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "--out", str(tmp_path / "empty"), "--resume"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()} == before


# ----------------------------------------------------------------------------------------------- issue 13, items 8, 9
FINISHED = ["train.steps=10", "train.checkpoint_every=5", "train.eval_every=5", "train.sample_tokens=4"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 10-step tiny run (checkpoints at 5 and 10, a sample, the final model). Tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(load_run_config("tiny", FINISHED), out, **QUIET)
    return out


def _cli_resume(out: Path, capsys, *extra: str) -> tuple[int, str]:
    from bdh.cli import main

    argv = ["train", "--config", "tiny", "--out", str(out), "--resume", "--no-progress"]
    for o in FINISHED:
        argv += ["--set", o]
    rc = main(argv + list(extra))
    return rc, capsys.readouterr().err


def _finish_records(out: Path) -> list[tuple[int, str]]:
    return [(r["step"], "final" if r.get("split") == "final" else "sample") for r in records(out)
            if r.get("split") == "final" or "sample" in r]


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run, tmp_path, capsys):
    """Before: a second `final` and `sample` record in metrics.jsonl (and every run file rewritten)."""
    from test_audit import tree_hashes

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = tree_hashes(out)
    rc, err = _cli_resume(out, capsys)
    assert rc == 0 and "is already finished (step 10, train.steps = 10): nothing to do" in err
    assert tree_hashes(out) == before
    assert _finish_records(out) == [(10, "final"), (10, "sample")]


def test_a_run_killed_while_finishing_finishes_once(finished_run, tmp_path, capsys):
    """Killed after logging its final evaluation but before summary.json: the resumed run finishes again, and the
    records the killed finish wrote are replaced, not repeated."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "summary.json").unlink()
    rc, err = _cli_resume(out, capsys)
    assert rc == 0 and "already finished" not in err
    assert _finish_records(out) == [(10, "final"), (10, "sample")]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (finished_run, out))
    assert (a["step"], a["val_loss"], a["val_tokens"]) == (b["step"], b["val_loss"], b["val_tokens"])


def test_resume_falls_back_past_a_truncated_checkpoint(finished_run, tmp_path, capsys):
    """The newest checkpoint truncated (a disk that filled while another program wrote): resume says so, continues
    from the previous one and ends with the same weights as the uninterrupted run. Before: a CheckpointError."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "summary.json").unlink()  # not finished: it must train again from step 5
    weights = out / "checkpoints" / "step-00000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, err = _cli_resume(out, capsys)
    assert rc == 0, err
    line = [s for s in err.splitlines() if "falling back" in s]
    assert len(line) == 1 and "step-00000010" in line[0] and "model.safetensors" in line[0], err
    assert "step-00000005" in line[0] and "resumed from" in err and "at step 5" in err
    wa, wb = load_file(str(finished_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(train_losses(out)) == list(range(1, 11))


def test_resume_with_more_steps_continues_a_finished_run(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    rc, err = _cli_resume(out, capsys, "--set", "train.steps=12")
    assert rc == 0 and "resumed from" in err and "at step 10" in err
    assert sorted(train_losses(out)) == list(range(1, 13))
    assert _finish_records(out) == [(10, "final"), (10, "sample"), (12, "final"), (12, "sample")]


def test_two_processes_agree_on_the_checkpoint_to_fall_back_to(tmp_path):
    """Only process 1's file of the newest checkpoint is damaged: both processes resume from the previous one
    (each process choosing on its own would deadlock in DDP) and end where the uninterrupted run ended."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "bdh.cli", "train", "--config", "tiny", "--no-progress", "--out", str(tmp_path / "d"),
            "--set", "train.processes=2", "--set", "train.threads=1", "--set", "train.steps=10",
            "--set", "train.checkpoint_every=5", "--set", "train.sample_tokens=0", "--set", "train.eval_every=0"]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    final = load_file(str(tmp_path / "d" / "model.safetensors"))
    (tmp_path / "d" / "summary.json").unlink()
    rank1 = tmp_path / "d" / "checkpoints" / "step-00000010" / "rank1.safetensors"
    rank1.write_bytes(rank1.read_bytes()[:500])
    r = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank1.safetensors" in r.stderr and "falling back" in r.stderr and "at step 5" in r.stderr
    again = load_file(str(tmp_path / "d" / "model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)
