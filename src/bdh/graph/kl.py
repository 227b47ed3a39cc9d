"""How close is the graph form to BDH-GPU? Mean KL per token vs the edge budget, on held-out text.

What exactly is compared (spec §5): P = BDH-GPU's next-token distribution (the trained model itself, its own
LayerNorm placement, float64), Q = the graph form's (`from_gpu.BDHGPUGraph`, same weights, same tokens, both
from the empty state). KL(P || Q) in nats, averaged over every position of every held-out sequence.

Rows:

- `exact hubs`: Claim 3 routing through 2d relay hubs, exact LN gains (non-local gain hubs): the identity,
  KL ~ 0 up to float rounding (a check, not an approximation);
- `m`: the m strongest entries of D_x E_c and of D_y E_c as direct neuron-to-neuron edges (2m parameter
  edges in all), exact LN gains; m = n^2 is again exact;
- other `gains` (fitted on `calibrate_idx`, text disjoint from the held-out text): the same graphs with LN
  replaced by mean-field gain control (`"meanfield"`: RMS over neurons, no d-space) or by clock-dependent
  constants (`"calibrated"`: fully local; diverges on trained models): what LN's non-locality costs.

Also reported: top-1 agreement (argmax Q = argmax P) and the cross-entropy of both models on the text.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_path
from .from_gpu import GAINS, BDHGPUGraph, GPUWeights, gpu_logits, kl_per_token


def default_budgets(n: int, points: int = 7) -> list[int]:
    """A geometric grid of edge budgets from n (one edge per neuron) to n^2 (all entries), `points` values."""
    if points < 2:
        return [n * n]
    lo, hi = math.log(n), math.log(n * n)
    return sorted({int(round(math.exp(lo + (hi - lo) * k / (points - 1)))) for k in range(points)})


def _row(label: str, budget, g: BDHGPUGraph, ref: torch.Tensor, idx: torch.Tensor, seconds: float, out) -> dict:
    kl = kl_per_token(ref, out)
    n_tok = idx[:, 1:].numel()
    ce = lambda lg: float(torch.nn.functional.cross_entropy(  # noqa: E731
        lg[:, :-1].reshape(-1, lg.shape[-1]).double(), idx[:, 1:].reshape(-1)))
    e = g.num_edges()
    return {
        "label": label,
        "budget_per_graph": budget,
        "parameter_edges": e["parameter graphs (G_x, G_y)"],
        "synapse_edges_per_layer": e["Gs"],
        "gains": g.gains,
        "kl_mean": float(kl.mean()),
        "kl_median": float(kl.median()),
        "kl_max": float(kl.max()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).double().mean()),
        "ce_graph": ce(out),
        "tokens": int(kl.numel()),
        "tokens_per_s": kl.numel() / max(seconds, 1e-9),
        "ce_tokens": n_tok,
    }


def kl_vs_budget(
    model,
    idx: torch.Tensor,
    budgets: list[int] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    calibrate_idx: torch.Tensor | None = None,
    gains: tuple[str, ...] = ("exact",),
    include_exact: bool = True,
    synapses: int | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """KL(BDH-GPU || graph form) per token on `idx` (B, T) for every edge budget (module docstring)."""
    if idx.dim() != 2 or idx.shape[1] < 2:
        raise ValueError(f"idx has shape {tuple(idx.shape)}, expected (B, T) with T >= 2")
    say = echo or (lambda s: None)
    W = GPUWeights.from_model(model, dtype)
    budgets = default_budgets(W.n) if budgets is None else [int(b) for b in budgets]
    for b in budgets:
        if b < 0:
            raise ValueError(f"edge budget {b}: expected a non-negative number of edges")
    ref = gpu_logits(model, idx, torch.float64)
    ce_ref = float(torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), idx[:, 1:].reshape(-1)))
    syn = "full head blocks" if synapses is None else f"{synapses} random partners per neuron"
    say(f"graph form of BDH-GPU: n={W.n} d={W.d} h={W.n_head} L={W.n_layer} V={W.vocab_size}, synapses: {syn}; "
        f"{idx.numel()} held-out tokens ({idx.shape[0]} x {idx.shape[1]}); BDH-GPU cross-entropy {ce_ref:.4f} nats")
    say(f"{'routing':>14} {'edges/graph':>12} {'% of n^2':>9} {'gains':>10} {'KL mean':>11} {'KL median':>11} "
        f"{'top-1 agree':>11} {'CE graph':>9} {'tok/s':>7}")
    rows = []
    for mode in gains:
        if mode not in GAINS:
            raise ValueError(f"gains {mode!r}: expected some of {GAINS}")
        if mode != "exact" and calibrate_idx is None:
            raise ValueError(f"gains {mode!r} need calibrate_idx (calibration text)")
    plan: list[tuple[str, int | None, str]] = []
    for mode in gains:
        plan += [("exact hubs", None, mode)] if include_exact else []
        plan += [(f"{b}", b, mode) for b in budgets]
    for label, b, mode in plan:
        g = BDHGPUGraph(W, budget=b, gains=mode, synapses=synapses)
        if mode != "exact":
            g.calibrate(calibrate_idx)
        t0 = time.perf_counter()
        with torch.no_grad():
            out, _ = g.run(idx)
        r = _row(label, b, g, ref, idx, time.perf_counter() - t0, out)
        rows.append(r)
        frac = "-" if b is None else f"{100.0 * min(b, W.n * W.n) / (W.n * W.n):.3g}"
        edges = f"{r['parameter_edges'] // 2}" if b is not None else f"hubs:{r['parameter_edges']}"
        say(f"{label if b is None else 'direct':>14} {edges:>12} {frac:>9} {mode:>10} {r['kl_mean']:>11.4g} "
            f"{r['kl_median']:>11.4g} {r['top1_agreement']:>11.3f} {r['ce_graph']:>9.4g} {r['tokens_per_s']:>7.1f}")
    return {
        "n": W.n, "d": W.d, "n_head": W.n_head, "n_layer": W.n_layer, "vocab_size": W.vocab_size,
        "dtype": str(dtype).removeprefix("torch."), "batch": idx.shape[0], "seq_len": idx.shape[1],
        "ce_bdh_gpu": ce_ref, "synapses_per_neuron": synapses, "rows": rows,
        "compared": "KL(P_BDH-GPU || P_graph) in nats per token, both from the empty state on the same held-out "
                    "tokens; BDH-GPU is the trained model with its own LayerNorm placement (float64)",
    }


def plot_kl_vs_budget(result: dict, path) -> None:
    """KL per token vs edges kept per parameter graph (log-log), one curve per gain mode (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["n"]
    lo, hi = 1e-14, 1e3  # exact rows sit at float rounding; diverging rows are drawn at the top
    names = {"exact": "exact LN gains (d-space gain hubs)", "meanfield": "mean-field LN gains (RMS over neurons)",
             "calibrated": "constant LN gains (fully local)"}
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    modes = [m for m in ("exact", "meanfield", "calibrated") if any(r["gains"] == m for r in result["rows"])]
    for c, mode in enumerate(modes):
        rows = [r for r in result["rows"] if r["gains"] == mode and r["budget_per_graph"] is not None]
        clipped = any(not r["kl_mean"] <= hi for r in rows)
        if rows:
            xs = [min(r["budget_per_graph"], n * n) for r in rows]
            ys = [min(max(r["kl_mean"], lo), hi) if r["kl_mean"] == r["kl_mean"] else hi for r in rows]
            ax.plot(xs, ys, "o-" if mode == "exact" else "s--", color=f"C{c}",
                    label="direct edges, " + names[mode] + (" [clipped: diverges]" if clipped else ""))
        hub = [r for r in result["rows"] if r["gains"] == mode and r["budget_per_graph"] is None]
        if hub:
            ax.axhline(min(max(hub[0]["kl_mean"], lo), hi), ls=":", color=f"C{c}",
                       label=f"Claim 3 hubs ({hub[0]['parameter_edges']:,} edges), {mode} gains")
    ax.axvline(n * n, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(lo / 3, hi * 3)
    ax.set_xlabel("edges kept per parameter graph (G_x and G_y each; n^2 = all)")
    ax.set_ylabel("mean KL(BDH-GPU || graph form) per token [nats]")
    ax.set_title(f"BDH graph form vs BDH-GPU (n={n}, d={result['d']}, L={result['n_layer']}, "
                 f"{result['batch'] * result['seq_len']} held-out tokens)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
