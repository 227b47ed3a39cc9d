"""The GPT-2 baseline: KV-cache decode equals full recompute, checkpoints, trainer, ladders, `bdh compare`."""

import json
import math

import pytest
import torch

from bdh import BDH, build_model, load_model
from bdh.baselines import GPT, GPTConfig, GPTState
from bdh.config import alibi_slopes
from bdh.baselines.ladders import CPU_LADDER, GPU_LADDER, MAX_PARAM_GAP, param_gap
from bdh.checkpoint import CheckpointError

from conftest import english_bytes


def tiny_gpt(**kw) -> GPT:
    base = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=256, block_size=64)
    base.update(kw)
    return GPT(GPTConfig(**base))


def trained(model: GPT, steps: int = 20) -> GPT:
    g = torch.Generator().manual_seed(0)
    data = english_bytes()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        i = torch.randint(0, len(data) - 33, (8,), generator=g).tolist()
        x = torch.stack([data[j : j + 32] for j in i])
        y = torch.stack([data[j + 1 : j + 33] for j in i])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", params=["alibi", "rope", "learned"])
def gpt(request) -> GPT:
    torch.manual_seed(0)
    return trained(tiny_gpt(positions=request.param))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_kv_cache_decode_equals_full_recompute(gpt, dtype, tol):
    m = gpt.to(dtype)
    try:
        idx = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            full, _ = m(idx)  # (B, T, V): the recompute decoder reads these rows
            lg, st = m.prefill(idx[:, :9])
            outs = [lg]
            for t in range(9, 40):
                lt, st = m.step(idx[:, t], st, inplace=t % 3 != 0)  # in place and copying appends mixed
                outs.append(lt[:, None])
        assert (torch.cat(outs, 1) - full).abs().max().item() < tol
        assert st.length == 40 and st.pos.tolist() == [40, 40, 40]
    finally:
        m.float()


def test_prompts_of_different_lengths_share_a_cache(gpt):
    idx = torch.randint(0, 256, (3, 30), generator=torch.Generator().manual_seed(2))
    lens = [5, 12, 8]
    with torch.no_grad():
        full, _ = gpt(idx)
        parts = [gpt.prefill(idx[b : b + 1, :n]) for b, n in enumerate(lens)]
        st = GPTState.cat([s for _, s in parts])  # left-padded to 12 slots
        for k in range(10):
            nxt = torch.stack([idx[b, n + k] for b, n in enumerate(lens)])
            lt, st = gpt.step(nxt, st, inplace=True)
            want = torch.stack([full[b, n + k] for b, n in enumerate(lens)])
            assert (lt - want).abs().max().item() < 1e-5
        # dropping a row keeps the others exact
        st = st.select([2, 0])
        lt, st = gpt.step(torch.stack([idx[2, 18], idx[0, 15]]), st)
        assert (lt - torch.stack([full[2, 18], full[0, 15]])).abs().max().item() < 1e-5


def test_step_without_inplace_leaves_the_state_alone(gpt):
    idx = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, st = gpt.prefill(idx)
        before = st.clone()
        a, _ = gpt.step(idx[:, 0], st)
        b, _ = gpt.step(idx[:, 1], st)  # a second branch from the same state
        c, _ = gpt.step(idx[:, 1], before)
    assert st.length == 10 and torch.equal(st.pos, before.pos)
    assert all(torch.equal(x, y) for x, y in zip(st.k + st.v, before.k + before.v))
    assert torch.equal(b, c) and not torch.equal(a, b)


def test_generate_uses_the_cache_and_matches_greedy_recompute(gpt):
    prompt = list(b"The cat ")
    out = gpt.generate(prompt, 12, top_k=1)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            logits, _ = gpt(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert out == ids[len(prompt):]


def test_learned_positions_refuse_contexts_beyond_block_size():
    m = tiny_gpt(positions="learned", block_size=16)
    with pytest.raises(ValueError, match="beyond block_size=16"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_alibi_slopes():
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)], rel=1e-15)
    # non-power-of-two: the 4 slopes of 4 heads, then every other slope of 8 heads (Press et al.)
    assert alibi_slopes(6) == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3], rel=1e-15)


