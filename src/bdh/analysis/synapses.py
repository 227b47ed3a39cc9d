"""The synapse state sigma of BDH-GPU (paper eq. 16) and the search for concept synapses (§6.3).

**Definition used here.** For layer l >= 1 (token positions tau, t from the start of the sequence):

    sigma_{t,l}(i, j) = sum_{tau <= t} y_{tau,l-1}(i) [x_{tau,l}^T U^{t+1-tau}]_j

- y_{tau,l-1} is the *gated* activity of the previous layer, `blocks.{l-1}.xy` = x_sparse * y_sparse (n-dim,
  all heads, global neuron index b*N + k, the order of the decoder rows E): the y that E maps into the next
  layer's input v*_{tau,l-1}.
- x_{tau,l} is `blocks.{l}.x_sparse` (before RoPE), the keys/queries of layer l.
- sigma_{t,l} is the state after token t, i.e. what token t+1 reads (eq. 6: sigma_t = (sigma_{t-1} + y_t x_t^T) U;
  the paper's sigma_{t-1,l} of eq. 16 is our sigma at t-1).
- U (`U="rope"`, the default) is the model's own transition: U = gamma_b R, where R rotates each RoPE pair
  (2m, 2m+1) of x-neurons by their frequency w_m per step and gamma_b is the damping of the x-neuron's head
  (1 without damping). It is oriented so that sigma_{t-1} x_t reproduces the model's attention:
  (sigma_{t-1,l} x_{t,l})(i) = sum_{tau<t} scores_l(t, tau) y_{tau,l-1}(i), with scores the model's
  gamma^(t-tau) <RoPE_t x_t, RoPE_tau x_tau> (tested). Row vectors x^T U^k equal (gamma^k R_{-k} x)^T: the
  x-neuron pairs are rotated back by k steps, which makes entries signed (the "RoPE-induced" negative entries
  the paper drops for Fig. 11). For slow neurons (low bands) the rotation over a sentence is negligible.
- `U="identity"`: sigma_t = sum_{tau<=t} y_tau x_tau^T, the plain non-negative Hebbian co-activation count.

sigma is n x n per layer and never built whole: pairs, traces over tokens and top-k entries are computed from
the recorded y and x (O(T) per pair; top-k in row blocks of O(block * n) memory).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Sequence

import numpy as np
import torch

from ..attention import rope, rope_cos_sin
from .record import encode_text, hook_name, run_with_cache, token_strings

U_MODES = ("rope", "identity")


@dataclasses.dataclass
class SigmaSpec:
    """What sigma needs from the model: per-neuron RoPE frequencies, heads, damping, and the U mode."""

    freqs: torch.Tensor  # (N,) fp64, turns per position
    n_head: int
    gamma: torch.Tensor | None = None  # (h,) retention per head, or None
    U: str = "rope"

    def __post_init__(self):
        if self.U not in U_MODES:
            raise ValueError(f"U={self.U!r}: expected one of {U_MODES}")

    @property
    def N(self) -> int:
        return int(self.freqs.shape[0])

    @property
    def n(self) -> int:
        return self.N * self.n_head

    def head_neurons(self, head: int) -> torch.Tensor:
        """Global indices b*N + k of the neurons of one head (for rows / cols)."""
        if not 0 <= head < self.n_head:
            raise ValueError(f"head={head}: expected 0 <= head < {self.n_head}")
        return torch.arange(head * self.N, (head + 1) * self.N)

    @classmethod
    def from_model(cls, model, U: str = "rope") -> "SigmaSpec":
        c = model.config
        if c.learned_damping:  # the trained per-head gamma (a per-neuron one is refused)
            lg = model.log_gamma.detach().cpu()
            if lg.dim() != 1:
                raise ValueError(f"damping={c.damping!r}: sigma here decays per head; a per-neuron damping is not "
                                 "supported (use None, 'alibi', a list or 'learned')")
            return cls(model.freqs.detach().cpu(), c.n_head, lg.exp(), U)
        d = c.decay()
        return cls(model.freqs.detach().cpu(), c.n_head, None if d is None else torch.tensor(d, dtype=torch.float64), U)


@dataclasses.dataclass
class SynapseInputs:
    """One sequence: y (T, n) = gated y of layer l-1, x (T, n) = x_sparse of layer l, tokens (T,)."""

    y: torch.Tensor
    x: torch.Tensor
    tokens: list[int]
    layer: int

    @property
    def T(self) -> int:
        return int(self.x.shape[0])


def synapse_activations(model, text_or_ids, layer: int) -> SynapseInputs:
    """Record y_{l-1} (`blocks.{l-1}.xy`) and x_l (`blocks.{l}.x_sparse`) for one text or (1, T) ids."""
    c = model.config
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < c.n_layer:
        raise ValueError(f"layer={layer!r}: sigma of layer l reads y of layer l-1; expected 1 <= layer < n_layer={c.n_layer}")
    ids = encode_text(model, text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    if ids.dim() == 1:
        ids = ids.view(1, -1)
    if ids.shape[0] != 1:
        raise ValueError(f"synapse_activations: expected one sequence, got ids of shape {tuple(ids.shape)}")
    _, cache = run_with_cache(model, ids, [hook_name(layer - 1, "xy"), hook_name(layer, "x_sparse")])
    return SynapseInputs(cache.neuron_flat(layer - 1, "xy"), cache.neuron_flat(layer, "x_sparse"), ids[0].tolist(), layer)


# ----------------------------------------------------------------------------- sigma at one time
def _check_neurons(idx, n: int, what: str) -> torch.Tensor:
    if idx is None:
        return torch.arange(n)
    t = torch.as_tensor(idx, dtype=torch.long).view(-1)
    if t.numel() == 0:
        raise ValueError(f"{what}: empty selection")
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ValueError(f"{what}: neuron index outside [0, {n})")
    return t


def _check_inputs(inp: SynapseInputs, spec: SigmaSpec) -> None:
    if inp.y.shape != inp.x.shape or inp.x.dim() != 2 or inp.x.shape[1] != spec.n:
        raise ValueError(f"SynapseInputs: expected y and x of shape (T, n={spec.n}), got {tuple(inp.y.shape)} and {tuple(inp.x.shape)}")


def _t_index(t: int | None, T: int) -> int:
    if t is None:
        return T - 1
    if not -T <= t < T:
        raise ValueError(f"t={t}: expected a token index in [0, {T})")
    return t % T


def keys_at(x: torch.Tensor, spec: SigmaSpec, t_read: int, tau0: int = 0) -> torch.Tensor:
    """Rows x_tau^T U^(t_read - tau) for tau = tau0, tau0+1, ...: (T, n). Identity mode returns x."""
    if spec.U == "identity":
        return x
    T, n = x.shape
    k = t_read - (tau0 + torch.arange(T))  # steps since the write, >= 1 for tau < t_read
    cos, sin = rope_cos_sin(-k, spec.freqs, torch.float64)  # R_{-k}: (T, N)
    xr = rope(x.to(torch.float64).view(T, spec.n_head, spec.N), cos.unsqueeze(1), sin.unsqueeze(1))  # (T, h, N)
    if spec.gamma is not None:
        xr = xr * spec.gamma.view(1, -1, 1) ** k.to(torch.float64).view(-1, 1, 1)
    return xr.reshape(T, n).to(x.dtype)


def sigma_matrix(inp: SynapseInputs, spec: SigmaSpec, t: int | None = None, rows=None, cols=None,
                 max_entries: int = 2**26) -> torch.Tensor:
    """Dense sigma_t(rows, cols) (len(rows), len(cols)); t defaults to the last token. Refuses > max_entries."""
    _check_inputs(inp, spec)
    t = _t_index(t, inp.T)
    r, c = _check_neurons(rows, spec.n, "rows"), _check_neurons(cols, spec.n, "cols")
    if r.numel() * c.numel() > max_entries:
        raise ValueError(f"sigma_matrix: {r.numel()} x {c.numel()} entries exceed max_entries={max_entries}; "
                         "use sigma_topk, sigma_pairs or narrower rows/cols")
    xt = keys_at(inp.x[: t + 1], spec, t + 1)
    return inp.y[: t + 1][:, r].T @ xt[:, c]


def sigma_pairs(inp: SynapseInputs, spec: SigmaSpec, pairs, t: int | None = None) -> torch.Tensor:
    """sigma_t(i, j) for (P, 2) pairs (i = y-neuron of layer l-1, j = x-neuron of layer l): (P,)."""
    _check_inputs(inp, spec)
    t = _t_index(t, inp.T)
    p = torch.as_tensor(pairs, dtype=torch.long).view(-1, 2)
    i, j = _check_neurons(p[:, 0], spec.n, "pairs[:, 0]"), _check_neurons(p[:, 1], spec.n, "pairs[:, 1]")
    xt = keys_at(inp.x[: t + 1], spec, t + 1)
    return (inp.y[: t + 1][:, i] * xt[:, j]).sum(0)


def sigma_trace(inp: SynapseInputs, spec: SigmaSpec, pairs) -> torch.Tensor:
    """sigma_t(i, j) after every token t: (T, P), by the recurrence sigma_t = (sigma_{t-1} + y_t x_t^T) U."""
    _check_inputs(inp, spec)
    p = torch.as_tensor(pairs, dtype=torch.long).view(-1, 2)
    i, j = _check_neurons(p[:, 0], spec.n, "pairs[:, 0]"), _check_neurons(p[:, 1], spec.n, "pairs[:, 1]")
    y, x = inp.y.to(torch.float64), inp.x.to(torch.float64)
    if spec.U == "identity":
        return torch.cumsum(y[:, i] * x[:, j], 0).to(inp.x.dtype)
    jp = j ^ 1  # RoPE partner of j
    k = j % spec.N
    w = 2 * math.pi * spec.freqs.to(torch.float64)[k]  # radians per step
    c, s = torch.cos(w), torch.sin(w)
    sign = torch.where(j % 2 == 0, 1.0, -1.0).to(torch.float64)  # (x^T R)_2m = x_2m c + x_2m+1 s; _2m+1 = x_2m+1 c - x_2m s
    g = torch.ones_like(w) if spec.gamma is None else spec.gamma[j // spec.N]
    a = torch.zeros(len(i), dtype=torch.float64)  # sigma(i, j)
    b = torch.zeros(len(i), dtype=torch.float64)  # sigma(i, partner(j))
    out = torch.empty((inp.T, len(i)), dtype=torch.float64)
    for t in range(inp.T):
        a = a + y[t, i] * x[t, j]
        b = b + y[t, i] * x[t, jp]
        a, b = g * (a * c + sign * b * s), g * (b * c - sign * a * s)
        out[t] = a
    return out.to(inp.x.dtype)


def sigma_topk(inp: SynapseInputs, spec: SigmaSpec, k: int = 20, t: int | None = None, rows=None, cols=None,
               block: int = 512, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest (or smallest) entries of sigma_t(rows, cols) without building it: values, i, j (global ids)."""
    _check_inputs(inp, spec)
    t = _t_index(t, inp.T)
    r, c = _check_neurons(rows, spec.n, "rows"), _check_neurons(cols, spec.n, "cols")
    if k < 1:
        raise ValueError(f"k={k}: expected a positive integer")
    xt = keys_at(inp.x[: t + 1], spec, t + 1)[:, c]  # (t+1, |c|)
    y = inp.y[: t + 1]
    best_v = torch.empty(0, dtype=xt.dtype)
    best_i = torch.empty(0, dtype=torch.long)
    best_j = torch.empty(0, dtype=torch.long)
    for b0 in range(0, r.numel(), block):
        rb = r[b0 : b0 + block]
        m = y[:, rb].T @ xt  # (|rb|, |c|)
        kk = min(k, m.numel())
        v, flat = torch.topk(m.flatten(), kk, largest=largest)
        vi, vj = rb[flat // c.numel()], c[flat % c.numel()]
        allv = torch.cat([best_v, v])
        keep = torch.topk(allv, min(k, allv.numel()), largest=largest).indices
        best_v, best_i, best_j = allv[keep], torch.cat([best_i, vi])[keep], torch.cat([best_j, vj])[keep]
    return best_v, best_i, best_j


# ----------------------------------------------------------------------------- statistics
def mann_whitney(concept: Sequence[float], contrast: Sequence[float]) -> dict:
    """One-sided Mann-Whitney U (concept > contrast): U of the concept group, U_max = n1 n2, p, rank-biserial.

    Rank-biserial r = 2 U / (n1 n2) - 1 (Kerby): 1 when every concept value exceeds every contrast value.
    """
    from scipy.stats import mannwhitneyu

    a = np.asarray(concept, dtype=float)
    b = np.asarray(contrast, dtype=float)
    if len(a) < 1 or len(b) < 1:
        raise ValueError(f"mann_whitney: need values in both groups (got {len(a)} and {len(b)})")
    res = mannwhitneyu(a, b, alternative="greater")
    U = float(res.statistic)
    n12 = len(a) * len(b)
    return {"U": U, "U_max": n12, "p_value": float(res.pvalue), "rank_biserial": 2 * U / n12 - 1,
            "n_concept": len(a), "n_contrast": len(b)}


def _rank_biserial_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank-biserial of a (P, n1) vs b (P, n2) per row, ties counted 1/2."""
    gt = (a[:, :, None] > b[:, None, :]).sum((1, 2))
    eq = (a[:, :, None] == b[:, None, :]).sum((1, 2))
    return 2 * (gt + 0.5 * eq) / (a.shape[1] * b.shape[1]) - 1


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman correlation (None when undefined), a confound check: sigma vs sentence length."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


# ----------------------------------------------------------------------------- concept search
@dataclasses.dataclass
class ConceptSearchResult:
    layer: int
    U: str
    candidates: list[dict]  # best first: i, j, head_i, head_j, t_stat, search_rank_biserial, test {U, p_value, ...}
    n_searched_pairs: int
    split: dict  # sizes of the search and test parts, in_sample flag
    best_values: dict  # {"concept": [...], "contrast": [...]} test-split values of the best synapse

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _split(n: int, test_fraction: float, rng: random.Random, what: str) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    rng.shuffle(idx)
    if test_fraction == 0:
        return idx, idx
    n_test = int(round(n * test_fraction))
    if n_test < 3 or n - n_test < 3:
        raise ValueError(f"{what}: {n} sentences cannot be split with test_fraction={test_fraction} into parts of at "
                         "least 3; add sentences or use test_fraction=0 (in-sample test)")
    return idx[n_test:], idx[:n_test]


def _active_neurons(concept: Sequence[SynapseInputs], members: list[int], r_all: torch.Tensor, c_all: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (y-neurons) and cols (x-neurons) active in some concept sentence of `members` (others give sigma
    = 0 there)."""
    y_act = torch.zeros(n, dtype=torch.bool)
    x_act = torch.zeros(n, dtype=torch.bool)
    for s in members:
        y_act |= (concept[s].y > 0).any(0)
        x_act |= (concept[s].x > 0).any(0)
    r, c = r_all[y_act[r_all]], c_all[x_act[c_all]]
    if r.numel() == 0 or c.numel() == 0:
        raise ValueError("rank_synapses: no y-neuron (rows) or x-neuron (cols) is active in the concept sentences")
    return r, c


def _block_stats(group: Sequence[SynapseInputs], members: list[int], keys: list[torch.Tensor],
                 rb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and (unbiased) variance over `members` of sigma at the sentence end, rows `rb` x the keys' cols."""
    s1 = torch.zeros((rb.numel(), keys[0].shape[1]), dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    for s, k in zip(members, keys):
        m = group[s].y[:, rb].to(torch.float64).T @ k
        s1 += m
        s2 += m * m
    n_g = len(members)
    mean = s1 / n_g
    var = (s2 / n_g - mean * mean).clamp(min=0) * (n_g / max(n_g - 1, 1))
    return mean, var, n_g


def _t_shortlist(concept, contrast, c_search: list[int], k_search: list[int], r: torch.Tensor, c: torch.Tensor,
                 spec: SigmaSpec, shortlist: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `shortlist` pairs (i in r, j in c) of largest Welch t (concept minus contrast) on the search part,
    computed in row blocks: t values (P,) and pairs (P, 2)."""
    def keys(group, members):  # x_tau^T U^(T - tau) of each sentence, cols c: (T, |c|)
        return [keys_at(group[s].x, spec, group[s].T)[:, c].to(torch.float64) for s in members]

    kc, kk = keys(concept, c_search), keys(contrast, k_search)
    best_t = torch.empty(0, dtype=torch.float64)
    best_i = torch.empty(0, dtype=torch.long)
    best_j = torch.empty(0, dtype=torch.long)
    for b0 in range(0, r.numel(), block):
        rb = r[b0 : b0 + block]
        mc, vc, nc = _block_stats(concept, c_search, kc, rb)
        mk, vk, nk = _block_stats(contrast, k_search, kk, rb)
        se = torch.sqrt(vc / nc + vk / nk) + 1e-3 * (mc.abs() + mk.abs()) + 1e-12
        tstat = (mc - mk) / se
        v, flat = torch.topk(tstat.flatten(), min(shortlist, tstat.numel()))
        allv = torch.cat([best_t, v])
        keep = torch.topk(allv, min(shortlist, allv.numel())).indices
        best_t = allv[keep]
        best_i = torch.cat([best_i, rb[flat // c.numel()]])[keep]
        best_j = torch.cat([best_j, c[flat % c.numel()]])[keep]
    return best_t, torch.stack([best_i, best_j], 1)


def _candidate(spec: SigmaSpec, i: int, j: int, t_stat: float, rb_search: float, test_c: np.ndarray,
               test_k: np.ndarray, lengths: np.ndarray) -> dict:
    """One ranked synapse: its neurons, search statistics and the held-out test."""
    return {
        "i": i, "j": j, "head_i": i // spec.N, "head_j": j // spec.N, "neuron_i": i % spec.N, "neuron_j": j % spec.N,
        "t_stat": t_stat, "search_rank_biserial": rb_search,
        "test": mann_whitney(test_c, test_k),
        "mean_concept": float(test_c.mean()), "mean_contrast": float(test_k.mean()),
        "length_spearman": _spearman(np.concatenate([test_c, test_k]), lengths),
    }


def rank_synapses(
    concept: Sequence[SynapseInputs],
    contrast: Sequence[SynapseInputs],
    spec: SigmaSpec,
    *,
    rows=None,
    cols=None,
    top: int = 5,
    shortlist: int = 200,
    test_fraction: float = 0.5,
    seed: int = 0,
    block: int = 256,
) -> ConceptSearchResult:
    """Rank synapses (i, j) by how well sigma at the end of a sentence separates concept from contrast sentences.

    1. Split each group (seeded) into a search part and a held-out test part (`test_fraction`; 0 = test in-sample).
    2. On the search part, over all pairs with i in `rows` and j in `cols` that are active in some concept
       sentence, compute a Welch t of sigma (concept minus contrast) in row blocks; keep the `shortlist` best.
    3. Re-rank the shortlist by the exact rank-biserial on the search part (then t), keep `top`.
    4. Test each on the test part with a one-sided Mann-Whitney U (concept > contrast); `length_spearman` is the
       correlation of the synapse with sentence length (tokens) on the test part, a confound check.
    """
    if not concept or not contrast:
        raise ValueError(f"rank_synapses: need concept and contrast sentences (got {len(concept)} and {len(contrast)})")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: expected a number in [0, 1)")
    for s in (*concept, *contrast):
        _check_inputs(s, spec)
    rng = random.Random(seed)
    c_search, c_test = _split(len(concept), test_fraction, rng, "concept")
    k_search, k_test = _split(len(contrast), test_fraction, rng, "contrast")
    r_all, c_all = _check_neurons(rows, spec.n, "rows"), _check_neurons(cols, spec.n, "cols")
    r, c = _active_neurons(concept, c_search, r_all, c_all, spec.n)
    best_t, pairs = _t_shortlist(concept, contrast, c_search, k_search, r, c, spec, shortlist, block)

    def values(group, members):
        return np.stack([sigma_pairs(group[s], spec, pairs).to(torch.float64).numpy() for s in members], 1)  # (P, n)

    rb_search = _rank_biserial_rows(values(concept, c_search), values(contrast, k_search))
    order = sorted(range(len(pairs)), key=lambda q: (-rb_search[q], -float(best_t[q])))[:top]
    test_c, test_k = values(concept, c_test), values(contrast, k_test)
    lengths = np.array([concept[s].T for s in c_test] + [contrast[s].T for s in k_test], dtype=float)
    cands = [_candidate(spec, int(pairs[q, 0]), int(pairs[q, 1]), float(best_t[q]), float(rb_search[q]), test_c[q],
                        test_k[q], lengths) for q in order]
    best = order[0]
    return ConceptSearchResult(
        layer=concept[0].layer,
        U=spec.U,
        candidates=cands,
        n_searched_pairs=int(r.numel() * c.numel()),
        split={"concept_search": len(c_search), "concept_test": len(c_test), "contrast_search": len(k_search),
               "contrast_test": len(k_test), "in_sample": test_fraction == 0, "seed": seed},
        best_values={"concept": test_c[best].tolist(), "contrast": test_k[best].tolist()},
    )


def concept_synapse_search(model, concept_texts: Sequence[str], contrast_texts: Sequence[str], layer: int, *,
                           U: str = "rope", x_heads: Sequence[int] | None = None, y_heads: Sequence[int] | None = None,
                           **kw) -> ConceptSearchResult:
    """`rank_synapses` on the sentences run through `model` (each from an empty state); sigma of `layer` (>= 1).

    `y_heads` / `x_heads` restrict i (y-neurons of layer-1) and j (x-neurons of layer) to these heads.
    """
    spec = SigmaSpec.from_model(model, U)
    N, h = model.config.N, model.config.n_head

    def heads_to_neurons(hs):
        if hs is None:
            return None
        bad = [b for b in hs if not 0 <= b < h]
        if bad:
            raise ValueError(f"head {bad[0]} is outside [0, {h})")
        return torch.cat([torch.arange(b * N, (b + 1) * N) for b in hs])

    conc = [synapse_activations(model, t, layer) for t in concept_texts]
    cont = [synapse_activations(model, t, layer) for t in contrast_texts]
    return rank_synapses(conc, cont, spec, rows=heads_to_neurons(y_heads), cols=heads_to_neurons(x_heads), **kw)


# ----------------------------------------------------------------------------- sigma degree distribution
def sigma_degrees(inp: SynapseInputs, spec: SigmaSpec, head: int, *, quantile: float = 0.9, t: int | None = None,
                  block: int = 512, sample_rows: int = 256, seed: int = 0) -> dict:
    """In/out degrees of the graph {sigma_t(i, j) > threshold} on one head block (i, j in `head`) (Fig. 11).

    Negative (RoPE-induced) entries are dropped; the threshold is the `quantile` of the positive entries
    (estimated on up to `sample_rows` random rows). Out-degree of i = number of j; in-degree of j = number of i.
    """
    _check_inputs(inp, spec)
    if not 0 <= head < spec.n_head:
        raise ValueError(f"head={head}: expected 0 <= head < {spec.n_head}")
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile={quantile}: expected a number in [0, 1)")
    t = _t_index(t, inp.T)
    nodes = torch.arange(head * spec.N, (head + 1) * spec.N)
    xt = keys_at(inp.x[: t + 1], spec, t + 1)[:, nodes]
    y = inp.y[: t + 1][:, nodes]
    g = torch.Generator().manual_seed(seed)
    sample = torch.randperm(spec.N, generator=g)[:sample_rows]
    sv = (y[:, sample].T @ xt).flatten()
    pos = sv[sv > 0]
    if pos.numel() == 0:
        return {"head": head, "threshold": None, "edges": 0, "out_degree": [0] * spec.N, "in_degree": [0] * spec.N,
                "positive_fraction": 0.0}
    thr = float(torch.quantile(pos.to(torch.float64)[: 2**24], quantile))
    out_deg = torch.zeros(spec.N, dtype=torch.long)
    in_deg = torch.zeros(spec.N, dtype=torch.long)
    n_pos = 0
    for b0 in range(0, spec.N, block):
        m = y[:, b0 : b0 + block].T @ xt
        e = m > thr
        out_deg[b0 : b0 + block] += e.sum(1)
        in_deg += e.sum(0)
        n_pos += int((m > 0).sum())
    return {"head": head, "layer": inp.layer, "t": t, "threshold": thr, "quantile": quantile,
            "edges": int(out_deg.sum()), "positive_fraction": n_pos / spec.N**2,
            "out_degree": out_deg.tolist(), "in_degree": in_deg.tolist()}


# ----------------------------------------------------------------------------- plots
def plot_synapse_trace(model, text: str, layer: int, pairs, path, *, U: str = "rope", labels: Sequence[str] | None = None,
                       max_tokens: int = 120) -> dict:
    """sigma_t(i, j) over the tokens of `text` for each pair (Fig. 12); returns the plotted values."""
    from .plotting import plt_figure, save

    spec = SigmaSpec.from_model(model, U)
    inp = synapse_activations(model, encode_text(model, text, max_tokens), layer)
    p = torch.as_tensor(pairs, dtype=torch.long).view(-1, 2)
    tr = sigma_trace(inp, spec, p).numpy()
    toks = token_strings(model, inp.tokens)
    fig, (ax,) = plt_figure(1, 1, width=max(6.0, 0.13 * len(toks)), height=3.4)
    for q in range(len(p)):
        lab = labels[q] if labels else f"σ(y{int(p[q, 0])} → x{int(p[q, 1])})"
        ax.plot(tr[:, q], marker=".", label=lab)
    ax.set_xticks(range(len(toks)), toks, fontsize=6, rotation=90 if len(toks) > 40 else 0)
    ax.set_ylabel(f"σ layer {layer} (U={U})")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, path)
    return {"tokens": toks, "values": tr.T.tolist(), "pairs": p.tolist()}


def plot_concept_values(result: ConceptSearchResult, path) -> None:
    """Strip plot of the best synapse's sigma on test concept vs contrast sentences with its U test."""
    from .plotting import plt_figure, save

    fig, (ax,) = plt_figure(1, 1, width=4.5, height=3.4)
    cv, kv = result.best_values["concept"], result.best_values["contrast"]
    rng = np.random.default_rng(0)
    ax.scatter(rng.uniform(-0.15, 0.15, len(cv)), cv, s=12, label="concept")
    ax.scatter(1 + rng.uniform(-0.15, 0.15, len(kv)), kv, s=12, label="contrast")
    b = result.candidates[0]
    ax.set_xticks([0, 1], ["concept", "contrast"])
    ax.set_ylabel(f"σ(y{b['i']} → x{b['j']}) at sentence end")
    ax.set_title(f"U={b['test']['U']:.0f}/{b['test']['U_max']}, p={b['test']['p_value']:.2g}, "
                 f"r={b['test']['rank_biserial']:.2f}", fontsize=9)
    save(fig, path)
