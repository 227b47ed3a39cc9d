"""Training for sparse decode: the Hoyer activity penalty (train.activity_penalty) and train.init_from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bdh import BDH, BDHConfig, load_model
from bdh.sparse import hoyer_activity
from bdh.training import load_run_config, train

QUIET = dict(progress=False, echo=lambda s: None)
FAST = ["train.eval_every=0", "train.sample_tokens=0", "train.checkpoint_every=0"]


def train_losses(out) -> dict[int, float]:
    recs = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r.get("split") == "train"}


def x_activity(model: BDH, text: bytes) -> tuple[float, float]:
    """(fraction of x_sparse > 0, Hoyer measure) over all layers, on `text`."""
    xs: list[torch.Tensor] = []
    with torch.no_grad():
        model.eval()(torch.tensor([list(text)]), x_sparse_out=xs)
    frac = torch.stack([(x > 0).float().mean() for x in xs]).mean()
    return float(frac), float(torch.stack([hoyer_activity(x) for x in xs]).mean())


def test_hoyer_activity_values():
    x = torch.zeros(3, 10)
    x[0, :2] = 5.0  # 2 of 10 equal values: exactly the active fraction
    x[1, :] = 0.1  # all active
    # row 2: all zero -> 0
    assert float(hoyer_activity(x[:1])) == pytest.approx(0.2)
    assert float(hoyer_activity(x[1:2])) == pytest.approx(1.0)
    assert float(hoyer_activity(x[2:])) == 0.0
    assert float(hoyer_activity(x)) == pytest.approx(1.2 / 3)
    assert float(hoyer_activity(x * 1e3)) == pytest.approx(float(hoyer_activity(x)), rel=1e-6)  # scale-invariant
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]], requires_grad=True)
    hoyer_activity(y).backward()
    assert torch.isfinite(y.grad).all() and y.grad[0, 2] > 0  # switching a silent neuron on is penalised


def test_x_sparse_out_returns_every_layer_and_is_differentiable():
    torch.manual_seed(0)
    model = BDH(BDHConfig(n_layer=3, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, vocab_size=32, dropout=0.0))
    idx = torch.randint(0, 32, (2, 9))
    xs: list[torch.Tensor] = []
    logits, _ = model(idx, x_sparse_out=xs)
    ref, _ = model(idx)
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)  # capturing changes nothing
    assert len(xs) == 3 and all(x.shape == (2, 2, 9, 32) and (x >= 0).all() for x in xs)
    v = model.ln(model.embed(idx).unsqueeze(1))
    torch.testing.assert_close(xs[0], torch.relu(v @ model.encoder))  # layer 0: relu(LN(embed) D_x)
    hoyer_activity(xs[1]).backward()
    assert model.encoder.grad is not None and model.encoder.grad.abs().sum() > 0
    pre: list[torch.Tensor] = []
    model.prefill(idx, x_sparse_out=pre, form="chunked")
    torch.testing.assert_close(torch.stack(pre), torch.stack(xs).detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="x_sparse_out"):
        model.prefill(idx, x_sparse_out=[], form="recurrent")


def test_activity_penalty_logs_the_cross_entropy_and_trains_sparser_models(tmp_path):
    base = FAST + ["train.steps=60", "train.lr=0.01"]
    a = train(load_run_config("tiny", base), tmp_path / "plain", **QUIET)
    b = train(load_run_config("tiny", base + ["train.activity_penalty=3"]), tmp_path / "sparse", **QUIET)
    la, lb = train_losses(tmp_path / "plain"), train_losses(tmp_path / "sparse")
    assert lb[1] == pytest.approx(la[1], abs=1e-6)  # the logged loss is the cross-entropy (same first batch)
    assert lb[2] != pytest.approx(la[2], abs=1e-6)  # ... the gradient includes the penalty
    text = Path(__file__).read_bytes()[:256]
    fa, ha = x_activity(a.model, text)
    fb, hb = x_activity(b.model, text)
    assert hb < 0.6 * ha and fb < fa  # sparser by the measure it optimises and by the count of active neurons
    assert json.loads((tmp_path / "sparse" / "run.json").read_text())["config"]["train"]["activity_penalty"] == 3.0
    recs = [json.loads(line) for line in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    hoyer = [r["x_hoyer"] for r in recs if r.get("split") == "train"]
    assert len(hoyer) == 60 and hoyer[-1] < 0.6 * hoyer[0]  # the logged measure falls as training sparsifies
    assert all("x_hoyer" not in json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines())


def test_activity_penalty_is_refused_for_gpt_and_when_negative():
    with pytest.raises(ValueError, match="activity_penalty"):
        load_run_config("gpt-default", ["train.activity_penalty=1"])
    with pytest.raises(ValueError, match="train.activity_penalty = -1.0"):
        load_run_config("tiny", ["train.activity_penalty=-1"])


def test_init_from_starts_from_the_saved_weights(tmp_path):
    first = train(load_run_config("tiny", FAST + ["train.steps=5"]), tmp_path / "first", **QUIET)
    # lr ~ 0 and no weight decay: after one step the weights are still the saved ones
    tuned = train(load_run_config("tiny", FAST + ["train.steps=1", "train.lr=1e-12", "train.warmup=0",
                                                  "train.weight_decay=0", f"train.init_from={tmp_path / 'first'}"]),
                  tmp_path / "tuned", **QUIET)
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    saved = load_model(tmp_path / "first")
    fresh = train(load_run_config("tiny", FAST + ["train.steps=1", "train.lr=1e-12"]), tmp_path / "fresh", **QUIET)
    with torch.no_grad():
        torch.testing.assert_close(tuned.model.eval()(idx)[0], saved(idx)[0], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(fresh.model.eval()(idx)[0], saved(idx)[0], atol=1e-3)
    assert first.summary["val_loss"] == pytest.approx(tuned.summary["val_loss"], abs=1e-5)


def test_init_from_errors_are_raised_before_anything_is_written(tmp_path):
    train(load_run_config("tiny", FAST + ["train.steps=1"]), tmp_path / "src", **QUIET)
    with pytest.raises(ValueError, match=r"init_from = .*another config: n_embd=32 saved, 48 now"):
        train(load_run_config("tiny", FAST + ["model.n_embd=48", f"train.init_from={tmp_path / 'src'}"]),
              tmp_path / "out", **QUIET)
    with pytest.raises(ValueError, match="expected a model directory"):
        train(load_run_config("tiny", FAST + [f"train.init_from={tmp_path / 'missing'}"]), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()
