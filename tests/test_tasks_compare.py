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
    assert "## parity" in md and "±" in md and "BDH passes" in md


def test_report_self_contained(smoke: Path):
    page = (smoke / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2
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
        assert f"| {task} | bdh |" in r.stdout and f"| {task} | gpt-rope |" in r.stdout
    assert "estimated" in r.stdout


@pytest.mark.parametrize("preset", ["cpu", "gpu", "smoke"])
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
])
def test_bad_input(tmp_path: Path, args, words):
    out = tmp_path / "out"
    r = bdh_cli("--preset", "smoke", "--out", str(out), *args, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
