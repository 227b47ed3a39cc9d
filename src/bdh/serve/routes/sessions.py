"""The sessions resource (an extension of the OpenAI API): create, list, read, logits, fork, delete.

    POST /v1/sessions {"model"}   GET /v1/sessions[?model=M]   GET /v1/sessions/{id}
    GET /v1/sessions/{id}/logits  POST /v1/sessions/{id}/fork   DELETE /v1/sessions/{id}
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..schema import SessionBody, read_json
from . import server_of

router = APIRouter()


@router.post("/v1/sessions")
async def create_session(request: Request):
    server = server_of(request)
    body = await read_json(request, SessionBody)
    server.get(body.model)
    return await asyncio.to_thread(server.store.create, body.model)


@router.get("/v1/sessions")
async def list_sessions(request: Request, model: str | None = None):
    return {"object": "list", "data": server_of(request).store.list(model)}


@router.get("/v1/sessions/{sid}")
async def get_session(sid: str, request: Request):
    return server_of(request).store.info(sid)


@router.get("/v1/sessions/{sid}/logits")
async def session_logits(sid: str, request: Request):
    info, logits = await asyncio.to_thread(server_of(request).store.logits, sid)
    return {**info, "logits": None if logits is None else logits.float().tolist()}


@router.post("/v1/sessions/{sid}/fork")
async def fork_session(sid: str, request: Request):
    return await asyncio.to_thread(server_of(request).store.fork, sid)


@router.delete("/v1/sessions/{sid}")
async def delete_session(sid: str, request: Request):
    await asyncio.to_thread(server_of(request).store.delete, sid)
    return {"id": sid, "object": "session.deleted", "deleted": True}
