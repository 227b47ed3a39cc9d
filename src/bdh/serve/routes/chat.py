"""POST /v1/chat/completions: chat through the template of `bdh.serve.schema.render_chat`, streamed too.

The reply's leading whitespace is dropped (after `Assistant:`), streamed or not; it stops at a newline unless the
request gives its own `stop`. With a session, send only the new messages of each turn."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..engine import Done, Token
from ..schema import CHAT_STOP, APIError, ChatBody, read_json, render_chat
from ..server import Reply, Served, complete
from . import server_of

router = APIRouter()


class ChatReply(Reply):
    """`chat.completion` objects and `chat.completion.chunk`s; `k`: top_logprobs per token (None: no logprobs)."""

    def __init__(self, served: Served, k: int | None):
        super().__init__(served, "chatcmpl-")
        self.k, self.started = k, False  # started: the reply's text has begun (leading whitespace dropped)

    def lp_content(self, toks: list[Token]):
        if self.k is None:
            return None
        s = self.served
        return {"content": [{"token": s.token_str(t.token_id), "logprob": t.logprob,
                             "bytes": list(s.tokenizer.token_bytes(t.token_id)),
                             "top_logprobs": [{"token": s.token_str(i), "logprob": lp,
                                               "bytes": list(s.tokenizer.token_bytes(i))} for i, lp in t.top or []]}
                            for t in toks]}

    def response(self, text: str, toks: list[Token], done: Done) -> dict:
        return {**self.envelope("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.lstrip()},
                             "logprobs": self.lp_content(toks), "finish_reason": done.finish_reason}]}

    def chunk(self, delta: dict, finish=None, logprobs=None) -> dict:
        return {**self.envelope("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    def head(self) -> list[dict]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def token(self, ev: Token) -> dict | None:
        text = ev.text if self.started else ev.text.lstrip()
        self.started = self.started or bool(text)
        return self.chunk({"content": text}, None, self.lp_content([ev])) if text or self.k is not None else None

    def last(self, ev: Done) -> dict:
        tail = ev.text if self.started else ev.text.lstrip()
        return self.chunk({"content": tail} if tail else {}, ev.finish_reason)

    def usage_chunk(self) -> dict:
        return {**self.envelope("chat.completion.chunk"), "choices": []}


@router.post("/v1/chat/completions")
async def chat(request: Request):
    server = server_of(request)
    body = await read_json(request, ChatBody)
    s = server.get(body.model)
    limits = server.limits
    if body.top_logprobs is not None and body.top_logprobs > limits.max_top_logprobs:
        raise APIError(400, f"top_logprobs={body.top_logprobs}: expected at most {limits.max_top_logprobs}", None,
                       "top_logprobs")
    k = (body.top_logprobs or 0) if body.logprobs else None
    ids = s.tokenizer.encode(render_chat(body.messages))
    mt = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return await complete(server, body, ids, ChatReply(s, k), max_tokens=mt,
                          default_max=limits.default_chat_max_tokens, stop_default=CHAT_STOP, logprobs=k)
