"""The analytic FLOP counts of benchmarks/train_speed.py against torch's FLOP counter, on tiny shapes (< 10 s);
the training-step profile's accounting."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import train_speed as ts  # noqa: E402

from bdh import BDH, BDHConfig  # noqa: E402
from bdh.baselines.gpt import GPT, GPTConfig  # noqa: E402


def counted(model, x, y, form=None, backward=False) -> int:
    kw = {} if form is None else {"form": form}
    with FlopCounterMode(display=False) as fc:
        if backward:
            _, loss = model(x, y, **kw)
            loss.backward()
        else:
            with torch.no_grad():
                model(x, **kw)
    return fc.get_total_flops()


@pytest.mark.parametrize("form", ["parallel", "chunked"])
@pytest.mark.parametrize("damping", [None, "alibi"])
def test_bdh_flop_formula_matches_counter(form, damping):
    cfg = BDHConfig(n_layer=2, n_embd=32, n_head=4, mlp_internal_dim_multiplier=8, vocab_size=64, dropout=0.0,
                    chunk_size=16, damping=damping)
    B, T = 1, 48  # three chunks
    torch.manual_seed(0)
    model = BDH(cfg)
    x = torch.randint(0, 64, (B, T))
    expected = B * T * ts.bdh_forward_flops_per_token(cfg, T, form)
    assert counted(model, x, x, form) == pytest.approx(expected, rel=1e-12)
    # training = forward + backward = 3 x forward (every matmul operand needs its gradient), less the scores'
    # second backward product (keys = queries: one (G + G^T) QR, `bdh.attention.gram`), and in the chunked form
    # the first chunk's read of the (zero, constant) initial state, whose gradient is not needed
    fwd_bwd = counted(model, x, x, form, backward=True)
    executed = 3 * expected - B * T * ts.bdh_backward_saving_per_token(cfg, T, form)
    if form == "parallel":
        assert fwd_bwd == pytest.approx(executed, rel=1e-12)
    else:
        first_read = cfg.n_layer * 2 * B * cfg.chunk_size * cfg.n * cfg.D
        assert fwd_bwd == pytest.approx(executed - first_read, rel=1e-12)


def test_bdh_causal_count_is_about_half_of_the_attention():
    cfg = ts.default_bdh_config()
    T = 2048
    full = ts.bdh_forward_flops_per_token(cfg, T, "parallel")
    causal = ts.bdh_forward_flops_per_token(cfg, T, "parallel", causal=True)
    dense = cfg.n_layer * 6 * cfg.n * cfg.D + 2 * cfg.D * cfg.vocab_size
    assert (causal - dense) / (full - dense) == pytest.approx((T - 1) / (2 * T))


def test_gpt_flop_formula_matches_counter():
    cfg = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=64, dropout=0.0)
    B, T = 2, 24
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, 64, (B, T))
    expected = B * T * ts.gpt_forward_flops_per_token(cfg, T)
    attention = B * T * cfg.n_layer * 4 * T * cfg.n_embd  # scores + weighted values, full T keys
    got = counted(model, x, x)
    # torch's counter may not see the CPU SDPA kernel (ALiBi mask): then it counts everything but attention
    assert got in (pytest.approx(expected), pytest.approx(expected - attention))
    # the attention term itself, against an explicit softmax attention of the same shapes
    q = torch.randn(B, cfg.n_head, T, cfg.head_dim)
    with FlopCounterMode(display=False) as fc:
        torch.softmax(q @ q.mT, -1) @ q
    assert fc.get_total_flops() == attention // cfg.n_layer


def test_gpt_at_equal_params_within_5_percent():
    cfg = ts.default_bdh_config()
    g = ts.gpt_at_params(cfg.num_params(), cfg.vocab_size)
    assert abs(GPT(g).num_params() - BDH(cfg).num_params()) <= 0.05 * BDH(cfg).num_params()


def test_activity_penalty_sweep_trains_measures_and_reuses_runs(tmp_path, capsys):
    import json

    import activity_penalty as ap

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
    """benchmarks/train_profile.py --quick on the default config: the operators' times add up to most of the
    metered step, matmuls carry the counted FLOPs, views move no bytes, and the files are written."""
    import json
    import os
    import subprocess

    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, str(BENCH / "train_profile.py"), "--quick", "--configs", "default",
                        "--steps", "1", "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["results"][0]
    ops = {o["op"]: o for o in res["ops"]}
    assert res["config"] == "default" and res["carry"] and 0.3 < res["ops_s"] / res["metered_step_s"] <= 1.0
    assert abs(sum(o["share"] for o in res["ops"]) - 1.0) < 1e-9
    assert ops["bmm"]["flops"] > 0 and ops["mm"]["flops"] > 0 and ops["add"]["flops"] == 0
    assert ops["view"]["bytes"] == 0 and ops["bmm"]["bytes"] > 0
    assert out.with_suffix(".md").read_text().count("| bmm |") == 1


def test_default_run_compares_two_trees_end_to_end(tmp_path):
    """benchmarks/default_run.py with this tree on both sides (a shortened run): both runs finish, record the
    command's wall clock and the summary, and, the run being deterministic, give the same validation loss."""
    import json
    import os
    import subprocess

    src = str(BENCH.parent / "src")
    out = tmp_path / "d.json"
    sets = ["train.steps=3", "train.processes=1", "train.batch_size=8", "train.eval_every=0",
            "train.final_eval_tokens=2048", "train.sample_tokens=0", "train.checkpoint_every=0", "train.threads=1"]
    r = subprocess.run([sys.executable, str(BENCH / "default_run.py"), "--baseline", src, "--current", src,
                        "--out", str(out)] + [x for kv in sets for x in ("--set", kv)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    rd = res["rounds"][0]
    for side in ("baseline", "current"):
        assert rd[side]["steps"] == 3 and rd[side]["optimizer"] == "muon"
        assert rd[side]["wall_s"] > rd[side]["train_time_s"] > 0
    assert rd["baseline"]["val_loss"] == rd["current"]["val_loss"] and rd["loss_diff"] == 0.0
    assert res["ratios"]["wall_baseline_over_current"] == rd["wall_ratio"] > 0
    r = subprocess.run([sys.executable, str(BENCH / "default_run.py"), "--baseline", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected a src/ directory holding bdh/__init__.py" in r.stderr
