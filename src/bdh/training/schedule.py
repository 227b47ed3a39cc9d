"""Learning-rate schedule: linear warmup, then linear or cosine decay to `min_lr_ratio` of the peak (paper B.2:
1000 warmup steps, then linear decay from 1e-3 to 1e-4), or constant (the reference train.py)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, warmup: int, steps: int, decay: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if decay == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if decay == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"decay={decay!r}: expected linear, cosine or constant")


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimizer step; its state_dict is plain JSON."""
    t = train_cfg
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup=t.warmup, steps=t.steps, decay=t.decay, min_ratio=t.min_lr_ratio),
    )
