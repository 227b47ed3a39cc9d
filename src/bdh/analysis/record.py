"""Recording BDH-GPU activations (TransformerLens-style hook names and a cache dict).

The recorder attaches to the hook points the model itself emits (`BDH.hooks`, bdh.model) and runs the model's
own forward / prefill (in eval mode, without gradients; the weights are untouched), so the logits it returns
are those of `model(idx)` (tested bit-for-bit). Scores are derived from the hooked queries; rho is the model's
own state (after the last token, or with `rho_positions` after chosen tokens: `BDH.states_at`, in the same
pass). Hook points per layer l, in the order they are computed:

| name                  | shape             | paper                                                        |
|-----------------------|-------------------|--------------------------------------------------------------|
| `blocks.{l}.v_in`     | (B, T, d)         | v*_{t,l-1}: the layer input (l = 0: LN(f_e(token)))           |
| `blocks.{l}.x_sparse` | (B, h, T, N)      | x_{t,l} = (D_x v*)^+ per head, before RoPE                    |
| `blocks.{l}.qr`       | (B, h, T, N)      | RoPE_t(x_{t,l}): the queries = keys of the attention           |
| `blocks.{l}.attn`     | (B, h, T, d)      | a*_{t,l}: the attention read of the state rho_{t-1,l}         |
| `blocks.{l}.y_sparse` | (B, h, T, N)      | (D_y LN(a*))^+                                                 |
| `blocks.{l}.xy`       | (B, h, T, N)      | y_{t,l} = y_sparse * x_sparse, the gated activity ("y")      |
| `blocks.{l}.v_out`    | (B, T, d)         | v*_{t,l} = LN(v + LN(E y))                                    |
| `blocks.{l}.scores`   | (B, h, Ts, Ts)    | attention scores gamma^(t-s) <RoPE_t x_t, RoPE_s x_s>, s < t  |
| `blocks.{l}.rho`      | (B, h, N, d)      | rho after the last token (rotated-key basis); with           |
|                       | (B, P, h, N, d)   | `rho_positions`, after each listed token (what the next reads)|
| `logits`              | (B, T, V)         | f_d(v*_{t,L})                                                  |

Memory is bounded by the selection: `layers`, `heads`, `neurons` (indices within a head, applied to the
neuron-indexed hooks and `rho`), `tokens` (a range of positions; `scores` covers queries and keys in the
range) and `dtype`. With `token_chunk` the text is processed in pieces of that many tokens with the state
carried (the model's `prefill` path), so the working memory is O(token_chunk * n) whatever the length;
logits then agree with `model(idx)` to float rounding. Recording runs without dropout (eval semantics).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import torch

from ..hooks import parse_hook_name as _parse_model_hook
from ..model import HOOK_KINDS
from ..pretrained import check_token_ids
from ..tokenization import model_tokenizer

LAYER_KINDS = tuple(k for k in HOOK_KINDS if k != "rho") + ("scores", "rho")  # + what the recorder derives
NEURON_KINDS = ("x_sparse", "qr", "y_sparse", "xy")  # (B, h, T, N)
ACTIVITY_KINDS = ("x_sparse", "y_sparse", "xy")  # non-negative activations
HEAD_KINDS = ("attn",)  # (B, h, T, d)
D_KINDS = ("v_in", "v_out")  # (B, T, d)
_NAME = re.compile(r"blocks\.(\d+)\.([a-z_]+)")

Hook = Callable[[str, torch.Tensor, int], None]  # (name, activation of the token piece, position of its first token)


def hook_name(layer: int, kind: str) -> str:
    """`blocks.{layer}.{kind}` (TransformerLens style)."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"hook kind {kind!r}: expected one of {LAYER_KINDS}")
    return f"blocks.{layer}.{kind}"


def parse_hook_name(name: str, n_layer: int) -> tuple[int | None, str]:
    """(layer, kind) of a recordable name; (None, 'logits') for `logits`. ValueError for unknown names."""
    return _parse_model_hook(name, n_layer, LAYER_KINDS)


def all_hook_names(n_layer: int, kinds: Iterable[str] = LAYER_KINDS) -> list[str]:
    return [hook_name(l, k) for l in range(n_layer) for k in kinds] + ["logits"]


