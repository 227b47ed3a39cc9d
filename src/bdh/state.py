"""The explicit inference state of BDH-GPU: rho per layer and head, plus the position of the next token.

`rho[l]` has shape (B, nh, N, D): the paper's rho_{t-1,l} (eq. 5/8), kept in the rotated-key basis
(sum over past tokens s of RoPE_s(x_sparse_s) (x) v*_s, times the damping gamma^(t-s) when enabled).
`pos` (B,) int64 is the absolute position of the next token of every row, so rows may sit at different
positions (prompts of different lengths). States are values: model calls return new states and never
modify the one passed in.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import torch


@dataclasses.dataclass
class BDHState:
    rho: list[torch.Tensor]  # L x (B, nh, N, D)
    pos: torch.Tensor  # (B,) int64

    @property
    def batch_size(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_layer(self) -> int:
        return len(self.rho)

    @property
    def dtype(self) -> torch.dtype:
        return self.rho[0].dtype

    @property
    def device(self) -> torch.device:
        return self.rho[0].device

    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rho) + self.pos.numel() * 8

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
        for l, r in enumerate(self.rho):
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
