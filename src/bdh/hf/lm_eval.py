"""lm-evaluation-harness model "bdh": BDH and the GPT baseline, scored with their own states.

    python -m bdh.hf.lm_eval --model bdh --model_args pretrained=runs/default --tasks TASK [--include_path DIR]

lm_eval 0.4.13 finds models only in its own registry (no plugin entry points), so the bare `lm_eval` command
cannot see a model defined outside it; `python -m bdh.hf.lm_eval` imports this module (which registers "bdh")
and runs lm_eval's own command line (`lm_eval.__main__.cli_evaluate`) with the same arguments. From Python,
`import bdh.hf.lm_eval` and then `lm_eval.simple_evaluate(model="bdh", model_args={"pretrained": DIR}, ...)`.

model_args: `pretrained` (a model directory, any registered model type), `device` (cpu), `dtype` (as saved),
`prefix_token_id` (the token before a document or an empty context; default: GPT-2's <|endoftext|> for the GPT-2
tokenizer, else the id of "\\n"), `max_length` (context kept by `loglikelihood` / `generate_until`; default
unbounded for models whose state can be carried, else the config's block_size).

- `loglikelihood`: the context is prefilled once (in pieces, state carried), then every continuation reads a copy
  of that state: the cost is the context plus the continuations.
- `loglikelihood_rolling`: the document is read in windows of `prefill_piece(model)` tokens with the state carried
  from window to window (`model.carry_state`, as `bdh eval --carry`): O(T) for BDH, every token predicted once
  and with everything before it. Models whose state cannot be carried without bound (learned positions) use
  lm_eval's disjoint rolling windows of `max_length` instead.
- `generate_until`: `bdh.generation.stream` (greedy unless do_sample; `until` are its stop strings).
"""

from __future__ import annotations

import logging
import math
import sys

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..checkpoint import load_model
from ..generation import read_in_pieces, stream
from ..runtime import resolve_device
from .modeling import as_torch_dtype, default_prefix_token

__all__ = ["BDHLM", "main"]


def _int_arg(name: str, value, lo: int) -> int | None:
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected an integer >= {lo}") from None
    if v < lo:
        raise ValueError(f"{name}={value!r}: expected an integer >= {lo}")
    return v


@register_model("bdh")
class BDHLM(TemplateLM):
    """lm_eval's `TemplateLM` over any registered model type of ours (BDH, GPT), through its protocol only."""

    def __init__(self, pretrained: str, device: str = "cpu", dtype: str | None = None, batch_size=1,
                 max_batch_size=None, prefix_token_id=None, max_length=None, trust_remote_code=None, **kwargs):
        super().__init__()
        unknown = sorted(k for k, v in kwargs.items() if v is not None)
        if unknown:
            raise ValueError(f"--model_args {', '.join(unknown)}: not options of model 'bdh' (expected pretrained, "
                             "device, dtype, prefix_token_id, max_length)")
        device = "cpu" if device is None else str(device)
        if device.startswith("cuda") and not torch.cuda.is_available():  # lm_eval's default is cuda:0
            logging.getLogger(__name__).warning("device %s: CUDA is not available, using the CPU", device)
            device = "cpu"
        # (load_model refuses a saved tokenizer of another size than the model's vocab_size)
        self.model = load_model(pretrained, device=resolve_device(device), dtype=as_torch_dtype(dtype))
        self.tok = self.model.tokenizer
        V = self.model.config.vocab_size
        self.batch_size = batch_size  # requests are scored one at a time (states are never padded)
        pid = _int_arg("prefix_token_id", prefix_token_id, 0)
        self._prefix = default_prefix_token(self.tok) if pid is None else pid
        if not self._prefix < V:
            raise ValueError(f"prefix_token_id={self._prefix}: expected a token id in [0, {V})")
        self.carries = _can_carry(self.model)
        limit = None if self.carries else getattr(self.model.config, "block_size", None)
        self.max_length = _int_arg("max_length", max_length, 2) or limit

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self._prefix

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _read(self, ids: list[int], state=None, carry: bool = False):
        """Logits (T, V) of ids read from `state` in pieces with the state carried, and the state after."""
        x = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        logits, state = read_in_pieces(self.model, x, state, carry=carry)
        return logits[0].float(), state

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        res, cached = [], {}  # context -> (logits after it, state): multiple choice reads the context once
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("loglikelihood: an empty continuation (expected at least one token to score)")
            if self.max_length is not None:  # keep the last max_length tokens of context + continuation
                whole = (context + continuation)[-(self.max_length + 1) :]
                context, continuation = whole[: len(whole) - len(continuation)], whole[len(whole) - len(continuation) :]
            context = context or [self._prefix]  # (a continuation longer than max_length)
            key = tuple(context)
            if key not in cached:
                logits, state = self._read(context)
                cached = {key: (logits[-1], state)}  # requests arrive grouped by context
            last, state = cached[key]
            logits = last[None]
            if len(continuation) > 1:
                more, _ = self._read(continuation[:-1], state.clone())
                logits = torch.cat([logits, more], 0)
            logp = F.log_softmax(logits, -1)
            target = torch.tensor(continuation, device=logp.device)
            ll = logp.gather(1, target[:, None]).sum().item()
            res.append((ll, bool((logits.argmax(-1) == target).all())))
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in [r.args for r in requests]:
            tokens = self.tok_encode(text)
            if not tokens:
                out.append(0.0)
                continue
            if self.carries:  # one stream, the state carried from window to window: O(T)
                logits, _ = self._read([self._prefix] + tokens[:-1], carry=True)
                logp = F.log_softmax(logits, -1)
                ll = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None]).sum().item()
            else:
                from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    tokens, self._prefix, self.max_length, context_len=1)]
                ll = sum(r[0] for r in self._loglikelihood_tokens([(None, c, t) for c, t in windows]))
            if not math.isfinite(ll):
                raise ValueError("loglikelihood_rolling: non-finite log-likelihood (the model's weights have "
                                 "diverged or are corrupt)")
            out.append(ll)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in [r.args for r in requests]:
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            max_new = _int_arg("max_gen_toks", kw.pop("max_gen_toks", 256), 0)
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0 if do_sample else 0.0)) if do_sample else 0.0
            opts = {k: kw.pop(k) for k in ("top_k", "top_p", "seed") if k in kw}
            if kw:
                raise ValueError(f"generate_until: unsupported generation option(s) {sorted(kw)} (expected until, "
                                 "max_gen_toks, do_sample, temperature, top_k, top_p, seed)")
            ids = self.tok_encode(context) or [self._prefix]
            if self.max_length is not None:
                ids = ids[-self.max_length :]
            # bdh.generation: prefill in pieces, one step per token, ends at the earliest stop string
            deltas = stream(self.model, [ids], max_new, temperature=temperature, stop=until, **opts)
            out.append("".join(d[0] for d in deltas))
        return out


def _can_carry(model) -> bool:
    """Whether the state may be carried without bound (the TBPTT check of the config: learned positions end)."""
    try:
        model.config.check_training(batching="tbptt")
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line with the model "bdh" registered (this module's import)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
