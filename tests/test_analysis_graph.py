"""Neuron graph G = D E: orientation, heavy-tail detection, planted communities, degree fits, export."""

import numpy as np
import pytest
import torch

from bdh import BDH
from bdh.analysis.graph import (
    analyze_block, degree_fit, export_graph, graph_block, tail_stats, tail_threshold,
)

from conftest import tiny_config


def test_block_orientation_is_y_of_source_to_x_of_target():
    torch.manual_seed(0)
    m = BDH(tiny_config())
    N = m.config.N
    G = graph_block(m, 1, 2, "x")
    i, j = 5, 9
    # y = e_i in head 1 -> E y = decoder row -> x input of head 2 through D_x = encoder[2]
    y = torch.zeros(m.config.n)
    y[1 * N + i] = 1.0
    assert torch.allclose((y @ m.decoder @ m.encoder[2])[j], G[i, j])
    assert torch.allclose(graph_block(m, 1, 2, "y"), m.decoder[N : 2 * N] @ m.encoder_v[2])
    with pytest.raises(ValueError, match="which"):
        graph_block(m, 0, 0, "z")


def test_gaussian_noise_has_no_heavy_tail_and_a_planted_tail_is_found():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((256, 256))
    ts = tail_stats(g)
    assert not ts["heavy_right_tail"]
    assert 0.8 < ts["tail_ratio"]["3"] < 1.2 and abs(ts["skew_mass"]) < 0.03
    assert tail_threshold(g)[1].startswith("no heavy tail")
    low_rank = rng.standard_normal((256, 64)) @ rng.standard_normal((64, 256))  # the paper's random baseline
    assert not tail_stats(low_rank)["heavy_right_tail"]
    h = g.copy()
    mask = rng.random(h.shape) < 0.01
    h[mask] += 4 + rng.exponential(4, mask.sum())
    ts = tail_stats(h)
    assert ts["heavy_right_tail"] and ts["tail_ratio"]["4"] > 50 and ts["skew_mass"] > 0.005
    beta, how = tail_threshold(h)
    assert how.startswith("tail separates") and 2 < beta < 5


def test_planted_communities_are_modular_and_recovered():
    import igraph as ig

    rng = np.random.default_rng(1)
    n, k = 160, 4
    memb = np.repeat(np.arange(k), n // k)
    g = rng.standard_normal((n, n))
    same = memb[:, None] == memb[None, :]
    g[same & (rng.random((n, n)) < 0.15)] += 8
    r = analyze_block(g, d=16, runs=2, sweep_k=(3.0,))
    assert r["tail"]["heavy_right_tail"]
    assert r["modularity"]["Q"] > 0.6 and r["modularity"]["communities"] == k
    assert r["modularity"]["Q"] > r["baselines"]["gnm_Q"] + 0.3
    assert r["modularity"]["Q"] > r["baselines"]["lowrank_Q"] + 0.3
    assert r["modularity"]["Q"] > r["baselines"]["degree_preserving_Q"] + 0.3
    assert ig.compare_communities(memb.tolist(), r["_membership"], method="nmi") > 0.95
    assert r["sweep"][0]["edges"] >= r["edges"] * 0.9
    # no planted structure: no better than its G(n, m) baseline
    r0 = analyze_block(rng.standard_normal((n, n)), d=16, beta=1.5, runs=2, sweep_k=(), inhibitory=False)
    assert abs(r0["modularity"]["Q"] - r0["baselines"]["gnm_Q"]) < 0.05


def test_degree_fit_prefers_power_law_on_pareto_and_refuses_tiny_samples():
    rng = np.random.default_rng(2)
    deg = np.floor(rng.pareto(1.5, 3000) + 1).astype(int)
    f = degree_fit(deg)["fit"]
    assert 2.0 < f["alpha"] < 3.0
    assert f["preferred"] in ("power_law", "undecided")
    assert degree_fit([1, 2, 3])["fit"] is None


def test_export_edge_list_and_graphml(tmp_path):
    import igraph as ig

    edges = np.array([[0, 1], [1, 2], [2, 0], [3, 1]])
    w = np.array([1.5, 2.0, 3.0, 1.25])
    p = export_graph(tmp_path / "g.graphml", 5, edges, w, membership=[0, 0, 0, 1, 1])
    g = ig.Graph.Read_GraphML(str(p))
    assert g.is_directed() and g.vcount() == 5 and g.ecount() == 4 and g.es["weight"] == w.tolist()
    assert g.vs["community"] == [0, 0, 0, 1, 1]
    lines = export_graph(tmp_path / "g.csv", 5, edges, w).read_text().splitlines()
    assert lines[0] == "source,target,weight" and lines[1] == "0,1,1.5" and len(lines) == 5
    with pytest.raises(ValueError, match="graphml"):
        export_graph(tmp_path / "g.txt", 5, edges)
