"""The explicit inference state of BDH-GPU: rho per layer and head, plus the position of the next token.

`rho[l]` has shape (B, nh, N, D): the paper's rho_{t-1,l} (eq. 5/8), kept in the rotated-key basis
(sum over past tokens s of RoPE_s(x_sparse_s) (x) v*_s, times the damping gamma^(t-s) when enabled).
`pos` (B,) int64 is the absolute position of the next token of every row, so rows may sit at different
positions (prompts of different lengths). States are values: model calls return new states and never
modify the one passed in (except `model.step(..., inplace=True)`, which updates the state it is given).

Lazy damping scale (private, used only by the sparse decode path, `bdh.sparse`): with damping, every token
multiplies all of rho by gamma_h, which costs O(n d) even when only a few neurons are active. The sparse path
instead keeps, per layer, a per-(row, head) scalar c with true rho = c * stored (`_scale[l]`, shape (B*nh,)).
`rho` folds any pending scale into the stored tensors on access, so every other user (select, cat, clone,
save, the trainer, the analysis tools) sees the true rho.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch


class BDHState:
    """rho: L x (B, nh, N, D) tensors; pos: (B,) int64."""

    def __init__(self, rho: list[torch.Tensor], pos: torch.Tensor):
        self._rho = rho
        self._scale: dict[int, torch.Tensor] = {}  # layer -> (B*nh,) pending lazy damping scale (sparse decode)
        self.pos = pos

    @property
    def rho(self) -> list[torch.Tensor]:
        """The true rho per layer (any pending lazy scale is folded in first)."""
        if self._scale:
            for l in list(self._scale):
                self._fold(l)
        return self._rho

    @rho.setter
    def rho(self, value: list[torch.Tensor]) -> None:
        self._rho = value
        self._scale = {}

    def __repr__(self) -> str:
        shapes = [tuple(r.shape) for r in self._rho]
        return f"BDHState(rho={shapes}, pos={self.pos.tolist()}, dtype={self._rho[0].dtype if self._rho else None})"

    # ------------------------------------------------------------------ lazy scale (bdh.sparse only)
    def _fold(self, l: int) -> torch.Tensor:
        """Multiply layer l's pending scale into its stored rho (in place); returns the true rho of layer l."""
        c = self._scale.pop(l, None)
        r = self._rho[l]
        if c is not None:
            c = c.to(r.dtype).view(r.shape[0], r.shape[1], 1, 1)
            with torch.no_grad():
                if r.is_inference() and not torch.is_inference_mode_enabled():
                    r = self._rho[l] = r * c  # inference tensors cannot be updated in place outside inference mode
                else:
                    r.mul_(c)
        return r

    def _raw(self, l: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer l's stored rho and pending scale (None = 1): true rho = scale * stored."""
        return self._rho[l], self._scale.get(l)

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
        return BDHState([r.clone() for r in self.rho], self.pos.clone())

    def to(self, device=None, dtype=None) -> "BDHState":
        return BDHState([r.to(device=device, dtype=dtype) for r in self.rho], self.pos.to(device=device))

    def select(self, rows: Sequence[int] | torch.Tensor) -> "BDHState":
        """The state of the given batch rows (in that order)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        return BDHState([r.index_select(0, idx) for r in self.rho], self.pos.index_select(0, idx))

    @staticmethod
    def cat(states: Sequence["BDHState"]) -> "BDHState":
        """Stack states along the batch dimension (e.g. prompts of different lengths prefilled one by one)."""
        if not states:
            raise ValueError("BDHState.cat: expected at least one state")
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
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to a safetensors file (atomically)."""
        from safetensors.torch import save_file

        from .checkpoint import atomic_path

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