@pytest.mark.parametrize("n_head", [1, 2, 3, 4, 6, 8, 12])
def test_one_alibi_schedule_for_bdh_and_gpt(n_head):
    """"alibi" means one schedule: BDH's damping gamma_h = exp(-m_h) with the GPT's slopes m_h (before, BDH used
    2^(-8(h+1)/n_head) for every head count, which differs from ALiBi's for 3, 6, 12 heads)."""
    from bdh import BDHConfig

    gpt = GPT(GPTConfig(n_layer=1, n_embd=12 * n_head, n_head=n_head))
    gamma = BDHConfig(n_embd=12 * n_head, n_head=n_head, damping="alibi").decay()
    assert torch.allclose(torch.tensor(gamma, dtype=torch.float64), torch.exp(-gpt.slopes.double()), rtol=1e-6)


@pytest.mark.parametrize("kw,field", [
    (dict(n_embd=30, n_head=4), "n_embd"),
    (dict(positions="sinusoidal"), "positions"),
    (dict(dropout=1.5), "dropout"),
    (dict(n_layer=0), "n_layer"),
    (dict(n_embd=12, n_head=4, positions="rope"), "n_embd"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"GPTConfig.{field}="):
        tiny_gpt(**kw)


def test_num_params_formula_matches_the_module():
    for kw in (dict(), dict(bias=True), dict(positions="learned"), dict(mlp_dim=48)):
        m = tiny_gpt(**kw)
        assert m.num_params() == m.config.num_params()


def test_save_load_same_logits_and_type_dispatch(gpt, tmp_path):
    gpt.save_pretrained(tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["model_type"] == "gpt"
    m2 = load_model(tmp_path / "g")
    assert isinstance(m2, GPT)
    idx = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.equal(gpt(idx)[0], m2(idx)[0])
    assert isinstance(GPT.from_pretrained(tmp_path / "g"), GPT)
    with pytest.raises(CheckpointError, match="model_type 'gpt'"):
        BDH.from_pretrained(tmp_path / "g")
    # a weights file for another shape is refused and left as it is
    other = tiny_gpt(n_embd=64, positions=gpt.config.positions)
    other.save_pretrained(tmp_path / "o")
    (tmp_path / "g" / "model.safetensors").write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    before = (tmp_path / "g" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path / "g")
    assert (tmp_path / "g" / "model.safetensors").read_bytes() == before


def test_gpt_has_one_form():
    m = tiny_gpt()
    with pytest.raises(ValueError, match="one form"):
        m(torch.zeros(1, 4, dtype=torch.long), form="chunked")


# ----------------------------------------------------------------------------------------------- ladders
@pytest.mark.parametrize("ladder", [CPU_LADDER, GPU_LADDER], ids=["cpu", "gpu"])
def test_ladder_pairs_are_within_5_percent(ladder):
    for rung in ladder:
        b_cfg, g_cfg = rung.configs()
        assert param_gap(rung) <= MAX_PARAM_GAP, rung.name
        with torch.device("meta"):  # the real modules agree with the formulas (meta: no memory for 800M)
            b, g = build_model(b_cfg), build_model(g_cfg)
        assert b.num_params() == b_cfg.num_params() and g.num_params() == g_cfg.num_params()
    bdh_fixed = {(r.bdh["n_embd"], r.bdh["n_layer"], r.bdh["n_head"]) for r in ladder}
    assert len(bdh_fixed) == 1  # BDH scales only n
    sizes = [r.params()[0] for r in ladder]
    assert sizes == sorted(sizes)


# ----------------------------------------------------------------------------------------------- trainer
def _gpt_run(tmp_path, **train):
    from bdh.training.config import load_run_config

    toml = tmp_path / "gpt.toml"
    toml.write_text('[model]\nmodel_type = "gpt"\nn_layer = 2\nn_embd = 32\nn_head = 2\n')
    over = ["data.corpus=pydoc", "data.block_size=32", "train.steps=12", "train.batch_size=4", "train.warmup=2",
            "train.eval_every=6", "train.eval_tokens=1024", "train.final_eval_tokens=2048", "train.sample_tokens=8",
            "train.checkpoint_every=6", "train.log_every=0"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_run_config(toml, over)


def test_trainer_trains_saves_and_resumes_the_gpt_exactly(tmp_path):
    from bdh.training import train

    run = _gpt_run(tmp_path)
    res = train(run, tmp_path / "a", progress=False, echo=lambda s: None)
    assert isinstance(res.model, GPT) and math.isfinite(res.summary["val_loss"])
    first = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in first if r.get("split") == "train"]
    assert losses[-1] < losses[0]
    m = load_model(tmp_path / "a")
    idx = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(m(idx)[0], res.model.eval()(idx)[0])
    # resume from the step-6 checkpoint into a fresh directory: steps 7-12 repeat the uninterrupted run exactly
    train(run, tmp_path / "b", resume=tmp_path / "a" / "checkpoints" / "step-00000006", progress=False, echo=lambda s: None)
    again = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if r.get("split") == "train"] == losses[6:]


def test_gpt_tbptt_trains_and_resumes_exactly(tmp_path):
    from bdh.training import train

    run = _gpt_run(tmp_path, steps=8, checkpoint_every=4, eval_every=4)
    from bdh.training.config import apply_override

    for item in ("data.batching=tbptt", "model.kv_window=48", "train.grad_accum=2"):
        apply_override(run, item)
    run.validate()
    res = train(run, tmp_path / "a", progress=False, echo=lambda s: None)
    assert math.isfinite(res.summary["val_loss"])
    recs = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r.get("split") == "train"]
    # resuming from step 4 restores the carried KV caches (in the checkpoint) and repeats steps 5-8 exactly
    train(run, tmp_path / "b", resume=tmp_path / "a" / "checkpoints" / "step-00000004", progress=False,
          echo=lambda s: None)
    again = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if r.get("split") == "train"] == losses[4:]


