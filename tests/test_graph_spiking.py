"""Spiking mode: the AND gate of Bernoulli spikes has the product rule's expectation; averaged spiking
dynamics converge to the deterministic ones as the population of samples grows."""

import pytest
import torch

from bdh.graph import random_bdh_graph
from bdh.graph.simulator import table1_program
from bdh.graph.spiking import Spiker

F64 = torch.float64


def test_spike_counts_are_unbiased_bernoulli():
    q = torch.tensor([0.0, 0.3, 1.0, 2.7], dtype=F64).repeat(40000, 1)
    s = Spiker(samples=1, seed=0).sample(q)
    assert set(s[:, :3].unique().tolist()) <= {0.0, 1.0}  # q <= 1: a single Bernoulli spike
    assert set(s[:, 3].unique().tolist()) <= {2.0, 3.0}  # 2 sure spikes + Bernoulli(0.7)
    sd = (0.3 * 0.7 / 40000) ** 0.5
    assert abs(float(s[:, 1].mean()) - 0.3) < 5 * sd and abs(float(s[:, 3].mean()) - 2.7) < 5 * sd
    assert float(s[:, 0].max()) == 0.0 and float(s[:, 2].min()) == 1.0
    half = Spiker(samples=1, quantum=0.5, seed=1).sample(torch.full((1000,), 0.25, dtype=F64))
    assert set(half.unique().tolist()) <= {0.0, 0.5}
    with pytest.raises(ValueError, match="only non-negative"):
        Spiker().sample(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="samples=0"):
        Spiker(samples=0)


def test_and_gate_expectation_equals_hebbian_product():
    """Round 4l+1 with spikes: E[w S_Y(i) S_X(j)] = w Y(i) X(j) for every edge (batch rows = independent trials)."""
    model = random_bdh_graph(12, 40, n_layer=1, seed=2, scale=1.0, spiker=Spiker(samples=1, seed=3))
    R = 20000
    g = torch.Generator().manual_seed(0)
    X, Y = torch.rand(1, 12, generator=g, dtype=F64), torch.rand(1, 12, generator=g, dtype=F64)
    state = model.init_state(R)
    state.nodes["X"], state.nodes["Y"] = X.repeat(R, 1), Y.repeat(R, 1)
    hebb = table1_program(1)[1]
    model.engine.run_round(hebb, state)
    Gs, u = model.graphs["Gs"], model.u
    expected = Gs.weight * Y[0, Gs.src] * X[0, Gs.dst] * u  # then decayed by u in the same round
    got = state.edges["sigma_0"].mean(0)
    sd = (Gs.weight * u) / R**0.5  # each product of two Bernoullis has variance <= 1/4
    assert ((got - expected).abs() <= 5 * sd + 1e-12).all()
    assert float((got - expected).abs().max()) > 0  # it really was stochastic
    assert not torch.equal(state.edges["sigma_0"][0], state.edges["sigma_0"][1])


def test_averaged_spiking_dynamics_converge_to_deterministic():
    n, m, L = 24, 150, 2
    g = torch.Generator().manual_seed(3)
    x_in = torch.rand(1, 6, n, generator=g, dtype=F64) * (torch.rand(1, 6, n, generator=g) < 0.5)
    det, det_state = random_bdh_graph(n, m, n_layer=L, seed=1, scale=1.0).run(x_in)
    errs = []
    for K in (4, 64, 1024, 16384):
        e = []
        for seed in range(3):
            model = random_bdh_graph(n, m, n_layer=L, seed=1, scale=1.0, spiker=Spiker(samples=K, seed=seed))
            out, st = model.run(x_in)
            sig_err = (st.edges["sigma_0"] - det_state.edges["sigma_0"]).abs().max()
            e.append(float((out - det).abs().max()) + float(sig_err))
        errs.append(sum(e) / len(e))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs  # monotone in the number of samples
    assert errs[0] / errs[-1] > 10  # ~ sqrt(16384 / 4) = 64 for a 1/sqrt(K) law
    assert errs[-1] < 0.05
