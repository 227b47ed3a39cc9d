"""The HTTP side of `bdh serve`: a FastAPI app speaking the OpenAI API, plus sessions (an extension).

    GET  /v1/models                    the served models (OpenAI shape)
    POST /v1/completions               text completion; "stream": true for server-sent events
    POST /v1/chat/completions          chat (the template below); streaming too
    POST /v1/sessions                  {"model"}: a new empty session        -> session object
    GET  /v1/sessions[?model=M]        list;  GET /v1/sessions/{id}: one session
    GET  /v1/sessions/{id}/logits      its next-token logits (V floats)
    POST /v1/sessions/{id}/fork        a copy of its state                   -> a new session
    DELETE /v1/sessions/{id}
    GET  /health                       status, batch and session statistics (no key needed)

A completion or chat request with `"session": ID` continues that session from its saved state: only the new
prompt (or the new messages) is prefilled, and the session's state after the reply is saved (atomically) before
the response ends; `"session": "new"` creates one. Every response of such a request carries `"session": {...}`.
Sessions are constant memory for BDH (its state rho) and grow per token for the GPT baseline (its KV cache).

Chat template (the served models are base language models, not instruction-tuned): each message is one line
`System: ...`, `User: ...` or `Assistant: ...`, then `Assistant:` prompts the reply; the reply stops at a newline
unless the request gives its own `stop`. With a session, send only the new messages of each turn.

Errors are `{"error": {"message", "type", "param", "code"}}` with a 4xx status for bad requests (bad JSON, text
that is not Unicode, an unknown model or session, a prompt or body over the limits) and 5xx for server faults (507
when a session cannot be saved for lack of disk space: the session stays as it was, and a session the request
created is deleted); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import threading
import time
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation import SEED_MAX, SamplingParams
from ..netsec import bearer_ok
from ..pretrained import check_token_ids
from ..tokenization import encode_utf8
from .engine import Done, Engine, EngineError, Failed, Job, Token
from .sessions import SessionStore

log = logging.getLogger("bdh.serve")

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = ["\n"]  # a reply is one line unless the request says otherwise
EVENT_TIMEOUT_S = 600.0  # a request whose next token takes longer than this is abandoned (504)


@dataclasses.dataclass
class Limits:
    """Bounds on every request (a request beyond one gets a 4xx)."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # completions without max_tokens (OpenAI's default)
    default_chat_max_tokens: int = 128
    max_stop: int = 4
    max_logprobs: int = 5  # completions' `logprobs`
    max_top_logprobs: int = 20  # chat's `top_logprobs`


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
          409: "conflict_error", 410: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "server_busy"}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else
                                                             "invalid_request_error"), "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


# ----------------------------------------------------------------------------------------------- request shapes
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are ignored; unsupported values refused below

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt | None = Field(None, ge=1)  # an extension
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: dict | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=SEED_MAX)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: StrictStr | None = None
    session: StrictStr | None = None  # an extension: continue (or "new": create) a session


class CompletionBody(_Body):
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0)
    echo: StrictBool | None = False
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=0)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0)


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr


def render_chat(messages: list[Message]) -> str:
    """The chat template: one `Role: content` line per message, then `Assistant:` for the reply."""
    lines = []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
        lines.append(f"{ROLES[m.role]}: {text}\n")
    return "".join(lines) + "Assistant:"


# ----------------------------------------------------------------------------------------------- the server
@dataclasses.dataclass
class Served:
    id: str
    model: Any
    tokenizer: Any
    engine: Engine
    created: int

    def token_str(self, t: int) -> str:
        return self.tokenizer.token_bytes(t).decode("utf-8", errors="replace")


class _Mailbox:
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
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed (shutdown)
            pass

    def _deliver(self) -> None:  # the event loop
        with self.lock:
            items, self.pending, self.scheduled = self.pending, [], False
        for q, ev in items:
            q.put_nowait(ev)


class _Run:
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
    def __init__(self, served: dict[str, Served], store: SessionStore, limits: Limits):
        self.served, self.store, self.limits = served, store, limits
        self.mailbox: _Mailbox | None = None  # made on the server's event loop by the first request

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

    def _options(self, body: _Body, max_tokens: int | None, default_max: int, stop_default: list[str]):
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

    def _check_ids(self, served: Served, ids: list[int]) -> None:
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
                    session: str | None) -> _Run:
        self._check_ids(served, ids)
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
                self.mailbox = _Mailbox(asyncio.get_running_loop())
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
        return _Run(self, served, job, q, held, created)


