"""sigma (eq. 16) readout and the concept-synapse search: definitions checked against the model, planted synapses."""

import numpy as np
import pytest
import torch

from bdh import BDH
from bdh.analysis.synapses import (
    SigmaSpec, SynapseInputs, concept_synapse_search, keys_at, mann_whitney, rank_synapses, sigma_degrees,
    sigma_matrix, sigma_pairs, sigma_topk, sigma_trace, synapse_activations,
)
from bdh.analysis.record import run_with_cache
from bdh.attention import rope_freqs

from conftest import tiny_config


@pytest.fixture(scope="module")
def model3():
    torch.manual_seed(0)
    return BDH(tiny_config(n_layer=3, damping="alibi")).eval()


@pytest.fixture(scope="module")
def inputs(model3):
    return synapse_activations(model3, torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0)), 2)


@pytest.mark.parametrize("U", ["rope", "identity"])
def test_trace_pairs_matrix_topk_agree(model3, inputs, U):
    spec = SigmaSpec.from_model(model3, U)
    pairs = torch.tensor([[3, 5], [10, 64 + 7], [100, 200], [7, 6], [255, 1]])
    tr = sigma_trace(inputs, spec, pairs)
    at = torch.stack([sigma_pairs(inputs, spec, pairs, t=t) for t in range(inputs.T)])
    assert torch.allclose(tr, at, atol=1e-6, rtol=1e-4)
    dense = sigma_matrix(inputs, spec, t=20)
    assert torch.allclose(dense[pairs[:, 0], pairs[:, 1]], at[20], atol=1e-6, rtol=1e-4)
    v, i, j = sigma_topk(inputs, spec, k=7, t=20, block=50)
    assert torch.allclose(v, torch.topk(dense.flatten(), 7).values, atol=1e-6)
    assert torch.allclose(dense[i, j], v)
    if U == "identity":  # plain Hebbian co-activation: Y^T X, non-negative
        assert torch.allclose(dense, inputs.y[:21].T @ inputs.x[:21], atol=1e-6)
        assert (dense >= 0).all()


def test_sigma_reproduces_the_models_attention(model3, inputs):
    """(sigma_{t-1} x_t)(i) restricted to head b = sum_{tau<t} scores_b(t, tau) y_tau(i) (RoPE and damping)."""
    spec = SigmaSpec.from_model(model3, "rope")
    ids = torch.tensor([inputs.tokens])
    _, cache = run_with_cache(model3, ids, ["blocks.2.scores"])
    scores = cache["blocks.2.scores"][0].double()  # (h, T, T)
    N = model3.config.N
    for t in (1, 17, 29):
        S = sigma_matrix(inputs, spec, t=t - 1).double()
        for b in range(model3.config.n_head):
            lhs = S[:, b * N : (b + 1) * N] @ inputs.x[t, b * N : (b + 1) * N].double()
            rhs = (scores[b, t, :t, None] * inputs.y[:t].double()).sum(0)
            assert torch.allclose(lhs, rhs, atol=1e-6 * max(1.0, rhs.abs().max().item()))


def test_rope_keys_are_rotations():
    spec = SigmaSpec(rope_freqs(16, 2.0**16), n_head=2)
    x = torch.rand(5, 32, dtype=torch.float64)
    k = keys_at(x, spec, t_read=5)
    assert torch.allclose(k.view(5, 2, 8, 2).norm(dim=-1), x.view(5, 2, 8, 2).norm(dim=-1))  # pair norms kept
    assert torch.equal(keys_at(x, SigmaSpec(spec.freqs, 2, U="identity"), 5), x)


