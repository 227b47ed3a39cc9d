"""The explicit inference state of BDH-GPU: rho per layer and head, plus the position of the next token.

`rho[l]` has shape (B, nh, N, D): the paper's rho_{t-1,l} (eq. 5/8), kept in the rotated-key basis
(sum over past tokens s of RoPE_s(x_sparse_s) (x) v*_s, times the damping gamma^(t-s) when enabled).
`pos` (B,) int64 is the absolute position of the next token of every row, so rows may sit at different
positions (prompts of different lengths). States are values: model calls return new states and never
modify the one passed in (except `model.step(..., inplace=True)`, which updates the state it is given).

Lazy damping (decode loops that own the state, `model.step(..., inplace=True)` with damping): every token
multiplies all of rho by gamma_h, an O(n d) pass even when few neurons are active. Instead the state keeps, per
layer, the number k of decays not yet applied, so that true rho_l = gamma^k * stored_l (per head). k lives on the
host and gamma^k is computed from it, so no device->host sync is needed; every `fold_every` tokens (gamma^k about
1e-20 for the fastest head) the scale is multiplied into the stored tensor. All of it lives in this class:
`lazy_scale`, `lazy_decay_`, `fold_`. `rho` returns the true rho without modifying the state.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import torch

from .io import atomic_path

# The lazy damping scale c = gamma^k is folded into the stored rho before c drops below this (1/c <= 1e20 keeps
# the stored values far from the fp32 overflow at 3.4e38).
SCALE_FLOOR = 1e-20


def check_rows(rows, batch_size: int, who: str) -> list[int]:
    """The batch rows of `who.select(rows)` as a list of ints in [0, batch_size) (TypeError / ValueError otherwise)."""
    if isinstance(rows, torch.Tensor):
        if rows.dtype == torch.bool or rows.is_floating_point() or rows.is_complex() or rows.dim() != 1:
            raise TypeError(f"{who}.select(rows): expected a 1-D integer tensor or a list of row indices, got a "
                            f"tensor of dtype {rows.dtype} and shape {tuple(rows.shape)}")
        rows = rows.tolist()
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(f"{who}.select(rows): expected a list of row indices, got {type(rows).__name__}")
    out = []
    for r in rows:
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"{who}.select(rows): expected integer row indices, got {r!r} ({type(r).__name__})")
        if not 0 <= r < batch_size:
            raise ValueError(f"{who}.select(rows): row {r} is outside the batch [0, {batch_size})")
        out.append(r)
    return out


def check_states(states, cls: type) -> list:
    """`states` as a non-empty list of `cls` instances on one device, for `cls.cat` (TypeError / ValueError)."""
    who = f"{cls.__name__}.cat"
    if isinstance(states, (str, bytes)) or not isinstance(states, Sequence):
        raise TypeError(f"{who}(states): expected a list of {cls.__name__}, got {type(states).__name__}")
    states = list(states)
    if not states:
        raise ValueError(f"{who}: expected at least one state")
    for i, st in enumerate(states):
        if not isinstance(st, cls):
            raise TypeError(f"{who}(states): states[{i}] is a {type(st).__name__}, expected a {cls.__name__}")
    devices = {str(st.pos.device) for st in states}
    if len(devices) > 1:
        raise ValueError(f"{who}: states are on different devices {sorted(devices)}: expected one device")
    return states


def fold_period(decay: Sequence[float] | None) -> int:
    """How many lazy decays fit before gamma^k of the fastest head falls below SCALE_FLOOR (per-head gammas)."""
    g = min(decay) if decay else 1.0
    if g >= 1.0:
        return 1 << 62  # no decay: never
    return max(1, math.floor(math.log(SCALE_FLOOR) / math.log(g)))


class BDHState:
    """rho: L x (B, nh, N, D) tensors; pos: (B,) int64."""

    def __init__(self, rho: list[torch.Tensor], pos: torch.Tensor):
        self._rho = list(rho)
        self.pos = pos
        self._k = [0] * len(self._rho)  # per layer: decays pending in the lazy scale (true rho = gamma^k stored)
        self._log_gamma: torch.Tensor | None = None  # (nh,) fp64, set by the first lazy decay
        self._powers: dict[int, torch.Tensor] = {}  # k -> gamma^k (nh,) in the state dtype

    @property
    def rho(self) -> list[torch.Tensor]:
        """The true rho per layer (a scaled copy for a layer with a pending lazy scale; the state is unchanged)."""
        return [self.layer_rho(l) for l in range(len(self._rho))]

    @rho.setter
    def rho(self, value: list[torch.Tensor]) -> None:
        self._rho = list(value)
        self._k = [0] * len(self._rho)

    def layer_rho(self, l: int) -> torch.Tensor:
        """The true rho of layer l."""
        c = self.lazy_scale(l)
        return self._rho[l] if c is None else self._rho[l] * c.view(1, -1, 1, 1)

    def __repr__(self) -> str:
        shapes = [tuple(r.shape) for r in self._rho]
        return f"BDHState(rho={shapes}, pos={self.pos.tolist()}, dtype={self._rho[0].dtype if self._rho else None})"

    # ------------------------------------------------------------------ lazy damping scale
    def lazy_scale(self, l: int) -> torch.Tensor | None:
        """gamma^k (nh,) of layer l's pending decays (true rho = scale * stored), or None when none is pending."""
        k = self._k[l]
        if k == 0:
            return None
        c = self._powers.get(k)
        if c is None:
            c = self._powers[k] = torch.exp(self._log_gamma * k).to(self._rho[l].dtype)
        return c

    def stored(self, l: int) -> torch.Tensor:
        """Layer l's stored tensor (B, nh, N, D), to be updated in place by decode steps: true rho =
        `lazy_scale(l)` * stored."""
        return self._rho[l]

    def lazy_decay_(self, l: int, log_gamma: torch.Tensor, fold_every: int) -> None:
        """rho_l <- gamma_h rho_l, applied to the scale (O(1)); folded into storage every `fold_every` decays."""
        if self._log_gamma is None or self._log_gamma.device != log_gamma.device:
            self._log_gamma, self._powers = log_gamma.to(torch.float64), {}
        self._k[l] += 1
        if self._k[l] >= fold_every:
            self.fold_(l)

    def fold_(self, l: int | None = None) -> "BDHState":
        """Multiply pending lazy scales (of layer l, or all) into the stored tensors, in place."""
        for i in range(len(self._rho)) if l is None else (l,):
            c = self.lazy_scale(i)
            if c is None:
                continue
            r, c = self._rho[i], c.view(1, -1, 1, 1)
            with torch.no_grad():
                if r.is_inference() and not torch.is_inference_mode_enabled():
                    self._rho[i] = r * c  # inference tensors cannot be updated in place outside inference mode
                else:
                    r.mul_(c)
            self._k[i] = 0
        return self

    def writable_(self) -> "BDHState":
        """Make the tensors updatable in place here: a state made under `torch.inference_mode` holds inference
        tensors, which only inference mode may update in place; outside it they are copied once (in place)."""
        if not torch.is_inference_mode_enabled():
            self._rho = [r.clone() if r.is_inference() else r for r in self._rho]
            self.pos = self.pos.clone() if self.pos.is_inference() else self.pos
        return self

    @property
    def batch_size(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_layer(self) -> int:
        return len(self._rho)

    @property
    def dtype(self) -> torch.dtype:
        return self._rho[0].dtype

    @property
    def device(self) -> torch.device:
        return self._rho[0].device

    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self._rho) + self.pos.numel() * 8

    def clone(self) -> "BDHState":
        """A copy holding the true rho (a layer with a pending lazy scale is copied once, by the scaling)."""
        return BDHState([self._rho[l].clone() if k == 0 else self.layer_rho(l) for l, k in enumerate(self._k)],
                        self.pos.clone())

    def to(self, device=None, dtype=None) -> "BDHState":
        return BDHState([r.to(device=device, dtype=dtype) for r in self.rho], self.pos.to(device=device))

    def select(self, rows: Sequence[int] | torch.Tensor) -> "BDHState":
        """The state of the given batch rows (in that order)."""
        rows = check_rows(rows, self.batch_size, "BDHState")
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        return BDHState([r.index_select(0, idx) for r in self.rho], self.pos.index_select(0, idx))

    @staticmethod
    def cat(states: Sequence["BDHState"]) -> "BDHState":
        """Stack states along the batch dimension (e.g. prompts of different lengths prefilled one by one)."""
        states = check_states(states, BDHState)
        shapes = {tuple(tuple(r.shape[1:]) for r in s.rho) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"BDHState.cat: states have different layer shapes {sorted(shapes)}")
        L = states[0].n_layer
        return BDHState(
            [torch.cat([s.rho[l] for s in states], 0) for l in range(L)], torch.cat([s.pos for s in states], 0)
        )

    # ------------------------------------------------------------------ checks
    def check_compatible(self, n_layer: int, n_head: int, N: int, D: int, batch_size: int | None = None) -> None:
        """Raise ValueError when this state does not belong to a model with these sizes."""
        want = (n_head, N, D)
        if self.n_layer != n_layer:
            raise ValueError(f"state has {self.n_layer} layers, the model has n_layer={n_layer}")
        for l, r in enumerate(self._rho):
            if r.dim() != 4 or tuple(r.shape[1:]) != want or r.shape[0] != self.batch_size:
                raise ValueError(
                    f"state rho[{l}] has shape {tuple(r.shape)}, expected (B={self.batch_size}, n_head={n_head}, "
                    f"N={N}, n_embd={D}): the state comes from a model with another config"
                )
        if batch_size is not None and batch_size != self.batch_size:
            raise ValueError(f"input has batch size {batch_size}, the state has batch size {self.batch_size}")

    # ------------------------------------------------------------------ persistence (safetensors)
    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """`{prefix}rho.{l}` per layer and `{prefix}pos`: the true state as named tensors."""
        out = {f"{prefix}rho.{l}": r for l, r in enumerate(self.rho)}
        out[f"{prefix}pos"] = self.pos
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "", device=None) -> "BDHState":
        """The inverse of `to_tensors` (ValueError naming the missing key)."""
        L = sum(1 for k in tensors if k.startswith(f"{prefix}rho."))
        keys = [f"{prefix}rho.{l}" for l in range(L)] + [f"{prefix}pos"]
        missing = [k for k in keys if k not in tensors]
        if L == 0 or missing:
            raise ValueError(f"not a BDH state: missing tensor(s) {missing or [prefix + 'rho.0']}")
        rho = [tensors[k].to(device) if device is not None else tensors[k] for k in keys[:-1]]
        pos = tensors[keys[-1]].to(device=device, dtype=torch.long) if device is not None else tensors[keys[-1]].long()
        return cls(rho, pos)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to a safetensors file (atomically)."""
        from safetensors.torch import save_file

        tensors = {f"rho.{l}": r.detach().contiguous().cpu() for l, r in enumerate(self.rho)}
        tensors["pos"] = self.pos.detach().cpu().contiguous()
        meta = {"format": "bdh-state", "n_layer": str(self.n_layer), "shape": json.dumps(list(self.rho[0].shape))}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "BDHState":
        """Read a state written by `save`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"BDHState.load(path): expected a file path (str or os.PathLike), got {type(path).__name__}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"state file {str(path)!r} does not exist")
        try:
            t = load_file(str(path), device=str(device))
        except SafetensorError as e:
            raise ValueError(f"{path}: not a readable safetensors state file ({e})") from e
        L = sum(1 for k in t if k.startswith("rho."))
        if "pos" not in t or L == 0 or any(f"rho.{l}" not in t for l in range(L)):
            raise ValueError(f"{path}: not a BDH state file (keys {sorted(t)})")
        return cls([t[f"rho.{l}"] for l in range(L)], t["pos"].to(torch.long))
