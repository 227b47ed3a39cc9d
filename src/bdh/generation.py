"""Sampling from BDH with the recurrent state: O(1) work per new token, batches of prompts, streaming.

The prompt is prefilled in pieces of at most `prefill_piece(model)` tokens (chunked/parallel form, the state
carried from piece to piece: peak memory flat in the prompt length, the same state as one call), then every new
token is one `model.step`. Prompts of different lengths are prefilled one by one and their states stacked, so no
padding token ever enters a state. Non-finite logits (a diverged or corrupt model) end generation with a
ValueError rather than sampling garbage.
Text is decoded from raw token bytes with the tokenizer's incremental decoder (`Tokenizer.stream_decoder`):
bytes that are not valid UTF-8 become U+FFFD, and a multi-byte character split across tokens is emitted once
complete. Every argument is checked when `stream` is called, before any work (prompt ids against the vocabulary,
in Python); sampled ids are in range by construction, so the decode loop steps with `check_ids=False` (no
device->host sync for the check). Stop strings: the text ends where the earliest match of any of them begins.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Iterator, Sequence

import torch

from .tokenization import model_tokenizer

PREFILL_PIECE = 512  # prompt tokens per prefill call (rounded to whole chunks of a model with a chunk_size)
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes seeds in [0, 2^63) without overflow


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclasses.dataclass
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_number(t) or not (t >= 0 and math.isfinite(t)):
            raise ValueError(f"temperature={t!r}: expected a finite number >= 0 (0 = greedy)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r}: expected a positive integer or None")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r}: expected a number in (0, 1] or None")


def check_options(max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None, stop=None,
                  eos_token_id=None, sparse="auto", vocab_size: int | None = None) -> tuple[SamplingParams, list[str]]:
    """Validate the generation options (before any work or output): the sampling params and the stop strings.

    Raises ValueError / TypeError naming the argument and what was expected."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a non-negative integer")
    params = SamplingParams(temperature, top_k, top_p)
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= SEED_MAX):
        raise ValueError(f"seed={seed!r}: expected an integer in [0, {SEED_MAX}] or None")
    if isinstance(stop, str):
        stops = [stop]
    elif stop is None:
        stops = []
    elif isinstance(stop, (list, tuple)):
        stops = list(stop)
        for s in stops:
            if not isinstance(s, str):
                raise TypeError(f"stop: expected strings, got {s!r} ({type(s).__name__}) in {stop!r}")
    else:
        raise TypeError(f"stop={stop!r}: expected a string, a list of strings or None")
    if eos_token_id is not None:
        if not _is_int(eos_token_id):
            raise TypeError(f"eos_token_id={eos_token_id!r}: expected an integer token id or None")
        if eos_token_id < 0 or (vocab_size is not None and eos_token_id >= vocab_size):
            raise ValueError(f"eos_token_id={eos_token_id}: expected a token id in [0, {vocab_size})")
    if sparse not in (True, False, "auto"):
        raise ValueError(f"sparse={sparse!r}: expected True, False or 'auto'")
    return params, stops


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V) with temperature, top-k and top-p (nucleus) filtering."""
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= params.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class RowText:
    """Incremental text of one row: UTF-8 decoding with replacement, stop strings with held-back tails.

    `add(token_id, final=False)` returns the text that became safe to emit; `stopped` turns True at the first
    stop string (the text ends where it begins); `flush()` returns the held-back rest. Also used by `bdh serve`."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        make = getattr(tokenizer, "stream_decoder", None)
        if make is None:  # a duck-typed tokenizer with token_bytes only
            from .tokenization import IncrementalDecoder

            self.dec = IncrementalDecoder(tokenizer)
        else:
            self.dec = make()
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, token_id: int, final: bool = False) -> str:
        self.text += self.dec.push(token_id, final=final)
        # the earliest match of any stop string ends the text, whatever their order. A match never starts in
        # emitted text (the held-back tail covers every partial match), so the search starts there.
        hits = [i for i in (self.text.find(s, self.emitted) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
        end = len(self.text)
        if not self.stopped and not final:  # hold back a tail that may begin a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        delta, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return delta

    def flush(self) -> str:
        if not self.stopped:
            self.text += self.dec.flush()
        delta, self.emitted = self.text[self.emitted :], len(self.text)
        return delta


_PROMPTS = ("a string, a list of strings, a list of token ids, a list of token-id lists, or an integer tensor of "
            "shape (T,) or (B, T)")


def _id_list(p, what: str) -> list[int]:
    """One prompt of token ids as a list of ints (TypeError naming `what` for anything else)."""
    if isinstance(p, str) or not hasattr(p, "__iter__"):
        raise TypeError(f"{what}: expected a list of token ids, got {type(p).__name__} {p!r:.40}")
    out = list(p)
    for t in out:
        if not _is_int(t):
            raise TypeError(f"{what}: expected integer token ids, got {t!r} ({type(t).__name__})")
    return [int(t) for t in out]


def _as_id_lists(model, prompts, tokenizer) -> tuple[list[list[int]], bool, bool]:
    """Normalise prompts to lists of ids; also return (was_text, was_single)."""
    if isinstance(prompts, str):
        return [tokenizer.encode(prompts)], True, True
    if isinstance(prompts, torch.Tensor):
        if prompts.dtype == torch.bool or prompts.is_floating_point() or prompts.is_complex():
            raise ValueError(f"prompts: expected integer token ids, got a tensor of dtype {prompts.dtype}")
        if prompts.dim() == 1:
            return [prompts.tolist()], False, True
        if prompts.dim() != 2:
            raise ValueError(f"prompt tensor: expected shape (T,) or (B, T), got {tuple(prompts.shape)}")
        return prompts.tolist(), False, False
    if not hasattr(prompts, "__iter__"):
        raise TypeError(f"prompts: expected {_PROMPTS}; got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if all(isinstance(p, str) for p in prompts):
        return [tokenizer.encode(p) for p in prompts], True, False
    if all(_is_int(p) for p in prompts):
        return [[int(p) for p in prompts]], False, True
    if any(isinstance(p, str) for p in prompts) or any(_is_int(p) for p in prompts):
        kinds = sorted({type(p).__name__ for p in prompts})
        raise TypeError(f"prompts: expected {_PROMPTS}; got a list mixing {', '.join(kinds)}")
    return [_id_list(p, f"prompt {i}") for i, p in enumerate(prompts)], False, False


def stream(
    model,
    prompts,
    max_new_tokens: int = 256,
    *,
    tokenizer=None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    eos_token_id: int | None = None,
    form: str = "auto",
    sparse: bool | str = "auto",
    with_tokens: bool = False,
) -> Iterator:
    """An iterator of generated text as it is produced (the arguments are checked when `stream` is called).

    For a single string prompt, yields `str` deltas; for a list of prompts, yields a list of deltas (one per
    prompt, '' for rows that produced no complete text this step or are finished). Stops after
    `max_new_tokens`, at `eos_token_id`, or at the first occurrence of a `stop` string (not included).
    With `with_tokens=True`, yields `(deltas, tokens)` pairs of lists, `tokens[i]` the id sampled for prompt i
    this step (None when finished). `sparse` (BDH only): the decode path of every step, "auto" (default), True
    (sparse decode, `bdh.sparse`) or False (dense); the same text either way, to float rounding.
    """
    tokenizer = model_tokenizer(model, tokenizer)
    params, stops = check_options(max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                  stop=stop, eos_token_id=eos_token_id, sparse=sparse,
                                  vocab_size=model.config.vocab_size)
    ids, _, single = _as_id_lists(model, prompts, tokenizer)
    V = model.config.vocab_size
    for i, p in enumerate(ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: expected at least one token")
        lo, hi = min(p), max(p)
        if lo < 0 or hi >= V:
            raise ValueError(f"prompt {i}: token id {lo if lo < 0 else hi} is outside the vocabulary [0, {V})")
    if sparse is True and "sparse_decode" not in model.capabilities:  # before anything is generated
        raise ValueError(f"sparse=True: sparse decode is a BDH option; {type(model).__name__} has none (its "
                         "capabilities lack 'sparse_decode')")
    step_kw = {} if sparse == "auto" else {"sparse": sparse}
    rows = [RowText(tokenizer, stops) for _ in ids]
    # every argument is checked above, when `stream` is called; the generator below runs on iteration
    return _deltas(model, ids, max_new_tokens, params, seed, eos_token_id, form, rows, step_kw, single, with_tokens)


@torch.inference_mode()
def _deltas(model, ids, max_new_tokens, params, seed, eos_token_id, form, rows, step_kw, single, with_tokens):
    for deltas, tokens in _token_loop(model, ids, max_new_tokens, params, seed, eos_token_id, form, rows, step_kw):
        yield (deltas[0] if single else deltas) if not with_tokens else (deltas, tokens)


def prefill_piece(model) -> int:
    """Prompt tokens per prefill call: PREFILL_PIECE, rounded down to whole chunks of the model's chunk_size."""
    cs = getattr(model.config, "chunk_size", None)
    if _is_int(cs) and cs > 0:
        return cs * max(1, PREFILL_PIECE // cs)
    return PREFILL_PIECE


def read_in_pieces(model, idx: torch.Tensor, state=None, *, form: str = "auto", keep: int = 0,
                   carry: bool = False):
    """Logits and the state after reading idx (B, T) `prefill_piece(model)` tokens at a time, the state carried
    from piece to piece: the same logits and state as one `model.prefill(idx, state)`, peak memory flat in T.

    The one home of "prefill in pieces" (generation, the server, the transformers forward pass, lm_eval).
    `state`: continue from it (a session's); it is left unchanged (prefill is functional). `keep`: the logits of
    the last `keep` positions, (B, keep, V) (0: of every position, (B, T, V)). `carry`: pass the state through
    `model.carry_state` after every piece (windows of a document read as one stream, as `bdh eval --carry`).
    An empty idx (T = 0) goes to `model.prefill` once, whose input check names it."""
    n, T = prefill_piece(model), idx.shape[1]
    keep_from = T - keep if 0 < keep < T else 0
    out = []
    for a in range(0, T, n) or [0]:
        logits, state = model.prefill(idx[:, a : a + n], state, form=form)
        if carry:
            state = model.carry_state(state)
        if a + logits.shape[1] > keep_from:
            out.append(logits[:, max(0, keep_from - a) :])
    return (out[0] if len(out) == 1 else torch.cat(out, 1)), state


def prefill_in_pieces(model, idx: torch.Tensor, form: str = "auto", state=None):
    """Last logits (B, V) and the state after the prompt idx (B, T): `read_in_pieces` keeping the last position.
    `state`: continue from this state (a session's), which is left unchanged (prefill is functional)."""
    logits, state = read_in_pieces(model, idx, state, form=form, keep=1)
    return logits[:, -1], state


def check_finite(logits: torch.Tensor, n: int) -> None:
    """ValueError when the model produced nan/inf logits (a diverged or corrupt model): never sample from them."""
    if not bool(torch.isfinite(logits).all()):
        where = "the prompt" if n == 0 else f"generated token {n}"
        raise ValueError(f"the model produced non-finite logits (nan or inf) after {where}: expected finite "
                         "logits (the weights have diverged or are corrupt)")


def _token_loop(model, ids, max_new_tokens, params, seed, eos_token_id, form, rows, step_kw):
    was_training = model.training
    model.eval()
    try:
        device = model.device
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device).manual_seed(seed)
        # Prefill: one batch when lengths agree, else one prompt at a time and stack the states.
        if len({len(p) for p in ids}) == 1:
            last, state = prefill_in_pieces(model, torch.tensor(ids, device=device), form)
        else:
            outs = [prefill_in_pieces(model, torch.tensor([p], device=device), form) for p in ids]
            last = torch.cat([lg for lg, _ in outs], 0)
            state = type(outs[0][1]).cat([s for _, s in outs])  # BDHState or a GPT KV cache
        active = list(range(len(ids)))  # batch row -> prompt index
        for n in range(max_new_tokens):
            if not active:
                break
            check_finite(last, n)
            nxt = sample(last, params, gen)  # (b,)
            deltas = [""] * len(ids)
            tokens: list[int | None] = [None] * len(ids)
            keep = []
            sampled = nxt.tolist()  # one device->host copy for the whole batch
            for j, i in enumerate(active):
                t = tokens[i] = sampled[j]
                if eos_token_id is not None and t == eos_token_id:
                    deltas[i] = rows[i].flush()
                    continue
                final = n == max_new_tokens - 1
                deltas[i] = rows[i].add(t, final=final)
                if rows[i].stopped:
                    continue
                if final:
                    deltas[i] += rows[i].flush()
                keep.append(j)
            yield deltas, tokens
            if len(keep) < len(active):
                if not keep:
                    break
                state = state.select(keep)
                nxt = nxt[keep]
                active = [active[j] for j in keep]
            if n < max_new_tokens - 1:
                # the loop owns this state; sampled ids lie in [0, V) by construction (prefill checked the prompt)
                last, state = model.step(nxt, state, inplace=True, check_ids=False, **step_kw)
    finally:
        model.train(was_training)


def generate(model, prompts, max_new_tokens: int = 256, **kwargs):
    """Generate continuations: a `str` for a string prompt, a list of `str` for a list of prompts.

    Keyword arguments as `stream` (tokenizer, temperature, top_k, top_p, seed, stop, eos_token_id, form, sparse).
    Token-id prompts (a list of ints, a list of lists, or a tensor) give token-id lists back.
    """
    tokenizer = model_tokenizer(model, kwargs.get("tokenizer"))
    kwargs["tokenizer"] = tokenizer
    if not isinstance(prompts, (str, torch.Tensor)) and hasattr(prompts, "__iter__"):
        prompts = list(prompts)  # an iterator is read once, here
    ids, was_text, single = _as_id_lists(model, prompts, tokenizer)
    if was_text:
        pieces = ["" for _ in ids]
        for ev in stream(model, prompts if single else list(prompts), max_new_tokens, **kwargs):
            for i, d in enumerate([ev] if single else ev):
                pieces[i] += d
        return pieces[0] if single else pieces
    # token ids in, token ids out (a stop string ends a row; its tokens are kept)
    out: list[list[int]] = [[] for _ in ids]
    for _, tokens in stream(model, [list(p) for p in ids], max_new_tokens, with_tokens=True, **kwargs):
        for i, t in enumerate(tokens):
            if t is not None and t != kwargs.get("eos_token_id"):
                out[i].append(t)
    return out[0] if single else out
