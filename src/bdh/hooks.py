"""Named hook points, one home for every model type: `add_hook`, `hooks()` and the emitter a forward pass calls.

A model class mixes in `HookPoints` and names its per-layer kinds (`HOOK_KINDS`: points `blocks.{l}.{kind}`,
TransformerLens style; `logits` is always a point) and the kinds whose hooks may only observe (`OBSERVE_ONLY`):

    with model.hooks({"blocks.0.attn_probs": fn}):   # fn(name, tensor, pos) -> None, or a tensor to use instead
        model(idx)
    handle = model.add_hook("logits", fn); ...; handle.remove()

Inside the model: `emit = self._emitter(pos)` is None when no hook is attached (nothing is called or built);
otherwise `t = emit(name, t)` runs the hooks of `name` and returns the tensor to go on with.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

import torch

Hook = Callable[[str, torch.Tensor, torch.Tensor], "torch.Tensor | None"]  # (name, activation, pos (B,))
_HOOK_NAME = re.compile(r"blocks\.(\d+)\.([a-z_]+)")


def hook_name(layer: int, kind: str, kinds: tuple[str, ...]) -> str:
    """`blocks.{layer}.{kind}`; ValueError for a kind not in `kinds`."""
    if kind not in kinds:
        raise ValueError(f"hook kind {kind!r}: expected one of {kinds}")
    return f"blocks.{layer}.{kind}"


def parse_hook_name(name: str, n_layer: int, kinds: tuple[str, ...]) -> tuple[int | None, str]:
    """(layer, kind) of a hook name; (None, 'logits') for `logits`. ValueError for unknown names."""
    if name == "logits":
        return None, "logits"
    m = _HOOK_NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None or m.group(2) not in kinds:
        raise ValueError(f"hook name {name!r}: expected 'logits' or 'blocks.<layer>.<kind>' with kind in {kinds}")
    layer = int(m.group(1))
    if layer >= n_layer:
        raise ValueError(f"hook name {name!r}: layer {layer} does not exist (the model has n_layer={n_layer})")
    return layer, m.group(2)


class HookHandle:
    """Returned by `add_hook`; `remove()` detaches the hook."""

    def __init__(self, table: dict, name: str, fn: Hook):
        self._table, self.name, self.fn = table, name, fn

    def remove(self) -> None:
        fns = self._table.get(self.name, [])
        if self.fn in fns:
            fns.remove(self.fn)
        if not fns:
            self._table.pop(self.name, None)


class HookPoints:
    """Mixin: hook points `blocks.{l}.{kind}` for kind in `HOOK_KINDS`, and `logits`. The model's `config` has
    `n_layer`; its `__init__` need not do anything (the table is created on first use)."""

    HOOK_KINDS: tuple[str, ...] = ()
    OBSERVE_ONLY: tuple[str, ...] = ()  # kinds whose hooks must return None

    @property
    def _hook_table(self) -> dict[str, list[Hook]]:
        table = self.__dict__.get("_hooks")
        if table is None:
            table = self.__dict__["_hooks"] = {}
        return table

    def hooked(self, name: str) -> bool:
        """Whether a hook is attached to `name` (to build a tensor only a hook reads)."""
        return name in self._hook_table

    def add_hook(self, name: str, fn: Hook) -> HookHandle:
        """Call `fn(name, tensor, pos)` at hook point `name` in every later call."""
        parse_hook_name(name, self.config.n_layer, self.HOOK_KINDS)
        if not callable(fn):
            raise TypeError(f"add_hook({name!r}): expected a callable (name, tensor, pos), got {type(fn).__name__}")
        self._hook_table.setdefault(name, []).append(fn)
        return HookHandle(self._hook_table, name, fn)

    @contextlib.contextmanager
    def hooks(self, hooks: dict[str, Hook | list[Hook]]) -> Iterator["HookPoints"]:
        """Attach `{name: fn or [fn, ...]}` for the duration of a `with` block."""
        handles = []
        try:
            for name, fns in hooks.items():
                for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                    handles.append(self.add_hook(name, fn))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _emitter(self, pos: torch.Tensor):
        """emit(name, tensor) -> tensor, running the hooks attached to `name`; None when no hook is attached."""
        table = self._hook_table
        if not table:
            return None
        observe = tuple(f".{k}" for k in self.OBSERVE_ONLY)

        def emit(name: str, t: torch.Tensor) -> torch.Tensor:
            for fn in table.get(name, ()):
                r = fn(name, t, pos)
                if r is not None:
                    if observe and name.endswith(observe):
                        raise ValueError(f"hook {name!r} returned a tensor: {name.rsplit('.', 1)[1]} hooks only observe")
                    if not isinstance(r, torch.Tensor) or r.shape != t.shape:
                        raise ValueError(f"hook {name!r} returned {getattr(r, 'shape', type(r).__name__)}: expected "
                                         f"None or a tensor of shape {tuple(t.shape)}")
                    t = r
            return t

        return emit
