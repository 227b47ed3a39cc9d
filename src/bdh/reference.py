"""BDH in the reference `bdh.py` format: `load_reference` / `to_reference_state_dict` (`BDH.from_reference`,
`BDH.reference_state_dict`).

The reference state_dict has keys `embed.weight` (V, D), `encoder` (nh, D, N), `encoder_v` (nh, D, N),
`decoder` (nh*N, D), `lm_head` (D, V) and the buffer `attn.freqs` (1, 1, 1, N) in fp32. Reference `.pt` files
are read with `torch.load(weights_only=True)`: tensors only, never code.

The model is built through the registry (model type "bdh", registered by `bdh.model`, which the package imports),
so this module does not import `bdh.model` (that would be an import cycle with its lazy imports of this one).
"""

from __future__ import annotations

import os
import warnings

import torch

from .attention import rope_freqs
from .checkpoint import CheckpointError, model_from_tensors
from .config import BDHConfig

PARAM_KEYS = ("embed.weight", "encoder", "encoder_v", "decoder", "lm_head")


def load_reference(path_or_state_dict, config: BDHConfig):
    """A BDH (eval mode) with the weights of a reference `bdh.py` state_dict (or `.pt` file, or train.py checkpoint)."""
    if not isinstance(config, BDHConfig):
        raise TypeError(f"load_reference: expected a BDHConfig, got {type(config).__name__}")
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
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: entry {k!r} ({type(k).__name__} key, {type(v).__name__} value): "
                                  "expected a state_dict of str keys and tensor values")
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # saved from a torch.compile'd model
    if "lm_gate" in sd:  # unused parameter of the reference's first commit
        warnings.warn("reference checkpoint: ignoring the unused 'lm_gate' parameter", stacklevel=3)
        sd.pop("lm_gate")
    tensors = {k: v for k, v in sd.items() if k != "attn.freqs"}
    if "attn.freqs" in sd:
        tensors["freqs"] = sd["attn.freqs"].reshape(-1)  # (1, 1, 1, N) fp32 -> (N,), copied into the fp64 buffer
        f = tensors["freqs"]
        if config.n_rope < config.N and f.numel() == config.N and bool((f[config.n_rope :] != 0).any()):
            raise CheckpointError(f"{source}: config.rope_fraction={config.rope_fraction} rotates the first "
                                  f"{config.n_rope} of {config.N} neurons, but attn.freqs rotates neurons past them "
                                  "(load it with rope_fraction=1.0)")
    else:
        tensors["freqs"] = rope_freqs(config.N, config.rope_theta, config.n_rope)
    return model_from_tensors(tensors, config, source).eval()


def to_reference_state_dict(model) -> dict[str, torch.Tensor]:
    """Keys and shapes of the reference `bdh.py` (`attn.freqs` as (1, 1, 1, N) fp32)."""
    c = model.config
    if c.damping is not None:
        raise ValueError(f"config.damping={c.damping!r}: the reference format has no damping; export needs damping=None")
    sd = {k: getattr(model, k.split(".")[0]).weight if k == "embed.weight" else getattr(model, k) for k in PARAM_KEYS}
    out = {k: v.detach().cpu().clone() for k, v in sd.items()}
    out["attn.freqs"] = model.freqs.detach().cpu().to(torch.float32).view(1, 1, 1, -1).clone()
    return out
