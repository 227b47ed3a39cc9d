"""POST /v1/completions: text completion (OpenAI's `text_completion`), streamed with `"stream": true`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..engine import Done, Token
from ..schema import APIError, CompletionBody, read_json
from ..server import Reply, Served, complete
from . import server_of

router = APIRouter()


class CompletionReply(Reply):
    """`text_completion` objects; `logprobs` (the request's, or None) asks for the top alternatives per token."""

    def __init__(self, served: Served, logprobs: int | None):
        super().__init__(served, "cmpl-")
        self.logprobs, self.offset = logprobs, 0  # offset: of the next streamed token in the text

    def logprobs_obj(self, toks: list[Token], offset: int):
        if self.logprobs is None:
            return None
        s = self.served
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in toks:
            ts = s.token_str(t.token_id)
            out["tokens"].append(ts)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append({s.token_str(i): lp for i, lp in t.top or []})
            out["text_offset"].append(offset)
            offset += len(ts)
        return out

    def response(self, text: str, toks: list[Token], done: Done) -> dict:
        return {**self.envelope("text_completion"), "choices": [{"index": 0, "text": text, "logprobs":
                self.logprobs_obj(toks, 0), "finish_reason": done.finish_reason}]}

    def token(self, ev: Token) -> dict | None:
        lp = self.logprobs_obj([ev], self.offset)
        self.offset += len(self.served.token_str(ev.token_id))
        if ev.text or lp is not None:
            return {**self.envelope("text_completion"),
                    "choices": [{"index": 0, "text": ev.text, "logprobs": lp, "finish_reason": None}]}
        return None

    def last(self, ev: Done) -> dict:
        return {**self.envelope("text_completion"),
                "choices": [{"index": 0, "text": ev.text, "logprobs": None, "finish_reason": ev.finish_reason}]}

    def usage_chunk(self) -> dict:
        return {**self.envelope("text_completion"), "choices": []}


@router.post("/v1/completions")
async def completions(request: Request):
    server = server_of(request)
    body = await read_json(request, CompletionBody)
    s = server.get(body.model)
    if body.echo or body.best_of not in (None, 1) or body.suffix:
        raise APIError(400, "echo, best_of and suffix are not supported", None, "echo")
    p = body.prompt
    if isinstance(p, list) and p and isinstance(p[0], (str, list)):
        if len(p) != 1:
            raise APIError(400, f"prompt: {len(p)} prompts given; this server takes one prompt per request", None,
                           "prompt")
        p = p[0]
    ids = s.tokenizer.encode(p) if isinstance(p, str) else list(p)
    limits = server.limits
    if body.logprobs is not None and body.logprobs > limits.max_logprobs:
        raise APIError(400, f"logprobs={body.logprobs}: expected at most {limits.max_logprobs}", None, "logprobs")
    return await complete(server, body, ids, CompletionReply(s, body.logprobs), max_tokens=body.max_tokens,
                          default_max=limits.default_max_tokens, stop_default=[], logprobs=body.logprobs)