@pytest.mark.parametrize("over,msg", [
    (["data.batching=tbptt", "model.positions=learned"], "learned position embeddings end at block_size"),
    (["train.no_bptt=true"], "BDH option"),
    (["train.form=chunked"], "one form"),
    (["model.mlp_internal_dim_multiplier=4"], "not a setting of model_type 'gpt'"),
    (["model.model_type=transformer"], "model_type='transformer'"),
])
def test_gpt_run_config_errors(tmp_path, over, msg):
    from bdh.training.config import apply_override

    run = _gpt_run(tmp_path)
    with pytest.raises(ValueError, match=msg):
        for item in over:
            apply_override(run, item)
        run.validate()


# ----------------------------------------------------------------------------------------------- bdh compare
def test_compare_trains_both_ladders_and_writes_reports(tmp_path):
    """A tiny real comparison with all three arms (issue 25, point 6): the FLOP-matched GPT trains more steps so
    that its training FLOPs equal BDH's; every arm's FLOPs follow the formula; the curves come from metrics.jsonl."""
    import csv

    from bdh.baselines.compare import compare
    from bdh.interface import token_flops

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(bytes(english_bytes(60000).tolist()))
    over = ["train.steps=2", "train.batch_size=2", "train.eval_every=1", "train.eval_tokens=256",
            "train.final_eval_tokens=512", "train.eval_batch_size=2", "train.warmup=1", "train.threads=1"]
    rows = compare("cpu", tmp_path / "cmp", rungs=1, overrides=over, data=str(corpus), match="both",
                   echo=lambda s: None)
    assert [r["arm"] for r in rows] == ["bdh", "gpt", "gpt-flops"]
    assert [r["model"] for r in rows] == ["bdh", "gpt", "gpt"]
    assert [r["matched"] for r in rows] == ["reference", "params, tokens", "params, training FLOPs"]
    p_bdh, p_gpt = CPU_LADDER[0].params()
    assert rows[0]["params"] == p_bdh and rows[1]["params"] == rows[2]["params"] == p_gpt
    assert rows[0]["tokens"] == rows[1]["tokens"] == 2 * 2 * 128
    b_cfg, g_cfg = CPU_LADDER[0].configs()
    f_b, f_g = token_flops(b_cfg, 128).training, token_flops(g_cfg, 128).training
    assert [r["flops_per_token"] for r in rows] == [f_b, f_g, f_g]
    assert f_b / f_g == pytest.approx(2.845, abs=0.001)  # spec §6d: 2.8x at the 0.8M rung
    # the FLOP-matched GPT: round(F_bdh / (tokens/step x f_gpt)) = round(2 x 2.845) = 6 steps
    assert rows[2]["steps"] == 6 and rows[2]["tokens"] == 6 * 2 * 128
    for r in rows:
        assert r["train_flops"] == r["tokens"] * r["flops_per_token"] == r["steps"] * 2 * 128 * r["flops_per_token"]
    assert abs(rows[2]["train_flops"] - rows[0]["train_flops"]) <= 0.5 * 2 * 128 * f_g
    assert rows[1]["train_flops"] < rows[0]["train_flops"] / 2.8
    assert all(math.isfinite(r["val_bpb"]) and r["peak_rss_mib"] > 0 and r["train_time_s"] > 0 for r in rows)
    out = tmp_path / "cmp"
    for name in ("compare.csv", "compare.md", "compare.json", "compare_curves.csv", "compare_params.png",
                 "compare_tokens.png", "compare_flops.png", "compare_wall.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "compare.md").read_text()
    assert "| 0.8M | 819,200 | 820,352 |" in md
    assert f"| 0.8M | gpt-flops | params, training FLOPs | L=4 d=128 h=4 | 820,352 | {f_g:,.0f} | 6 | 1,536 |" in md
    # curves: one point per evaluation (eval_every = 1), the final one last, from each run's metrics.jsonl
    curves = json.loads((out / "compare.json").read_text())["curves"]
    assert set(curves) == {"0.8M/bdh", "0.8M/gpt", "0.8M/gpt-flops"}
    for arm, steps, f in (("bdh", 2, f_b), ("gpt", 2, f_g), ("gpt-flops", 6, f_g)):
        pts = curves[f"0.8M/{arm}"]
        assert [p["step"] for p in pts] == list(range(1, steps + 1)) and pts[-1]["split"] == "final"
        assert [p["train_flops"] for p in pts] == [s * 2 * 128 * f for s in range(1, steps + 1)]
        assert all(a["elapsed_s"] < b["elapsed_s"] for a, b in zip(pts, pts[1:]))
        recs = [json.loads(l) for l in (out / "0.8M" / arm / "metrics.jsonl").read_text().splitlines()]
        final = [r for r in recs if r.get("split") == "final"][-1]
        assert pts[-1]["val_bpb"] == final["bpb"] and pts[-1]["elapsed_s"] == final["elapsed_s"]
    row = next(r for r in rows if r["arm"] == "gpt-flops")
    assert curves["0.8M/gpt-flops"][-1]["val_bpb"] == row["val_bpb"]
    with open(out / "compare_curves.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 + 2 + 6
    # both runs saw the same batches: identical resolved data and train settings (the FLOP-matched arm: but steps)
    a, b, c = (json.loads((out / "0.8M" / k / "run.json").read_text())["config"] for k in ("bdh", "gpt", "gpt-flops"))
    assert a["data"] == b["data"] == c["data"] and a["train"] == b["train"]
    but_steps = lambda t: {k: v for k, v in t.items() if k != "steps"}  # noqa: E731
    assert but_steps(c["train"]) == but_steps(a["train"])
    # a repeated command reuses the finished runs
    msgs = []
    compare("cpu", out, rungs=1, overrides=over, data=str(corpus), match="both", echo=msgs.append)
    assert sum("reusing" in m for m in msgs) == 3


@pytest.mark.parametrize("ladder", ["cpu", "gpu"])
def test_compare_flop_matched_arm_matches_bdh_within_one_step(ladder):
    """Every rung's FLOP-matched GPT: total training FLOPs = steps x tokens/step x token_flops(cfg, T).training,
    within half a GPT step's FLOPs of BDH's (nothing trained)."""
    from bdh.baselines.compare import PRESETS, arm_plan, plan
    from bdh.interface import token_flops

    preset = "cpu" if ladder == "cpu" else "gpu"
    plans = plan(preset, rungs=6, match="both", overrides=["train.steps=50", "train.warmup=5"])
    T, B = PRESETS[preset]["data"]["block_size"], PRESETS[preset]["train"]["batch_size"]
    for rung, runs in plans:
        assert list(runs) == ["bdh", "gpt", "gpt-flops"]
        p = {arm: arm_plan(rung, arm, run) for arm, run in runs.items()}
        b_cfg, g_cfg = rung.configs()
        assert p["bdh"]["train_flops"] == 50 * B * T * token_flops(b_cfg, T).training
        assert p["gpt"]["train_flops"] == 50 * B * T * token_flops(g_cfg, T).training
        step = B * T * token_flops(g_cfg, T).training
        assert p["gpt-flops"]["train_flops"] == p["gpt-flops"]["steps"] * step
        assert abs(p["gpt-flops"]["train_flops"] - p["bdh"]["train_flops"]) <= 0.5 * step
        assert p["gpt-flops"]["steps"] > 50 and runs["gpt-flops"].train.steps == p["gpt-flops"]["steps"]
        assert rung.training_flops_per_token(T) == (token_flops(b_cfg, T).training, token_flops(g_cfg, T).training)


def test_compare_curves_and_plots_from_synthetic_metrics(tmp_path):
    """read_curve takes the validations of a metrics.jsonl (the final one replaces a periodic one at its step);
    write_reports writes the loss-vs-FLOPs and loss-vs-wall-clock plots and the curve CSV."""
    import csv

    from bdh.baselines.compare import read_curve, write_reports

    recs = [{"step": 1, "split": "train", "loss": 5.0, "elapsed_s": 0.5},
            {"step": 2, "split": "val", "loss": 4.0, "bpb": 5.77, "elapsed_s": 1.0},
            {"step": 4, "split": "val", "loss": 3.0, "bpb": 4.33, "elapsed_s": 2.0},
            {"step": 4, "split": "final", "loss": 2.9, "bpb": 4.2, "elapsed_s": 2.0}]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pts = read_curve(tmp_path / "run", 100, 10.0)
    assert pts == [{"split": "val", "step": 2, "tokens": 200, "train_flops": 2000.0, "elapsed_s": 1.0,
                    "val_loss": 4.0, "val_bpb": 5.77},
                   {"split": "final", "step": 4, "tokens": 400, "train_flops": 4000.0, "elapsed_s": 2.0,
                    "val_loss": 2.9, "val_bpb": 4.2}]
    row = {"rung": "x", "arm": "bdh", "model": "bdh", "matched": "reference", "params": 10, "flops_per_token": 10.0,
           "steps": 4, "tokens": 400, "train_flops": 4000.0, "val_loss": 2.9, "val_bpb": 4.2, "val_tokens": 64,
           "train_time_s": 2.0, "tok_per_s": 200.0, "peak_rss_mib": None, "peak_cuda_mib": None, "config": "L=1"}
    write_reports([row], {"x/bdh": pts}, tmp_path / "out", preset="cpu", command="test", wall_s=1.0, match="params")
    for name in ("compare_flops.png", "compare_wall.png", "compare_tokens.png", "compare_params.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "out" / "compare_curves.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [(r["arm"], r["step"], r["train_flops"], r["elapsed_s"]) for r in got] == [
        ("bdh", "2", "2000.0", "1.0"), ("bdh", "4", "4000.0", "2.0")]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| x | bdh | reference | L=1 | 10 | 10 | 4 | 400 | 4000 | 2.0 s | 4.2000 |" in md


def test_compare_list_prints_the_arms_without_training(tmp_path, capsys, monkeypatch):
    from bdh.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--list", "--rungs", "1", "--match", "flops"]) == 0
    out = capsys.readouterr().out
    assert ("| 0.8M | d=64 L=2 h=4 n=4096 | 819,200 | L=4 d=128 h=4 | 820,352 | 0.1% | 16,220,160 | 5,701,632 | "
            "2.84 |") in out
    assert "| 0.8M | bdh | reference | L=2 d=64 h=4 n=4096 | 819,200 | 16,220,160 | 128 | 262,144 | 4.252e+12 |" in out
    assert "| 0.8M | gpt-flops | params, training FLOPs | L=4 d=128 h=4 | 820,352 | 5,701,632 | 364 | 745,472 |" in out
    assert "| 0.8M | gpt |" not in out and "1.6M | bdh" not in out
    assert not any(tmp_path.iterdir())  # nothing written


def test_compare_rejects_bad_arguments(tmp_path):
    from bdh.baselines.compare import compare

    with pytest.raises(ValueError, match="--rungs 7"):
        compare("cpu", tmp_path, rungs=7)
    with pytest.raises(ValueError, match="--preset 'tpu'"):
        compare("tpu", tmp_path)
    with pytest.raises(ValueError, match="only data.. and train.. can be set"):
        compare("cpu", tmp_path, overrides=["model.n_embd=32"])
    with pytest.raises(ValueError, match="--match 'tokens'"):
        compare("cpu", tmp_path, match="tokens")
    assert not any(tmp_path.iterdir())  # nothing written


def test_compare_checks_the_corpus_and_run_directories_before_training(tmp_path):
    """Issue 13, items 1 and 7: a missing or too short corpus, and a run directory holding a model from other
    settings, are refused before any training starts or anything is written (before: the corpus was found
    missing by the first `bdh train`, after OUT/<rung>/bdh was created; a model was retrained over silently)."""
    from bdh.baselines.compare import compare
    from bdh.cli import build_parser

    out = tmp_path / "cmp"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        compare("cpu", out, rungs=1, data=str(tmp_path / "nope.txt"))
    short = tmp_path / "short.txt"
    short.write_text("a short line of text\n" * 4)
    with pytest.raises(ValueError, match="--data .*short.txt.*block_size"):
        compare("cpu", out, rungs=1, data=str(short))
    assert not out.exists()
    from conftest import tiny_config

    BDH(tiny_config()).save_pretrained(out / "0.8M" / "gpt")
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match="gpt'.*already holds a model.*--overwrite"):
        compare("cpu", out, rungs=1)
    assert sorted(p.name for p in out.rglob("*")) == before
    args = build_parser().parse_args(["compare", "--overwrite", "--rungs", "1"])
    assert args.overwrite and args.rungs == 1


def test_cli_info_and_generate_load_a_gpt(gpt, tmp_path, capsys):
    from bdh.cli import main

    gpt.save_pretrained(tmp_path / "g")
    assert main(["info", "--model", str(tmp_path / "g"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    c = gpt.config
    assert info["model_type"] == "gpt" and info["capabilities"] == ["hooks"] and info["config"]["positions"] == c.positions
    assert info["params_actual"] == info["params_formula"] == gpt.num_params()
    assert info["state_bytes_after_1_token"] == 2 * c.n_layer * c.n_embd * 4 + 8  # keys + values of one token, pos
    assert main(["generate", "--model", str(tmp_path / "g"), "--prompt", "The ", "--max-new-tokens", "10",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "The " + gpt.generate("The ", 10, temperature=0) + "\n"


def test_evaluation_with_a_carried_kv_window(gpt):
    import numpy as np

    import torch.nn.functional as F
    from bdh.tokenization import get_tokenizer
    from bdh.training.evaluation import evaluate, token_byte_lengths

    tokens = np.frombuffer(bytes(english_bytes(49).tolist()), dtype=np.uint8).astype(np.int64)  # 48 predictions
    lengths = token_byte_lengths(get_tokenizer("bytes"))
    x, y = torch.tensor(tokens[:-1])[None], torch.tensor(tokens[1:])[None]
    with torch.no_grad():
        whole = float(F.cross_entropy(gpt(x)[0][0], y[0]))  # one pass over the stream
    assert gpt.config.kv_window >= 48
    carried = evaluate(gpt, tokens, lengths, 16, batch_size=1, carry=True)  # 3 windows, cache carried
    assert carried["tokens"] == 48 and abs(carried["loss"] - whole) < 1e-5
    reset = evaluate(gpt, tokens, lengths, 16, batch_size=1, carry=False)
    assert abs(reset["loss"] - whole) > 1e-4  # windows without context are a different computation
    old = gpt.config.kv_window
    try:
        gpt.config.kv_window = 8  # the carried cache keeps only the last 8 slots: between the two
        short = evaluate(gpt, tokens, lengths, 16, batch_size=1, carry=True)
    finally:
        gpt.config.kv_window = old
    assert abs(short["loss"] - whole) > 1e-6 and abs(short["loss"] - reset["loss"]) > 1e-6


def test_carried_state_is_truncated_and_detached():
    m = tiny_gpt()
    _, st = m.prefill(torch.randint(0, 256, (2, 20)))
    assert st.k[0].requires_grad
    m.config.kv_window = 12
    c = m.carry_state(st)
    assert c.length == 12 and c.pos.tolist() == [20, 20] and not c.k[0].requires_grad
    assert torch.equal(c.k[1], st.k[1][:, :, 8:].detach())


# ----------------------------------------------------------------------------- issue 13: ids of every integer dtype, bad arguments
def _both_models():
    from conftest import tiny_config

    torch.manual_seed(0)
    return [BDH(tiny_config()).eval(), tiny_gpt().eval()]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_small_integer_ids_give_the_same_logits_as_int64(dtype):
    """uint8 / int8 / int16 / int32 ids (uint8 ids >= 128 too) are converted: the same logits, never a torch error."""
    hi = 256 if dtype == torch.uint8 else 128  # int8 holds 0..127 of the vocabulary
    ids = torch.randint(0, hi, (2, 9), generator=torch.Generator().manual_seed(1))
    if dtype == torch.uint8:
        ids[0, :3] = torch.tensor([128, 200, 255])
    small = ids.to(dtype)
    for m in _both_models():
        with torch.no_grad():
            assert torch.equal(m(small)[0], m(ids)[0])
            assert torch.equal(m(small, small)[1], m(ids, ids)[1])  # targets of a small dtype too
            (a, sa), (b, sb) = m.prefill(small), m.prefill(ids)
            assert torch.equal(a, b)
            x, _ = m.step(small[:, 0], sa)
            y, _ = m.step(ids[:, 0], sb)
            assert torch.equal(x, y)
            x, _ = m.step(small[:, 1], sa.clone(), inplace=True, check_ids=False)
            y, _ = m.step(ids[:, 1], sb.clone(), inplace=True, check_ids=False)
            assert torch.equal(x, y)
        assert m.generate(small[0], 3, temperature=0) == m.generate(ids[0].tolist(), 3, temperature=0)


@pytest.mark.parametrize("bad", [torch.tensor([[True, False]]), torch.tensor([[1.0, 2.0]]),
                                 torch.tensor([[1 + 0j]]), torch.tensor([[1.0]], dtype=torch.float16)])
def test_bool_float_complex_ids_are_refused_naming_the_dtype(bad):
    for m in _both_models():
        for call in (lambda: m(bad), lambda: m.prefill(bad), lambda: m.step(bad[:, 0], m.init_state(1)),
                     lambda: m(torch.tensor([[1, 2]])[:, : bad.shape[1]], bad)):
            with pytest.raises(ValueError, match=rf"expected integer token ids.*got dtype {bad.dtype}"):
                call()


def test_bad_targets_are_named():
    for m in _both_models():
        idx = torch.tensor([[1, 2]])
        with pytest.raises(TypeError, match="targets: expected a torch.Tensor of token ids or None, got list"):
            m(idx, [[1, 2]])
        with pytest.raises(ValueError, match=r"targets: .*out of bounds.*expected token ids in \[0, 256\)"):
            m(idx, torch.tensor([[1, 300]]))


def test_gpt_state_arguments_are_named():
    g = tiny_gpt().eval()
    _, s = g.prefill(torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(TypeError, match=r"GPTState.cat\(states\): states\[1\] is a str, expected a GPTState"):
        GPTState.cat([s, "x"])
    with pytest.raises(TypeError, match="expected a list of GPTState, got str"):
        GPTState.cat("x")
    with pytest.raises(ValueError, match="caches of different models"):
        GPTState.cat([s, tiny_gpt(n_layer=3).init_state(1)])
    with pytest.raises(ValueError, match=r"row 2 is outside the batch \[0, 2\)"):
        s.select([2])
    with pytest.raises(TypeError, match="integer row indices, got 1.5"):
        s.select([1.5])
    assert s.select([1]).batch_size == 1
    for call in (lambda: g.carry_state("x"), lambda: g.state_to_tensors("x")):
        with pytest.raises(TypeError, match="state: expected a GPTState.*got str"):
            call()


def test_gpt_prompts_prefilled_in_pieces_give_the_same_tokens(gpt, monkeypatch):
    """Generation prefills `PREFILL_PIECE` tokens at a time, the KV cache carried: the same greedy tokens."""
    import bdh.generation as G

    prompt = english_bytes(50).tolist()
    whole = gpt.generate([prompt, prompt[:23]], 10, temperature=0)
    monkeypatch.setattr(G, "PREFILL_PIECE", 7)
    assert G.prefill_piece(gpt) == 7  # no chunk_size: the piece as set
    assert gpt.generate([prompt, prompt[:23]], 10, temperature=0) == whole


@pytest.mark.parametrize("positions", ["alibi", "rope", "learned"])
def test_hook_points(positions):
    """Every hook point fires in forward, prefill and step; no-op hooks leave the logits as they are (the explicit
    attention that an `attn_probs` hook switches on equals the fused kernel); the weights are causal softmax rows;
    a replacement changes the output; a step's weights are the last row of the full sequence's."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=64, block_size=32, positions=positions)).eval()
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref = m(idx)[0]
    seen: dict[str, torch.Tensor] = {}
    names = ["logits"] + [f"blocks.{l}.{k}" for l in range(2) for k in GPT.HOOK_KINDS]
    with torch.no_grad(), m.hooks({n: lambda name, t, pos: seen.__setitem__(name, t.clone()) for n in names}):
        out = m(idx)[0]
    assert set(seen) == set(names) and torch.allclose(out, ref, atol=1e-5) and torch.equal(seen["logits"], out)
    p = seen["blocks.1.attn_probs"]  # (B, nh, T, T)
    assert p.shape == (2, 4, 12, 12) and torch.allclose(p.sum(-1), torch.ones(2, 4, 12), atol=1e-6)
    assert float(p.triu(1).abs().max()) == 0.0  # causal
    assert torch.allclose(seen["blocks.1.x_out"], seen["blocks.1.x_in"] + seen["blocks.1.attn_out"]
                          + seen["blocks.1.mlp_out"], atol=1e-5)
    first_only = lambda name, t, pos: torch.zeros_like(t).index_fill_(-1, torch.tensor([0]), 1.0)  # noqa: E731
    after = {}
    with torch.no_grad(), m.hooks({"blocks.0.attn_probs": first_only,
                                   "blocks.0.attn_out": lambda name, t, pos: after.__setitem__("a", t.clone())}):
        m(idx)  # every token attends to the first one only: an intervention on the weights
    a, a0 = after["a"], seen["blocks.0.attn_out"]
    assert float((a - a0).norm() / a0.norm()) > 0.1
    assert torch.allclose(a[:, 0], a0[:, 0], atol=1e-6) and torch.allclose(a[:, 5], a[:, 0], atol=1e-6)
    # a step reads the cache: its weights over the 12 slots are the full sequence's last row
    with torch.no_grad():
        _, state = m.prefill(idx[:, :11])
        got = {}
        with m.hooks({"blocks.1.attn_probs": lambda name, t, pos: got.__setitem__("p", (t.clone(), pos.clone()))}):
            m.step(idx[:, 11], state)
    step_p, pos = got["p"]
    assert step_p.shape == (2, 4, 1, 12) and pos.tolist() == [11, 11]
    assert torch.allclose(step_p[:, :, 0], p[:, :, 11], atol=1e-5)
    with pytest.raises(ValueError, match="kind in"):
        m.add_hook("blocks.0.x_sparse", lambda *a: None)
