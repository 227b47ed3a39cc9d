"""The step's pieces: the loss module DDP wraps, the optimizer and the layer passes of a step (the step itself is
`Trainer.train_step`)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import hoyer_activity
from .batching import seeded_rng


class LossModule(nn.Module):
    """The function DDP wraps: (x, y, state) -> (objective, mean cross-entropy, new state or None).

    The objective is the cross-entropy plus, with `activity_penalty` > 0, that weight times the mean Hoyer
    activity of x_sparse over layers (`bdh.sparse.hoyer_activity`); without it the two are the same tensor.
    """

    def __init__(self, model: nn.Module, form: str, detach_kv: bool, carry: bool, activity_penalty: float = 0.0):
        super().__init__()
        self.model, self.form, self.detach_kv, self.carry = model, form, detach_kv, carry
        self.activity_penalty = activity_penalty

    def forward(self, x: torch.Tensor, y: torch.Tensor, state: Any = None):
        xs = [] if self.activity_penalty else None
        kw = {} if xs is None else {"x_sparse_out": xs}  # the "activity_penalty" capability
        if self.form != "auto":
            kw["form"] = self.form  # the "forms" capability
        if self.detach_kv:
            kw["detach_kv"] = True  # the "no_bptt" capability
        new = None
        if not self.carry:
            _, loss = self.model(x, y, **kw)
        else:
            logits, new = self.model.prefill(x, state, **kw)  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        if xs is None:
            return loss, loss, new
        penalty = torch.stack([hoyer_activity(xl.float()) for xl in xs]).mean()
        return loss + self.activity_penalty * penalty, loss, new


def make_optimizer(model: nn.Module, t) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on matrices and embeddings (every BDH parameter), none on vectors; or,
    with train.optimizer = "muon", Muon on the hidden weight matrices and AdamW on the rest (`bdh.training.muon`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if t.optimizer == "muon":
        from .muon import MuonAdamW, is_hidden_matrix

        inner = model
        while hasattr(inner, "module") or hasattr(inner, "_orig_mod"):  # DDP / torch.compile wrappers
            inner = getattr(inner, "module", None) or inner._orig_mod
        emb = tuple(getattr(inner, "embedding_params", ()))  # declared by the model class (bdh.interface)

        groups = [
            {"params": [p for n, p in named if is_hidden_matrix(n, p, emb)], "weight_decay": t.weight_decay,
             "muon": True},
            {"params": [p for n, p in named if p.dim() >= 2 and not is_hidden_matrix(n, p, emb)],
             "weight_decay": t.weight_decay},
            {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0},
        ]
        return MuonAdamW([g for g in groups if g["params"]], lr=t.lr, betas=(t.beta1, t.beta2))
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=(t.beta1, t.beta2))



def draw_layer_passes(seed: int, step: int, lo: int, hi: int) -> int:
    """The layer passes of optimizer step `step` (0-based) under train.layer_passes = [lo, hi]: uniform in [lo, hi],
    a function of (train.seed, step) alone, so a resumed run draws what the uninterrupted one drew."""
    return seeded_rng("layer_passes", seed, step).randint(lo, hi)


@contextlib.contextmanager
def layer_passes(model: nn.Module, config):
    """Run `model` with `config` (its own config at another n_layer) inside the block: other layer passes of a
    model type with the "layer_passes" capability, whose weights do not depend on n_layer. As
    `bdh.tasks.evaluate.with_layers`, but on the model itself, so the gradients reach its weights."""
    own = model.config
    model.config = config
    try:
        yield model
    finally:
        model.config = own
