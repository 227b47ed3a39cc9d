"""Sparsity of BDH-GPU activations (paper §4.1 Finding 1, §6.4 Fig. 14).

Fractions of non-zero activations of x_sparse, y_sparse and the gated y = x * y ("xy") per layer, head and
RoPE-frequency band, over a corpus; and the repeated-fact experiment of §6.4: a synthetic letter stream with
period 77 (a fixed 13-letter warm-up, then 8 repeats of a random 8-letter fact), comparing activity while the
fact is shown for the first time ("memorising") with activity while it repeats ("repeating").

RoPE bands: neuron k rotates by w_k = theta^(-2 floor(k/2)/N) radians per position; its band is the bucket of
1/w_k in `n_bands` log-uniform buckets of [1, theta]. With the reference theta = 2^16 and 8 bands these are the
paper's freq0 = [1, 4], ..., freq7 = [16384, 65536] (band 0 the fastest neurons, band 7 the slowest).
"""

from __future__ import annotations

import dataclasses
import math
import random
import string
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .plotting import jsonable
from .record import ACTIVITY_KINDS, check_ids, hook_name, run_with_hooks

DEFAULT_KINDS = ("x_sparse", "y_sparse", "xy")


def rope_bands(freqs: torch.Tensor, theta: float, n_bands: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(band per neuron (N,), band edges (n_bands + 1,)) from per-neuron RoPE frequencies in turns/position."""
    if n_bands < 1:
        raise ValueError(f"n_bands={n_bands}: expected a positive integer")
    f = freqs.detach().cpu().to(torch.float64).numpy()
    with np.errstate(divide="ignore"):
        inv = 1.0 / (2 * math.pi * f)  # 1/w: positions per radian, in [1, theta); inf (the last band): not rotated
    edges = float(theta) ** (np.arange(n_bands + 1) / n_bands)
    band = np.clip(np.searchsorted(edges, inv * (1 + 1e-9), side="right") - 1, 0, n_bands - 1)
    return band.astype(np.int64), edges


@dataclasses.dataclass
class ActivityStats:
    """Counts of tokens on which each neuron is non-zero: `counts[kind]` (L, h, N) int64 over `n_tokens` tokens."""

    counts: dict[str, np.ndarray]
    n_tokens: int
    band: np.ndarray  # (N,) band of each neuron
    band_edges: np.ndarray

    def per_neuron(self, kind: str) -> np.ndarray:
        return self.counts[kind] / max(self.n_tokens, 1)  # (L, h, N)

    def by_layer(self, kind: str) -> np.ndarray:
        return self.per_neuron(kind).mean(axis=(1, 2))  # (L,)

    def by_layer_head(self, kind: str) -> np.ndarray:
        return self.per_neuron(kind).mean(axis=2)  # (L, h)

    def by_layer_band(self, kind: str) -> np.ndarray:
        p = self.per_neuron(kind)  # (L, h, N)
        nb = len(self.band_edges) - 1
        out = np.full((p.shape[0], nb), np.nan)
        for b in range(nb):
            sel = self.band == b
            if sel.any():
                out[:, b] = p[:, :, sel].mean(axis=(1, 2))
        return out  # (L, n_bands)

    def dead_fraction(self, kind: str) -> np.ndarray:
        """Fraction of neurons never active, per layer."""
        return (self.counts[kind] == 0).mean(axis=(1, 2))

    def to_dict(self) -> dict:
        return {
            "n_tokens": int(self.n_tokens),
            "band_edges": [float(e) for e in self.band_edges],
            "neurons_per_band": [int((self.band == b).sum()) for b in range(len(self.band_edges) - 1)],
            **{
                kind: {
                    "by_layer": _list(self.by_layer(kind)),
                    "by_layer_head": _list(self.by_layer_head(kind)),
                    "by_layer_band": _list(self.by_layer_band(kind)),
                    "never_active_by_layer": _list(self.dead_fraction(kind)),
                    "mean": float(self.by_layer(kind).mean()),
                }
                for kind in self.counts
            },
        }


def _list(a) -> list:
    return jsonable(np.asarray(a, dtype=float))


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in ACTIVITY_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds={kinds!r}: expected some of {ACTIVITY_KINDS}")
    return kinds


def measure_activity(
    model,
    batches: torch.Tensor | Sequence[torch.Tensor],
    kinds: Sequence[str] = DEFAULT_KINDS,
    *,
    n_bands: int = 8,
    token_chunk: int | None = None,
) -> ActivityStats:
    """Non-zero counts of `kinds` per layer, head and neuron over token id batches (each (B, T))."""
    kinds = _check_kinds(kinds)
    c = model.config
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    counts = {k: torch.zeros((c.n_layer, c.n_head, c.N), dtype=torch.int64) for k in kinds}

    def counter(name: str, t: torch.Tensor, t0: int) -> None:
        l, kind = int(name.split(".")[1]), name.split(".")[2]
        counts[kind][l] += (t > 0).sum(dim=(0, 2)).cpu()  # (h, N)

    hooks = {hook_name(l, k): counter for l in range(c.n_layer) for k in kinds}
    n_tokens = 0
    for ids in batches:
        check_ids(model, ids)
        run_with_hooks(model, ids, hooks, token_chunk=token_chunk)
        n_tokens += ids.numel()
    if n_tokens == 0:
        raise ValueError("measure_activity: no tokens")
    band, edges = rope_bands(model.freqs, c.rope_theta, n_bands)
    return ActivityStats({k: v.numpy() for k, v in counts.items()}, n_tokens, band, edges)


def corpus_batches(ids: Sequence[int] | np.ndarray, block: int, batch_size: int, max_tokens: int) -> list[torch.Tensor]:
    """Consecutive blocks of `block` tokens from `ids` (up to `max_tokens`), grouped `batch_size` at a time."""
    ids = np.asarray(ids, dtype=np.int64)[:max_tokens]
    n_blocks = len(ids) // block
    if n_blocks == 0:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than one block of {block}")
    blocks = torch.from_numpy(ids[: n_blocks * block].reshape(n_blocks, block).copy())
    return [blocks[i : i + batch_size] for i in range(0, n_blocks, batch_size)]


def activity_per_token(
    model, ids: torch.Tensor, kinds: Sequence[str] = ("xy",), *, n_bands: int = 8, token_chunk: int | None = None
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """For one sequence (1, T): {kind: fraction non-zero (L, T, n_bands + 1)} (last column = all neurons), logits.

    The band columns are fractions among the neurons of that band (all heads).
    """
    kinds = _check_kinds(kinds)
    check_ids(model, ids)
    if ids.shape[0] != 1:
        raise ValueError(f"activity_per_token: expected one sequence (1, T), got {tuple(ids.shape)}")
    c = model.config
    band, edges = rope_bands(model.freqs, c.rope_theta, n_bands)
    onehot = torch.zeros((c.N, n_bands + 1))
    onehot[torch.arange(c.N), torch.from_numpy(band)] = 1.0
    onehot[:, n_bands] = 1.0
    per_band = onehot.sum(0).clamp(min=1) * c.n_head
    T = ids.shape[1]
    out = {k: torch.zeros((c.n_layer, T, n_bands + 1)) for k in kinds}

    def hook(name: str, t: torch.Tensor, t0: int) -> None:
        l, kind = int(name.split(".")[1]), name.split(".")[2]
        active = (t[0] > 0).float().sum(0)  # (Tc, N) summed over heads
        out[kind][l, t0 : t0 + active.shape[0]] = (active.cpu() @ onehot) / per_band

    logits, _ = run_with_hooks(model, ids, {hook_name(l, k): hook for l in range(c.n_layer) for k in kinds},
                               token_chunk=token_chunk)
    return {k: v.numpy() for k, v in out.items()}, logits


# ----------------------------------------------------------------------------- §6.4 repeated fact
@dataclasses.dataclass
class RepeatedFactStream:
    text: str
    occurrence: np.ndarray  # (T,) -1 in the warm-up, else which repeat of the fact (0 = first showing)
    period: int
    warmup_len: int
    fact_len: int
    repeats: int


def repeated_fact_stream(
    n_periods: int = 8, warmup_len: int = 13, fact_len: int = 8, repeats: int = 8, seed: int = 0,
    alphabet: str = string.ascii_lowercase,
) -> RepeatedFactStream:
    """Periods of a fixed `warmup_len`-letter warm-up then `repeats` copies of a fresh random `fact_len`-letter fact."""
    for name, v in (("n_periods", n_periods), ("warmup_len", warmup_len), ("fact_len", fact_len), ("repeats", repeats)):
        if v < 1:
            raise ValueError(f"{name}={v}: expected a positive integer")
    if repeats < 2:
        raise ValueError(f"repeats={repeats}: expected at least 2 (a first showing and a repeat)")
    rng = random.Random(seed)
    warm = "".join(rng.choice(alphabet) for _ in range(warmup_len))
    parts, occ = [], []
    for _ in range(n_periods):
        fact = "".join(rng.choice(alphabet) for _ in range(fact_len))
        parts.append(warm + fact * repeats)
        occ += [-1] * warmup_len + [r for r in range(repeats) for _ in range(fact_len)]
    return RepeatedFactStream("".join(parts), np.array(occ), warmup_len + fact_len * repeats, warmup_len, fact_len, repeats)


def _encode_letters(model, text: str) -> torch.Tensor:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)
    for ch in set(text):
        e = tok.encode(ch)
        if len(e) != 1:
            raise ValueError(f"the model's tokenizer encodes {ch!r} as {len(e)} tokens; the repeated-fact stream needs "
                             "one token per letter")
    table = {ch: tok.encode(ch)[0] for ch in set(text)}
    ids = [table[ch] for ch in text]
    return torch.tensor([ids], dtype=torch.long)


def repeated_fact_experiment(
    model, *, n_periods: int = 8, warmup_len: int = 13, fact_len: int = 8, repeats: int = 8, seed: int = 0,
    kind: str = "xy", n_bands: int = 8, token_chunk: int | None = None,
) -> dict:
    """§6.4: activity of `kind` per layer while memorising (first showing) vs repeating (later showings).

    Returns per layer the mean fraction of non-zero neurons in each phase, per RoPE band, per occurrence, the
    per-position profile over the period (averaged over periods after the first), and the next-token loss
    (nats) per phase, which shows whether the model predicts the repeats. The first period is excluded from
    the means (no context yet).
    """
    s = repeated_fact_stream(n_periods, warmup_len, fact_len, repeats, seed)
    if n_periods < 2:
        raise ValueError(f"n_periods={n_periods}: expected at least 2 (the first period is excluded)")
    ids = _encode_letters(model, s.text)
    act, logits = activity_per_token(model, ids, (kind,), n_bands=n_bands, token_chunk=token_chunk)
    a = act[kind]  # (L, T, n_bands + 1)
    nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none").numpy()
    nll = np.concatenate([[np.nan], nll])  # loss of predicting token t from the tokens before it
    keep = np.arange(len(s.text)) >= s.period
    occ = s.occurrence
    mem, rep, warm = keep & (occ == 0), keep & (occ >= 1), keep & (occ == -1)
    L = a.shape[0]
    profile = a[:, s.period:, n_bands].reshape(L, n_periods - 1, s.period).mean(1)  # (L, period)
    band_mem = a[:, mem, :n_bands].mean(1)
    band_rep = a[:, rep, :n_bands].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(band_rep > 0, band_mem / band_rep, np.nan)
    return {
        "kind": kind,
        "stream": {"period": s.period, "warmup_len": warmup_len, "fact_len": fact_len, "repeats": repeats,
                   "n_periods": n_periods, "seed": seed, "tokens": len(s.text), "example": s.text[: s.period]},
        "by_layer": {
            "warmup": _list(a[:, warm, n_bands].mean(1)),
            "memorising": _list(a[:, mem, n_bands].mean(1)),
            "repeating": _list(a[:, rep, n_bands].mean(1)),
        },
        "by_layer_occurrence": _list(np.stack([a[:, keep & (occ == r), n_bands].mean(1) for r in range(repeats)], 1)),
        "by_layer_band": {"memorising": _list(band_mem), "repeating": _list(band_rep),
                          "ratio_memorising_over_repeating": _list(ratio)},
        "band_edges": [float(e) for e in rope_bands(model.freqs, model.config.rope_theta, n_bands)[1]],
        "profile_by_layer": _list(profile),
        "loss_nats": {
            "warmup": float(np.nanmean(nll[warm])),
            "memorising": float(np.nanmean(nll[mem])),
            "repeating": float(np.nanmean(nll[rep])),
            "by_occurrence": _list(np.array([np.nanmean(nll[keep & (occ == r)]) for r in range(repeats)])),
        },
    }


# ----------------------------------------------------------------------------- plots
def plot_activity(stats: ActivityStats, path, kinds: Sequence[str] | None = None) -> None:
    """Per layer (lines) the fraction of non-zero neurons per RoPE band, one panel per kind."""
    from .plotting import plt_figure, save

    kinds = list(kinds or stats.counts)
    fig, axes = plt_figure(1, len(kinds), width=4.2 * len(kinds), height=3.4)
    nb = len(stats.band_edges) - 1
    for ax, kind in zip(axes, kinds):
        m = stats.by_layer_band(kind)
        for l in range(m.shape[0]):
            ax.plot(range(nb), 100 * m[l], marker="o", label=f"layer {l}")
        ax.set_xticks(range(nb), [f"f{b}" for b in range(nb)])
        ax.set_xlabel("RoPE band (f0 fast ... slow)")
        ax.set_ylabel("% non-zero")
        ax.set_title(f"{kind}: {100 * stats.by_layer(kind).mean():.1f}% non-zero")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save(fig, path)


def plot_repeated_fact(result: dict, path) -> None:
    """Profile of activity over the period (warm-up, first showing, repeats) per layer; band ratios."""
    from .plotting import plt_figure, save

    s = result["stream"]
    prof = np.array(result["profile_by_layer"], dtype=float)
    ratio = np.array(result["by_layer_band"]["ratio_memorising_over_repeating"], dtype=float)
    fig, (a1, a2) = plt_figure(1, 2, width=11, height=3.6)
    w, f = s["warmup_len"], s["fact_len"]
    a1.axvspan(-0.5, w - 0.5, color="0.9", label="warm-up")
    a1.axvspan(w - 0.5, w + f - 0.5, color="#fde0c5", label="memorising (1st showing)")
    for l in range(prof.shape[0]):
        a1.plot(100 * prof[l], label=f"layer {l}")
    a1.set_xlabel(f"position in period ({s['period']} letters)")
    a1.set_ylabel(f"% non-zero {result['kind']}")
    a1.set_title("repeated fact (§6.4)")
    a1.legend(fontsize=7)
    nb = ratio.shape[1]
    for l in range(ratio.shape[0]):
        a2.plot(range(nb), ratio[l], marker="o", label=f"layer {l}")
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_xticks(range(nb), [f"f{b}" for b in range(nb)])
    a2.set_xlabel("RoPE band (f0 fast ... slow)")
    a2.set_ylabel("activity memorising / repeating")
    a2.legend(fontsize=7)
    save(fig, path)
