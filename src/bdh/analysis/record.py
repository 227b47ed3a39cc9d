"""Recording BDH-GPU activations (TransformerLens-style hook names and a cache dict).

The recorder attaches to the hook points the model itself emits (`BDH.hooks`, bdh.model) and runs the model's
own forward / prefill (in eval mode, without gradients; the weights are untouched), so the logits it returns
are those of `model(idx)` (tested bit-for-bit). Scores and rho at chosen positions are derived from the hooked
queries and layer inputs. Hook points per layer l, in the order they are computed:

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

from ..attention import attention_chunked, attention_parallel
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


def run_with_hooks(
    model,
    idx: torch.Tensor,
    hooks: dict[str, Hook | Sequence[Hook]] | None = None,
    *,
    token_chunk: int | None = None,
    form: str = "auto",
    need_rho: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Run `model` on ids (B, T) from an empty state, calling `hooks[name](name, tensor, t0)` at each hook point.

    Hook tensors cover the token piece [t0, t0 + piece) (the whole input unless `token_chunk`); hooks must not
    modify them. `scores` and `rho` are not hook points here (see `run_with_cache`). Returns the logits
    (B, T, V) and, with `need_rho`, the attention state per layer after the last token (B, h, N, d).
    """
    check_ids(model, idx)
    idx = idx.to(model.device)
    c = model.config
    B, T = idx.shape
    if token_chunk is not None and (isinstance(token_chunk, bool) or not isinstance(token_chunk, int) or token_chunk < 1):
        raise ValueError(f"token_chunk={token_chunk!r}: expected a positive integer or None")
    if form not in ("auto", "parallel", "chunked"):
        raise ValueError(f"form={form!r}: expected 'auto', 'parallel' or 'chunked'")
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
            if piece >= T and not need_rho:
                return model(idx, form=form)[0], None
            state, all_logits = None, []
            for t0 in range(0, T, piece):
                logits, state = model.prefill(idx[:, t0 : t0 + piece], state, form=form)
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
    kept; `rho_positions` records rho after each of these tokens instead of after the last. A cache larger than
    `max_bytes` is refused before running.
    """
    check_ids(model, idx)
    idx = idx.to(model.device)
    c = model.config
    B, T = idx.shape
    layer_sel = _index_list(layers, c.n_layer, "layers")
    head_sel = _index_list(heads, c.n_head, "heads")
    neuron_sel = _index_list(neurons, c.N, "neurons")
    a_tok, b_tok = _resolve_tokens(tokens, T)
    if names is None:
        names = [hook_name(l, k) for l in range(c.n_layer) for k in ("x_sparse", "attn", "y_sparse", "xy")]
    elif callable(names):
        names = [n for n in all_hook_names(c.n_layer) if names(n)]
    else:
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            parse_hook_name(n, c.n_layer)
    names = [n for n in names if n == "logits" or layer_sel is None or parse_hook_name(n, c.n_layer)[0] in layer_sel]
    if not names:
        raise ValueError("run_with_cache: the selection (names, layers) leaves no hook to record")
    nh_sel = c.n_head if head_sel is None else len(head_sel)
    nn_sel = c.N if neuron_sel is None else len(neuron_sel)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = estimate_cache_bytes(c, names, B, b_tok - a_tok, nh_sel, nn_sel, itemsize)
    if rho_positions is not None:
        need += (len(rho_positions) - 1) * sum(n.endswith(".rho") for n in names) * B * nh_sel * nn_sel * c.D * itemsize
    if need > max_bytes:
        raise ValueError(
            f"run_with_cache would store {need / 2**20:.1f} MiB (> max_bytes={max_bytes / 2**20:.1f} MiB): narrow the "
            "selection (names, layers, heads, neurons, tokens) or raise max_bytes"
        )
    dev = idx.device
    h_idx = None if head_sel is None else torch.tensor(head_sel, device=dev)
    n_idx = None if neuron_sel is None else torch.tensor(neuron_sel, device=dev)
    pieces: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def select(name: str, t: torch.Tensor, t0: int) -> None:
        _, kind = parse_hook_name(name, c.n_layer)
        lo, hi = max(a_tok, t0), min(b_tok, t0 + t.shape[-2])
        if lo >= hi:
            return
        if kind in D_KINDS or kind == "logits":
            t = t[:, lo - t0 : hi - t0]
        else:
            t = t[:, :, lo - t0 : hi - t0]
            if h_idx is not None:
                t = t.index_select(1, h_idx)
            if n_idx is not None and kind in NEURON_KINDS:
                t = t.index_select(3, n_idx)
        pieces[name].append(t.detach().to(dtype=dtype, copy=True))

    hooks: dict[str, list[Hook]] = {n: [select] for n in names if not n.endswith((".scores", ".rho"))}
    log_gamma = model.log_gamma
    lg_sel = None if log_gamma is None or h_idx is None else log_gamma.index_select(0, h_idx)

    # scores: queries of the token range against the keys of the range seen so far
    score_layers = [parse_hook_name(n, c.n_layer)[0] for n in names if n.endswith(".scores")]
    keys: dict[int, list[torch.Tensor]] = {l: [] for l in score_layers}
    scores: dict[int, torch.Tensor] = {}

    def score_hook(name: str, qr: torch.Tensor, t0: int) -> None:
        l = int(name.split(".")[1])
        lo, hi = max(a_tok, t0), min(b_tok, t0 + qr.shape[2])
        if lo >= hi:
            return
        q = qr[:, :, lo - t0 : hi - t0]
        if h_idx is not None:
            q = q.index_select(1, h_idx)
        keys[l].append(q)
        s = q @ torch.cat(keys[l], 2).mT  # (B, hs, Tq, Tk): keys of the range so far, queries included
        dist = torch.arange(lo, hi, device=dev).view(-1, 1) - torch.arange(a_tok, hi, device=dev).view(1, -1)
        mask = (dist > 0).to(s.dtype)
        lg = log_gamma if h_idx is None else lg_sel
        if lg is not None:
            mask = torch.exp(lg.view(-1, 1, 1).to(torch.float64) * dist.clamp(min=0).to(torch.float64)).to(s.dtype) * mask
        full = scores.setdefault(l, s.new_zeros((B, s.shape[1], b_tok - a_tok, b_tok - a_tok), dtype=dtype))
        full[:, :, lo - a_tok : hi - a_tok, : hi - a_tok] = (s * mask).to(dtype)

    for l in score_layers:
        hooks.setdefault(hook_name(l, "qr"), []).append(score_hook)

    # rho after chosen tokens: a running state per layer, advanced piece by piece
    rho_layers = [parse_hook_name(n, c.n_layer)[0] for n in names if n.endswith(".rho")]
    positions = None if rho_positions is None else sorted({int(p) for p in rho_positions})
    if positions is not None and (not positions or positions[0] < 0 or positions[-1] >= T):
        raise ValueError(f"rho_positions={rho_positions!r}: expected token positions in [0, T={T})")
    v_piece: dict[int, torch.Tensor] = {}
    running: dict[int, torch.Tensor | None] = {l: None for l in rho_layers}
    rho_at: dict[int, list[torch.Tensor]] = {l: [] for l in rho_layers}

    def v_hook(name: str, v: torch.Tensor, t0: int) -> None:
        v_piece[int(name.split(".")[1])] = v.unsqueeze(1)  # (B, 1, Tc, d)

    def rho_hook(name: str, qr: torch.Tensor, t0: int) -> None:
        l = int(name.split(".")[1])
        v = v_piece.pop(l)
        for p in positions:
            if t0 <= p < t0 + qr.shape[2]:
                k = p - t0 + 1
                rho_at[l].append(attention_parallel(qr[:, :, :k], v[:, :, :k], running[l], log_gamma, True)[1])
        running[l] = attention_chunked(qr, v, running[l], log_gamma, c.chunk_size, True)[1]

    if positions is not None:
        for l in rho_layers:
            hooks.setdefault(hook_name(l, "v_in"), []).append(v_hook)
            hooks.setdefault(hook_name(l, "qr"), []).append(rho_hook)

    need_rho = bool(rho_layers) and positions is None
    logits, rho = run_with_hooks(model, idx, hooks, token_chunk=token_chunk, form=form, need_rho=need_rho)
    cache = ActivationCache(tokens=(a_tok, b_tok), heads=head_sel, neurons=neuron_sel, token_ids=idx)
    for n in names:
        layer, kind = parse_hook_name(n, c.n_layer)
        if kind == "scores":
            cache[n] = scores[layer]
        elif kind == "rho":
            r = rho[layer] if positions is None else torch.stack(rho_at[layer], 1)  # (B, [P,] h, N, d)
            hd = r.dim() - 3
            if h_idx is not None:
                r = r.index_select(hd, h_idx)
            if n_idx is not None:
                r = r.index_select(hd + 1, n_idx)
            cache[n] = r.to(dtype)
        else:
            dim = 1 if (kind in D_KINDS or kind == "logits") else 2
            cache[n] = torch.cat(pieces[n], dim)
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


