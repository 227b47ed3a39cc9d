"""The BDH graph simulator (Def. 3, Table 1(b)) equals its vector forms: eq. 6, eq. 7 (eq. 9), Claim 3.

Also the three gaps of the spec (σ orientation, order/reset between tokens, threshold), and locality.
"""

import pytest
import torch

from bdh.graph import BDHGraph, BlockGraph, Graph, claim3_hubs, random_bdh_graph, sign_split, top_edges_lowrank
from bdh.graph.engine import EdgeRule, Engine, GraphState, NodeRule, Round
from bdh.graph.simulator import table1_program, threshold
from bdh.graph.vector_form import eq6_run, normfree_rho_run, normfree_sigma_run

F64 = torch.float64


def _inputs(B, T, n, seed, density=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, n, generator=g, dtype=F64) * (torch.rand(B, T, n, generator=g) < density)


def _eq6_mats(model: BDHGraph):
    G = model.graphs
    Gx = G["Gx_e"].dense() - G["Gx_i"].dense()  # [j, i]
    Gy = G["Gy_e"].dense() - G["Gy_i"].dense()
    Gs = G["Gs"].dense().T  # [i, j]
    U = torch.ones(model.n, model.n, dtype=F64)
    U[G["Gs"].src, G["Gs"].dst] = model.u
    return Gx, Gy, Gs, U


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("n,m,L,seed", [(24, 150, 3, 1), (40, 400, 2, 2), (17, 100, 4, 3)])
def test_simulator_equals_eq6(fast, n, m, L, seed):
    model = random_bdh_graph(n, m, n_layer=L, seed=seed, fast=fast, scale=1.0)
    x_in = _inputs(2, 7, n, seed)
    out, state = model.run(x_in)
    ref, sigma, y = eq6_run(*_eq6_mats(model), x_in, L)
    assert (out - ref).abs().max() <= 1e-9
    for l in range(L):
        for b in range(2):
            assert (model.sigma_dense(state, l, b) - sigma[l][b]).abs().max() <= 1e-9
    assert (state.nodes["Y"] - y).abs().max() <= 1e-9
    # not a degenerate run: synapses were written and the layers changed X
    assert min(float(s.abs().max()) for s in sigma) > 1e-3
    assert (out - x_in).abs().max() > 1e-2


def test_fast_paths_equal_reference_with_separate_y_input():
    fast = random_bdh_graph(30, 300, n_layer=2, seed=5, scale=1.0)
    ref = random_bdh_graph(30, 300, n_layer=2, seed=5, scale=1.0, fast=False)
    x_in, y_in = _inputs(3, 5, 30, 11), _inputs(3, 5, 30, 12)
    a, sa = fast.run(x_in, y_in=y_in)
    b, sb = ref.run(x_in, y_in=y_in)
    assert (a - b).abs().max() <= 1e-12
    assert all((sa.edges[k] - sb.edges[k]).abs().max() <= 1e-12 for k in sa.edges)
    r, _, _ = eq6_run(*_eq6_mats(fast), x_in, 2, y_in=y_in)
    assert (a - r).abs().max() <= 1e-9


# ----------------------------------------------------------------------------- the three gaps
def test_gap1_table1_read_is_transposed_eq6():
    """Table 1's literal read A(j) += X(i) sigma(i,j) equals eq. 6 with sigma^T, and differs from eq. 6."""
    lit = random_bdh_graph(24, 200, n_layer=3, seed=7, scale=1.0, orientation="table1")
    ours = random_bdh_graph(24, 200, n_layer=3, seed=7, scale=1.0)
    x_in = _inputs(1, 8, 24, 3)
    out_lit, _ = lit.run(x_in)
    out_ours, _ = ours.run(x_in)
    mats = _eq6_mats(lit)
    assert (out_lit - eq6_run(*mats, x_in, 3, orientation="table1")[0]).abs().max() <= 1e-9
    assert (out_ours - eq6_run(*mats, x_in, 3)[0]).abs().max() <= 1e-9
    assert (out_lit - out_ours).abs().max() > 1e-3  # the orientation matters


