"""Checkpoints: `save_pretrained` / `from_pretrained` (config.json + model.safetensors) and the reference format.

The reference `bdh.py` state_dict has keys `embed.weight` (V, D), `encoder` (nh, D, N), `encoder_v` (nh, D, N),
`decoder` (nh*N, D), `lm_head` (D, V) and the buffer `attn.freqs` (1, 1, 1, N) in fp32. Reference `.pt` files
are read with `torch.load(weights_only=True)`: tensors only, never code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import BDHConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PARAM_KEYS = ("embed.weight", "encoder", "encoder_v", "decoder", "lm_head")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, truncated, or not matching its config."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it.

    A failing write (full disk, exception, kill) never leaves a partial file at `path`, and an existing
    file at `path` stays intact until the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def expected_shapes(config: BDHConfig) -> dict[str, tuple[int, ...]]:
    nh, D, N, V = config.n_head, config.n_embd, config.N, config.vocab_size
    return {
        "embed.weight": (V, D),
        "encoder": (nh, D, N),
        "encoder_v": (nh, D, N),
        "decoder": (nh * N, D),
        "lm_head": (D, V),
        "freqs": (N,),
    }


def _check_tensors(tensors: dict[str, torch.Tensor], config: BDHConfig, source: str) -> None:
    want = expected_shapes(config)
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing}")
    unexpected = sorted(set(tensors) - set(want))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected}")
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(tensors[k].shape)} but the config "
                f"(n_head={config.n_head}, n_embd={config.n_embd}, N={config.N}, vocab_size={config.vocab_size}) "
                f"expects {shape}"
            )


def _model_from_tensors(tensors: dict[str, torch.Tensor], config: BDHConfig, source: str):
    from .model import BDH

    _check_tensors(tensors, config, source)
    with torch.device("meta"):
        model = BDH(config)
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.to(torch.float64 if k == "freqs" else v.dtype) for k, v in tensors.items()}, strict=True)
    if config.damping is not None:  # non-persistent buffer (garbage after to_empty): rebuild on CPU
        model.log_gamma = torch.log(torch.tensor(config.decay(), dtype=torch.float64))
    return model


def _generic_from_tensors(tensors: dict[str, torch.Tensor], config, source: str):
    """Any other model type (the GPT baseline): keys and shapes checked against a freshly built model."""
    from .models import build_model

    with torch.device("meta"):
        model = build_model(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing tensor(s) {missing}, unexpected tensor(s) {unexpected}")
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{source}: tensor {k!r} has shape {tuple(tensors[k].shape)}, the config expects {shape}")
    model = build_model(config)  # on CPU: non-persistent buffers are computed, parameters then overwritten
    model.load_state_dict(tensors, strict=True)
    return model


# ----------------------------------------------------------------------------- native format
def save_pretrained(model, directory: str | os.PathLike, tokenizer: Any = None) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})  # one key: byte-identical files for identical weights
    with atomic_path(directory / CONFIG_NAME) as tmp:
        model.config.save(tmp)
    if tokenizer is not None:
        tokenizer.save(directory)


def load_pretrained(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{directory}: missing {p.name} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    from .models import load_config

    try:
        config = load_config(cfg_path)  # BDHConfig or GPTConfig ("model_type")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid config: {e}") from e
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{w_path}: truncated or not a safetensors file ({e})") from e
    if isinstance(config, BDHConfig):
        model = _model_from_tensors(tensors, config, str(w_path))
    else:
        model = _generic_from_tensors(tensors, config, str(w_path))
    from .tokenization import load_tokenizer

    model.tokenizer = load_tokenizer(directory)  # bytes when the directory holds no tokenizer
    if model.tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {model.tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval()


# ----------------------------------------------------------------------------- reference format
def load_reference(path_or_state_dict, config: BDHConfig):
    """A BDH with the weights of a reference `bdh.py` state_dict (or `.pt` file, or train.py checkpoint)."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = str(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reference checkpoint {path!r} does not exist")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, pickle with code, ...
            raise CheckpointError(f"{path}: cannot be read as a tensors-only torch file ({e})") from e
        source = path
    else:
        sd, source = path_or_state_dict, "reference state_dict"
    if not isinstance(sd, dict):
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    if "model" in sd and isinstance(sd["model"], dict):  # a train.py-style checkpoint {"model": ..., ...}
        sd = sd["model"]
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # saved from a torch.compile'd model
    if "lm_gate" in sd:  # unused parameter of the reference's first commit
        warnings.warn("reference checkpoint: ignoring the unused 'lm_gate' parameter", stacklevel=3)
        sd.pop("lm_gate")
    tensors = {k: v for k, v in sd.items() if k != "attn.freqs"}
    if "attn.freqs" in sd:
        tensors["freqs"] = sd["attn.freqs"].reshape(-1)
    else:
        from .attention import rope_freqs

        tensors["freqs"] = rope_freqs(config.N, config.rope_theta)
    return _model_from_tensors(tensors, config, source).eval()


def to_reference_state_dict(model) -> dict[str, torch.Tensor]:
    """Keys and shapes of the reference `bdh.py` (`attn.freqs` as (1, 1, 1, N) fp32)."""
    c = model.config
    if c.damping is not None:
        raise ValueError(f"config.damping={c.damping!r}: the reference format has no damping; export needs damping=None")
    sd = {k: getattr(model, k.split(".")[0]).weight if k == "embed.weight" else getattr(model, k) for k in PARAM_KEYS}
    out = {k: v.detach().cpu().clone() for k, v in sd.items()}
    out["attn.freqs"] = model.freqs.detach().cpu().to(torch.float32).view(1, 1, 1, -1).clone()
    return out
