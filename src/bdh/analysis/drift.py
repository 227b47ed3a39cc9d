"""How BDH's internal statistics drift with input length (spec §6d, generalisation over time): per size of a task,
the active fraction of x_sparse and y_sparse and the size of rho after the last token, so that the statistics at 8x
the training length can be set beside those at 1x.

    from bdh.analysis.drift import length_drift
    rows = length_drift(model, load_task("copy"), [8, 16, 32, 64])
"""

from __future__ import annotations

import torch

from .record import hook_name, run_with_cache


@torch.no_grad()
def length_drift(model, task, sizes, *, n_examples: int = 16, seed: int = 1234) -> list[dict]:
    """One row per size: {"size", "tokens" (T), "x_active", "y_active" (fraction of neurons > 0, mean over examples,
    layers, heads and positions), "x_active_last", "y_active_last" (the same over the last quarter of positions),
    "rho_norm" (||rho||_F after the last token, mean over examples, layers and heads), "rho_norm_per_token"
    (rho_norm / T: rho sums T outer products, so a length-stable read-out needs this roughly constant)}.

    The task's examples at each size (`bdh.tasks.evaluate.size_rng(seed, size)`), at the model's n_layer."""
    from ..tasks.evaluate import size_rng

    if "rho_state" not in getattr(model, "capabilities", ()):
        raise ValueError(f"length_drift: {type(model).__name__} has no rho state (capability 'rho_state')")
    c = model.config
    names = [hook_name(l, k) for l in range(c.n_layer) for k in ("x_sparse", "y_sparse")]
    rows = []
    for size in sizes:
        x, _, _ = task.batch(size_rng(seed, size), size, n_examples)  # (B, T): one size, no padding
        x = x.to(model.device)
        T = x.shape[1]
        _, cache = run_with_cache(model, x, names)
        last = slice(T - max(1, T // 4), T)
        act = {k: torch.stack([(cache[hook_name(l, k)] > 0).float() for l in range(c.n_layer)])  # (L, B, h, T, N)
               for k in ("x_sparse", "y_sparse")}
        _, final = model.prefill(x)
        rho = torch.stack([r.float().flatten(2).norm(dim=-1) for r in final.rho])  # (L, B, h)
        rows.append({"size": size, "tokens": T,
                     "x_active": act["x_sparse"].mean().item(), "y_active": act["y_sparse"].mean().item(),
                     "x_active_last": act["x_sparse"][:, :, :, last].mean().item(),
                     "y_active_last": act["y_sparse"][:, :, :, last].mean().item(),
                     "rho_norm": rho.mean().item(), "rho_norm_per_token": rho.mean().item() / T})
    return rows
