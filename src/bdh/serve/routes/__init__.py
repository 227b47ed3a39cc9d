"""The routes of `bdh serve`, one module per resource: `models` (and /health), `completions`, `chat`, `sessions`.

Each module has an `APIRouter` named `router`; handlers reach the `bdh.serve.server.Server` through
`server_of(request)` (the app's `state.server`, set by `bdh.serve.app.create_app`).
"""

from __future__ import annotations

from fastapi import Request

from ..server import Server


def server_of(request: Request) -> Server:
    return request.app.state.server
