"""The graph form of a trained BDH-GPU: exact through Claim 3 hubs, approximate under an edge budget."""

import pytest
import torch

from bdh import BDH
from bdh.graph.from_gpu import BDHGPUGraph, GPUWeights, build_graph_form, gpu_logits, kl_per_token, nspace_reference
from conftest import english_bytes, tiny_config, train_briefly


@pytest.fixture(scope="module")
def trained_tiny(one_thread):
    """A briefly trained tiny model (n = 256, d = 32, h = 4, L = 2), trained on one thread."""
    torch.manual_seed(0)
    return train_briefly(BDH(tiny_config()), steps=20)


@pytest.fixture(scope="module")
def heldout():
    data = english_bytes(20000)
    return data[15000:15000 + 2 * 24].view(2, 24), data[10000:10000 + 4 * 24].view(4, 24)  # eval, calibration


def test_nspace_identity_equals_bdh_gpu(trained_tiny, heldout):
    """BDH-GPU (code LN placement, d-space residual) is exactly the n-space dynamics with LN gains."""
    idx, _ = heldout
    W = GPUWeights.from_model(trained_tiny)
    ref = gpu_logits(trained_tiny, idx)
    assert (nspace_reference(W, idx) - ref).abs().max() <= 1e-10


@pytest.mark.parametrize("damping", [None, "alibi"])
def test_nspace_identity_random_weights_with_damping(damping):
    torch.manual_seed(3)
    model = BDH(tiny_config(damping=damping, n_layer=3)).double().eval()
    idx = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    W = GPUWeights.from_model(model)
    assert (nspace_reference(W, idx) - gpu_logits(model, idx)).abs().max() <= 1e-10
    out, state = BDHGPUGraph(W).run(idx)  # the round-by-round simulator, exact hubs
    assert (out - gpu_logits(model, idx)).abs().max() <= 1e-9


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_exact_hub_graph_equals_bdh_gpu(trained_tiny, heldout, fast):
    idx, _ = heldout
    ref = gpu_logits(trained_tiny, idx)
    g = build_graph_form(trained_tiny, budget=None, fast=fast)
    out, _ = g.run(idx)
    assert (out - ref).abs().max() <= 1e-9
    assert float(kl_per_token(ref, out).abs().max()) <= 1e-12
    e = g.num_edges()
    W = g.W
    assert isinstance(g.graphs["Gx_e"].first.n_dst, int) and g.graphs["Gx_e"].first.n_dst == 2 * W.d  # 2d hubs
    assert e["parameter graphs (G_x, G_y)"] <= 5 * W.n * W.d  # E' + D_x^{e,i} + D_y^{e,i}
    assert e["Gs"] == W.n_head * W.N**2


def test_budget_graph_kl_falls_to_zero(trained_tiny, heldout):
    idx, _ = heldout
    ref = gpu_logits(trained_tiny, idx)
    W = GPUWeights.from_model(trained_tiny)
    n = W.n
    kls = []
    for m in (n * n // 64, n * n // 8, n * n):
        g = BDHGPUGraph(W, budget=m)
        assert g.num_edges()["parameter graphs (G_x, G_y)"] <= 2 * m
        out, _ = g.run(idx)
        kls.append(float(kl_per_token(ref, out).mean()))
    assert kls[0] > kls[1] > 1e-4  # fewer edges, further from BDH-GPU
    assert kls[2] <= 1e-12  # all n^2 entries of D E_c: exact


def test_sampled_synapses(trained_tiny, heldout):
    """G_s with k random partners per neuron: k = N is the exact model, k < N a sparse unbiased read."""
    idx, _ = heldout
    ref = gpu_logits(trained_tiny, idx)
    W = GPUWeights.from_model(trained_tiny)
    full, _ = BDHGPUGraph(W, synapses=W.N).run(idx)
    assert (full - ref).abs().max() <= 1e-9
    g = BDHGPUGraph(W, synapses=8)
    assert g.num_edges()["Gs"] == W.n * 8
    assert bool((g.W.head_of()[g.graphs["Gs"].src] == g.W.head_of()[g.graphs["Gs"].dst]).all())  # inside heads
    out, _ = g.run(idx)
    assert 1e-6 < float(kl_per_token(ref, out).mean()) < 20.0
    with pytest.raises(ValueError, match="synapses per neuron k=0"):
        BDHGPUGraph(W, synapses=0)


def test_float32_graph_close_to_float64_model(trained_tiny, heldout):
    idx, _ = heldout
    ref = gpu_logits(trained_tiny, idx)
    out, _ = build_graph_form(trained_tiny, dtype=torch.float32).run(idx)
    assert float(kl_per_token(ref, out).mean()) <= 1e-8


def test_layernorm_stand_ins_measure_the_gap(trained_tiny, heldout):
    """LN without d-space: mean-field gains (RMS over neurons) stay close; constant gains are fully local."""
    idx, cal = heldout
    ref = gpu_logits(trained_tiny, idx)
    kls = {}
    for mode in ("meanfield", "calibrated"):
        g = build_graph_form(trained_tiny, gains=mode)
        with pytest.raises(ValueError, match="calibrate"):
            g.run(idx)
        c = g.calibrate(cal)
        assert c["g_a_logc"].shape == (2, 4) and c["g_z_p"].shape == (2,) and c["kappa_a"].shape == (2, 4)
        out, _ = g.run(idx)
        kls[mode] = float(kl_per_token(ref, out).mean())
        assert g.gains == mode and g.num_edges()["gain hub read-ins (non-local LN)"] == 0
    assert 1e-6 < kls["meanfield"] < 0.5
    assert kls["calibrated"] > 1e-6  # finite here (2 layers, short text) or inf: either way not exact


def test_graph_form_errors(trained_tiny):
    W = GPUWeights.from_model(trained_tiny)
    with pytest.raises(ValueError, match="gains='local'"):
        BDHGPUGraph(W, gains="local")
    with pytest.raises(ValueError, match="budget=-3"):
        BDHGPUGraph(W, budget=-3)
    g = BDHGPUGraph(W, budget=100)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        g.run(torch.tensor([[300]]))
    with pytest.raises(ValueError, match="T >= 3"):
        g.calibrate(torch.tensor([[1, 2]]))
