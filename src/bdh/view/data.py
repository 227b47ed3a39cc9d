"""What `bdh view` shows, as plain Python: functions of (model, text, ...) that return JSON-able dicts.

The web app (`bdh.view.app`) is a thin JSON layer over these functions and the exported page embeds their
output, so the browser tests compare the page's numbers with what these return. Everything is read from the
model's own hook points (`blocks.{l}.x_sparse / y_sparse / xy`, `logits`) and from `bdh.analysis`
(sigma and the concept search: `analysis.synapses`; RoPE bands: `analysis.sparsity.rope_bands`; graph
orientation: `analysis.graph.graph_block`); nothing here re-implements the model's equations.

| function          | view      | models            |
|-------------------|-----------|-------------------|
| `text_view`       | Text      | any (activity: models with the `hooks` capability) |
| `attention_row`   | Text      | BDH (linear-attention scores), GPT (softmax weights) |
| `neuron_view`     | Neuron    | BDH               |
| `sigma_view`      | Synapse   | BDH               |
| `concept_search`  | Synapse   | BDH               |
| `state_view`      | State     | BDH               |
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from ..analysis.record import ACTIVITY_KINDS, hook_name, run_with_cache, run_with_hooks, token_strings

MAX_TEXT_CHARS = 20_000  # longest text a request may carry (HTTP 413 above)
MAX_TOKENS = 4096  # longest encoded text the views run
MAX_ATTENTION_TOKENS = 1024  # the attention row of token t needs O(t^2) per layer and head
MAX_SENTENCES = 200  # per group of the concept search
MAX_SENTENCE_CHARS = 1000
MAX_PAIRS = 16  # sigma pairs per request
BDH_ONLY = ("activity heatmaps, neurons and their graph (G_x, G_y), RoPE bands, synapses sigma and the state rho "
            "are BDH-only: a GPT has no sparse positive neurons and its state is a key/value cache")


class TooLarge(ValueError):
    """Input over a size bound (HTTP 413)."""


def _r(x: float, digits: int = 6) -> float | None:
    """A float rounded for JSON (None for NaN / inf)."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def has_neurons(model) -> bool:
    """Whether the Neuron and Synapse views apply: the type declares the capability "neurons" (neurons with RoPE
    frequencies, encoder/decoder, the hook points x_sparse, y_sparse, x*y; `bdh.interface`)."""
    caps = model.capabilities
    return "neurons" in caps and "hooks" in caps


def has_rho_state(model) -> bool:
    """Whether the State view applies: the type declares the capability "rho_state" (rho per layer, `states_at`)."""
    return "rho_state" in model.capabilities


def is_bdh(model) -> bool:
    """Whether every BDH-shaped view applies (neurons and rho): what the page's BDH-only panels need."""
    return has_neurons(model) and has_rho_state(model)


