"""Validation loss in nats per token and bits per byte on a fixed validation set.

The validation tokens are cut into `batch_size` contiguous streams at evenly spaced offsets and read T
tokens at a time. With `carry=True` (TBPTT models) the attention state is carried along each stream; with
`carry=False` every chunk starts from an empty state (independent windows, as the reference trains).
Bits per byte = total nats / ln 2 / total UTF-8 bytes of the predicted tokens (`tokenizer.token_bytes`), so
models with different tokenizers are comparable; for the byte tokenizer nats/byte = nats/token.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .batching import windows


def token_byte_lengths(tokenizer, device=None) -> torch.Tensor:
    """(V,) int64: UTF-8 bytes of every token id."""
    lengths = [len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]
    return torch.tensor(lengths, dtype=torch.long, device=device)


def check_finite_loss(loss: float) -> None:
    """ValueError for a nan/inf validation loss (a diverged or corrupt model): never reported as a result."""
    if not math.isfinite(loss):
        raise ValueError(f"validation loss is {loss} (non-finite logits): expected a finite loss (the model's "
                         "weights have diverged or are corrupt)")


@torch.no_grad()
def evaluate(
    model,
    tokens: np.ndarray,
    byte_lengths: torch.Tensor,
    block_size: int,
    *,
    batch_size: int = 32,
    max_tokens: int = 0,
    carry: bool = False,
    form: str = "auto",
    rank: int = 0,
    world: int = 1,
    autocast=contextlib.nullcontext,
) -> dict:
    """{"loss": nats/token, "bpb": bits/byte, "tokens": n, "bytes": n}; `max_tokens` 0 = all tokens.

    The same `tokens`, `block_size`, `batch_size` and `max_tokens` always select the same evaluated tokens.
    With `world` > 1 the streams are shared out over the processes and the sums all-reduced.
    """
    n = len(tokens)
    if n < 2:
        raise ValueError(f"the validation split has {n} token(s); at least 2 are needed to evaluate")
    S = min(batch_size, n - 1)
    seg = (n - 1) // S  # predicted tokens available per stream
    length = seg if max_tokens <= 0 else min(seg, max(1, max_tokens // S))
    mine = [i * seg for i in range(S)][rank::world]
    device = next(model.parameters()).device
    kw = {} if form == "auto" else {"form": form}  # the "forms" capability
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    try:
        state = None
        for c0 in range(0, length if mine else 0, block_size):
            x, y = windows(tokens, [s + c0 for s in mine], min(block_size, length - c0))
            x, y = x.to(device), y.to(device)
            with autocast():
                if carry:
                    logits, state = model.prefill(x, state, **kw)
                    state = model.carry_state(state)  # as in training (detached, trimmed where the type needs)
                else:
                    logits, _ = model(x, **kw)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
            sums += torch.stack([nll.double(), torch.tensor(y.numel(), device=device, dtype=torch.float64),
                                 byte_lengths.to(device)[y].sum().double()])
    finally:
        model.train(was_training)
    if world > 1:
        torch.distributed.all_reduce(sums)
    nats, count, nbytes = sums.tolist()
    check_finite_loss(nats / max(count, 1.0))
    return {
        "loss": nats / count,
        "bpb": nats / math.log(2) / max(nbytes, 1.0),
        "tokens": int(count),
        "bytes": int(nbytes),
    }