def _planted(n_sent=16, T=14, h=2, N=32, seed=0, i0=5, j0=62):  # j0 = head 1, neuron 30 (slow)
    """Random sparse y, x; in concept sentences y_i0 and x_j0 fire together at a 'concept token'."""
    g = torch.Generator().manual_seed(seed)
    n = h * N

    def sent(concept):
        y = torch.rand(T, n, generator=g) * (torch.rand(T, n, generator=g) < 0.1)
        x = torch.rand(T, n, generator=g) * (torch.rand(T, n, generator=g) < 0.2)
        y[:, i0] = 0
        x[:, j0] = 0
        if concept:
            t = int(torch.randint(2, T - 2, (1,), generator=g))
            y[t, i0] = 1.0
            x[t, j0] = 1.0
        return SynapseInputs(y, x, list(range(T)), 1)

    return [sent(True) for _ in range(n_sent)], [sent(False) for _ in range(n_sent)]


@pytest.mark.parametrize("U", ["rope", "identity"])
def test_planted_synapse_is_found_and_significant(U):
    concept, contrast = _planted()
    spec = SigmaSpec(rope_freqs(32, 2.0**16), n_head=2, U=U)  # j0 is a slow neuron of head 1
    res = rank_synapses(concept, contrast, spec, top=3, test_fraction=0.5, seed=1)
    best = res.candidates[0]
    assert (best["i"], best["j"]) == (5, 62)
    assert best["test"]["p_value"] < 1e-3 and best["test"]["rank_biserial"] > 0.9
    assert best["head_j"] == 1 and best["neuron_j"] == 30
    assert res.split["concept_test"] == 8 and not res.split["in_sample"]


def test_mann_whitney_perfect_and_tied():
    r = mann_whitney([5, 6, 7, 8], [1, 2, 3])
    assert r["U"] == 12 == r["U_max"] and r["rank_biserial"] == 1.0 and r["p_value"] < 0.05
    r = mann_whitney([1, 1, 1], [1, 1, 1])
    assert r["rank_biserial"] == 0.0 and r["p_value"] > 0.4


def test_concept_search_on_a_model_and_errors(model3):
    concept = ["The euro fell.", "A dollar rose.", "Ten pounds paid.", "The yen fell.", "One euro now.", "Francs sold."]
    contrast = ["The vote passed.", "We met today.", "A new law.", "The debate ended.", "Members agreed.", "It rained."]
    res = concept_synapse_search(model3, concept, contrast, 1, top=2, test_fraction=0.5, shortlist=20)
    assert len(res.candidates) == 2 and 0 <= res.candidates[0]["test"]["p_value"] <= 1
    assert res.layer == 1 and res.n_searched_pairs > 0
    with pytest.raises(ValueError, match="layer"):
        synapse_activations(model3, "abc", 0)
    with pytest.raises(ValueError, match="split"):
        concept_synapse_search(model3, concept[:4], contrast[:4], 1)


def test_sigma_degrees_counts_edges(model3, inputs):
    spec = SigmaSpec.from_model(model3, "rope")
    d = sigma_degrees(inputs, spec, head=1, quantile=0.5)
    N = model3.config.N
    dense = sigma_matrix(inputs, spec, rows=range(N, 2 * N), cols=range(N, 2 * N))
    assert d["edges"] == int((dense > d["threshold"]).sum()) == sum(d["out_degree"]) == sum(d["in_degree"])
    assert np.array_equal(d["out_degree"], (dense > d["threshold"]).sum(1).numpy())


def test_topk_of_a_head_block(model3, inputs):
    spec = SigmaSpec.from_model(model3, "rope")
    h1 = spec.head_neurons(1)
    v, i, j = sigma_topk(inputs, spec, k=5, rows=h1, cols=h1, block=7)
    dense = sigma_matrix(inputs, spec, rows=h1, cols=h1)
    assert torch.allclose(v, torch.topk(dense.flatten(), 5).values, atol=1e-6)
    assert ((i >= h1[0]) & (i <= h1[-1]) & (j >= h1[0]) & (j <= h1[-1])).all()
    with pytest.raises(ValueError, match="head"):
        spec.head_neurons(4)