class ActivationCache(dict):
    """Hook name -> recorded tensor, plus the selection that produced it.

    `tokens` (start, stop) positions covered on the T axis; `heads` and `neurons` the indices kept on the h and N
    axes (None = all); `token_ids` (B, T) the input.
    """

    def __init__(self, *args, tokens=(0, 0), heads=None, neurons=None, token_ids=None, **kw):
        super().__init__(*args, **kw)
        self.tokens, self.heads, self.neurons, self.token_ids = tokens, heads, neurons, token_ids

    def stack(self, kind: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """The hooks `blocks.{l}.{kind}` stacked on a new first axis (layers in increasing order)."""
        ls = sorted(int(_NAME.fullmatch(k).group(1)) for k in self if _NAME.fullmatch(k) and k.endswith("." + kind))
        if layers is not None:
            missing = [l for l in layers if l not in ls]
            if missing:
                raise KeyError(f"no recorded {kind!r} for layer(s) {missing}; recorded layers: {ls}")
            ls = list(layers)
        if not ls:
            raise KeyError(f"no hook of kind {kind!r} was recorded (keys: {sorted(self)})")
        return torch.stack([self[hook_name(l, kind)] for l in ls])

    def neuron_flat(self, layer: int, kind: str, batch: int = 0) -> torch.Tensor:
        """(T, h*N) of one row: head-major neuron order, the order of the decoder rows (global index b*N + k)."""
        t = self[hook_name(layer, kind)][batch]  # (h, T, N)
        return t.transpose(0, 1).reshape(t.shape[1], -1)


# ----------------------------------------------------------------------------- the layer math
def check_ids(model, idx) -> None:
    """ValueError unless `idx` is a (B, T) integer tensor of ids in the model's vocabulary."""
    check_token_ids(idx, model.config.vocab_size, "idx")


def _resolve_tokens(tokens, T: int) -> tuple[int, int]:
    if tokens is None:
        return 0, T
    if isinstance(tokens, slice):
        if tokens.step not in (None, 1):
            raise ValueError(f"tokens={tokens!r}: only contiguous ranges (step 1) are supported")
        a, b, _ = tokens.indices(T)
    elif isinstance(tokens, range):
        if tokens.step != 1:
            raise ValueError(f"tokens={tokens!r}: only contiguous ranges (step 1) are supported")
        a, b = tokens.start, tokens.stop
    else:
        try:
            a, b = (int(v) for v in tokens)
        except (TypeError, ValueError):
            raise ValueError(f"tokens={tokens!r}: expected None, a slice, a range or (start, stop)") from None
    if not 0 <= a < b <= T:
        raise ValueError(f"tokens=({a}, {b}): expected 0 <= start < stop <= T={T}")
    return a, b


def _index_list(values, size: int, what: str) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, int):
        values = [values]
    out = [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if not out:
        raise ValueError(f"{what}: empty selection; expected at least one index (or None for all)")
    bad = [v for v in out if not 0 <= v < size]
    if bad:
        raise ValueError(f"{what}: index {bad[0]} is outside [0, {size})")
    return out


def _check_positions(rho_positions, T: int) -> list[int]:
    """Sorted distinct token positions in [0, T); ValueError otherwise."""
    positions = sorted({int(p) for p in rho_positions})
    if not positions or positions[0] < 0 or positions[-1] >= T:
        raise ValueError(f"rho_positions={rho_positions!r}: expected token positions in [0, T={T})")
    return positions


def run_with_hooks(
    model,
    idx: torch.Tensor,
    hooks: dict[str, Hook | Sequence[Hook]] | None = None,
    *,
    token_chunk: int | None = None,
    form: str = "auto",
    need_rho: bool = False,
    rho_positions: Sequence[int] | None = None,
    on_state: Callable[[int, object], None] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Run `model` on ids (B, T) from an empty state, calling `hooks[name](name, tensor, t0)` at each hook point.

    Hook tensors cover the token piece [t0, t0 + piece) (the whole input unless `token_chunk`); hooks must not
    modify them. `scores` and `rho` are not hook points here (see `run_with_cache`). Returns the logits
    (B, T, V) and, with `need_rho`, the attention state per layer after the last token (B, h, N, d).
    `rho_positions` with `on_state`: `on_state(p, state)` gets the model's state after token p (a BDHState of
    every layer, from `model.states_at` in the same pass), for each of these positions in increasing order.
    """
    check_ids(model, idx)
    idx = idx.to(model.device)
    c = model.config
    B, T = idx.shape
    if token_chunk is not None and (isinstance(token_chunk, bool) or not isinstance(token_chunk, int) or token_chunk < 1):
        raise ValueError(f"token_chunk={token_chunk!r}: expected a positive integer or None")
    if form not in ("auto", "parallel", "chunked"):
        raise ValueError(f"form={form!r}: expected 'auto', 'parallel' or 'chunked'")
    positions = [] if rho_positions is None else _check_positions(rho_positions, T)
    if positions and not callable(on_state):
        raise ValueError("run_with_hooks: rho_positions needs on_state(position, state)")
    hooks = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in (hooks or {}).items()}
    for name in hooks:
        layer, kind = parse_hook_name(name, c.n_layer)
        if kind in ("scores", "rho"):
            raise ValueError(f"hook {name!r}: scores and rho are recorded by run_with_cache, not hook points")
    piece = T if token_chunk is None else token_chunk
    t0 = 0  # first position of the piece being run

    def adapter(fns: list[Hook], squeeze: bool):
        def call(name: str, t: torch.Tensor, pos: torch.Tensor) -> None:
            for fn in fns:
                fn(name, t[:, 0] if squeeze else t, t0)  # v_in / v_out: (B, 1, T, d) -> (B, T, d)

        return call

    model_hooks = {k: adapter(fns, parse_hook_name(k, c.n_layer)[1] in D_KINDS) for k, fns in hooks.items()}
    was_training = model.training
    model.eval()  # recording runs without dropout
    try:
        with torch.no_grad(), model.hooks(model_hooks):
            if piece >= T and not need_rho and not positions:
                return model(idx, form=form)[0], None
            state, all_logits = None, []
            for t0 in range(0, T, piece):
                at = [p - t0 for p in positions if t0 <= p < t0 + piece]
                if not at:
                    logits, state = model.prefill(idx[:, t0 : t0 + piece], state, form=form)
                else:  # the model's own states after these tokens (bdh.model.BDH.states_at)
                    logits, kept, state = model.states_at(idx[:, t0 : t0 + piece], at, state, form=form)
                    for p, s in zip(at, kept):
                        on_state(t0 + p, s)
                all_logits.append(logits)
    finally:
        model.train(was_training)
    logits = all_logits[0] if len(all_logits) == 1 else torch.cat(all_logits, 1)
    return logits, (state.rho if need_rho else None)


def estimate_cache_bytes(config, names: Sequence[str], B: int, n_tokens: int, n_heads: int, n_neurons: int,
                         itemsize: int = 4) -> int:
    """Bytes `run_with_cache` stores for these hooks and selection (scores also keep the keys of the range)."""
    total = 0
    for name in names:
        _, kind = parse_hook_name(name, config.n_layer)
        if kind in NEURON_KINDS:
            total += B * n_heads * n_tokens * n_neurons
        elif kind in HEAD_KINDS:
            total += B * n_heads * n_tokens * config.D
        elif kind in D_KINDS:
            total += B * n_tokens * config.D
        elif kind == "scores":
            total += B * n_heads * n_tokens * (n_tokens + config.N)
        elif kind == "rho":
            total += B * n_heads * n_neurons * config.D
        elif kind == "logits":
            total += B * n_tokens * config.vocab_size
    return total * itemsize


class _Selection:
    """What `run_with_cache` keeps of each recorded tensor: tokens [a, b), heads, neurons (within a head), dtype."""

    def __init__(self, config, T: int, layers, heads, neurons, tokens, dtype: torch.dtype, device):
        self.layers = _index_list(layers, config.n_layer, "layers")
        self.heads = _index_list(heads, config.n_head, "heads")
        self.neurons = _index_list(neurons, config.N, "neurons")
        self.a, self.b = _resolve_tokens(tokens, T)
        self.dtype, self.device = dtype, device
        self.h_idx = None if self.heads is None else torch.tensor(self.heads, device=device)
        self.n_idx = None if self.neurons is None else torch.tensor(self.neurons, device=device)
        self.n_heads = config.n_head if self.heads is None else len(self.heads)
        self.n_neurons = config.N if self.neurons is None else len(self.neurons)

    def overlap(self, t0: int, n: int) -> tuple[int, int] | None:
        """The kept positions [lo, hi) of a piece of n tokens from t0, or None when it has none."""
        lo, hi = max(self.a, t0), min(self.b, t0 + n)
        return (lo, hi) if lo < hi else None

    def take(self, kind: str, t: torch.Tensor, t0: int) -> torch.Tensor | None:
        """The kept part of a hooked tensor of the piece starting at t0 (a copy in `dtype`), or None."""
        span = self.overlap(t0, t.shape[-2])
        if span is None:
            return None
        lo, hi = span[0] - t0, span[1] - t0
        if kind in D_KINDS or kind == "logits":
            t = t[:, lo:hi]
        else:
            t = t[:, :, lo:hi]
            if self.h_idx is not None:
                t = t.index_select(1, self.h_idx)
            if self.n_idx is not None and kind in NEURON_KINDS:
                t = t.index_select(3, self.n_idx)
        return t.detach().to(dtype=self.dtype, copy=True)

    def rho(self, r: torch.Tensor) -> torch.Tensor:
        """The kept heads and neurons of a state (..., h, N, d), in `dtype`."""
        hd = r.dim() - 3
        if self.h_idx is not None:
            r = r.index_select(hd, self.h_idx)
        if self.n_idx is not None:
            r = r.index_select(hd + 1, self.n_idx)
        return r.to(self.dtype)


class _Scores:
    """Hook on `qr`: the scores gamma^(t-s) <qr_t, qr_s> (s < t) of the token range, per layer (B, hs, Tr, Tr)."""

    def __init__(self, sel: _Selection, log_gamma: torch.Tensor | None, B: int):
        self.sel, self.B = sel, B
        self.log_gamma = log_gamma if log_gamma is None or sel.h_idx is None else log_gamma.index_select(0, sel.h_idx)
        self.keys: dict[int, list[torch.Tensor]] = {}  # the range's keys seen so far, per layer
        self.scores: dict[int, torch.Tensor] = {}

    def hook(self, name: str, qr: torch.Tensor, t0: int) -> None:
        sel, l = self.sel, int(name.split(".")[1])
        span = sel.overlap(t0, qr.shape[2])
        if span is None:
            return
        lo, hi = span
        q = qr[:, :, lo - t0 : hi - t0]
        if sel.h_idx is not None:
            q = q.index_select(1, sel.h_idx)
        keys = self.keys.setdefault(l, [])
        keys.append(q)
        s = q @ torch.cat(keys, 2).mT  # (B, hs, Tq, Tk): keys of the range so far, queries included
        dev = s.device
        dist = torch.arange(lo, hi, device=dev).view(-1, 1) - torch.arange(sel.a, hi, device=dev).view(1, -1)
        mask = (dist > 0).to(s.dtype)
        if self.log_gamma is not None:
            decay = torch.exp(self.log_gamma.view(-1, 1, 1).to(torch.float64) * dist.clamp(min=0).to(torch.float64))
            mask = decay.to(s.dtype) * mask
        n = sel.b - sel.a
        full = self.scores.setdefault(l, s.new_zeros((self.B, s.shape[1], n, n), dtype=sel.dtype))
        full[:, :, lo - sel.a : hi - sel.a, : hi - sel.a] = (s * mask).to(sel.dtype)


def _resolve_names(config, names, layer_sel: list[int] | None) -> list[str]:
    """The hook names to record: `names` (names, a filter, or None for the default kinds) within `layer_sel`."""
    L = config.n_layer
    if names is None:
        names = [hook_name(l, k) for l in range(L) for k in ("x_sparse", "attn", "y_sparse", "xy")]
    elif callable(names):
        names = [n for n in all_hook_names(L) if names(n)]
    else:
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            parse_hook_name(n, L)
    names = [n for n in names if n == "logits" or layer_sel is None or parse_hook_name(n, L)[0] in layer_sel]
    if not names:
        raise ValueError("run_with_cache: the selection (names, layers) leaves no hook to record")
    return names


def _check_budget(config, names: list[str], B: int, sel: _Selection, n_positions: int | None, max_bytes: int) -> None:
    """ValueError when the cache of this selection would exceed `max_bytes` (rho: once per position)."""
    itemsize = torch.empty((), dtype=sel.dtype).element_size()
    need = estimate_cache_bytes(config, names, B, sel.b - sel.a, sel.n_heads, sel.n_neurons, itemsize)
    if n_positions is not None:
        n_rho = sum(n.endswith(".rho") for n in names)
        need += (n_positions - 1) * n_rho * B * sel.n_heads * sel.n_neurons * config.D * itemsize
    if need > max_bytes:
        raise ValueError(
            f"run_with_cache would store {need / 2**20:.1f} MiB (> max_bytes={max_bytes / 2**20:.1f} MiB): narrow the "
            "selection (names, layers, heads, neurons, tokens) or raise max_bytes"
        )


def run_with_cache(
    model,
    idx: torch.Tensor,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | torch.Tensor | None = None,
    tokens=None,
    dtype: torch.dtype = torch.float32,
    token_chunk: int | None = None,
    form: str = "auto",
    rho_positions: Sequence[int] | None = None,
    max_bytes: int = 2 * 2**30,
) -> tuple[torch.Tensor, ActivationCache]:
    """Logits (B, T, V) of `model` on ids (B, T) and an `ActivationCache` of the selected hooks.

    `names`: hook names, a filter `name -> bool`, or None for x_sparse, y_sparse, xy, attn of every layer.
    `layers`, `heads`, `neurons` (indices within a head), `tokens` (slice / range / (start, stop)) narrow what is
    kept; `rho_positions` records rho after each of these tokens instead of after the last (the model's own
    states, `BDH.states_at`). A cache larger than `max_bytes` is refused before running.
    """
    check_ids(model, idx)
    idx = idx.to(model.device)
    c = model.config
    B, T = idx.shape
    sel = _Selection(c, T, layers, heads, neurons, tokens, dtype, idx.device)
    names = _resolve_names(c, names, sel.layers)
    _check_budget(c, names, B, sel, None if rho_positions is None else len(rho_positions), max_bytes)
    positions = None if rho_positions is None else _check_positions(rho_positions, T)
    pieces: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def keep(name: str, t: torch.Tensor, t0: int) -> None:
        t = sel.take(parse_hook_name(name, c.n_layer)[1], t, t0)
        if t is not None:
            pieces[name].append(t)

    hooks: dict[str, list[Hook]] = {n: [keep] for n in names if not n.endswith((".scores", ".rho"))}
    log_gamma = model.log_gamma
    if log_gamma is not None and log_gamma.dim() != 1 and any(n.endswith(".scores") for n in names):
        raise ValueError(f"damping={c.damping!r}: scores are gamma_h^(t-s) <qr_t, qr_s> per head; with a per-neuron "
                         "damping the score is no product of the queries (record attn or rho instead)")
    scores = _Scores(sel, None if log_gamma is None else log_gamma.detach(), B)
    for n in names:
        if n.endswith(".scores"):
            hooks.setdefault(hook_name(parse_hook_name(n, c.n_layer)[0], "qr"), []).append(scores.hook)
    rho_layers = [parse_hook_name(n, c.n_layer)[0] for n in names if n.endswith(".rho")]
    rho_at: dict[int, list[torch.Tensor]] = {l: [] for l in rho_layers}

    def on_state(p: int, state) -> None:  # the model's state after token p: keep the selection of it
        for l in rho_layers:
            rho_at[l].append(sel.rho(state.layer_rho(l)))

    logits, rho = run_with_hooks(model, idx, hooks, token_chunk=token_chunk, form=form,
                                 need_rho=bool(rho_layers) and positions is None,
                                 rho_positions=positions if rho_layers else None, on_state=on_state)
    cache = ActivationCache(tokens=(sel.a, sel.b), heads=sel.heads, neurons=sel.neurons, token_ids=idx)
    for n in names:
        layer, kind = parse_hook_name(n, c.n_layer)
        if kind == "scores":
            cache[n] = scores.scores[layer]
        elif kind == "rho":  # (B, h, N, d), or (B, P, h, N, d) with rho_positions
            cache[n] = sel.rho(rho[layer]) if positions is None else torch.stack(rho_at[layer], 1)
        else:
            cache[n] = torch.cat(pieces[n], 1 if (kind in D_KINDS or kind == "logits") else 2)
    return logits, cache


def encode_text(model, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids (1, T) of `text` with `model.tokenizer` (bytes when the model has none)."""
    tok = model_tokenizer(model)
    ids = tok.encode(text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if not ids:
        raise ValueError("encode_text: the text encodes to zero tokens")
    return torch.tensor([ids], dtype=torch.long)


def token_strings(model, ids: Sequence[int]) -> list[str]:
    """A printable label per token id (for plots)."""
    tok = model_tokenizer(model)
    out = []
    for i in ids:
        s = tok.token_bytes(int(i)).decode("utf-8", errors="replace")
        out.append(s.replace("\n", "\\n").replace("\t", "\\t") or "∅")
    return out