def test_gap2_decay_placement():
    """Decay in round 4l (Table 1 literal) stores sigma' with u ⊙ sigma' = sigma of eq. 6's recursion on the
    same writes; with u = 1 both placements are the same model."""
    x_in = _inputs(1, 6, 20, 4)
    a = random_bdh_graph(20, 150, n_layer=2, seed=8, scale=1.0, decay_round="4l")
    b = random_bdh_graph(20, 150, n_layer=2, seed=8, scale=1.0)
    out_a, st_a = a.run(x_in)
    out_b, _ = b.run(x_in)
    ref_a, sig_a, _ = eq6_run(*_eq6_mats(a), x_in, 2, decay_round="4l")
    assert (out_a - ref_a).abs().max() <= 1e-9
    assert (out_a - out_b).abs().max() > 1e-4  # with u < 1 the placement changes the function
    # one token from the empty state: sigma_1 = (W) ⊙ u (ours) vs sigma'_1 = W (literal)
    a1, s1 = a.run(x_in[:, :1])
    b1, t1 = b.run(x_in[:, :1])
    U = _eq6_mats(a)[3]
    for l in range(2):
        assert (a.sigma_dense(s1, l) * U - b.sigma_dense(t1, l)).abs().max() <= 1e-12
    ones = dict(scale=1.0, retention=(1.0, 1.0))
    o1, _ = random_bdh_graph(20, 150, n_layer=2, seed=8, decay_round="4l", **ones).run(x_in)
    o2, _ = random_bdh_graph(20, 150, n_layer=2, seed=8, **ones).run(x_in)
    assert (o1 - o2).abs().max() <= 1e-12


def test_gap2_carrying_y_between_tokens_is_dead():
    """If Y were carried (or reset) instead of receiving the token's value pattern, nothing is ever written."""
    model = random_bdh_graph(20, 150, n_layer=3, seed=9, scale=1.0)
    x_in = _inputs(1, 6, 20, 5)
    state = model.init_state(1)
    for t in range(6):
        y_carried = state.nodes["Y"].clone()
        model.step(state, x_in[:, t], y_in=y_carried)  # Y <- its own previous value: "carried"
    assert all(float(s.abs().max()) == 0.0 for s in state.edges.values())
    assert float(state.nodes["Y"].abs().max()) == 0.0
    live = model.init_state(1)
    for t in range(6):
        model.step(live, x_in[:, t])  # the default: Y <- y_in = x_in
    assert min(float(s.abs().max()) for s in live.edges.values()) > 1e-3


def test_gap3_threshold_is_a_node_local_comparator():
    e = torch.tensor([[0.5, 2.0, 1.0, 0.0]], dtype=F64)
    i = torch.tensor([[1.0, 0.5, 1.0, 0.0]], dtype=F64)
    assert torch.equal(threshold(e, i), torch.tensor([[0.0, 1.5, 0.0, 0.0]], dtype=F64))
    # every threshold rule in the program reads only variables of its own node
    for rnd in table1_program(2):
        for rule in rnd.comp:
            if isinstance(rule, NodeRule) and rule.writes in ("X", "Y"):
                assert set(rule.reads) <= {"X", "Y", "Xe", "Xi", "Ye", "Yi"}


# ----------------------------------------------------------------------------- locality
def test_rules_are_local_by_construction():
    """Edge rules read only src/dst/edge variables; node rules are elementwise: permuting the neurons
    (and relabelling the edges) permutes the whole trajectory."""
    model = random_bdh_graph(18, 120, n_layer=2, seed=10, scale=1.0)
    for rnd in model.program:
        for r in rnd.comm:
            assert isinstance(r, EdgeRule) and r.target[0] in ("src", "dst", "edge")
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(0))
    inv = torch.argsort(perm)

    def relabel(g):  # node i -> inv[i]
        return Graph(inv[g.src], inv[g.dst], g.weight, g.n_src, g.n_dst)

    G = model.graphs
    permuted = BDHGraph(*(relabel(G[k]) for k in ("Gx_e", "Gx_i", "Gy_e", "Gy_i", "Gs")), u=model.u, n_layer=2)
    x_in = _inputs(1, 5, 18, 6)
    out, _ = model.run(x_in)
    out_p, _ = permuted.run(x_in[:, :, perm])
    assert (out[:, :, perm] - out_p).abs().max() <= 1e-12