# ----------------------------------------------------------------------------------------------- middleware
class Guard:
    """Pure ASGI middleware: the API key (`Authorization: Bearer K` on /v1) and the request-body size limit."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def _reply(self, send, status: int, message: str, code: str | None) -> None:
        body = json.dumps(error_body(status, message, code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"].startswith("/v1"):
            got = headers.get(b"authorization", b"")
            if not bearer_ok(got, self.api_key):
                return await self._reply(send, 401, "missing or wrong API key: expected the header "
                                         "'Authorization: Bearer <key>'", "invalid_api_key")
        too_big = f"the request body is larger than {self.max_body} bytes (the server's limit)"
        cl = headers.get(b"content-length")
        if cl is not None and (not cl.isdigit() or int(cl) > self.max_body):
            return await self._reply(send, 413, too_big, "request_too_large")
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._reply(send, 413, too_big, "request_too_large")
            more = msg.get("more_body", False)
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect

        return await self.app(scope, replay, send)


# ----------------------------------------------------------------------------------------------- the app
def _check_text(obj, param: str = "") -> None:
    """400 for the first string of a parsed JSON body (key or value) that is no text: JSON may escape half of a
    surrogate pair ("\\ud800"), which no tokenizer (nor the JSON response) can encode."""
    if isinstance(obj, str):
        try:
            encode_utf8(obj)
        except ValueError as e:
            raise APIError(400, f"{param or 'body'}: {e}", "invalid_value", param or None) from None
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_text(v, f"{param}.{i}" if param else str(i))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_text(k, param)
            _check_text(v, f"{param}.{k}" if param else k)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _json(request: Request, cls: type[BaseModel]):
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", "invalid_json") from None
    if _SURROGATE_ESCAPE.search(raw):  # raw UTF-8 holds no surrogates: only an escape can
        _check_text(obj)
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ()))
        raise APIError(400, f"{param or 'body'}: {err.get('msg')}", "invalid_value", param or None) from None


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _usage(d: Done) -> dict:
    return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
            "total_tokens": d.prompt_tokens + d.completion_tokens}


def _stream(run: "_Run", first, on_token, on_done, usage_chunk: dict | None, head=()) -> StreamingResponse:
    """The server-sent events of one streamed request: the `head` chunks, a chunk per Token (`on_token(ev)`: a
    dict, or None for nothing), the last chunk (`on_done(ev)`, with the session when the request has one), the
    usage chunk when asked for (`usage_chunk` + "usage"), then `[DONE]`; a failure mid-stream is an error event."""

    async def events():
        try:
            for c in head:
                yield _sse(c)
            ev = first
            while True:
                if isinstance(ev, Token):
                    c = on_token(ev)
                    if c is not None:
                        yield _sse(c)
                elif isinstance(ev, Done):
                    try:
                        await run.finish(ev)
                    except EngineError as e:  # the session could not be saved (a full disk: 507)
                        yield _sse(error_body(e.status, str(e), e.code))
                        break
                    last = on_done(ev)
                    if run.session is not None:
                        last["session"] = run.session
                    yield _sse(last)
                    if usage_chunk is not None:
                        yield _sse({**usage_chunk, "usage": _usage(ev)})
                    break
                else:
                    yield _sse(error_body(ev.status, ev.message, ev.code))
                    break
                ev = await run.next()
            yield b"data: [DONE]\n\n"
        finally:
            run.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def create_app(served: dict[str, Served], store: SessionStore, *, api_key: str | None = None,
               limits: Limits | None = None):
    """The ASGI app serving `served` (model id -> Served, engines not yet started: the app starts and stops them)."""
    import contextlib

    limits = limits or Limits()
    server = Server(served, store, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.engine.start()
        yield
        for s in served.values():
            await asyncio.to_thread(s.engine.stop)

    app = FastAPI(title="bdh serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e.status, e.message, e.code, e.param)

    @app.exception_handler(EngineError)
    async def _engine_error(request, e: EngineError):
        return error_response(e.status, str(e), e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {}
        return error_response(400, f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg', 'invalid request')}",
                              "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), None)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.exception("request failed")
        return error_response(500, f"internal error: {type(e).__name__}", "internal_error")

    # ------------------------------------------------------------------ models
    def model_card(s: Served) -> dict:
        return {"id": s.id, "object": "model", "created": s.created, "owned_by": "bdh",
                "model_type": type(s.model.config).MODEL_TYPE, "params": s.model.num_params()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        return model_card(server.get(model_id))

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {k: {**s.engine.stats, "queued": s.engine.queued} for k, s in served.items()},
                "sessions": store.stats()}

    # ------------------------------------------------------------------ completions
    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json(request, CompletionBody)
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
        if body.logprobs is not None and body.logprobs > limits.max_logprobs:
            raise APIError(400, f"logprobs={body.logprobs}: expected at most {limits.max_logprobs}", None, "logprobs")
        params, max_tokens, stop = server._options(body, body.max_tokens, limits.default_max_tokens, [])
        run = await server.start(s, ids, params, max_tokens, stop, body.seed, body.logprobs, body.session)
        rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())

        def logprobs_obj(toks: list[Token], offset: int):
            if body.logprobs is None:
                return None
            out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            for t in toks:
                ts = s.token_str(t.token_id)
                out["tokens"].append(ts)
                out["token_logprobs"].append(t.logprob)
                out["top_logprobs"].append({s.token_str(i): lp for i, lp in t.top or []})
                out["text_offset"].append(offset)
                offset += len(ts)
            return out

        if not body.stream:
            try:
                text, toks, done = await _collect(run)
            finally:
                run.close()
            out = {"id": rid, "object": "text_completion", "created": created, "model": s.id,
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs_obj(toks, 0),
                                "finish_reason": done.finish_reason}], "usage": _usage(done)}
            if run.session is not None:
                out["session"] = run.session
            return out

        first = await _first(run)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        head = {"id": rid, "object": "text_completion", "created": created, "model": s.id}
        offset = [0]

        def on_token(ev: Token):
            lp = logprobs_obj([ev], offset[0])
            offset[0] += len(s.token_str(ev.token_id))
            if ev.text or lp is not None:
                return {**head, "choices": [{"index": 0, "text": ev.text, "logprobs": lp, "finish_reason": None}]}
            return None

        def on_done(ev: Done) -> dict:
            return {**head, "choices": [{"index": 0, "text": ev.text, "logprobs": None,
                                         "finish_reason": ev.finish_reason}]}

        return _stream(run, first, on_token, on_done, {**head, "choices": []} if include_usage else None)

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _json(request, ChatBody)
        s = server.get(body.model)
        if body.top_logprobs is not None and body.top_logprobs > limits.max_top_logprobs:
            raise APIError(400, f"top_logprobs={body.top_logprobs}: expected at most {limits.max_top_logprobs}", None,
                           "top_logprobs")
        k = (body.top_logprobs or 0) if body.logprobs else None
        ids = s.tokenizer.encode(render_chat(body.messages))
        mt = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params, max_tokens, stop = server._options(body, mt, limits.default_chat_max_tokens, CHAT_STOP)
        run = await server.start(s, ids, params, max_tokens, stop, body.seed, k, body.session)
        rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())

        def lp_content(toks: list[Token]):
            if k is None:
                return None
            return {"content": [{"token": s.token_str(t.token_id), "logprob": t.logprob,
                                 "bytes": list(s.tokenizer.token_bytes(t.token_id)),
                                 "top_logprobs": [{"token": s.token_str(i), "logprob": lp,
                                                   "bytes": list(s.tokenizer.token_bytes(i))} for i, lp in t.top or []]}
                                for t in toks]}

        if not body.stream:
            try:
                text, toks, done = await _collect(run)
            finally:
                run.close()
            out = {"id": rid, "object": "chat.completion", "created": created, "model": s.id,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text.lstrip()},
                                "logprobs": lp_content(toks), "finish_reason": done.finish_reason}],
                   "usage": _usage(done)}
            if run.session is not None:
                out["session"] = run.session
            return out

        first = await _first(run)
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def chunk(delta: dict, finish=None, logprobs=None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": s.id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

        started = [False]  # leading whitespace of the reply is dropped, as in the non-streaming answer

        def on_token(ev: Token):
            text = ev.text if started[0] else ev.text.lstrip()
            started[0] = started[0] or bool(text)
            return chunk({"content": text}, None, lp_content([ev])) if text or k is not None else None

        def on_done(ev: Done) -> dict:
            tail = ev.text if started[0] else ev.text.lstrip()
            return chunk({"content": tail} if tail else {}, ev.finish_reason)

        usage_chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": s.id, "choices": []}
        return _stream(run, first, on_token, on_done, usage_chunk if include_usage else None,
                       head=[chunk({"role": "assistant", "content": ""})])

    # ------------------------------------------------------------------ sessions
    @app.post("/v1/sessions")
    async def create_session(request: Request):
        body = await _json(request, SessionBody)
        server.get(body.model)
        return await asyncio.to_thread(store.create, body.model)

    @app.get("/v1/sessions")
    async def list_sessions(model: str | None = None):
        return {"object": "list", "data": store.list(model)}

    @app.get("/v1/sessions/{sid}")
    async def get_session(sid: str):
        return store.info(sid)

    @app.get("/v1/sessions/{sid}/logits")
    async def session_logits(sid: str):
        info, logits = await asyncio.to_thread(store.logits, sid)
        return {**info, "logits": None if logits is None else logits.float().tolist()}

    @app.post("/v1/sessions/{sid}/fork")
    async def fork_session(sid: str):
        return await asyncio.to_thread(store.fork, sid)

    @app.delete("/v1/sessions/{sid}")
    async def delete_session(sid: str):
        await asyncio.to_thread(store.delete, sid)
        return {"id": sid, "object": "session.deleted", "deleted": True}

    return Guard(app, api_key, limits.max_body_bytes)


async def _first(run: _Run):
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


async def _collect(run: _Run) -> tuple[str, list[Token], Done]:
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