def encode(model, text: str, max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """Token ids (1, T) of `text` with the model's tokenizer; ValueError for empty or too long text."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise TooLarge(f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
    ids = model.tokenizer.encode(text)
    if not ids:
        raise ValueError("text is empty: expected at least one token")
    if len(ids) > max_tokens:
        raise TooLarge(f"text encodes to {len(ids)} tokens; at most {max_tokens}")
    return torch.tensor([ids], dtype=torch.long)


def model_summary(model) -> dict:
    """Model type, sizes and which views apply."""
    from ..interface import model_type_of

    c = model.config
    bdh = is_bdh(model)
    out = {"model_type": model_type_of(model).name, "n_layer": c.n_layer, "n_head": c.n_head,
           "vocab_size": c.vocab_size, "params": model.num_params(), "bdh": bdh, "hooks": "hooks" in model.capabilities,
           "views": ["text", "neuron", "synapse", "state"] if bdh else ["text"],
           "note": None if bdh else BDH_ONLY, "kinds": list(ACTIVITY_KINDS) if has_neurons(model) else [],
           "limits": {"max_text_chars": MAX_TEXT_CHARS, "max_tokens": MAX_TOKENS,
                      "max_attention_tokens": MAX_ATTENTION_TOKENS}}
    if bdh:
        out.update(N=c.N, n=c.n, d=c.D, damping=c.damping, rope_theta=c.rope_theta)
    return out


# ----------------------------------------------------------------------------- Text view
def _loss_and_topk(model, ids: torch.Tensor, logits: torch.Tensor, top_k: int, rows: int = 256):
    """Per token: loss of token t given < t (None for t = 0) and the top-k next tokens after t."""
    T = ids.shape[1]
    loss: list[float | None] = [None]
    top: list[list[dict]] = []
    for a in range(0, T, rows):  # log-softmax in row blocks: (rows, V) at a time
        lp = torch.log_softmax(logits[0, a : a + rows].float(), -1)  # (r, V)
        nxt = ids[0, a + 1 : a + rows + 1]
        loss += (-lp[: len(nxt)].gather(1, nxt.view(-1, 1)).view(-1)).tolist()
        v, i = lp.topk(min(top_k, lp.shape[1]), -1)
        k = i.shape[1]
        ii, pp = i.tolist(), v.exp().double().tolist()
        strs = token_strings(model, i.flatten().tolist())
        for r in range(lp.shape[0]):
            top.append([{"id": ii[r][q], "token": strs[r * k + q], "p": round(pp[r][q], 6)} for q in range(k)])
    return [None if x is None else _r(x) for x in loss], top


def text_view(model, text: str, *, top_k: int = 5, neuron_kind: str = "xy", top_neurons: int = 8) -> dict:
    """Per token: loss, top-k next tokens; per layer and head: fraction of active neurons of x_sparse, y_sparse
    and x*y per token (heatmap) and over the text; per token the most active neurons of `neuron_kind`.

    activity.frac[kind][l][h][t] = fraction of the N neurons of head h, layer l with kind > 0 at token t.
    neurons.top[t] = [[layer, head, neuron, value], ...] sorted by value (all layers and heads of the model).
    """
    if not 1 <= top_k <= 50:
        raise ValueError(f"top_k={top_k}: expected an integer in [1, 50]")
    if not 1 <= top_neurons <= 64:
        raise ValueError(f"top_neurons={top_neurons}: expected an integer in [1, 64]")
    ids = encode(model, text)
    T = ids.shape[1]
    out = {"model_type": model_summary(model)["model_type"], "text": text, "n_tokens": T, "ids": ids[0].tolist(),
           "tokens": token_strings(model, ids[0].tolist())}
    if not has_neurons(model):
        with torch.no_grad():
            logits = model(ids.to(model.device))[0]
        out["activity"] = None
        out["neurons"] = None
        out["note"] = BDH_ONLY
    else:
        if neuron_kind not in ACTIVITY_KINDS:
            raise ValueError(f"neuron_kind={neuron_kind!r}: expected one of {ACTIVITY_KINDS}")
        c = model.config
        frac = {k: torch.zeros((c.n_layer, c.n_head, T)) for k in ACTIVITY_KINDS}
        best_v = torch.zeros((c.n_layer, T, top_neurons))
        best_i = torch.zeros((c.n_layer, T, top_neurons), dtype=torch.long)

        def hook(name: str, t: torch.Tensor, t0: int) -> None:
            l, kind = int(name.split(".")[1]), name.split(".")[2]
            a = t[0]  # (h, Tc, N)
            frac[kind][l, :, t0 : t0 + a.shape[1]] = (a > 0).float().mean(-1).cpu()
            if kind == neuron_kind:
                flat = a.transpose(0, 1).reshape(a.shape[1], -1)  # (Tc, h*N): global index head*N + neuron
                v, i = flat.float().topk(min(top_neurons, flat.shape[1]), -1)
                best_v[l, t0 : t0 + a.shape[1], : v.shape[1]] = v.cpu()
                best_i[l, t0 : t0 + a.shape[1], : v.shape[1]] = i.cpu()

        hooks = {hook_name(l, k): hook for l in range(c.n_layer) for k in ACTIVITY_KINDS}
        logits, _ = run_with_hooks(model, ids, hooks)
        # merge the layers: the top `top_neurons` of (layer, head, neuron) per token
        v_all = best_v.permute(1, 0, 2).reshape(T, -1)  # (T, L*k): layer-major
        i_all = best_i.permute(1, 0, 2).reshape(T, -1)
        v_top, order = v_all.topk(top_neurons, -1)  # (T, k)
        g_top = i_all.gather(1, order)  # global neuron index head*N + neuron
        layer = (order // top_neurons).tolist()
        head, neuron = (g_top // c.N).tolist(), (g_top % c.N).tolist()
        vals = v_top.double().tolist()
        top = [[[layer[t][q], head[t][q], neuron[t][q], round(vals[t][q], 6)] for q in range(top_neurons) if vals[t][q] > 0]
               for t in range(T)]
        out["activity"] = {
            "kinds": list(ACTIVITY_KINDS), "n_layer": c.n_layer, "n_head": c.n_head,
            "frac": {k: np.round(v.double().numpy(), 4).tolist() for k, v in frac.items()},
            "mean": {k: np.round(v.double().mean(-1).numpy(), 6).tolist() for k, v in frac.items()},
        }
        out["neurons"] = {"kind": neuron_kind, "top": top}
    loss, top = _loss_and_topk(model, ids, logits.detach().cpu(), top_k)
    out["loss"] = loss
    out["topk"] = top
    valid = [x for x in loss if x is not None]
    out["mean_loss"] = _r(sum(valid) / len(valid)) if valid else None
    return out


# ----------------------------------------------------------------------------- attention of one token
def attention_row(model, text: str, t: int) -> dict:
    """What token t attends to, per layer and head: weights[l][h][s] for s <= t.

    BDH: the linear-attention scores gamma^(t-s) <RoPE_t x_t, RoPE_s x_s> (s < t; `blocks.{l}.scores` of
    `analysis.record`); GPT: the softmax attention weights (s <= t)."""
    ids = encode(model, text, MAX_TOKENS)
    T = ids.shape[1]
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T:
        raise ValueError(f"token {t!r}: expected a token index in [0, {T})")
    if t >= MAX_ATTENTION_TOKENS:
        raise ValueError(f"token {t}: attention is shown for the first {MAX_ATTENTION_TOKENS} tokens")
    ids = ids[:, : t + 1]
    c = model.config
    if has_neurons(model):
        _, cache = run_with_cache(model, ids, [hook_name(l, "scores") for l in range(c.n_layer)])
        w = [cache[hook_name(l, "scores")][0, :, t, : t + 1] for l in range(c.n_layer)]  # (h, t+1)
        kind = "BDH linear-attention scores (unnormalised, s < t)"
    else:  # a model with `blocks.{l}.attn_probs` hook points (the GPT baseline): its own softmax weights
        if "attn_probs" not in getattr(model, "HOOK_KINDS", ()):
            raise ValueError(f"attention: model type {model_summary(model)['model_type']!r} has no attention hook points")
        probs: dict[str, torch.Tensor] = {}
        keep = lambda name, p, pos: probs.__setitem__(name, p[0, :, t, : t + 1].float().cpu())  # noqa: E731
        with torch.no_grad(), model.hooks({f"blocks.{l}.attn_probs": keep for l in range(c.n_layer)}):
            model(ids.to(model.device))
        w = [probs[f"blocks.{l}.attn_probs"] for l in range(c.n_layer)]  # (h, t+1)
        kind = "softmax attention weights (s <= t)"
    return {"t": t, "kind": kind, "tokens": token_strings(model, ids[0].tolist()),
            "weights": [np.round(x.double().numpy(), 6).tolist() for x in w]}


# ----------------------------------------------------------------------------- Neuron view
def check_neuron(model, layer, head, neuron) -> None:
    c = model.config
    for what, v, hi in (("layer", layer, c.n_layer), ("head", head, c.n_head), ("neuron", neuron, c.N)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
            raise ValueError(f"{what} {v!r}: expected an integer in [0, {hi})")


def graph_neighbours(model, head: int, neuron: int, which: str = "x", k: int = 10) -> dict:
    """Strongest edges of neuron (head, neuron) in G_x = D_x E (which="x") or G_y = D_y E ("y").

    Orientation as `analysis.graph.graph_block`: G^(ab)[i, j] = decoder[a N + i] . encoder[b][:, j], the edge
    from y-neuron i of head a to x-neuron j of head b. `out`: edges from this neuron; `in`: edges into it.
    Only the one row and column are computed (not the N x N blocks)."""
    c = model.config
    if which not in ("x", "y"):
        raise ValueError(f"which={which!r}: expected 'x' or 'y'")
    enc = model.encoder if which == "x" else model.encoder_v  # (h, d, N)
    with torch.no_grad():
        row = (model.decoder[head * c.N + neuron].float() @ enc.float()).reshape(-1)  # (h*N,): to (b, j)
        col = model.decoder.float() @ enc[head, :, neuron].float()  # (h*N,): from (b, i)

    def top(w: torch.Tensor) -> list[dict]:
        v, i = w.topk(min(k, w.numel()))
        return [{"head": int(g) // c.N, "neuron": int(g) % c.N, "weight": _r(x)} for x, g in zip(v.tolist(), i.tolist())]

    return {"which": which, "out": top(row), "in": top(col)}


def neuron_view(model, layer: int, head: int, neuron: int, index=None, *, k: int = 10) -> dict:
    """RoPE frequency and band, G_x / G_y neighbours, and (with a `NeuronIndex`) top contexts and histogram."""
    from ..analysis.sparsity import rope_bands

    if not has_neurons(model):
        raise ValueError(f"the neuron view is BDH-only: the model type lacks the capability 'neurons' ({BDH_ONLY})")
    check_neuron(model, layer, head, neuron)
    c = model.config
    band, edges = rope_bands(model.freqs, c.rope_theta)
    f = float(model.freqs[neuron])  # turns per position
    out = {"layer": layer, "head": head, "neuron": neuron, "global": head * c.N + neuron,
           "rope": {"freq_turns_per_token": f, "period_tokens": _r(1.0 / f) if f > 0 else None,
                    "band": int(band[neuron]), "n_bands": len(edges) - 1,
                    "band_range": [_r(edges[band[neuron]]), _r(edges[band[neuron] + 1])]},
           "graph": {w: graph_neighbours(model, head, neuron, w, k) for w in ("x", "y")}}
    out["index"] = None if index is None else index.neuron(layer, head, neuron, model.tokenizer)
    return out


# ----------------------------------------------------------------------------- Synapse view
def sigma_view(model, text: str, layer: int, pairs: Sequence[Sequence[int]] | None = None, *, U: str = "rope",
               k: int = 4) -> dict:
    """sigma_t(i -> j) of eq. 16 after every token of `text` (`analysis.synapses.sigma_trace`) for chosen pairs
    (global neuron ids: i a y-neuron of layer-1, j an x-neuron of layer); default: the k largest entries of
    sigma at the last token (`sigma_topk`)."""
    from ..analysis.synapses import SigmaSpec, sigma_topk, sigma_trace, synapse_activations

    if not has_neurons(model):
        raise ValueError(f"the synapse view is BDH-only: the model type lacks the capability 'neurons' ({BDH_ONLY})")
    c = model.config
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < c.n_layer:
        raise ValueError(f"layer {layer!r}: sigma of layer l reads y of layer l-1; expected an integer in [1, {c.n_layer})")
    ids = encode(model, text)
    spec = SigmaSpec.from_model(model, U)
    inp = synapse_activations(model, ids, layer)
    if pairs is None or len(pairs) == 0:
        _, i, j = sigma_topk(inp, spec, k=k)
        pairs = torch.stack([i, j], 1).tolist()
    if len(pairs) > MAX_PAIRS:
        raise ValueError(f"{len(pairs)} pairs: at most {MAX_PAIRS}")
    for p in pairs:
        if (not isinstance(p, (list, tuple)) or len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in p)
                or not all(0 <= v < c.n for v in p)):
            raise ValueError(f"pair {p!r}: expected [i, j] with neuron ids in [0, {c.n})")
    tr = sigma_trace(inp, spec, torch.tensor(pairs, dtype=torch.long).view(-1, 2))  # (T, P)
    return {"layer": layer, "U": U, "tokens": token_strings(model, inp.tokens), "pairs": [list(p) for p in pairs],
            "labels": [f"y{i // c.N}.{i % c.N} → x{j // c.N}.{j % c.N}" for i, j in pairs],
            "values": [[_r(v, 8) for v in col] for col in tr.T.tolist()]}


def concept_search(model, concept: Sequence[str], contrast: Sequence[str], layer: int, *, U: str = "rope",
                   top: int = 5, test_fraction: float = 0.5, seed: int = 0) -> dict:
    """The concept-synapse search of §6.3 (`analysis.synapses.concept_synapse_search`) on the user's sentences:
    search on one part, held-out one-sided Mann-Whitney U on the other (p-value, rank-biserial effect size)."""
    from ..analysis.synapses import concept_synapse_search

    if not has_neurons(model):
        raise ValueError(f"the synapse view is BDH-only: the model type lacks the capability 'neurons' ({BDH_ONLY})")
    c = model.config
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < c.n_layer:
        raise ValueError(f"layer {layer!r}: expected an integer in [1, {c.n_layer})")
    groups = []
    for what, group in (("concept", concept), ("contrast", contrast)):
        if not isinstance(group, (list, tuple)) or not all(isinstance(s, str) for s in group):
            raise ValueError(f"{what}: expected a list of sentences")
        group = [s.strip() for s in group if s.strip()]
        if not 6 <= len(group) <= MAX_SENTENCES:
            raise ValueError(f"{what}: {len(group)} sentences; expected 6 to {MAX_SENTENCES} (half are held out)")
        long = [s for s in group if len(s) > MAX_SENTENCE_CHARS]
        if long:
            raise ValueError(f"{what}: a sentence has {len(long[0])} characters; at most {MAX_SENTENCE_CHARS}")
        groups.append(group)
    res = concept_synapse_search(model, groups[0], groups[1], layer, U=U, top=top, test_fraction=test_fraction,
                                 seed=seed)
    from ..analysis.plotting import jsonable

    return jsonable(res.to_dict())


# ----------------------------------------------------------------------------- State view
def _toggled_damping(model):
    """The same weights with the damping switched: off if the model has it, else ALiBi damping on."""
    from ..interface import build_model

    c = model.config
    alt = dataclasses.replace(c, damping=None if c.damping is not None else "alibi", damping_init_range=None)
    m = build_model(alt)
    sd = model.state_dict()
    sd.pop("log_decay_rate", None)  # a learned damping's parameter: the toggled model has none
    m.load_state_dict(sd)
    m.tokenizer = model.tokenizer
    return m.to(model.device).eval()


def rho_norms(model, ids: torch.Tensor, points: int = 128) -> tuple[list[int], np.ndarray]:
    """‖rho_{t,l,h}‖_F after `points` tokens t spread over the text (the model's own `prefill`, piece by piece):
    (positions, norms (P, L, h))."""
    T = ids.shape[1]
    ends = sorted({int(round(x)) for x in np.linspace(1, T, min(points, T))})
    state, out, a = None, [], 0
    with torch.no_grad():
        for b in ends:
            _, state = model.prefill(ids[:, a:b].to(model.device), state)
            out.append(torch.stack([r[0].float().norm(dim=(1, 2)) for r in state.rho]).cpu())  # (L, h)
            a = b
    return [e - 1 for e in ends], torch.stack(out).double().numpy()


def state_view(model, text: str, *, points: int = 64, alt_model=None) -> dict:
    """‖rho‖ per layer and head along the text, for the model as configured and with its damping toggled."""
    if not has_rho_state(model):
        raise ValueError(f"the state view is BDH-only: the model type lacks the capability 'rho_state' ({BDH_ONLY})")
    if not 1 <= points <= 1024:
        raise ValueError(f"points={points}: expected an integer in [1, 1024]")
    ids = encode(model, text)
    pos, norms = rho_norms(model, ids, points)
    alt = alt_model if alt_model is not None else _toggled_damping(model)
    _, alt_norms = rho_norms(alt, ids, points)
    label = lambda m: f"damping {m.config.damping!r}" if m.config.damping is not None else "no damping"  # noqa: E731
    return {"positions": pos, "tokens": token_strings(model, ids[0].tolist()),
            "series": [{"label": label(model), "model": True, "norms": np.round(norms.transpose(1, 2, 0), 6).tolist()},
                       {"label": label(alt), "model": False, "norms": np.round(alt_norms.transpose(1, 2, 0), 6).tolist()}]}
