"""The benchmarks package: imported as modules (`python -m benchmarks.NAME` from the repository root, the way
`python -m pytest` runs), its shared helpers, and the benchmarks that have a fast mode. The FLOP model they print
is the model interface's, tested in tests/test_flops.py."""

from pathlib import Path

import pytest

from benchmarks import common
from benchmarks import train_speed as ts
from bdh import BDH
from bdh.baselines.gpt import GPT
from bdh.interface import token_flops

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def test_train_speed_flops_are_the_model_interfaces():
    bcfg = ts.default_bdh_config()
    gcfg = ts.gpt_at_params(bcfg.num_params(), bcfg.vocab_size)
    for name in ts.CONFIGS:
        f = ts.flops_of(name, bcfg, gcfg, 512)
        want = token_flops(gcfg, 512) if name == "gpt" else token_flops(bcfg, 512, form=name.split("-")[1])
        assert f == want


def test_interleaved_times_rotates_the_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k) or k) for k in "ab"}
    first, times = common.interleaved_times(fns, repeats=3, warmup=2)
    assert first == {"a": "a", "b": "b"} and {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert "".join(calls) == "ab" + "ab" + "ab" + "ba" + "ab"  # two warm-up rounds, then A B, B A, A B
    with pytest.raises(ValueError, match="repeats=0"):
        common.interleaved_times(fns, repeats=0)


def test_run_all_runs_every_benchmark_or_says_why_not():
    from benchmarks import run_all

    progs = {p.stem for p in BENCH.glob("*.py")} - {"__init__", "common", "run_all"}
    a = run_all.parse_args([])
    cmds = run_all.commands(a)
    assert set(cmds) == progs, "benchmarks/run_all.py: every benchmark is run or skipped with a reason"
    for name, (argv, _path, reason) in cmds.items():
        assert (argv is None) == bool(reason), name
        if argv:
            assert argv[1:3] == ["-m", f"benchmarks.{name}"]
    skipped = {n for n, (argv, _, _) in cmds.items() if argv is None}
    assert {"core_regression", "train_ab", "default_run"} <= skipped  # they need --baseline
    with_base = run_all.commands(run_all.parse_args(["--baseline", str(ROOT / "src")]))
    assert all(with_base[n][0] for n in ("core_regression", "train_ab", "default_run"))


def test_gpt_at_equal_params_within_5_percent():
    cfg = ts.default_bdh_config()
    g = ts.gpt_at_params(cfg.num_params(), cfg.vocab_size)
    assert abs(GPT(g).num_params() - BDH(cfg).num_params()) <= 0.05 * BDH(cfg).num_params()


def test_activity_penalty_sweep_trains_measures_and_reuses_runs(tmp_path, capsys):
    import json

    from benchmarks import activity_penalty as ap

    argv = ["--config", "tiny", "--steps", "2", "--penalty", "0", "--penalty", "1", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out.json"), "--set", "train.eval_every=0", "--set", "train.final_eval_tokens=256"]
    assert ap.main(argv) == 0
    res = json.loads((tmp_path / "out.json").read_text())["results"]
    assert [r["activity_penalty"] for r in res] == [0.0, 1.0]
    for r in res:
        summary = json.loads(Path(r["run"], "summary.json").read_text())
        assert r["val_loss"] == summary["val_loss"] and summary["step"] == 2
        assert len(r["activity"]) == 2 and all(0 < a["x_active"] <= a["rows_active"] <= 1 for a in r["activity"])
    mtime = Path(res[0]["run"], "summary.json").stat().st_mtime
    assert ap.main(argv) == 0  # finished runs are reused, not retrained
    assert Path(res[0]["run"], "summary.json").stat().st_mtime == mtime
    assert "| 1 |" in capsys.readouterr().out


def test_train_profile_accounts_for_the_step(tmp_path):
    """python -m benchmarks.train_profile --quick on the default config: the operators' times add up to most of the
    metered step, matmuls carry the counted FLOPs, views move no bytes, and the files are written."""
    import json
    import os
    import subprocess

    out = tmp_path / "p.json"
    r = subprocess.run(common.module_command("train_profile", "--quick", "--configs", "default", "--steps", "1",
                                             "--out", out), capture_output=True, text=True, timeout=300,
                       env=common.child_env({**os.environ, "OMP_NUM_THREADS": "1"}))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["results"][0]
    ops = {o["op"]: o for o in res["ops"]}
    assert res["config"] == "default" and res["carry"] and 0.3 < res["ops_s"] / res["metered_step_s"] <= 1.0
    assert abs(sum(o["share"] for o in res["ops"]) - 1.0) < 1e-9
    assert ops["bmm"]["flops"] > 0 and ops["mm"]["flops"] > 0 and ops["add"]["flops"] == 0
    assert ops["view"]["bytes"] == 0 and ops["bmm"]["bytes"] > 0
    assert out.with_suffix(".md").read_text().count("| bmm |") == 1


def test_default_run_compares_two_trees_end_to_end(tmp_path):
    """python -m benchmarks.default_run with this tree on both sides (a shortened run): both runs finish, record the
    command's wall clock and the summary, and, the run being deterministic, give the same validation loss."""
    import json
    import os
    import subprocess

    src = str(ROOT / "src")
    out = tmp_path / "d.json"
    sets = ["train.steps=3", "train.processes=1", "train.batch_size=8", "train.eval_every=0",
            "train.final_eval_tokens=2048", "train.sample_tokens=0", "train.checkpoint_every=0", "train.threads=1"]
    r = subprocess.run(common.module_command("default_run", "--baseline", src, "--current", src, "--out", out,
                                             *[x for kv in sets for x in ("--set", kv)]),
                       capture_output=True, text=True, timeout=600,
                       env=common.child_env({**os.environ, "OMP_NUM_THREADS": "1"}))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    rd = res["rounds"][0]
    for side in ("baseline", "current"):
        assert rd[side]["steps"] == 3 and rd[side]["optimizer"] == "muon"
        assert rd[side]["wall_s"] > rd[side]["train_time_s"] > 0
    assert rd["baseline"]["val_loss"] == rd["current"]["val_loss"] and rd["loss_diff"] == 0.0
    assert res["ratios"]["wall_baseline_over_current"] == rd["wall_ratio"] > 0
    r = subprocess.run(common.module_command("default_run", "--baseline", tmp_path), capture_output=True, text=True,
                       timeout=60, env=common.child_env())
    assert r.returncode == 2 and "expected a src/ directory holding bdh/__init__.py" in r.stderr


def test_every_benchmark_imports_as_a_module():
    import importlib

    for p in sorted(BENCH.glob("*.py")):
        mod = importlib.import_module(f"benchmarks.{p.stem}")
        assert p.stem in ("__init__", "common") or callable(getattr(mod, "main", None)), p.name
