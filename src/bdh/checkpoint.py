"""Checkpoints of any registered model type: `save_pretrained` / `load_pretrained` (config.json + model.safetensors).

    save_pretrained(model, "runs/m", tokenizer)    # config.json tagged with its model_type, model.safetensors
    model = load_model("runs/m")                   # whichever model type the directory holds, in eval mode

Generic: the config class and the model class come from the registry (`bdh.interface`) by the config's
"model_type"; the tensors are checked (names and shapes) against a model built on the meta device before any
memory is spent. The reference `bdh.py` format of BDH lives in `bdh.reference`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .interface import build_model, load_config
from .io import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_SHAPE_ERRORS = 8  # shape disagreements listed in one CheckpointError


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, truncated, or not matching its config."""


def _describe(config) -> str:
    """The integer sizes of a config, e.g. "n_layer=6, n_embd=256, ...", for shape errors."""
    items = config.to_dict().items()
    return ", ".join(f"{k}={v}" for k, v in items if isinstance(v, int) and not isinstance(v, bool))


def check_tensors(tensors: dict[str, torch.Tensor], config, source: str) -> None:
    """Raise CheckpointError unless `tensors` has exactly the names and shapes of `config`'s model's state_dict."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    missing = [k for k in want if k not in tensors]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing}")
    unexpected = sorted(set(tensors) - set(want))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected}")
    bad = [k for k, shape in want.items() if tuple(tensors[k].shape) != shape]
    if bad:  # every disagreement (up to MAX_SHAPE_ERRORS), each naming the config: no tensor is special
        cfg = f"model_type={type(config).MODEL_TYPE!r}, {_describe(config)}"
        msgs = [f"tensor {k!r} has shape {tuple(tensors[k].shape)} but the config ({cfg}) expects {want[k]}"
                for k in bad[:MAX_SHAPE_ERRORS]]
        more = f"; and {len(bad) - MAX_SHAPE_ERRORS} more" if len(bad) > MAX_SHAPE_ERRORS else ""
        raise CheckpointError(f"{source}: " + "; ".join(msgs) + more)


def model_from_tensors(tensors: dict[str, torch.Tensor], config, source: str) -> torch.nn.Module:
    """A model of `config`'s type (on the CPU, in train mode) holding `tensors`, checked first.

    The model is built normally, so non-persistent buffers are computed by its `__init__` (without touching the
    global RNG), and the tensors are copied into it: buffers keep their own dtype (fp64 RoPE frequencies stay fp64).
    """
    check_tensors(tensors, config, source)
    with torch.random.fork_rng(devices=[]):
        model = build_model(config)
    model.load_state_dict(tensors, strict=True)
    return model


# ----------------------------------------------------------------------------- native format
def save_pretrained(model, directory: str | os.PathLike, tokenizer: Any = None) -> None:
    """Write `config.json` (with its model_type) and `model.safetensors`, each atomically (+ the tokenizer)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})  # one key: byte-identical files for identical weights
    model.config.save(directory / CONFIG_NAME)  # atomic (bdh.io)
    if tokenizer is not None:
        tokenizer.save(directory)


def load_pretrained(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
    """Load whichever registered model type `save_pretrained` wrote into `directory`, with `model.tokenizer`,
    in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .tokenization import load_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{directory}: missing {p.name} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = load_config(cfg_path)  # the class registered for its "model_type"
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid config: {e}") from e
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{w_path}: truncated or not a safetensors file ({e})") from e
    model = model_from_tensors(tensors, config, str(w_path))
    model.tokenizer = load_tokenizer(directory)  # bytes when the directory holds no tokenizer
    if model.tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {model.tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval()


def load_model(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
    """Load whichever model type `save_pretrained` wrote into `directory`, in eval mode (= `load_pretrained`)."""
    return load_pretrained(directory, device=device, dtype=dtype)
