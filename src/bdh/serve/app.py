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

Layout: `schema` (limits, errors, request bodies, the chat template), `server` (the served models, a request's
run in an engine, and `complete`, the one completion path of completions and chat), `routes/` (one module per
resource: models and /health, completions, chat, sessions), and this module (the app, its error handlers and the
`Guard` middleware).

Errors are `{"error": {"message", "type", "param", "code"}}` with a 4xx status for bad requests (bad JSON, text
that is not Unicode, an unknown model or session, a prompt or body over the limits) and 5xx for server faults (507
when a session cannot be saved for lack of disk space: the session stays as it was, and a session the request
created is deleted); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..netsec import bearer_ok
from .engine import EngineError
from .routes import chat, completions, models
from .routes import sessions as session_routes
from .schema import APIError, Limits, error_body, error_response
from .server import Served, Server
from .sessions import SessionStore

__all__ = ["Guard", "Limits", "Served", "create_app"]

log = logging.getLogger("bdh.serve")


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
def add_error_handlers(app: FastAPI) -> None:
    """Every failure is an OpenAI error body: an APIError or EngineError with its status, a malformed request 400,
    a bug 500 (logged; the server keeps serving)."""

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


def create_app(served: dict[str, Served], store: SessionStore, *, api_key: str | None = None,
               limits: Limits | None = None):
    """The ASGI app serving `served` (model id -> Served, engines not yet started: the app starts and stops them)."""
    limits = limits or Limits()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.engine.start()
        yield
        for s in served.values():
            await asyncio.to_thread(s.engine.stop)

    app = FastAPI(title="bdh serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(served, store, limits)
    add_error_handlers(app)
    for routes in (models, completions, chat, session_routes):
        app.include_router(routes.router)
    return Guard(app, api_key, limits.max_body_bytes)
