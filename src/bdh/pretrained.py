"""`PretrainedMixin`: what every model type shares: input checks, the loss, `generate` / `stream`,
`save_pretrained` / `from_pretrained` (see `bdh.interface` for the interface it serves)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .generation import generate, stream

# token-id dtypes accepted at the public boundary (converted to int64); bool, floats and complex are refused
_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_token_ids(idx, vocab_size: int, what: str = "idx", dims: int = 2, values: bool = True) -> torch.Tensor:
    """Validate token ids where they enter (the one home of this check): a `dims`-D integer tensor, non-empty,
    every id in [0, vocab_size); returns them as int64 (int8/int16/uint8/int32 converted). TypeError / ValueError
    naming `what`. `values=False` skips the range check, the one device->host sync (ids the caller produced)."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of token ids, got {type(idx).__name__}")
    if idx.dim() != dims:
        shape = "(B, T)" if dims == 2 else "(B,)"
        raise ValueError(f"{what}: expected shape {shape}, got {tuple(idx.shape)}")
    if idx.dtype not in _ID_DTYPES:
        raise ValueError(f"{what}: expected integer token ids ({', '.join(str(d) for d in _ID_DTYPES)}), got "
                         f"dtype {idx.dtype}")
    if idx.numel() == 0:
        raise ValueError(f"{what}: empty input (shape {tuple(idx.shape)}); expected at least one token")
    if values:
        lo, hi = (int(t) for t in torch.stack(torch.aminmax(idx)).tolist())  # one sync
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{what}: token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab_size})")
    return idx if idx.dtype == torch.int64 else idx.long()


class PretrainedMixin:
    """Shared by BDH and the GPT baseline: input checks, the loss, `generate`, `stream`, `save_pretrained`,
    `from_pretrained`, and the defaults of the optional declarations of `bdh.interface`."""

    max_positions: int | None = None  # unbounded context (a type with learned positions overrides it)
    embedding_params: tuple[str, ...] = ()  # no embedding / output-head parameters named (Muon then trains every matrix)
    tiny_task_model: dict | None = None  # no small task-run model declared

    def _check_ids(self, idx: torch.Tensor, what: str, dims: int, values: bool = True) -> torch.Tensor:
        """`check_token_ids` against this model's vocabulary."""
        return check_token_ids(idx, self.config.vocab_size, what, dims, values)

    @staticmethod
    def _loss(logits: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        """Mean cross-entropy of logits (B, T, V) against targets (B, T), or None without targets.

        A target of -100 (PyTorch's and Hugging Face's ignore_index) is ignored: the mean is over the other
        positions (task runs put it at every non-answer and padding position). Any other id outside [0, V) is a
        ValueError."""
        if targets is None:
            return None
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets: expected a torch.Tensor of token ids or None, got {type(targets).__name__}")
        if targets.dtype not in _ID_DTYPES:
            raise ValueError(f"targets: expected integer token ids, got dtype {targets.dtype}")
        if targets.shape != idx.shape:
            raise ValueError(f"targets has shape {tuple(targets.shape)}, expected {tuple(idx.shape)} like idx")
        try:  # the range is checked by cross_entropy itself (no extra device->host sync per training step)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1).long())
        except IndexError as e:  # CPU: "Target 300 is out of bounds."
            raise ValueError(f"targets: {e} (expected token ids in [0, {logits.size(-1)}))") from None

    def generate(self, *args, **kwargs):
        """See `bdh.generation.generate`."""
        return generate(self, *args, **kwargs)

    def stream(self, *args, **kwargs):
        """See `bdh.generation.stream`."""
        return stream(self, *args, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> None:
        """Write `config.json` (with its model_type) and `model.safetensors` (HF layout), atomically per file."""
        save_pretrained(self, directory, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
        """Load a model written by `save_pretrained`, in eval mode, with its tokenizer as `model.tokenizer`."""
        model = load_pretrained(directory, device=device, dtype=dtype)
        if not isinstance(model, cls):
            raise CheckpointError(f"{directory}: holds a model of model_type {type(model.config).MODEL_TYPE!r}, not "
                                  f"{cls.__name__} (use bdh.load_model)")
        return model
