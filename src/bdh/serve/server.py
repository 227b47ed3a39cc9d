"""The request side of `bdh serve`: the served models, one request's run in an engine, and the one completion path.

`Server.start` checks a request's prompt and options, takes its session (or creates one for `"session": "new"`)
and submits a `Job` to the model's engine; the decode thread's events come back through a `Mailbox` to the
request's queue (`Run`). `complete` is the path completions and chat share: the whole answer, or a stream of
server-sent events, shaped by the endpoint's `Reply`; a session's new state is saved (atomically) before the
response ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import threading
import time
from typing import Any

import torch
from fastapi.responses import StreamingResponse

from ..generation import SamplingParams
from ..pretrained import check_token_ids
from .engine import Done, Engine, EngineError, Failed, Job, Token
from .schema import APIError, Body, Limits, error_body
from .sessions import SessionStore

log = logging.getLogger("bdh.serve")

EVENT_TIMEOUT_S = 600.0  # a request whose next token takes longer than this is abandoned (504)


@dataclasses.dataclass
class Served:
    id: str
    model: Any
    tokenizer: Any
    engine: Engine
    created: int

    def token_str(self, t: int) -> str:
        return self.tokenizer.token_bytes(t).decode("utf-8", errors="replace")


class Mailbox:
    """Events from the decode thread to the event loop, coalesced: one loop wake-up per batch of events (a decode
    step of 32 rows posts 32 events) instead of one per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.pending, self.scheduled = loop, [], False
        self.lock = threading.Lock()

    def post(self, q: asyncio.Queue, ev) -> None:  # any thread
        with self.lock:
            self.pending.append((q, ev))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:  # the event loop has closed (shutdown)
            pass

    def deliver(self) -> None:  # the event loop
        with self.lock:
            items, self.pending, self.scheduled = self.pending, [], False
        for q, ev in items:
            q.put_nowait(ev)


class Run:
    """One request in the engine: its event queue and the session it holds (`created`: made by this request,
    `"session": "new"`, so dropped unless the request ends with its id given to the client)."""

    def __init__(self, server: "Server", served: Served, job: Job, q: asyncio.Queue, held, created: bool = False):
        self.server, self.served, self.job, self.q, self.held = server, served, job, q, held
        self.created = held.id if created and held is not None else None
        self.session: dict | None = None

    async def next(self):
        try:
            return await asyncio.wait_for(self.q.get(), EVENT_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.close()
            raise APIError(504, f"the model produced nothing for {EVENT_TIMEOUT_S} s: request abandoned",
                           "timeout") from None

    async def finish(self, done: Done) -> None:
        """Save the session's new state; a failed save (507 on a full disk) says what became of the session."""
        if self.held is not None:
            held, self.held = self.held, None
            try:
                self.session = await asyncio.to_thread(self.server.store.commit, held, done.state, done.logits,
                                                       done.prompt_tokens + done.completion_tokens)
            except EngineError as e:
                then = ("it is deleted (this request created it)" if self.created else
                        "it keeps its state of before this request")
                raise EngineError(f"{e}: {then}", e.status, e.code) from None

    def close(self) -> None:
        """Stop the job (when unfinished) and release the session unsaved (a cancelled turn leaves it as it was);
        a session this request created is deleted unless the request finished (its id is in the response)."""
        self.job.cancelled.set()
        if self.held is not None:
            self.server.store.release(self.held.id)
            self.held = None
        if self.created is not None and self.session is None:
            self.server.drop(self.created)
        self.created = None


class Server:
    """The served models (model id -> Served), the session store and the limits: what every route uses."""

    def __init__(self, served: dict[str, Served], store: SessionStore, limits: Limits):
        self.served, self.store, self.limits = served, store, limits
        self.mailbox: Mailbox | None = None  # made on the server's event loop by the first request

    def drop(self, sid: str) -> None:
        """Delete a session that a failed request created: its client never got the id."""
        try:
            self.store.delete(sid)
        except EngineError as e:
            log.warning("session %s, created by a failed request, could not be deleted: %s", sid, e)

    def get(self, model_id: str) -> Served:
        s = self.served.get(model_id)
        if s is None:
            raise APIError(404, f"model {model_id!r} does not exist; this server serves {sorted(self.served)}",
                           "model_not_found", "model")
        return s

    def options(self, body: Body, max_tokens: int | None, default_max: int, stop_default: list[str]):
        """(SamplingParams, max_tokens, stop strings) of a request, or a 400 naming the option refused."""
        L = self.limits
        if body.n not in (None, 1):
            raise APIError(400, f"n={body.n}: this server returns one choice per request (n=1)", None, "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name) not in (None, 0, 0.0):
                raise APIError(400, f"{name} is not supported (expected 0 or absent)", None, name)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported", None, "logit_bias")
        max_tokens = default_max if max_tokens is None else max_tokens
        if max_tokens > L.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens}: expected at most {L.max_tokens} (the server's limit)",
                           "max_tokens_exceeded", "max_tokens")
        stop = stop_default if body.stop is None else [body.stop] if isinstance(body.stop, str) else list(body.stop)
        if len(stop) > L.max_stop or any(len(s) > 256 for s in stop):
            raise APIError(400, f"stop: expected at most {L.max_stop} strings of at most 256 characters", None, "stop")
        t = 1.0 if body.temperature is None else body.temperature
        params = SamplingParams(t, body.top_k, None if body.top_p in (None, 1, 1.0) else body.top_p)
        return params, max_tokens, [s for s in stop if s]

    def check_ids(self, served: Served, ids: list[int]) -> None:
        V = served.model.config.vocab_size
        if len(ids) > self.limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens: expected at most {self.limits.max_prompt_tokens} "
                           "(the server's limit)", "context_length_exceeded", "prompt")
        if not ids:
            return
        try:
            t = torch.tensor([ids], dtype=torch.int64)
        except (OverflowError, RuntimeError):  # an id beyond int64
            raise APIError(400, f"prompt: a token id is outside the vocabulary [0, {V})", None, "prompt") from None
        try:
            check_token_ids(t, V, "prompt")
        except ValueError as e:
            raise APIError(400, str(e), None, "prompt") from None

    async def start(self, served: Served, ids: list[int], params, max_tokens, stop, seed, logprobs,
                    session: str | None) -> Run:
        self.check_ids(served, ids)
        held, created = None, session == "new"
        if created:
            session = (await asyncio.to_thread(self.store.create, served.id))["id"]
        if session is not None:
            try:
                held = await asyncio.to_thread(self.store.acquire, session, served.id)
            except BaseException:
                if created:
                    self.drop(session)
                raise
        try:
            if held is None and not ids:
                raise APIError(400, "the prompt is empty: expected at least one token", None, "prompt")
            if self.mailbox is None:
                self.mailbox = Mailbox(asyncio.get_running_loop())
            q: asyncio.Queue = asyncio.Queue()
            mailbox = self.mailbox

            def emit(ev) -> None:  # called from the decode thread
                mailbox.post(q, ev)

            job = Job(ids, params, max_tokens, emit, stop, seed, logprobs,
                      held.state if held else None, held.logits if held else None, keep_state=held is not None)
            served.engine.submit(job)
        except BaseException:
            if held is not None:
                self.store.release(held.id)
                if created:
                    self.drop(held.id)
            raise
        return Run(self, served, job, q, held, created)


