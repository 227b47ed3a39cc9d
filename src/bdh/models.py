"""Model types by name: BDH and the GPT-2 baseline share configs on disk (`config.json` "model_type"),
the trainer, evaluation, generation and checkpoints.

    model = load_model("runs/default")          # BDH or GPT, whichever the directory holds
    model = build_model(config)                 # from a BDHConfig or a GPTConfig
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

MODEL_TYPES = ("bdh", "gpt")


def config_class(model_type: str):
    if model_type == "bdh":
        from .config import BDHConfig

        return BDHConfig
    if model_type == "gpt":
        from .baselines.gpt import GPTConfig

        return GPTConfig
    raise ValueError(f"model_type={model_type!r}: expected one of {', '.join(MODEL_TYPES)}")


def config_from_dict(d: dict[str, Any]):
    """A BDHConfig or GPTConfig from a dict with an optional "model_type" (default "bdh")."""
    if not isinstance(d, dict):
        raise ValueError(f"model config: expected a JSON object, got {type(d).__name__}")
    return config_class(d.get("model_type", "bdh")).from_dict(d)


def load_config(path: str | os.PathLike):
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return config_from_dict(d)


def model_type(config) -> str:
    from .config import BDHConfig

    return "bdh" if isinstance(config, BDHConfig) else "gpt"


def build_model(config) -> torch.nn.Module:
    """A freshly initialised model for a BDHConfig or GPTConfig."""
    from .baselines.gpt import GPT, GPTConfig
    from .config import BDHConfig
    from .model import BDH

    if isinstance(config, BDHConfig):
        return BDH(config)
    if isinstance(config, GPTConfig):
        return GPT(config)
    raise TypeError(f"build_model: expected a BDHConfig or GPTConfig, got {type(config).__name__}")


def load_model(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
    """Load whichever model (BDH or GPT) `save_pretrained` wrote into `directory`, in eval mode."""
    from .checkpoint import load_pretrained

    return load_pretrained(directory, device=device, dtype=dtype)


class PretrainedMixin:
    """Shared by BDH and the GPT baseline: input checks, the loss, `generate`, `stream`, `save_pretrained`,
    `from_pretrained`."""

    def _check_ids(self, idx: torch.Tensor, what: str, dims: int) -> None:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"{what}: expected a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dim() != dims:
            shape = "(B, T)" if dims == 2 else "(B,)"
            raise ValueError(f"{what}: expected shape {shape}, got {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"{what}: expected integer token ids, got dtype {idx.dtype}")
        if idx.numel() == 0:
            raise ValueError(f"{what}: empty input (shape {tuple(idx.shape)}); expected at least one token")
        lo, hi = int(idx.min()), int(idx.max())
        V = self.config.vocab_size
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what}: token id {bad} is outside the vocabulary [0, {V})")

    @staticmethod
    def _loss(logits: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        """Mean cross-entropy of logits (B, T, V) against targets (B, T), or None without targets."""
        if targets is None:
            return None
        if targets.shape != idx.shape:
            raise ValueError(f"targets has shape {tuple(targets.shape)}, expected {tuple(idx.shape)} like idx")
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


    def generate(self, *args, **kwargs):
        """See `bdh.generation.generate`."""
        from .generation import generate

        return generate(self, *args, **kwargs)

    def stream(self, *args, **kwargs):
        """See `bdh.generation.stream`."""
        from .generation import stream

        return stream(self, *args, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> None:
        """Write `config.json` (with its model_type) and `model.safetensors` (HF layout), atomically per file."""
        from .checkpoint import save_pretrained

        save_pretrained(self, directory, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
        """Load a model written by `save_pretrained`, in eval mode, with its tokenizer as `model.tokenizer`."""
        from .checkpoint import CheckpointError, load_pretrained

        model = load_pretrained(directory, device=device, dtype=dtype)
        if not isinstance(model, cls):
            raise CheckpointError(f"{directory}: holds a model of model_type {model_type(model.config)!r}, not "
                                  f"{cls.__name__} (use bdh.load_model)")
        return model
