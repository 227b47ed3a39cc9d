"""Scoring a model on a task: exact-match accuracy and masked loss per size, with the state each example leaves.

    from bdh import load_model
    from bdh.tasks import evaluate_task
    rows = evaluate_task(load_model("runs/parity"), "parity", [16, 32, 64, 128])
    # [{"size": 16, "accuracy": 0.98, "loss": 0.03, "tokens": 16, "state_bytes": 262144, ...}, ...]

The examples of a size come from `random.Random(seed * 1_000_003 + size)`: the same for every model and run.
`n_layer=k` evaluates a BDH with k layer passes: BDH shares its weights across layers, so the same parameters
run at any depth (depth as a test-time-compute knob) up to `MAX_PASSES` = 64 (5x the deepest preset's 2L = 12;
each pass is one more layer of compute and of state); a model type with per-layer weights (GPT) refuses it.
`n_layer` may also be a rule size -> passes, e.g. `scaled_passes(3, 16)`: more passes on longer inputs (spec 6d).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .base import Task, TaskError, check_task, exact_match

MAX_PASSES = 64  # layer passes `with_layers` runs a model with (= bdh.training.config.MAX_LAYER_PASSES)


def size_rng(seed: int, size: int) -> random.Random:
    """The generator of the examples of `size` (independent of training seeds)."""
    return random.Random(seed * 1_000_003 + size)


class Score(NamedTuple):
    """Sums over a set of examples (`score_batch`)."""
    correct: float  # examples exactly right (every answer position)
    nll: float  # summed cross-entropy over answer positions, nats
    answers: int  # answer positions
    examples: int
    answers_right: int  # answer positions whose argmax is the target


@torch.no_grad()
def score_batch(model, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, batch_size: int = 64,
                form: str = "auto", autocast=contextlib.nullcontext, per_example: list | None = None) -> Score:
    """The `Score` of (n, T) inputs, targets and mask, evaluated `batch_size` rows at a time from an empty state
    (the model in eval mode); `per_example`, a list, receives each example's exact match (0 or 1) in order."""
    device = next(model.parameters()).device
    kw = {} if form == "auto" else {"form": form}
    was = model.training
    model.eval()
    correct = nll = 0.0
    answers = right = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb, mb = (t[i:i + batch_size].to(device) for t in (x, y, mask))
            with autocast():
                logits, _ = model(xb, **kw)
            logits = logits.float()
            em = exact_match(logits, yb, mb)
            correct += float(em.sum())
            if per_example is not None:
                per_example.extend(int(v) for v in em.tolist())
            ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
            nll += float((ce * mb.flatten()).sum())
            answers += int(mb.sum())
            right += int(((logits.argmax(-1) == yb) & mb).sum())
    finally:
        model.train(was)
    return Score(correct, nll, answers, int(x.shape[0]), right)


def _state_bytes(model, x: torch.Tensor, form: str) -> int:
    """Bytes of the state/cache one sequence leaves after reading `x` (1, T) (`state_to_tensors` after prefill)."""
    kw = {} if form == "auto" else {"form": form}
    with torch.no_grad():
        _, state = model.prefill(x.to(next(model.parameters()).device), None, **kw)
    return sum(t.numel() * t.element_size() for t in model.state_to_tensors(state).values())


def check_passes(n_layer: int, what: str = "n_layer") -> int:
    """`n_layer` if it is a number of layer passes from 1 to `MAX_PASSES`, else TaskError naming `what` and it."""
    if isinstance(n_layer, bool) or not isinstance(n_layer, int) or not 1 <= n_layer <= MAX_PASSES:
        raise TaskError(f"{what}={n_layer!r}: expected an integer from 1 to {MAX_PASSES} (layer passes; "
                        "bdh.tasks.MAX_PASSES)")
    return n_layer


def with_layers(model, n_layer: int):
    """The same model run with `n_layer` layer passes: a model of config n_layer=k sharing the parameters (copied).
    TaskError for a model type whose layers have their own weights (e.g. GPT) or a bad count (`check_passes`)."""
    from ..interface import build_model

    check_passes(n_layer)
    cfg = model.config
    mt = getattr(type(cfg), "MODEL_TYPE", type(cfg).__name__)
    if "n_layer" not in {f.name for f in dataclasses.fields(cfg)}:
        raise TaskError(f"n_layer={n_layer}: model_type {mt!r} has no n_layer setting")
    sd = model.state_dict()
    probe = build_model(dataclasses.replace(cfg, n_layer=cfg.n_layer + 1)).state_dict()
    if {k: tuple(v.shape) for k, v in probe.items()} != {k: tuple(v.shape) for k, v in sd.items()}:
        raise TaskError(f"n_layer={n_layer}: model_type {mt!r} has per-layer weights, so it cannot run at another "
                        "number of layer passes (only models that share weights across layers, e.g. BDH)")
    if n_layer == cfg.n_layer:
        return model
    p = next(model.parameters())
    other = build_model(dataclasses.replace(cfg, n_layer=n_layer)).to(device=p.device, dtype=p.dtype)
    other.load_state_dict(sd, strict=True)
    other.tokenizer = getattr(model, "tokenizer", None)
    return other.eval()


