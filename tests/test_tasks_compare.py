"""`bdh tasks compare` through the real CLI: the smoke preset end to end (every output file, the CSV rows, a
self-contained HTML report, parameters matched within 5%), reuse of finished runs, `--list` writing nothing,
and bad input (one line, exit 1, nothing written). About 20 s on one thread."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bdh.tasks.compare import PRESETS, model_configs, passes_list, plan, scaled_sizes


def bdh_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bdh.cli", "tasks", "compare", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tc") / "smoke"
    r = bdh_cli("--preset", "smoke", "--out", str(out), "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_smoke_outputs(smoke: Path):
    for name in ("results.csv", "summary.json", "summary.md", "report.html", "acc_size_parity.png",
                 "passes_parity.png"):
        assert (smoke / name).is_file() and (smoke / name).stat().st_size > 0, name
    p = PRESETS["smoke"]
    seeds = p["seeds"]
    rows = list(csv.DictReader(open(smoke / "results.csv", encoding="utf-8")))
    # per seed: BDH at 1x, 2x, 4x (trained passes) + 2 other depths at 1x; each GPT at 1x, 2x
    from bdh.tasks import load_task

    task = load_task("parity")
    sizes, far = scaled_sizes(task, p["mults"]), scaled_sizes(task, p["bdh_mults"])
    L = p["bdh"]["n_layer"]
    other = passes_list(p["passes"], L)
    expect = set()
    for s in range(seeds):
        expect |= {("bdh", s, z, L) for z in sizes + far}
        expect |= {("bdh", s, z, k) for k in other for z in scaled_sizes(task, p["pass_mults"])}
        expect |= {(m, s, z, L) for m in ("gpt-alibi", "gpt-rope") for z in sizes}
    got = {(r["model"], int(r["seed"]), int(r["size"]), int(r["passes"])) for r in rows}
    assert got == expect and len(rows) == len(expect)
    for r in rows:
        assert r["task"] == "parity" and 0.0 <= float(r["accuracy"]) <= 1.0 and float(r["loss"]) >= 0
    # equal training tokens for every model of a seed; BDH's state is constant, the GPT's KV cache grows
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r["seed"], set()).add(r["train_tokens"])
    assert all(len(v) == 1 for v in by_seed.values())
    bdh_state = {int(r["state_bytes"]) for r in rows if r["model"] == "bdh" and int(r["passes"]) == L}
    assert len(bdh_state) == 1
    gpt = sorted((int(r["size"]), int(r["state_bytes"])) for r in rows if r["model"] == "gpt-rope" and r["seed"] == "0")
    assert gpt[-1][1] > 1.9 * gpt[0][1]  # twice the tokens: about twice the KV cache (+ positions)
    # parameters matched within 5% (the trained models' own counts)
    params = {r["model"]: int(r["params"]) for r in rows}
    assert set(params) == {"bdh", "gpt-alibi", "gpt-rope"}
    for m in ("gpt-alibi", "gpt-rope"):
        assert abs(params[m] - params["bdh"]) / params["bdh"] <= 0.05
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["preset"] == "smoke" and summary["seeds"] == seeds and summary["params"]["parity"] == params
    assert all(g["accuracy"]["n"] == seeds for g in summary["summary"])
    md = (smoke / "summary.md").read_text()
    # 8 steps learn nothing: the table gives way to "not learned at this budget"; compute is always reported
    assert "## parity" in md and "Not learned at this budget" in md and "FLOPs/token" in md
    assert summary["learned"]["parity"]["learned"] is False
    for g in summary["summary"]:  # a 95% bootstrap interval around every mean
        lo, hi = g["ci"]
        assert lo <= g["accuracy"]["mean"] <= hi
    # training FLOPs recorded per run: tokens seen x the model type's training FLOPs per token at the training T
    from bdh.interface import config_from_dict, token_flops

    _, runs = plan("smoke")
    T = len(task.checked_example(__import__("random").Random(0), task.train_size).inputs)
    for r in rows:
        cfg = next(x.model_cfg for x in runs if x.model == r["model"])
        fpt = token_flops(config_from_dict({**cfg, "vocab_size": task.vocab_size}), T).training
        assert float(r["flops_per_token"]) == fpt
        assert float(r["train_flops"]) == int(r["train_tokens"]) * fpt
    assert {c["arm"] for c in summary["compute"]["parity"]} == {"bdh", "gpt-alibi", "gpt-rope"}
    curve = summary["curves"]["parity/bdh/seed0"]  # the evaluations along the run (eval_every 4 of 8 steps)
    bdh_fpt = next(x.flops_per_token for x in runs if x.model == "bdh")
    assert [v["step"] for v in curve["val"]] == [4, 8]
    assert curve["val"][-1]["flops"] == curve["val"][-1]["tokens"] * bdh_fpt


def test_report_self_contained(smoke: Path):
    page = (smoke / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3  # accuracy vs size, passes, curves vs FLOPs/wall-clock
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page, re.I)  # no relative asset either
    assert "<table>" in page


def test_finished_runs_reused(smoke: Path):
    model = smoke / "runs" / "parity" / "bdh" / "seed0" / "model.safetensors"
    before = model.stat().st_mtime_ns
    csv_before = (smoke / "results.csv").read_text()
    r = bdh_cli("--preset", "smoke", "--out", str(smoke), "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert model.stat().st_mtime_ns == before
    assert (smoke / "results.csv").read_text() == csv_before  # the same models, the same evaluation


def test_jobs_give_the_same_results(smoke: Path, tmp_path: Path):
    """Two runs at once, each in its own process: the same trained models and the same rows as one at a time."""
    out = tmp_path / "jobs2"
    r = bdh_cli("--preset", "smoke", "--out", str(out), "--threads", "1", "--jobs", "2", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    drop = ("train_time_s",)
    rows = [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(open(out / "results.csv"))]
    ref = [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(open(smoke / "results.csv"))]
    assert rows == ref and all(row["token_accuracy"] != "" for row in rows)
    for m in ("bdh", "gpt-rope"):
        a = (smoke / "runs" / "parity" / m / "seed1" / "model.safetensors").read_bytes()
        assert (out / "runs" / "parity" / m / "seed1" / "model.safetensors").read_bytes() == a
    bad = bdh_cli("--preset", "smoke", "--out", str(tmp_path / "never"), "--jobs", "0")
    assert bad.returncode == 1 and "--jobs 0" in bad.stderr and not (tmp_path / "never").exists()


def test_changed_settings_refused_without_overwrite(smoke: Path, tmp_path: Path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke, out)
    toml = out / "runs" / "parity" / "gpt-rope" / "seed1" / "compare-run.toml"
    toml.write_text(toml.read_text() + "# edited\n")
    snap = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    r = bdh_cli("--preset", "smoke", "--out", str(out), "--threads", "1", "--no-progress")
    assert r.returncode == 1 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == snap


def test_list_writes_nothing(tmp_path: Path):
    out = tmp_path / "never"
    r = bdh_cli("--preset", "cpu", "--list", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    for task in PRESETS["cpu"]["tasks"]:
        assert f"| {task} | bdh |" in r.stdout and f"| {task} | gpt-rope-flops |" in r.stdout  # the preset's match
    assert "estimated" in r.stdout and "FLOPs/token" in r.stdout and "train FLOPs" in r.stdout
    _, runs = plan("cpu")
    for run in runs[:: len(PRESETS["cpu"]["tasks"])]:  # each arm's FLOPs per token and training FLOPs printed
        assert f"| {run.flops_per_token:.4g} | {run.train_flops:.4g} |" in r.stdout


def test_flop_matched_sweep_end_to_end(tmp_path: Path):
    """--match flops --lrs --lr-seeds 1: the FLOP-matched GPTs train more steps, every arm at each learning rate on
    seed 0; the chosen learning rate is the one with the best validation accuracy there, seed 1 trains only at it,
    and only its runs are evaluated on the test examples (the other value's run is trained, never tested)."""
    out = tmp_path / "fm"
    r = bdh_cli("--preset", "smoke", "--out", str(out), "--threads", "1", "--no-progress", "--seeds", "2",
                "--match", "flops", "--lrs", "1e-3,3e-3", "--lr-seeds", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert {x["model"] for x in rows} == {"bdh", "gpt-alibi-flops", "gpt-rope-flops"}
    steps = {x["model"]: int(x["steps"]) for x in rows}
    assert steps["gpt-rope-flops"] > steps["bdh"] == PRESETS["smoke"]["train"]["steps"]
    s = json.loads((out / "summary.json").read_text())
    for arm in ("bdh", "gpt-rope-flops"):
        ch = s["lr_choice"][f"parity/{arm}"]
        best = max(ch["val"].values())
        assert ch["val"][str(ch["lr"])] == best
        assert {(float(x["lr"]), x["selected"]) for x in rows if x["model"] == arm} == {(ch["lr"], "True")}
        assert {x["seed"] for x in rows if x["model"] == arm} == {"0", "1"}  # the tuning seed's chosen run too
        assert set(ch["val"]) == {"0.001", "0.003"}  # chosen on seed 0's two runs
        assert {float(x["lr"]) for x in rows if x["model"] == arm and x["seed"] == "1"} == {ch["lr"]}
        other = ({1e-3, 3e-3} - {ch["lr"]}).pop()
        assert not (out / "runs" / "parity" / arm / f"lr{other:g}" / "seed1").exists()
        tried = out / "runs" / "parity" / arm / f"lr{other:g}" / "seed0"
        assert (tried / "model.safetensors").is_file() and not (tried / "compare-eval.json").exists()
    assert (out / "runs" / "parity" / "gpt-rope-flops" / "lr0.001" / "seed0" / "model.safetensors").is_file()
    assert "gpt-rope-flops" in (out / "summary.md").read_text()


@pytest.mark.parametrize("preset", ["cpu", "quick", "gpu", "smoke"])
def test_presets_matched_within_5_percent(preset):
    _, runs = plan(preset)
    from bdh.tasks import load_task

    for task in dict.fromkeys(r.task_ref for r in runs):
        cfgs = model_configs(PRESETS[preset], load_task(task).vocab_size)
        b = cfgs["bdh"][1]
        for m in ("gpt-alibi", "gpt-rope"):
            assert abs(cfgs[m][1] - b) / b <= 0.05, (preset, task, m)
            assert cfgs[m][0]["positions"] == m.split("-")[1]


@pytest.mark.parametrize("args, words", [
    (["--tasks", "nosuch"], ["nosuch"]),
    (["--tasks", "parity,"], ["--tasks"]),
    (["--preset", "huge"], ["--preset", "huge"]),
    (["--seeds", "0"], ["--seeds", "0"]),
    (["--seeds", "two"], ["--seeds", "two"]),
    (["--threads", "0"], ["--threads"]),
    (["--match", "steps"], ["--match", "steps"]),
    (["--lrs", "1e-3,fast"], ["--lrs"]),
    (["--lrs", "0"], ["--lrs"]),
    (["--lr-seeds", "0"], ["--lr-seeds", "0"]),
])
def test_bad_input(tmp_path: Path, args, words):
    out = tmp_path / "out"
    r = bdh_cli("--preset", "smoke", "--out", str(out), *args, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