# ----------------------------------------------------------------------------------------------- the completion path
class Reply:
    """How an endpoint shapes its answer: the whole `response` (without usage and session, which `complete`
    adds), or a stream's chunks: `head()`, one per Token (`token`: a dict, or None for nothing), the `last`
    (with the finish reason) and the `usage_chunk`. One per request: a stream's chunks may keep state."""

    def __init__(self, served: Served, id_prefix: str):
        self.served, self.id, self.created = served, id_prefix + secrets.token_hex(12), int(time.time())

    def envelope(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.id}

    def response(self, text: str, toks: list[Token], done: Done) -> dict:
        raise NotImplementedError

    def head(self) -> list[dict]:
        return []

    def token(self, ev: Token) -> dict | None:
        raise NotImplementedError

    def last(self, ev: Done) -> dict:
        raise NotImplementedError

    def usage_chunk(self) -> dict:
        raise NotImplementedError


async def complete(server: Server, body: Body, ids: list[int], reply: Reply, *, max_tokens: int | None,
                   default_max: int, stop_default: list[str], logprobs: int | None):
    """Run one completion (completions and chat alike) and answer it in the shape of `reply`: a JSON object, or
    server-sent events when `body.stream`."""
    params, max_tokens, stop = server.options(body, max_tokens, default_max, stop_default)
    run = await server.start(reply.served, ids, params, max_tokens, stop, body.seed, logprobs, body.session)
    if not body.stream:
        try:
            text, toks, done = await collect(run)
        finally:
            run.close()
        out = {**reply.response(text, toks, done), "usage": usage(done)}
        if run.session is not None:
            out["session"] = run.session
        return out
    first = await first_event(run)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    return stream_response(run, first, reply, include_usage)


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def usage(d: Done) -> dict:
    return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
            "total_tokens": d.prompt_tokens + d.completion_tokens}


def stream_response(run: Run, first, reply: Reply, include_usage: bool) -> StreamingResponse:
    """The server-sent events of one streamed request: the `reply.head()` chunks, a chunk per Token, the last
    chunk (with the session when the request has one), the usage chunk when asked for, then `[DONE]`; a failure
    mid-stream is an error event."""

    async def events():
        try:
            for c in reply.head():
                yield sse(c)
            ev = first
            while True:
                if isinstance(ev, Token):
                    c = reply.token(ev)
                    if c is not None:
                        yield sse(c)
                elif isinstance(ev, Done):
                    try:
                        await run.finish(ev)
                    except EngineError as e:  # the session could not be saved (a full disk: 507)
                        yield sse(error_body(e.status, str(e), e.code))
                        break
                    last = reply.last(ev)
                    if run.session is not None:
                        last["session"] = run.session
                    yield sse(last)
                    if include_usage:
                        yield sse({**reply.usage_chunk(), "usage": usage(ev)})
                    break
                else:
                    yield sse(error_body(ev.status, ev.message, ev.code))
                    break
                ev = await run.next()
            yield b"data: [DONE]\n\n"
        finally:
            run.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def first_event(run: Run):
    """The first event of a streaming request, before the response starts (a refusal is still a 4xx)."""
    try:
        ev = await run.next()
    except BaseException:
        run.close()
        raise
    if isinstance(ev, Failed):
        run.close()
        raise APIError(ev.status, ev.message, ev.code)
    return ev


async def collect(run: Run) -> tuple[str, list[Token], Done]:
    text, toks = "", []
    while True:
        ev = await run.next()
        if isinstance(ev, Token):
            text += ev.text
            toks.append(ev)
        elif isinstance(ev, Done):
            await run.finish(ev)
            return text + ev.text, toks, ev
        else:
            raise APIError(ev.status, ev.message, ev.code)