@dataclasses.dataclass(frozen=True)
class scaled_passes:  # noqa: N801 (a rule used like a function: n_layer=scaled_passes(3, 16))
    """Layer passes that grow with the length: `passes` x ceil(size / `train_size`), at most `cap` (depth as
    test-time compute, spec 6d). `scaled_passes(3, 16)(40)` = 9; a size up to train_size keeps `passes`."""

    passes: int  # the passes at the training size (the model's n_layer, or what it was trained at)
    train_size: int
    cap: int = MAX_PASSES

    def __post_init__(self):
        check_passes(self.passes, "scaled_passes.passes")
        check_passes(self.cap, "scaled_passes.cap")
        if isinstance(self.train_size, bool) or not isinstance(self.train_size, int) or self.train_size < 1:
            raise TaskError(f"scaled_passes.train_size={self.train_size!r}: expected a positive integer")

    def __call__(self, size: int) -> int:
        return min(self.passes * math.ceil(size / self.train_size), self.cap)


def evaluate_task(model, task, sizes: Sequence[int], *, n_examples: int = 256, seed: int = 1234, batch_size: int = 64,
                  form: str = "auto", n_layer: int | Callable[[int], int] | None = None,
                  per_example: bool = False) -> list[dict]:
    """Per size: {"size", "accuracy" (exact match), "loss" (masked cross-entropy, nats per answer),
    "token_accuracy" (the fraction of answer positions right: partial credit below exact match), "tokens" (per
    example, padded), "state_bytes" (the state/cache one sequence leaves after an example: constant for BDH,
    growing with the length for GPT's KV cache), "examples", "n_layer"}.

    `model`: a model (any registered type) or a model directory; `task`: a Task (`check_task`) or a reference
    (`load_task`). Every size is checked (`task.check_size`, TaskError naming it) before anything runs. `n_layer`:
    evaluate with that many layer passes (`with_layers`; BDH only), or a rule size -> passes (`scaled_passes`), each
    size at its own passes (the rows' "n_layer"; all checked first). `per_example`: each row also holds "correct",
    every example's exact match (0/1, in order: what `bootstrap_interval` resamples). Batches of `batch_size`
    examples: memory is the caller's.
    """
    from .loading import load_task

    if isinstance(model, (str, os.PathLike)):
        from ..checkpoint import load_model

        model = load_model(model)
    task = check_task(task) if isinstance(task, Task) else load_task(task)
    for name, v in (("n_examples", n_examples), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TaskError(f"{name}={v!r}: expected a positive integer")
    sizes = list(sizes)
    if not sizes:
        raise TaskError(f"task {task.name!r}: no sizes to evaluate: expected at least one {task.size_name}")
    for s in sizes:
        task.check_size(s)
    V = model.config.vocab_size
    if V != task.vocab_size:
        raise TaskError(f"task {task.name!r} has {task.vocab_size} tokens, the model a vocabulary of {V}: expected a "
                        "model trained on this task")
    models = {}  # passes -> the model run with them (None: as it is)
    if callable(n_layer):
        passes = [check_passes(n_layer(s), f"n_layer({s})") for s in sizes]
    else:
        passes = [n_layer] * len(sizes)
    for k in passes:
        if k not in models:
            models[k] = model if k is None else with_layers(model, k)
    rows = []
    for s, k in zip(sizes, passes):
        model = models[k]
        x, y, m = task.batch(size_rng(seed, s), s, n_examples)
        flags: list[int] | None = [] if per_example else None
        sc = score_batch(model, x, y, m, batch_size=batch_size, form=form, per_example=flags)
        rows.append({"size": s, "accuracy": sc.correct / sc.examples, "loss": sc.nll / max(sc.answers, 1),
                     **({"correct": flags} if per_example else {}),
                     "token_accuracy": sc.answers_right / max(sc.answers, 1), "tokens": int(x.shape[1]),
                     "state_bytes": _state_bytes(model, x[:1], form), "examples": sc.examples,
                     "n_layer": model.config.n_layer if hasattr(model.config, "n_layer") else None})
    return rows


def bootstrap_interval(per_seed: Sequence[Sequence[int]], *, confidence: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
    """(point, lo, hi): the mean over seeds of each seed's exact-match rate, and its two-stage percentile bootstrap
    interval (`scipy.stats.bootstrap`, method "percentile"): each resample draws the seeds with replacement, then
    the examples within each drawn seed with replacement (for 0/1 outcomes the mean of n resampled examples is
    Binomial(n, p_seed) / n, drawn as such). One seed: an interval over examples only; more seeds also carry the
    spread between seeds. `per_seed`: each seed's per-example outcomes (0/1; `evaluate_task(per_example=True)`)."""
    import numpy as np
    from scipy import stats

    seeds = [list(map(int, s)) for s in per_seed if len(s)]
    if not seeds:
        raise ValueError("bootstrap_interval: no examples")
    n = np.array([len(s) for s in seeds], dtype=np.int64)
    p = np.array([sum(s) / len(s) for s in seeds], dtype=np.float64)
    point = float(p.mean())
    if np.all(p == p[0]) and p[0] in (0.0, 1.0):  # every example of every seed alike: no spread to resample
        return point, point, point
    rng = np.random.default_rng(seed)

    def stat(idx, axis=-1):
        i = idx.astype(np.int64)
        return (rng.binomial(n[i], p[i]) / n[i]).mean(axis=axis)

    idx = np.arange(len(seeds), dtype=np.float64)
    if len(seeds) == 1:  # scipy needs two observations to resample: the inner (examples) level alone
        draws = stat(np.zeros((n_resamples, 1)), axis=-1)
        a = (1 - confidence) / 2
        lo, hi = np.quantile(draws, [a, 1 - a])
    else:
        res = stats.bootstrap((idx,), stat, vectorized=True, method="percentile", confidence_level=confidence,
                              n_resamples=n_resamples, random_state=np.random.default_rng(seed + 1))
        lo, hi = res.confidence_interval.low, res.confidence_interval.high
    return point, float(lo), float(hi)
