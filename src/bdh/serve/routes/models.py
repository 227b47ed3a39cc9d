"""GET /v1/models, GET /v1/models/{id} (OpenAI's model objects), and GET /health (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..server import Served
from . import server_of

router = APIRouter()


def model_card(s: Served) -> dict:
    return {"id": s.id, "object": "model", "created": s.created, "owned_by": "bdh",
            "model_type": type(s.model.config).MODEL_TYPE, "params": s.model.num_params()}


@router.get("/v1/models")
async def models(request: Request):
    return {"object": "list", "data": [model_card(s) for s in server_of(request).served.values()]}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, request: Request):
    return model_card(server_of(request).get(model_id))


@router.get("/health")
async def health(request: Request):
    server = server_of(request)
    return {"status": "ok", "models": {k: {**s.engine.stats, "queued": s.engine.queued}
                                       for k, s in server.served.items()}, "sessions": server.store.stats()}
