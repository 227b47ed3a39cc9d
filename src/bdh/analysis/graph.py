"""The emergent neuron graph of BDH-GPU: G_x = D_x E and G_y = D_y E (paper §5.5, Figs. 9-11).

**Orientation** (spec §1: H(i, j) is the edge from i to j). With the model's tensors, E maps the gated y of all
n neurons to d (`decoder`, (h N, d)) and D_x maps d to the x-neurons of a head (`encoder[b]`, (d, N)). The block
of G_x from source head a to target head b is

    G_x^(ab) = decoder[a N:(a+1) N] @ encoder[b]          # (N, N): row i = source y-neuron, column j = target x-neuron

so G^(ab)[i, j] is the weight of the edge i -> j (y_i excites x_j through E and D_x). G_y uses `encoder_v` (D_y).

**Heavy tail.** Entries of a block are compared with Gaussian noise fitted to the bulk: centre = median,
scale s = 1.4826 * MAD (robust to the tail). `tail_ratio[k]` = observed fraction above median + k s divided by
the Gaussian fraction above k standard deviations; ~1 for Gaussian noise, >> 1 for a heavy right tail.
`heavy_right_tail` = at least 20 entries above median + 4 s, more than 10 times the Gaussian expectation and
more than twice as many as below median - 4 s.
`skew_mass` is the spec's eq. 13 check: sum over x > 0 of freq(x) - min(freq(x), freq(-x)) on a histogram
symmetric about 0.

**Threshold beta.** By default beta is where the heavy tail separates from the noise: the smallest x above the
median with at least `min_edges` entries >= x and at least 10 times the Gaussian expectation there. If no such x
exists (no heavy tail), beta = median + 3 s. Sweeps use beta = median + k s for the given k.

**Modularity.** The thresholded graph G_{>=beta} is taken unweighted and undirected (an edge when i -> j or
j -> i), without self-loops; Newman modularity Q is the best of `runs` Leiden (default) or Louvain runs
(a lower bound of the maximum). Baselines with the same number of nodes and edges: G(n, m) (Erdos-Renyi), and
the paper's random low-rank product (P1 P2^T)_{>=beta'} with P ~ N(0, 1)^(n x d), beta' set so that it keeps the
same number of directed edges; and (not in the paper) a degree-preserving rewiring of the graph itself, which
separates community structure from hubs (a core-periphery graph has lower Q than G(n, m)).

**Degrees.** Out-degree of i (edges i -> j) and in-degree of j of the directed graph, fitted with the
`powerlaw` package (discrete, xmin by minimal KS distance); `R > 0` favours the power law over a lognormal
(log-likelihood ratio, normalised; p its significance).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

WHICH = ("x", "y")
_GAUSS_TAIL = {k: 0.5 * math.erfc(k / math.sqrt(2)) for k in (2, 3, 4, 5, 6)}


def graph_block(model, src_head: int, dst_head: int, which: str = "x") -> torch.Tensor:
    """G^(src, dst) = E-rows of `src_head` times D_x (which="x") or D_y ("y") of `dst_head`: (N, N) float32."""
    c = model.config
    if which not in WHICH:
        raise ValueError(f"which={which!r}: expected 'x' (G_x = D_x E) or 'y' (G_y = D_y E)")
    for name, h in (("src_head", src_head), ("dst_head", dst_head)):
        if not 0 <= h < c.n_head:
            raise ValueError(f"{name}={h}: expected 0 <= head < n_head={c.n_head}")
    enc = model.encoder if which == "x" else model.encoder_v
    with torch.no_grad():
        return (model.decoder[src_head * c.N : (src_head + 1) * c.N].float() @ enc[dst_head].float()).cpu()


# ----------------------------------------------------------------------------- heavy tail
def _sample(values: np.ndarray, max_n: int, seed: int) -> np.ndarray:
    if values.size <= max_n:
        return values
    return np.random.default_rng(seed).choice(values, max_n, replace=False)


def tail_stats(G, *, max_sample: int = 2_000_000, seed: int = 0) -> dict:
    """Robust Gaussian fit to the bulk of the entries and how heavy the right (and left) tails are."""
    from scipy import stats

    v = np.asarray(G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else G, dtype=np.float64).ravel()
    if v.size < 10:
        raise ValueError(f"tail_stats: need at least 10 entries, got {v.size}")
    v = _sample(v, max_sample, seed)
    med = float(np.median(v))
    s = 1.4826 * float(np.median(np.abs(v - med)))
    if s == 0:
        s = float(v.std()) or 1.0
    z = (v - med) / s
    right = {k: float((z > k).mean()) for k in _GAUSS_TAIL}
    left = {k: float((z < -k).mean()) for k in _GAUSS_TAIL}
    lim = float(np.abs(v).max())
    hist, edges = np.histogram(v, bins=200, range=(-lim, lim))
    pos = hist[100:]
    neg = hist[:100][::-1]
    skew_mass = float((pos - np.minimum(pos, neg)).sum() / v.size)
    nt = stats.normaltest(_sample(v, 5000, seed + 1)) if v.size >= 20 else None
    return {
        "n_entries": int(v.size), "median": med, "robust_sigma": s, "mean": float(v.mean()), "std": float(v.std()),
        "max": float(v.max()), "min": float(v.min()),
        "skewness": float(stats.skew(v)), "excess_kurtosis": float(stats.kurtosis(v)),
        "tail_ratio": {str(k): right[k] / g for k, g in _GAUSS_TAIL.items()},
        "left_tail_ratio": {str(k): left[k] / g for k, g in _GAUSS_TAIL.items()},
        "skew_mass": skew_mass,
        "normaltest_p": None if nt is None else float(nt.pvalue),
        "heavy_right_tail": bool(right[4] * v.size >= 20 and right[4] / _GAUSS_TAIL[4] > 10 and right[4] > 2 * left[4]),
    }


def tail_threshold(G, *, factor: float = 10.0, min_edges: int = 20, fallback_k: float = 3.0) -> tuple[float, str]:
    """beta where the right tail separates from the fitted Gaussian (see module doc), and how it was chosen."""
    v = np.sort(np.asarray(G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else G, dtype=np.float64).ravel())
    med = float(np.median(v))
    s = 1.4826 * float(np.median(np.abs(v - med))) or float(v.std()) or 1.0
    n = v.size
    ks = np.linspace(1.0, 12.0, 111)
    for k in ks:
        x = med + k * s
        count = n - np.searchsorted(v, x, side="left")
        expect = n * 0.5 * math.erfc(k / math.sqrt(2))
        if count >= min_edges and count >= factor * expect:
            return float(x), f"tail separates from Gaussian noise at median + {k:.1f} sigma"
    return med + fallback_k * s, f"no heavy tail found: median + {fallback_k:g} sigma"


# ----------------------------------------------------------------------------- graphs and modularity
def threshold_edges(G, beta: float, *, below: bool = False, self_loops: bool = False) -> np.ndarray:
    """(m, 2) directed edges i -> j with G[i, j] >= beta (or <= -beta with `below`: the inhibitory part)."""
    g = G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else np.asarray(G)
    mask = g <= -beta if below else g >= beta
    if not self_loops and g.shape[0] == g.shape[1]:
        np.fill_diagonal(mask, False)
    return np.argwhere(mask).astype(np.int64)


def _undirected(n: int, edges: np.ndarray):
    import igraph as ig

    if len(edges):
        e = np.sort(edges, axis=1)
        e = np.unique(e[e[:, 0] != e[:, 1]], axis=0)
    else:
        e = np.zeros((0, 2), dtype=np.int64)
    return ig.Graph(n=n, edges=e.tolist(), directed=False)


def modularity(n: int, edges: np.ndarray, *, runs: int = 5, seed: int = 0, method: str = "leiden") -> dict:
    """Best Newman modularity over `runs` community searches of the undirected simple graph on n nodes."""
    if method not in ("leiden", "louvain"):
        raise ValueError(f"method={method!r}: expected 'leiden' or 'louvain'")
    g = _undirected(n, np.asarray(edges).reshape(-1, 2))
    if g.ecount() == 0:
        return {"Q": 0.0, "communities": 0, "edges_undirected": 0, "membership": [0] * n}
    best_q, best_m = -1.0, None
    for r in range(runs):
        if method == "leiden":
            import leidenalg as la

            part = la.find_partition(g, la.ModularityVertexPartition, seed=seed + r)
            memb = part.membership
        else:
            import random as _random

            import igraph as ig

            ig.set_random_number_generator(_random.Random(seed + r))
            memb = g.community_multilevel().membership
        q = g.modularity(memb)
        if q > best_q:
            best_q, best_m = q, memb
    sizes = np.bincount(best_m)
    non_trivial = int((sizes > 1).sum())
    return {"Q": float(best_q), "communities": non_trivial, "edges_undirected": int(g.ecount()), "membership": list(best_m)}


def random_baselines(n: int, m_directed: int, m_undirected: int, d: int, *, runs: int = 5, seed: int = 0,
                     method: str = "leiden", edges: np.ndarray | None = None) -> dict:
    """Modularity of G(n, m) with the same undirected edge count, of (P1 P2^T)_{>=beta'} with m directed edges,
    and (when `edges` is given) of a degree-preserving rewiring of the graph itself (10 m swaps)."""
    import random as _random

    import igraph as ig

    ig.set_random_number_generator(_random.Random(seed))
    er = ig.Graph.Erdos_Renyi(n=n, m=min(m_undirected, n * (n - 1) // 2), directed=False)
    q_er = modularity(n, np.array(er.get_edgelist(), dtype=np.int64).reshape(-1, 2), runs=runs, seed=seed, method=method)
    q_deg = None
    if edges is not None and len(edges):
        g = _undirected(n, np.asarray(edges).reshape(-1, 2))
        g.rewire(n=10 * g.ecount())
        q_deg = modularity(n, np.array(g.get_edgelist(), dtype=np.int64).reshape(-1, 2), runs=runs, seed=seed,
                           method=method)["Q"]
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((n, d)).astype(np.float32)
    M = P @ Q.T
    np.fill_diagonal(M, -np.inf)
    if m_directed > 0:
        flat = M.ravel()
        beta = float(np.partition(flat, flat.size - m_directed)[flat.size - m_directed])
        edges = np.argwhere(M >= beta)
    else:
        beta, edges = float("inf"), np.zeros((0, 2), dtype=np.int64)
    q_lr = modularity(n, edges, runs=runs, seed=seed, method=method)
    return {"gnm_Q": q_er["Q"], "lowrank_Q": q_lr["Q"], "degree_preserving_Q": q_deg, "lowrank_beta": beta, "lowrank_d": d}


def degree_fit(degrees, *, min_nonzero: int = 30) -> dict:
    """Power-law fit of a degree sequence (powerlaw package, discrete) and its comparison with a lognormal."""
    deg = np.asarray(degrees, dtype=np.int64)
    nz = deg[deg > 0]
    out = {"n": int(deg.size), "nonzero": int(nz.size), "mean": float(deg.mean()) if deg.size else 0.0,
           "max": int(deg.max()) if deg.size else 0}
    if nz.size < min_nonzero or np.unique(nz).size < 5:
        return {**out, "fit": None, "reason": f"too few non-zero degrees ({nz.size}) or distinct values to fit"}
    import powerlaw

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            fit = powerlaw.Fit(nz, discrete=True, verbose=False)
            R, p = fit.distribution_compare("power_law", "lognormal", normalized_ratio=True)
    return {**out, "fit": {
        "alpha": float(fit.power_law.alpha), "xmin": float(fit.power_law.xmin), "sigma": float(fit.power_law.standard_err if hasattr(fit.power_law, "standard_err") else fit.power_law.sigma),
        "ks_D": float(fit.power_law.D), "n_tail": int((nz >= fit.power_law.xmin).sum()),
        "R_powerlaw_vs_lognormal": float(R), "p": float(p),
        "preferred": "power_law" if (R > 0 and p < 0.1) else ("lognormal" if (R < 0 and p < 0.1) else "undecided"),
    }}


def degrees(n: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(out-degree, in-degree) of the directed edge list on n nodes."""
    e = np.asarray(edges).reshape(-1, 2)
    return np.bincount(e[:, 0], minlength=n), np.bincount(e[:, 1], minlength=n)


# ----------------------------------------------------------------------------- whole analysis of one block
def analyze_block(G, d: int, *, beta: float | None = None, sweep_k=(3.0, 4.0, 5.0, 6.0), runs: int = 5,
                  seed: int = 0, method: str = "leiden", baselines: bool = True, inhibitory: bool = True) -> dict:
    """Tail statistics, threshold, modularity (with sweep and baselines), degree fits of one (N, N) block."""
    g = G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else np.asarray(G)
    n = g.shape[0]
    ts = tail_stats(g, seed=seed)
    how = "given"
    if beta is None:
        beta, how = tail_threshold(g)
    edges = threshold_edges(g, beta)
    mod = modularity(n, edges, runs=runs, seed=seed, method=method)
    res = {"n": n, "tail": ts, "beta": float(beta), "beta_rule": how, "edges": int(len(edges)),
           "modularity": {k: v for k, v in mod.items() if k != "membership"}}
    if baselines:
        res["baselines"] = random_baselines(n, len(edges), mod["edges_undirected"], d, runs=runs, seed=seed, method=method,
                                            edges=edges)
    if inhibitory:
        inh = threshold_edges(g, beta, below=True)
        res["inhibitory"] = {"edges": int(len(inh)), "Q": modularity(n, inh, runs=runs, seed=seed, method=method)["Q"]}
    sweep = []
    for k in sweep_k:
        b = ts["median"] + k * ts["robust_sigma"]
        e = threshold_edges(g, b)
        row = {"k": k, "beta": b, "edges": int(len(e)), "Q": modularity(n, e, runs=runs, seed=seed, method=method)["Q"]}
        if baselines and len(e):
            mu = _undirected(n, e).ecount()
            bl = random_baselines(n, len(e), mu, d, runs=max(1, runs // 2), seed=seed, method=method, edges=e)
            row.update({"gnm_Q": bl["gnm_Q"], "lowrank_Q": bl["lowrank_Q"], "degree_preserving_Q": bl["degree_preserving_Q"]})
        sweep.append(row)
    res["sweep"] = sweep
    out_d, in_d = degrees(n, edges)
    res["out_degree"] = degree_fit(out_d)
    res["in_degree"] = degree_fit(in_d)
    res["_membership"] = mod["membership"]
    res["_edges"] = edges
    return res


def neuron_graph(model, which: str = "x", *, blocks: list[tuple[int, int]] | None = None, **kw) -> dict:
    """`analyze_block` for every head block (src, dst) of G_x or G_y (or the given `blocks`)."""
    h = model.config.n_head
    blocks = blocks or [(a, b) for a in range(h) for b in range(h)]
    return {f"{a}->{b}": analyze_block(graph_block(model, a, b, which), model.config.D, **kw) for a, b in blocks}


# ----------------------------------------------------------------------------- export
def export_graph(path: str | os.PathLike, n: int, edges: np.ndarray, weights=None, *, membership=None,
                 src_head: int | None = None, dst_head: int | None = None) -> Path:
    """Write a directed thresholded graph as a CSV edge list (`.csv`: source,target,weight) or GraphML (`.graphml`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    e = np.asarray(edges).reshape(-1, 2)
    w = None if weights is None else np.asarray(weights, dtype=float).ravel()
    if w is not None and len(w) != len(e):
        raise ValueError(f"export_graph: {len(w)} weights for {len(e)} edges")
    if path.suffix == ".csv":
        with open(path, "w", encoding="utf-8") as f:
            f.write("source,target,weight\n" if w is not None else "source,target\n")
            for q, (i, j) in enumerate(e):
                f.write(f"{i},{j},{w[q]:.6g}\n" if w is not None else f"{i},{j}\n")
        return path
    if path.suffix != ".graphml":
        raise ValueError(f"export_graph: {path.name!r}: expected a .csv or .graphml file name")
    import igraph as ig

    g = ig.Graph(n=n, edges=e.tolist(), directed=True)
    g.vs["neuron"] = list(range(n))
    if membership is not None:
        g.vs["community"] = [int(m) for m in membership]
    if w is not None:
        g.es["weight"] = w.tolist()
    if src_head is not None:
        g["src_head"], g["dst_head"] = src_head, dst_head
    g.write_graphml(str(path))
    return path


def block_edge_weights(G, edges: np.ndarray) -> np.ndarray:
    g = G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else np.asarray(G)
    e = np.asarray(edges).reshape(-1, 2)
    return g[e[:, 0], e[:, 1]]


# ----------------------------------------------------------------------------- plots
def plot_block_histograms(model, path, which: str = "x", results: dict | None = None) -> None:
    """Histogram (log counts) of every head block of G with the fitted Gaussian and the threshold beta."""
    from .plotting import plt_figure, save

    h = model.config.n_head
    fig, axes = plt_figure(h, h, width=2.6 * h, height=2.2 * h)
    for a in range(h):
        for b in range(h):
            ax = axes[a * h + b]
            v = graph_block(model, a, b, which).numpy().ravel()
            med = np.median(v)
            s = 1.4826 * np.median(np.abs(v - med)) or v.std() or 1.0
            counts, edges, _ = ax.hist(v, bins=120, log=True, color="#4477aa")
            xs = 0.5 * (edges[1:] + edges[:-1])
            gauss = v.size * (edges[1] - edges[0]) * np.exp(-0.5 * ((xs - med) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            ax.plot(xs, np.maximum(gauss, 0.5), color="#cc6677", lw=1)
            ax.set_ylim(0.5, counts.max() * 2)
            if results is not None and f"{a}->{b}" in results:
                ax.axvline(results[f"{a}->{b}"]["beta"], color="k", ls="--", lw=0.8)
            ax.set_title(f"G_{which} {a}→{b}", fontsize=8)
            ax.tick_params(labelsize=6)
    save(fig, path)


def plot_degrees(result: dict, path, title: str = "") -> None:
    """Complementary CDFs of in- and out-degrees on log-log axes."""
    from .plotting import plt_figure, save

    out_d, in_d = degrees(result["n"], result["_edges"])
    fig, (ax,) = plt_figure(1, 1, width=4.5, height=3.5)
    for deg, lab in ((out_d, "out-degree"), (in_d, "in-degree")):
        d = np.sort(deg[deg > 0])
        if d.size:
            ax.loglog(d, 1.0 - np.arange(d.size) / d.size, marker=".", ls="none", label=lab)
    ax.set_xlabel("degree")
    ax.set_ylabel("P(degree >= x)")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    save(fig, path)


def plot_modularity_sweep(result: dict, path, title: str = "") -> None:
    from .plotting import plt_figure, save

    sw = [r for r in result["sweep"] if r["edges"] > 0]
    fig, (ax,) = plt_figure(1, 1, width=4.5, height=3.5)
    xs = [r["edges"] for r in sw]
    ax.semilogx(xs, [r["Q"] for r in sw], marker="o", label="G ≥ β")
    if sw and "gnm_Q" in sw[0]:
        ax.semilogx(xs, [r.get("gnm_Q") for r in sw], marker="s", label="G(n, m)")
        ax.semilogx(xs, [r.get("lowrank_Q") for r in sw], marker="^", label="random low-rank")
        ax.semilogx(xs, [r.get("degree_preserving_Q") for r in sw], marker="v", label="same degrees, rewired")
    ax.set_xlabel("edges m")
    ax.set_ylabel("modularity Q (best of runs)")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    save(fig, path)
