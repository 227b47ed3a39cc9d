"""`bdh tasks sweep` through the real CLI: a tiny sweep end to end (2 variants x parity x 2 seeds + a FLOP-matched
GPT baseline, the smoke preset): the table's values are the runs' own evaluation rows, the report is
self-contained; a rerun reuses the finished runs, changed settings are refused without --overwrite; bad --grid,
--set, --variant input is one line, exit 1, nothing written; --list names the variants and writes nothing. A second
sweep (parity@8): per-variant learning rates (--lrs) chosen on validation, and --scale-passes rows equal to
`evaluate_task` at those passes."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bdh.cli import main

GRID = 'model.damping=null,"alibi"'
ARGS = ["--preset", "smoke", "--tasks", "parity", "--grid", GRID, "--seeds", "2", "--baselines", "gpt-rope",
        "--threads", "1", "--no-progress"]
RUN_DIRS = {"base": "bdh/base", "damping=alibi": "bdh/damping=alibi", "gpt-rope-flops": "gpt-rope-flops"}


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bdh.cli", "tasks", "sweep", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def swept_into(tmp_path_factory, name: str, args: list[str]) -> Path:
    out = tmp_path_factory.mktemp("sw") / name
    r = sweep_cli(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    return swept_into(tmp_path_factory, "sweep", ARGS)


def test_table_values_are_the_runs_evaluations(swept: Path):
    for name in ("results.csv", "summary.json", "summary.md", "report.html", "acc_mult_parity.png"):
        assert (swept / name).is_file() and (swept / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(swept / "results.csv", encoding="utf-8")))
    from bdh.tasks import load_task

    train = load_task("parity").train_size
    sizes = [train * m for m in (1, 2, 4)]  # the smoke preset's multiples 1, 2 and BDH's further 4
    expect = {(v, s, z) for v in RUN_DIRS for s in (0, 1) for z in sizes}
    assert {(r["variant"], int(r["seed"]), int(r["size"])) for r in rows} == expect and len(rows) == len(expect)
    # every value in the table is the run's own evaluation row (OUT/runs/TASK/.../seedS/compare-eval.json)
    for r in rows:
        ev = json.loads((swept / "runs" / "parity" / RUN_DIRS[r["variant"]] / f"seed{r['seed']}"
                         / "compare-eval.json").read_text())
        (e,) = [e for e in ev["rows"] if e["size"] == int(r["size"])]
        for k in ("accuracy", "token_accuracy", "loss"):
            assert float(r[k]) == e[k], (r["variant"], k)
        assert r["baseline"] == str(r["variant"] == "gpt-rope-flops")
    # the variant's settings reached its run's resolved config, and nothing else differs from the base
    alibi = (swept / "runs/parity/bdh/damping=alibi/seed0/compare-run.toml").read_text()
    base = (swept / "runs/parity/bdh/base/seed0/compare-run.toml").read_text()
    assert 'damping = "alibi"' in alibi and "damping" not in base
    diff = set(alibi.splitlines()[1:]) ^ set(base.splitlines()[1:])
    assert diff == {'damping = "alibi"'}
    # the baseline: compare's FLOP-matched GPT (more steps, about BDH's training FLOPs)
    steps = {r["variant"]: int(r["steps"]) for r in rows}
    assert steps["gpt-rope-flops"] > steps["base"] == steps["damping=alibi"] == 8
    # summary.json / summary.md: the mean over seeds of those rows, inside its 95% bootstrap interval
    s = json.loads((swept / "summary.json").read_text())
    assert [v["name"] for v in s["variants"]] == ["base", "damping=alibi"] and s["baselines"] == ["gpt-rope-flops"]
    md = (swept / "summary.md").read_text()
    assert "## Best variant per task at 4x" in md and "## parity" in md
    assert len(s["summary"]) == 9
    for g in s["summary"]:
        accs = [float(r["accuracy"]) for r in rows if r["variant"] == g["variant"] and int(r["size"]) == g["size"]]
        assert len(accs) == 2 and g["accuracy"]["mean"] == pytest.approx(statistics.fmean(accs))
        lo, hi = g["ci"]
        assert lo <= g["accuracy"]["mean"] <= hi
        cell = f"{g['accuracy']['mean']:.3f} [{lo:.3f}, {hi:.3f}]"
        line = next(x for x in md.splitlines() if x.startswith(f"| {g['variant']} |"))
        cells = [c.strip() for c in line.strip().strip("|").split("|")]  # variant, settings, params, 1x, 2x, 4x
        assert cells[3 + [1, 2, 4].index(round(g["mult"]))] == cell
    best = s["best"]["parity"]
    assert best["mult"] == 4 and best["best"]["variant"] in ("base", "damping=alibi")
    assert best["best"]["accuracy"] == max(g["accuracy"]["mean"] for g in s["summary"]
                                           if g["mult"] == 4 and not g["baseline"])


def test_report_inlines_the_plot(swept: Path):
    page = (swept / "report.html").read_text(encoding="utf-8")
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(i) for i in imgs] == [(swept / f"{n}_parity.png").read_bytes()
                                                   for n in ("acc_mult", "curves")]
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page, re.I)  # no external or relative asset
    assert "<table>" in page and "damping=alibi" in page and "gpt-rope-flops" in page


def test_rerun_reuses_finished_runs_and_refuses_changed_settings(swept: Path):
    files = sorted(p for p in (swept / "runs").rglob("*") if p.name in ("model.safetensors", "compare-train.json")
                   and p.parent.name.startswith("seed"))
    assert len(files) == 12  # 6 runs
    before = {p: p.stat().st_mtime_ns for p in files}
    csv_before = (swept / "results.csv").read_text()
    r = sweep_cli(*ARGS, "--out", str(swept))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in files} == before  # nothing retrained
    assert (swept / "results.csv").read_text() == csv_before  # the same models, the same evaluation
    # other settings under the same variant names: refused before anything is written
    snap = {p: p.stat().st_mtime_ns for p in swept.rglob("*") if p.is_file()}
    r = sweep_cli(*ARGS, "--out", str(swept), "--set", "train.steps=4")
    assert r.returncode == 1 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in swept.rglob("*") if p.is_file()} == snap


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["tasks", "sweep", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("args, words", [
    (["--grid", "model.nosuch=1,2"], ["--grid", "model.nosuch"]),
    (["--grid", "model.damping=sideways"], ["--grid", "sideways"]),
    (["--grid", "model.rope_theta=0.5,2"], ["--grid", "rope_theta", "0.5"]),
    (["--grid", "damping=alibi"], ["--grid", "damping=alibi", "section.key"]),
    (["--grid", "model.damping="], ["--grid", "model.damping"]),
    (["--grid", "model.rope_theta=1000,1e3"], ["--grid", "twice"]),
    (["--set", "train.lr=fast"], ["--set", "train.lr", "fast"]),
    (["--set", "model.n_embd=0"], ["--set", "n_embd"]),
    (["--variant", "best"], ["--variant", "best"]),
    (["--variant", "best:model.foo=1"], ["--variant", "model.foo"]),
    (["--baselines", "gpt-lstm"], ["--baselines", "gpt-lstm"]),
    (["--mults", "0"], ["--mults", "0"]),
    (["--variant", "x:train.lr=1e-3", "--lrs", "1e-3,3e-3"], ["--variant x", "train.lr", "--lrs"]),
    (["--set", "train.lr=1e-3", "--lrs", "1e-3,3e-3"], ["--set", "train.lr", "--lrs"]),
    (["--lrs", "1e-3,2"], ["--lrs", "1e-3,2"]),
    (["--lr-seeds", "0", "--lrs", "1e-3,3e-3"], ["--lr-seeds", "0"]),
    (["--scale-passes", "1"], ["--scale-passes 1", "n_layer = 2"]),
    (["--scale-passes", "many"], ["--scale-passes", "many"]),
    (["--tasks", "parity@0"], ["parity@0", "training size"]),
])
def test_bad_input(tmp_path: Path, capsys, args, words):
    out = tmp_path / "out"
    rc, _, err = run_main(capsys, "--preset", "smoke", "--out", str(out), *args)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_list_names_variants_and_writes_nothing(tmp_path: Path, capsys):
    out = tmp_path / "never"
    rc, stdout, err = run_main(capsys, "--preset", "smoke", "--out", str(out), "--grid", GRID,
                               "--grid", "model.rope_theta=65536,1000", "--variant", "tuned:model.rope_theta=500",
                               "--baselines", "gpt-alibi,gpt-rope", "--list")
    assert rc == 0, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # named by the settings that differ from the base (damping null and rope_theta 65536 are the defaults)
    for name in ("base", "rope_theta=1000", "damping=alibi", "damping=alibi,rope_theta=1000", "tuned",
                 "gpt-alibi-flops (baseline)", "gpt-rope-flops (baseline)"):
        assert f"| parity | {name} |" in stdout, name
    assert "5 variants, 14 runs" in stdout  # 5 variants x 2 seeds + 2 baselines x 2 seeds


# ----------------------------------------------------------------------------------------------- --lrs, --scale-passes
TUNED = ["--preset", "smoke", "--tasks", "parity@8", "--variant", "base:", "--seeds", "2", "--lrs", "1e-3,1e-2",
         "--lr-seeds", "1", "--scale-passes", "8", "--baselines", "gpt-rope", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    return swept_into(tmp_path_factory, "tuned", TUNED)


def test_lr_sweep_per_variant_chosen_on_validation(tuned: Path):
    """Each arm's learning rate is swept on seed 0 and chosen by its final validation accuracy (then loss); seed 1
    trains only at the chosen value; the other value is never evaluated on the test examples."""
    from bdh.tasks.compare.planning import Run
    from bdh.tasks.compare.running import read_curve

    s = json.loads((tuned / "summary.json").read_text())
    rows = list(csv.DictReader(open(tuned / "results.csv", encoding="utf-8")))
    assert set(s["lr_choice"]) == {"parity@8/bdh/base", "parity@8/gpt-rope-flops"}
    for key, arm_dir in (("parity@8/bdh/base", "bdh/base"), ("parity@8/gpt-rope-flops", "gpt-rope-flops")):
        finals = {}
        for lr in (1e-3, 1e-2):
            where = tuned / "runs" / "parity@8" / arm_dir / f"lr{lr:g}" / "seed0"
            c = read_curve(where, Run("parity@8", "parity@8", "bdh", 0, {}, 0, 8, [], [], 0.0))
            finals[lr] = (c["final"]["accuracy"], c["final"]["loss"])
        want = min(finals, key=lambda lr: (-finals[lr][0], finals[lr][1], lr))
        choice = s["lr_choice"][key]
        assert choice["lr"] == want
        assert {float(k): v for k, v in choice["val"].items()} == pytest.approx({lr: f[0] for lr, f in finals.items()})
        other = 1e-2 if want == 1e-3 else 1e-3
        base = tuned / "runs" / "parity@8" / arm_dir
        assert (base / f"lr{want:g}" / "seed1" / "model.safetensors").is_file()
        assert not (base / f"lr{other:g}" / "seed1").exists()  # seed 1: only the chosen value
        assert not (base / f"lr{other:g}" / "seed0" / "compare-eval.json").exists()  # trained, never tested
        variant = "base" if arm_dir.startswith("bdh") else "gpt-rope-flops"
        assert {float(r["lr"]) for r in rows if r["variant"] == variant} == {want}
        assert {int(r["seed"]) for r in rows if r["variant"] == variant} == {0, 1}
    md = (tuned / "summary.md").read_text()
    assert "## Learning rates" in md and "| parity@8 | base |" in md


def test_scaled_passes_rows_are_evaluations_at_those_passes(tuned: Path):
    """base+scaled-passes: the base runs evaluated at 2 x ceil(size / 8) layer passes (at most 8): at 1x the base's
    own row; beyond, the run's evaluation at those passes, equal to `evaluate_task` with `scaled_passes`."""
    import torch

    from bdh.checkpoint import load_model
    from bdh.tasks import evaluate_task, load_task
    from bdh.tasks.evaluate import scaled_passes

    rows = list(csv.DictReader(open(tuned / "results.csv", encoding="utf-8")))
    got = {(int(r["seed"]), int(r["size"])): r for r in rows if r["variant"] == "base+scaled-passes"}
    plain = {(int(r["seed"]), int(r["size"])): r for r in rows if r["variant"] == "base"}
    assert set(got) == set(plain) == {(s, z) for s in (0, 1) for z in (8, 16, 32)}
    assert {z: int(got[(0, z)]["passes"]) for z in (8, 16, 32)} == {8: 2, 16: 4, 32: 8}
    assert {int(r["passes"]) for r in plain.values()} == {2}
    assert got[(0, 8)]["accuracy"] == plain[(0, 8)]["accuracy"]
    lr = json.loads((tuned / "summary.json").read_text())["lr_choice"]["parity@8/bdh/base"]["lr"]
    model = load_model(tuned / "runs" / "parity@8" / "bdh" / "base" / f"lr{lr:g}" / "seed1")
    with torch.no_grad():
        ev = evaluate_task(model, load_task("parity@8"), [8, 16, 32], n_examples=16, seed=1234, batch_size=16,
                           n_layer=scaled_passes(2, 8, 8))
    for e in ev:
        r = got[(1, e["size"])]
        assert int(r["passes"]) == e["n_layer"] and float(r["accuracy"]) == e["accuracy"]
        assert float(r["loss"]) == pytest.approx(e["loss"], rel=1e-6)
    md = (tuned / "summary.md").read_text()
    assert "| base+scaled-passes |" in md and "at most 8" in md
