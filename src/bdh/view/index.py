"""The neuron index of `bdh view`: per neuron, its top-activating contexts and activation histogram over a
validation corpus, built once per model and cached beside it (`DIR/view-index.safetensors`, written atomically
with `bdh.io`), keyed to the SHA-256 of the weights and the build settings so a changed model rebuilds.

Tensors (L layers, h heads, N neurons per head, K contexts, B histogram bins), per indexed kind:

| name              | shape          | what                                                             |
|-------------------|----------------|------------------------------------------------------------------|
| `{kind}.top_v`    | (L, h, N, K)   | the K largest activations, descending                            |
| `{kind}.top_pos`  | (L, h, N, K)   | their positions in `tokens` (-1 when fewer than K are non-zero)   |
| `{kind}.hist`     | (L, h, N, B)   | counts of non-zero activations per octave (`HIST_EDGES`, log2)     |
| `{kind}.active`   | (L, h, N)      | tokens on which the neuron is non-zero                            |
| `tokens`          | (M,)           | the corpus token ids indexed (M = windows * block)                |

The corpus is cut into windows of `block` tokens, each run from an empty state (as `analysis.sparsity`), with
the model's hook points (`analysis.record.run_with_hooks`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..analysis.record import hook_name, run_with_hooks
from ..checkpoint import model_fingerprint

INDEX_NAME = "view-index.safetensors"
INDEX_VERSION = "1"
INDEX_KINDS = ("x_sparse", "xy")
HIST_EDGES = np.arange(-16, 9)  # log2 of the activation: 24 octaves [2^-16, 2^8), clamped at both ends
CONTEXT_BEFORE, CONTEXT_AFTER = 24, 6


class NeuronIndex:
    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict):
        self.t, self.meta = tensors, meta

    @property
    def kinds(self) -> list[str]:
        return list(self.meta["kinds"])

    def neuron(self, layer: int, head: int, neuron: int, tokenizer, k: int | None = None) -> dict:
        """Top contexts (text before, the token, text after, value) and the histogram of one neuron, per kind."""
        block = int(self.meta["block"])
        toks = self.t["tokens"]
        out = {"corpus": self.meta["corpus"], "n_tokens": int(self.meta["n_tokens"]), "hist_edges_log2":
               HIST_EDGES.tolist(), "kinds": {}}
        dec = lambda a, b: tokenizer.decode(toks[a:b].tolist())  # noqa: E731
        for kind in self.kinds:
            v = self.t[f"{kind}.top_v"][layer, head, neuron]
            p = self.t[f"{kind}.top_pos"][layer, head, neuron]
            ctx = []
            for val, pos in zip(v.tolist()[:k], p.tolist()[:k]):
                if pos < 0 or val <= 0:
                    continue
                w0 = pos // block * block  # the window's start: activations depend only on the window
                ctx.append({"value": round(val, 6), "pos": pos, "before": dec(max(w0, pos - CONTEXT_BEFORE), pos),
                            "token": dec(pos, pos + 1), "after": dec(pos + 1, min(w0 + block, pos + 1 + CONTEXT_AFTER))})
            active = int(self.t[f"{kind}.active"][layer, head, neuron])
            out["kinds"][kind] = {"contexts": ctx, "hist": self.t[f"{kind}.hist"][layer, head, neuron].tolist(),
                                  "active": active, "zeros": int(self.meta["n_tokens"]) - active,
                                  "fraction_active": round(active / max(int(self.meta["n_tokens"]), 1), 6)}
        return out


def build_index(model, ids: Sequence[int] | np.ndarray, *, corpus: str = "?", kinds: Sequence[str] = INDEX_KINDS,
                top: int = 16, block: int = 256, batch_size: int = 8, progress: bool = True) -> NeuronIndex:
    """Run `model` over windows of `ids` and keep per neuron its top-`top` activations and a histogram."""
    from tqdm import tqdm

    c = model.config
    L, h, N = c.n_layer, c.n_head, c.N
    ids = np.asarray(ids, dtype=np.int64)
    n_win = len(ids) // block
    if n_win < 1:
        raise ValueError(f"neuron index: the corpus has {len(ids)} tokens, fewer than one window of {block}")
    windows = torch.from_numpy(ids[: n_win * block].reshape(n_win, block).copy())
    nb = len(HIST_EDGES) - 1
    lo = int(HIST_EDGES[0])
    top_v = {k: torch.zeros((L, h, N, top)) for k in kinds}
    top_p = {k: torch.full((L, h, N, top), -1, dtype=torch.long) for k in kinds}
    counts = {k: torch.zeros((L, h * N * (nb + 1)), dtype=torch.long) for k in kinds}  # last bin of a neuron: zeros
    base = 0  # position of the first token of the batch
    key0 = ((torch.arange(h).view(1, h, 1, 1) * N + torch.arange(N).view(1, 1, 1, N)) * (nb + 1)).int()  # (1, h, 1, N)

    def hook(name: str, t: torch.Tensor, t0: int) -> None:
        l, kind = int(name.split(".")[1]), name.split(".")[2]
        a = t.detach().float().cpu().contiguous()  # (B, h, T, N)
        B, _, T, _ = a.shape
        # histogram: floor(log2 a) from the float's exponent bits (clamped), or the zero bin nb; one bincount
        e = (a.view(torch.int32) >> 23) - 127 - lo  # a > 0 is a normal or tiny float: exponent - bias
        bins = torch.where(a > 0, e.clamp_(0, nb - 1), nb).add_(key0)  # int32
        counts[kind][l] += torch.bincount(bins.view(-1), minlength=h * N * (nb + 1))
        # top-k over the tokens of the batch, merged with the running top-k
        flat = a.permute(1, 3, 0, 2).reshape(h, N, B * T)  # (h, N, B*T)
        v, i = flat.topk(min(top, B * T), -1)
        pos = base + (i // T) * block + i % T  # global positions
        allv = torch.cat([top_v[kind][l], v], -1)
        allp = torch.cat([top_p[kind][l], pos], -1)
        keep = allv.topk(top, -1).indices
        top_v[kind][l] = allv.gather(-1, keep)
        top_p[kind][l] = allp.gather(-1, keep)

    hooks = {hook_name(l, k): hook for l in range(L) for k in kinds}
    bar = tqdm(total=n_win * block, unit="tok", desc="neuron index", disable=not progress, leave=False)
    for w0 in range(0, n_win, batch_size):
        x = windows[w0 : w0 + batch_size]
        base = w0 * block
        run_with_hooks(model, x, hooks)
        bar.update(x.numel())
    bar.close()
    tensors = {"tokens": windows.flatten().to(torch.int32)}
    for k in kinds:
        c = counts[k].view(L, h, N, nb + 1)
        tensors[f"{k}.top_v"] = top_v[k]
        tensors[f"{k}.top_pos"] = torch.where(top_v[k] > 0, top_p[k], torch.full_like(top_p[k], -1))
        tensors[f"{k}.hist"] = c[..., :nb].contiguous()
        tensors[f"{k}.active"] = c[..., :nb].sum(-1)
    meta = {"version": INDEX_VERSION, "corpus": corpus, "kinds": list(kinds), "top": top, "block": block,
            "n_tokens": n_win * block}
    return NeuronIndex(tensors, meta)


def load_or_build_index(model, model_dir: str | os.PathLike, corpus: str, *, max_tokens: int = 1 << 20,
                        block: int = 256, progress: bool = True, log=None) -> NeuronIndex:
    """The cached index of `model_dir` when its key matches (weights hash, corpus, sizes); else build and save it.

    A model directory that cannot be written keeps the index in memory (one line to `log`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from ..analysis.report import corpus_tokens
    from ..io import atomic_path

    path = Path(model_dir) / INDEX_NAME
    key = {"version": INDEX_VERSION, "weights_sha256": model_fingerprint(model_dir), "corpus": corpus,
           "max_tokens": str(max_tokens), "block": str(block)}
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if all(meta.get(k) == v for k, v in key.items()):
                info = json.loads(meta["info"])
                return NeuronIndex(load_file(str(path)), info)
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            if log:
                log(f"neuron index {path}: unreadable ({e}); rebuilding")
    ids = corpus_tokens(model, corpus, max_tokens)
    index = build_index(model, ids, corpus=corpus, block=min(block, len(ids)), progress=progress)
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in index.t.items()}, tmp,
                      metadata={**key, "info": json.dumps(index.meta)})
    except OSError as e:
        if log:
            log(f"neuron index: cannot write {path} ({e}); kept in memory")
    return index
