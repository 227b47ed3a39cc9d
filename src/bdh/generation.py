"""Sampling from BDH with the recurrent state: O(1) work per new token, batches of prompts, streaming.

The prompt is prefilled once (chunked/parallel form), then every new token is one `model.step`. Prompts of
different lengths are prefilled one by one and their states stacked, so no padding token ever enters a state.
Text is decoded from raw token bytes with the tokenizer's incremental decoder (`Tokenizer.stream_decoder`):
bytes that are not valid UTF-8 become U+FFFD, and a multi-byte character split across tokens is emitted once
complete. Prompt ids are range-checked once, by prefill; sampled ids are in range by construction, so the
decode loop steps with `check_ids=False` (no device->host sync for the check).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import torch


@dataclasses.dataclass
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature!r}: expected a number >= 0 (0 = greedy)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r}: expected a positive integer or None")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r}: expected a number in (0, 1] or None")


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


def _default_tokenizer(model, tokenizer):
    if tokenizer is not None:
        return tokenizer
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok
    from .tokenization import ByteTokenizer

    if model.config.vocab_size != 256:
        raise ValueError(
            f"model has vocab_size={model.config.vocab_size}: pass the tokenizer it was trained with "
            "(bytes are assumed only for vocab_size=256)"
        )
    return ByteTokenizer()


class _RowText:
    """Incremental text of one row: UTF-8 decoding with replacement, stop strings with held-back tails."""

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
        for s in self.stop:
            i = self.text.find(s)
            if i >= 0:
                self.text, self.stopped = self.text[:i], True
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


def _as_id_lists(model, prompts, tokenizer) -> tuple[list[list[int]], bool, bool]:
    """Normalise prompts to lists of ids; also return (was_text, was_single)."""
    if isinstance(prompts, str):
        return [tokenizer.encode(prompts)], True, True
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            return [prompts.tolist()], False, True
        if prompts.dim() != 2:
            raise ValueError(f"prompt tensor: expected shape (T,) or (B, T), got {tuple(prompts.shape)}")
        return prompts.tolist(), False, False
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if all(isinstance(p, str) for p in prompts):
        return [tokenizer.encode(p) for p in prompts], True, False
    if all(isinstance(p, int) for p in prompts):
        return [list(prompts)], False, True
    return [list(p) for p in prompts], False, False


@torch.inference_mode()
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
    """Yield generated text as it is produced.

    For a single string prompt, yields `str` deltas; for a list of prompts, yields a list of deltas (one per
    prompt, '' for rows that produced no complete text this step or are finished). Stops after
    `max_new_tokens`, at `eos_token_id`, or at the first occurrence of a `stop` string (not included).
    With `with_tokens=True`, yields `(deltas, tokens)` pairs of lists, `tokens[i]` the id sampled for prompt i
    this step (None when finished). `sparse` (BDH only): the decode path of every step, "auto" (default), True
    (sparse decode, `bdh.sparse`) or False (dense); the same text either way, to float rounding.
    """
    tokenizer = _default_tokenizer(model, tokenizer)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a non-negative integer")
    params = SamplingParams(temperature, top_k, top_p)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    ids, _, single = _as_id_lists(model, prompts, tokenizer)
    for i, p in enumerate(ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: expected at least one token")
    if sparse not in (True, False, "auto"):
        raise ValueError(f"sparse={sparse!r}: expected True, False or 'auto'")
    if sparse is True and not getattr(model, "has_sparse_decode", False):  # before anything is generated
        raise ValueError(f"sparse=True: sparse decode is a BDH option; {type(model).__name__} has none")
    step_kw = {} if sparse == "auto" else {"sparse": sparse}
    rows = [_RowText(tokenizer, stops) for _ in ids]
    for deltas, tokens in _token_loop(model, ids, max_new_tokens, params, seed, eos_token_id, form, rows, step_kw):
        yield (deltas[0] if single else deltas) if not with_tokens else (deltas, tokens)


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
            logits, state = model.prefill(torch.tensor(ids, device=device), form=form)
            last = logits[:, -1]
        else:
            outs = [model.prefill(torch.tensor([p], device=device), form=form) for p in ids]
            last = torch.cat([lg[:, -1] for lg, _ in outs], 0)
            state = type(outs[0][1]).cat([s for _, s in outs])  # BDHState or a GPT KV cache
        active = list(range(len(ids)))  # batch row -> prompt index
        for n in range(max_new_tokens):
            if not active:
                break
            nxt = sample(last, params, gen)  # (b,)
            deltas = [""] * len(ids)
            tokens: list[int | None] = [None] * len(ids)
            keep = []
            for j, i in enumerate(active):
                t = tokens[i] = int(nxt[j])
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
    tokenizer = _default_tokenizer(model, kwargs.get("tokenizer"))
    kwargs["tokenizer"] = tokenizer
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
