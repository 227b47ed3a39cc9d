"""`bdh tasks compare`'s statistics and compute reporting on synthetic data (no training): bootstrap intervals,
the FLOP accounting of the plan and of FLOP-matched arms, the "learned" rule, steps to 0.95 from metrics along a
run, the learning-rate choice on the validation set, the MQAR plateau diagnostic and the reports built from them.
A few seconds."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bdh.tasks.compare import plan
from bdh.tasks.compare.planning import FLOP_SUFFIX, parse_lrs, parse_match
from bdh.tasks.compare.reporting import learned, steps_to, summarize, write_reports
from bdh.tasks.compare.running import choose_lrs, read_curve
from bdh.tasks.evaluate import bootstrap_interval


def outcomes(n: int, p: float, seed: int) -> list[int]:
    r = random.Random(seed)
    return [int(r.random() < p) for _ in range(n)]


# ----------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_contains_point_and_shrinks_with_examples():
    widths = []
    for n in (100, 1000, 10000):
        point, lo, hi = bootstrap_interval([outcomes(n, 0.7, 1)])
        assert lo <= point <= hi and 0 <= lo < hi <= 1
        assert point == pytest.approx(sum(outcomes(n, 0.7, 1)) / n)
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # ~1/sqrt(n)
    # binomial standard error at n=1000: the 95% interval is about 2 x 1.96 x sqrt(p(1-p)/n)
    assert widths[1] == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 1000), rel=0.15)


def test_bootstrap_over_seeds():
    # three seeds that disagree: wider than any one seed's interval over examples, around the mean of the seeds
    seeds = [outcomes(1000, p, i) for i, p in enumerate((0.5, 0.7, 0.9))]
    point, lo, hi = bootstrap_interval(seeds)
    assert point == pytest.approx(sum(sum(s) / len(s) for s in seeds) / 3)
    assert lo <= point <= hi
    one = bootstrap_interval(seeds[1:2])
    assert hi - lo > 3 * (one[2] - one[1])
    # seeds that agree: close to the interval of their pooled examples
    same = [outcomes(1000, 0.7, 10 + i) for i in range(3)]
    p2, lo2, hi2 = bootstrap_interval(same)
    assert lo2 <= p2 <= hi2 and hi2 - lo2 < 0.08
    assert bootstrap_interval([[1] * 20, [1] * 30]) == (1.0, 1.0, 1.0)
    assert bootstrap_interval([[0] * 20]) == (0.0, 0.0, 0.0)
    assert bootstrap_interval(seeds) == (point, lo, hi)  # seeded: the same interval each time
    with pytest.raises(ValueError):
        bootstrap_interval([[]])


def test_summarize_reports_interval_of_selected_rows():
    rows = []
    for seed in range(3):
        c = outcomes(1000, 0.8, seed)
        rows.append({"task": "t", "model": "bdh", "seed": seed, "size": 4, "mult": 1.0, "passes": 2,
                     "trained_passes": 2, "params": 10, "accuracy": sum(c) / 1000, "loss": 0.1, "tokens": 5, "state_bytes": 1,
                     "correct": "".join(map(str, c)), "lr": 1e-3, "selected": True})
        rows.append({**rows[-1], "accuracy": 0.0, "correct": "0" * 1000, "lr": 4e-3, "selected": False})
    (s,) = summarize(rows)
    assert s["accuracy"]["n"] == 3 and s["lr"] == 1e-3
    lo, hi = s["ci"]
    assert lo <= s["accuracy"]["mean"] <= hi and 0.75 < lo < hi < 0.85


# ----------------------------------------------------------------------------------------------- FLOPs
def test_plan_flops_and_flop_matched_arms():
    from bdh.interface import config_from_dict, token_flops
    from bdh.tasks import load_task

    preset, runs = plan("cpu", ["parity", "mqar"], 2, match=("params", "flops"))
    for r in runs:
        task = load_task(r.task_ref)
        T = len(task.checked_example(random.Random(0), task.train_size).inputs)
        fpt = token_flops(config_from_dict({**r.model_cfg, "vocab_size": task.vocab_size}), T).training
        assert r.T_train == T and r.flops_per_token == fpt and r.batch == preset["train"]["batch_size"]
        assert r.train_flops == r.steps * r.batch * T * fpt  # steps x tokens per step x FLOPs per token
    for task in ("parity", "mqar"):
        by = {r.model: r for r in runs if r.task_name == task and r.seed == 0}
        assert set(by) == {"bdh", "gpt-alibi", "gpt-alibi-flops", "gpt-rope", "gpt-rope-flops"}
        b = by["bdh"]
        for m in ("gpt-alibi", "gpt-rope"):
            p, f = by[m], by[m + FLOP_SUFFIX]
            assert p.steps == b.steps and p.model_cfg == f.model_cfg  # the same model, more steps
            assert f.steps > 2 * b.steps  # BDH spends ~3x the FLOPs per token here
            assert abs(f.train_flops - b.train_flops) <= f.batch * f.T_train * f.flops_per_token / 2
    _, only = plan("smoke", match=("flops",), lrs=[1e-3, 2e-3])
    assert {r.model for r in only} == {"bdh", "gpt-alibi-flops", "gpt-rope-flops"}
    assert {(r.lr, r.sweep) for r in only} == {(1e-3, True), (2e-3, True)}
    assert len({r.key for r in only}) == len(only)  # each its own run directory


@pytest.mark.parametrize("text, expect", [(None, ("params",)), ("flops", ("flops",)),
                                          ("flops,params", ("params", "flops"))])
def test_parse_match(text, expect):
    assert parse_match(text) == expect


@pytest.mark.parametrize("bad", ["", "steps", "params,params"])
def test_parse_match_bad(bad):
    with pytest.raises(ValueError, match="--match"):
        parse_match(bad)


def test_parse_lrs():
    assert parse_lrs("1e-3,2e-3,4e-3") == [1e-3, 2e-3, 4e-3] and parse_lrs(None) is None
    for bad in ("x", "0", "1e-3,1e-3", "2", "nan"):
        with pytest.raises(ValueError, match="--lrs"):
            parse_lrs(bad)


# ----------------------------------------------------------------------------------------------- curves
def fake_metrics(where: Path, accs: list[float], every: int = 100, tokens_per_step: int = 320,
                 loss: float = 2.08) -> None:
    where.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, a in enumerate(accs, 1):
        step = i * every
        lines.append({"step": step, "split": "train", "loss": loss, "tokens": step * tokens_per_step,
                      "elapsed_s": step / 100})
        lines.append({"step": step, "split": "val", "loss": 1 - a, "accuracy": a, "tokens": 999, "examples": 512,
                      "elapsed_s": step / 100})
    lines.append({"step": len(accs) * every, "split": "final", "loss": 1 - accs[-1], "accuracy": accs[-1]})
    (where / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_read_curve_and_steps_to_095(tmp_path: Path):
    _, runs = plan("smoke")
    r = runs[0]
    fake_metrics(tmp_path, [0.1, 0.5, 0.96, 0.94, 0.99])
    c = read_curve(tmp_path, r)
    assert [v["step"] for v in c["val"]] == [100, 200, 300, 400, 500]
    v = c["val"][2]
    assert v["tokens"] == 300 * 320 and v["flops"] == 300 * 320 * r.flops_per_token  # training tokens, not answers
    assert c["final"] == {"accuracy": 0.99, "loss": pytest.approx(0.01)}
    hit = steps_to(c)
    assert hit == {"step": 300, "flops": 300 * 320 * r.flops_per_token, "tokens": 96000, "elapsed_s": 3.0}
    fake_metrics(tmp_path, [0.1, 0.9, 0.949])
    assert steps_to(read_curve(tmp_path, r)) is None
    assert read_curve(tmp_path / "none", r) == {"val": [], "train": [], "final": {}}


def test_choose_lr_on_validation():
    _, runs = plan("smoke", match=("params",), lrs=[1e-3, 2e-3, 4e-3])
    val = {1e-3: [0.5, 0.6], 2e-3: [0.9, 0.8], 4e-3: [0.2, 0.9]}
    curves = {r.key: {"final": {"accuracy": val[r.lr][r.seed], "loss": 1.0}} for r in runs}
    chosen = choose_lrs(runs, curves)
    assert chosen[("parity", "bdh", "")]["lr"] == 2e-3
    assert chosen[("parity", "bdh", "")]["val"][4e-3] == pytest.approx(0.55)
    # a tie in accuracy goes to the lower validation loss
    curves = {r.key: {"final": {"accuracy": 1.0, "loss": {1e-3: 0.3, 2e-3: 0.2, 4e-3: 0.1}[r.lr]}} for r in runs}
    assert choose_lrs(runs, curves)[("parity", "gpt-rope", "")]["lr"] == 4e-3


# ----------------------------------------------------------------------------------------------- the rule, reports
def summary_rows(task: str, accs: dict[str, float], train_size: int, n: int = 200) -> list[dict]:
    rows = []
    for m, a in accs.items():
        for seed in range(2):
            for mult in (1, 2):
                c = outcomes(n, a / mult, seed)
                rows.append({"task": task, "model": m, "seed": seed, "size": train_size * mult, "mult": float(mult),
                             "passes": 2, "trained_passes": 2, "params": 100, "accuracy": sum(c) / n,
                             "token_accuracy": 0.9, "loss": 0.1, "tokens": 10 * mult, "state_bytes": 64,
                             "correct": "".join(map(str, c)), "lr": 3e-3, "steps": 8, "train_tokens": 1000,
                             "train_time_s": 1.0, "flops_per_token": 10.0, "train_flops": 1e4, "selected": True,
                             "eval_examples": n})
    return rows


def test_learned_rule():
    s = summarize(summary_rows("parity", {"bdh": 0.99, "gpt-rope": 0.3}, 16))
    ok, best, acc = learned(s, "parity")
    assert ok and best == "bdh" and acc > 0.95
    s = summarize(summary_rows("parity", {"bdh": 0.90, "gpt-rope": 0.3}, 16))
    assert learned(s, "parity")[0] is False
    # the rule reads the training size (x1), not a larger one
    rows = [r for r in summary_rows("parity", {"bdh": 0.99}, 16) if r["mult"] == 2.0]
    assert learned(summarize(rows), "parity") == (False, None, None)


def test_reports_from_synthetic_runs(tmp_path: Path):
    """A learned task shows its table with intervals; one not learned says so instead of numbers; steps and FLOPs
    to 0.95 come from the metrics along the runs; MQAR's loss is set against ln(pairs)."""
    preset, runs = plan("smoke", ["parity", "mqar"])
    rows = summary_rows("parity", {"bdh": 0.99, "gpt-alibi": 0.5, "gpt-rope": 0.2}, 16) \
        + summary_rows("mqar", {"bdh": 0.1, "gpt-alibi": 0.0, "gpt-rope": 0.0}, 8)
    curves = {}
    for r in runs:
        where = tmp_path / "m" / r.key
        good = r.task_name == "parity" and r.model == "bdh"
        fake_metrics(where, [0.3, 0.96, 0.99] if good else [0.1, 0.2, 0.3], loss=math.log(8) + 0.01)
        curves[r.key] = read_curve(where, r)
    chosen = {(t, m): v for (t, m, _), v in choose_lrs(runs, curves).items()}
    write_reports(rows, runs, tmp_path / "out", preset_name="smoke", preset=preset, wall_s=1.0, command="test",
                  curves=curves, lr_choice=chosen)
    md = (tmp_path / "out" / "summary.md").read_text()
    parity, mqar = md.split("## mqar")
    assert "Not learned" not in parity and "bdh accuracy" in parity and "[" in parity
    assert "Not learned at this budget" in mqar and "bdh accuracy" not in mqar
    assert f"ln(8 pairs) = {math.log(8):.3f}" in mqar and "(x1.00)" in mqar
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    comp = {c["arm"]: c for c in s["compute"]["parity"]}
    bdh = next(r for r in runs if r.task_name == "parity" and r.model == "bdh")
    assert comp["bdh"]["reached"] == 2 and comp["bdh"]["steps_to"] == 200
    assert comp["bdh"]["flops_to"] == 200 * 320 * bdh.flops_per_token
    assert comp["gpt-rope"]["reached"] == 0 and comp["gpt-rope"]["steps_to"] is None
    assert s["plateau"]["mqar"]["arms"]["bdh"]["ratio"] == pytest.approx(1 + 0.01 / math.log(8))
    assert "200 (2/2 seeds)" in parity and "not reached" in parity
    for t in ("parity", "mqar"):
        assert (tmp_path / "out" / f"curves_{t}.png").stat().st_size > 0


def test_evaluate_task_per_example_outcomes():
    """per_example=True: each example's exact match, in order; their mean is the accuracy (what is resampled)."""
    import torch

    from bdh.interface import build_model, config_from_dict
    from bdh.tasks import evaluate_task, exact_match, load_task
    from bdh.tasks.evaluate import size_rng

    task = load_task("parity")
    torch.manual_seed(0)
    model = build_model(config_from_dict({"model_type": "bdh", "n_layer": 2, "n_embd": 16, "n_head": 2,
                                          "mlp_internal_dim_multiplier": 4, "vocab_size": task.vocab_size})).eval()
    rows = evaluate_task(model, task, [2, 4], n_examples=24, batch_size=7, per_example=True)
    x, y, m = task.batch(size_rng(1234, 4), 4, 24)
    with torch.no_grad():
        logits, _ = model(x)
    assert rows[1]["correct"] == [int(v) for v in exact_match(logits, y, m).tolist()]
    for r in rows:
        assert len(r["correct"]) == 24 and sum(r["correct"]) / 24 == r["accuracy"]
    assert "correct" not in evaluate_task(model, task, [2], n_examples=4)[0]
