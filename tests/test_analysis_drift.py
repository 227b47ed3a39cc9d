"""bdh.analysis.drift.length_drift: its statistics against the other analysis paths (per-token activity, states_at)."""

import pytest
import torch

from bdh import BDH, BDHConfig
from bdh.analysis.drift import length_drift
from bdh.analysis.sparsity import activity_per_token
from bdh.tasks import load_task
from bdh.tasks.evaluate import size_rng


def _model(vocab):
    torch.manual_seed(0)
    return BDH(BDHConfig(n_layer=2, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0,
                         vocab_size=vocab)).eval()


def test_length_drift_values():
    task = load_task("copy")
    model = _model(task.vocab_size)
    rows = length_drift(model, task, [4, 8], n_examples=3, seed=5)
    assert [r["size"] for r in rows] == [4, 8]
    for r in rows:
        x, _, _ = task.batch(size_rng(5, r["size"]), r["size"], 3)
        T = x.shape[1]
        assert r["tokens"] == T
        # active fractions: the per-token activity tool (run_with_hooks), one sequence at a time
        per = [activity_per_token(model, x[i:i + 1], ("x_sparse", "y_sparse"))[0] for i in range(3)]
        for k, key in (("x_sparse", "x_active"), ("y_sparse", "y_active")):
            whole = sum(p[k][:, :, -1].mean() for p in per) / 3  # (L, T) all-neuron column
            last = sum(p[k][:, T - max(1, T // 4):, -1].mean() for p in per) / 3
            assert r[key] == pytest.approx(float(whole), abs=1e-6)
            assert r[key + "_last"] == pytest.approx(float(last), abs=1e-6)
        # rho: the state states_at keeps after the last token
        _, (st,), _ = model.states_at(x, [T - 1])
        norms = torch.stack([rho.flatten(2).norm(dim=-1) for rho in st.rho])
        assert r["rho_norm"] == pytest.approx(norms.mean().item(), rel=1e-5)
        assert r["rho_norm_per_token"] == pytest.approx(norms.mean().item() / T, rel=1e-5)
    assert rows[1]["rho_norm"] > rows[0]["rho_norm"]  # no damping: rho sums more outer products at 2x


def test_length_drift_refuses_a_model_without_rho():
    from bdh.baselines import GPT, GPTConfig

    task = load_task("copy")
    gpt = GPT(GPTConfig(n_layer=1, n_embd=8, n_head=2, vocab_size=task.vocab_size))
    with pytest.raises(ValueError, match="rho"):
        length_drift(gpt, task, [4])