def test_engine_sums_messages_synchronously():
    """Two rules in one communication sub-round both read the state at the start of the sub-round."""
    g = Graph(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0], dtype=F64), 2, 2)
    eng = Engine({"G": g})
    st = GraphState({"a": torch.tensor([[1.0, 2.0]], dtype=F64), "b": torch.zeros(1, 2, dtype=F64)}, {})
    rnd = Round("swap", comm=(EdgeRule("a(i) -> b(j)", "G", ("dst", "b"), src=("a",)),
                              EdgeRule("b(i) -> a(j)", "G", ("dst", "a"), src=("b",))))
    eng.run_round(rnd, st)
    assert st.nodes["b"].tolist() == [[2.0, 1.0]] and st.nodes["a"].tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="written by two"):
        Round("bad", comp=(NodeRule("r1", "a", ("a",), torch.relu), NodeRule("r2", "a", ("a",), torch.relu)))


# ----------------------------------------------------------------------------- eq. 7 / eq. 9 / Claim 3
def _lowrank(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    D_x = torch.randn(n, d, generator=g, dtype=F64) / d**0.5
    D_y = torch.randn(n, d, generator=g, dtype=F64) / d**0.5
    E = torch.randn(d, n, generator=g, dtype=F64) / n**0.5
    u = 0.7 + 0.3 * torch.rand(n, generator=g, dtype=F64)
    return D_x, D_y, E, u


@pytest.mark.parametrize("hubs", [False, True], ids=["dense-split", "claim3-hubs"])
def test_normfree_equals_bdh_under_eq9(hubs):
    """Eq. 9: G_x^e - G_x^i = D_x E, G_y^e - G_y^i = D_y E, G_s = all ones, u(i,j) = u_j: the graph simulator
    equals BDH-Normfree (eq. 7); and rho = E sigma at every step (eq. 8 without LN)."""
    n, d, L = 16, 4, 2
    D_x, D_y, E, u = _lowrank(n, d, 0)
    if hubs:
        Gx_e, Gx_i = claim3_hubs(D_x, E, "G_x")
        Gy_e, Gy_i = claim3_hubs(D_y, E, "G_y")
    else:
        Gx_e, Gx_i = sign_split(D_x @ E, "G_x")
        Gy_e, Gy_i = sign_split(D_y @ E, "G_y")
    # G_s all ones: as a plain edge list, or as one dense block (the block fast path)
    Gs = BlockGraph(n, n) if hubs else Graph.from_dense(torch.ones(n, n, dtype=F64), "G_s")
    model = BDHGraph(Gx_e, Gx_i, Gy_e, Gy_i, Gs, u=u[Gs.dst], n_layer=L)
    x_in = _inputs(2, 6, n, 1, density=0.6)
    out, state = model.run(x_in)
    ref, sig_hist = normfree_sigma_run(D_x, D_y, E, u, x_in, L)
    out_rho, rho_hist = normfree_rho_run(D_x, D_y, E, u, x_in, L)
    assert (out - ref).abs().max() <= 1e-9
    assert (out_rho - ref).abs().max() <= 1e-9
    for sig_t, rho_t in zip(sig_hist, rho_hist):
        for s, r in zip(sig_t, rho_t):
            assert (E @ s - r).abs().max() <= 1e-9  # rho = E sigma
    for l in range(L):
        assert (model.sigma_dense(state, l, 1) - sig_hist[-1][l][1]).abs().max() <= 1e-9
    assert min(float(s.abs().max()) for s in sig_hist[-1]) > 1e-3


def test_block_graph_is_all_pairs_inside_blocks():
    g = BlockGraph(6, 3)
    M = torch.zeros(6, 6, dtype=F64)
    M[:3, :3] = M[3:, 3:] = 1
    assert torch.equal(g.dense(), M)
    assert g.src_pattern()[2] is None  # edges already in CSR (src-major) order
    with pytest.raises(ValueError, match="not a multiple"):
        BlockGraph(7, 3)
    # block fast path == gather/scatter reference on a Table-1 model with blocks as G_s
    base = random_bdh_graph(12, 60, n_layer=2, seed=4, scale=1.0)
    G = base.graphs
    u = 0.6 + 0.4 * torch.rand(72, generator=torch.Generator().manual_seed(1), dtype=F64)
    x_in = _inputs(2, 4, 12, 9)
    outs = [BDHGraph(G["Gx_e"], G["Gx_i"], G["Gy_e"], G["Gy_i"], BlockGraph(12, 6), u=u, n_layer=2, fast=f).run(x_in)
            for f in (True, False)]
    assert (outs[0][0] - outs[1][0]).abs().max() <= 1e-12
    assert (outs[0][1].edges["sigma_1"] - outs[1][1].edges["sigma_1"]).abs().max() <= 1e-12
    assert float(outs[0][1].edges["sigma_0"].abs().max()) > 1e-3


def test_claim3_sign_splitting_is_exact():
    n, d = 50, 6
    D, _, E, _ = _lowrank(n, d, 3)
    Ge, Gi = claim3_hubs(D, E)
    for g in (Ge.first, Ge.second, Gi.second):
        assert float(g.weight.min()) >= 0  # non-negative graphs
    assert Ge.first.n_dst == 2 * d  # 2d hub nodes
    assert (Ge.dense() - Gi.dense() - D @ E).abs().max() <= 1e-12
    nnz = int((D != 0).sum() + (E != 0).sum())
    assert Ge.num_edges + Gi.second.num_edges <= 2 * nnz  # O(nd) edges, D E never formed
    v = torch.rand(3, n, dtype=F64)
    assert (Ge.matvec(v) - Gi.matvec(v) - v @ (D @ E).T).abs().max() <= 1e-12
    # the dense sign split is exact too
    Pe, Pi = sign_split(D @ E)
    assert torch.equal(Pe.dense() - Pi.dense(), D @ E)


def test_top_edges_lowrank_matches_dense_topk():
    D, _, E, _ = _lowrank(37, 5, 4)
    M = D @ E  # (37, 37) [j, i]
    for m in (0, 1, 100, 37 * 37, 5000):
        src, dst, val = top_edges_lowrank(D, E, m, block_rows=8)
        k = min(m, 37 * 37)
        assert len(val) == k
        assert torch.equal(val, M[dst, src])
        if k:
            thresh = M.abs().flatten().topk(k).values[-1]
            assert float(val.abs().min()) >= float(thresh) - 1e-15
    with pytest.raises(ValueError, match="edge budget"):
        top_edges_lowrank(D, E, -1)


# ----------------------------------------------------------------------------- validation
def test_bad_inputs_raise_clear_errors():
    g = random_bdh_graph(10, 30, n_layer=1, seed=0)
    G = g.graphs
    with pytest.raises(ValueError, match="non-negative"):
        neg = Graph(G["Gx_e"].src, G["Gx_e"].dst, -G["Gx_e"].weight, 10, 10)
        BDHGraph(neg, G["Gx_i"], G["Gy_e"], G["Gy_i"], G["Gs"])
    with pytest.raises(ValueError, match=r"retention u must lie in \(0, 1\]"):
        too_big = torch.full((G["Gs"].num_edges,), 1.5, dtype=F64)
        BDHGraph(G["Gx_e"], G["Gx_i"], G["Gy_e"], G["Gy_i"], G["Gs"], u=too_big)
    with pytest.raises(ValueError, match="x_in has a negative entry"):
        g.step(g.init_state(1), -torch.ones(1, 10, dtype=F64))
    with pytest.raises(ValueError, match=r"x_in has shape \(1, 9\)"):
        g.step(g.init_state(1), torch.ones(1, 9, dtype=F64))
    with pytest.raises(ValueError, match="orientation='up'"):
        table1_program(1, orientation="up")
    with pytest.raises(ValueError, match="dst index 12 outside"):
        Graph(torch.tensor([0]), torch.tensor([12]), torch.tensor([1.0]), 10, 10)
