"""The web app of `bdh view`: FastAPI routes, a thin JSON layer over `bdh.view.data`, and the static page.

    GET  /                      the page (static/index.html + view.js + the vendored ECharts)
    GET  /api/info              model summary: type, sizes, which views apply, limits, index status
    POST /api/text              {text, top_k?, neuron_kind?}          -> data.text_view
    POST /api/attention         {text, t}                             -> data.attention_row
    GET  /api/neuron            ?layer=&head=&neuron=                 -> data.neuron_view (+ the neuron index)
    POST /api/sigma             {text, layer, pairs?, U?}             -> data.sigma_view
    POST /api/concepts          {concept: [...], contrast: [...], layer, U?} -> data.concept_search
    POST /api/state             {text, points?}                       -> data.state_view

With an access token (`create_app(..., token=)`, `bdh view --token`) every path needs it: `?token=` (the
response then sets a cookie, so the page's own requests carry it), that cookie, or `Authorization: Bearer`;
else 401 `{"error": ...}`.

Bad input is an HTTP 4xx with `{"error": "one line"}`: a body over `MAX_BODY` bytes or a text over
`data.MAX_TEXT_CHARS` characters (413), a body that is not UTF-8 JSON (400), an unknown layer / head / neuron or
a view a model does not have (400 / 422); the server keeps serving. One lock serialises the model (hooks are
per model).
"""


import hashlib
import json
import threading
from pathlib import Path

from ..netsec import bearer_ok, same_secret
from . import data

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20  # bytes of a request body (413 above)
DRAIN_MAX = 16 << 20  # an oversized body is drained up to this many bytes before the 413 is sent


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Viewer:
    """The loaded model, its neuron index (or None), and the lock that serialises computations on it."""

    def __init__(self, model, model_dir: str | None = None, index=None):
        self.model, self.model_dir, self.index = model, model_dir, index
        self.lock = threading.Lock()
        self._alt = None

    def alt_model(self):
        if self._alt is None:
            self._alt = data._toggled_damping(self.model)
        return self._alt

    def info(self) -> dict:
        out = data.model_summary(self.model)
        out["model_dir"] = self.model_dir
        if out["bdh"]:  # the built-in sentence sets of the concept search (§6.3), as an example to edit
            from ..analysis.concepts import CURRENCY, POLITICS

            out["examples"] = {"concept": CURRENCY, "contrast": POLITICS}
        out["index"] = None if self.index is None else {k: self.index.meta[k] for k in ("corpus", "n_tokens", "kinds")}
        return out


def _field(body: dict, name: str, kind, default=..., *, what: str | None = None):
    v = body.get(name, default)
    if v is ...:
        raise RequestError(422, f"missing field {name!r}")
    if v is default and default is not ...:
        return v
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise RequestError(422, f"field {name!r}: expected {what or kind.__name__}, got {json.dumps(v)[:60]}")
    return v


def _text(body: dict) -> str:
    text = _field(body, "text", str, what="a string")
    if len(text) > data.MAX_TEXT_CHARS:
        raise RequestError(413, f"text has {len(text)} characters; at most {data.MAX_TEXT_CHARS}")
    return text


def page_html(embed: dict | None = None, inline: bool = False) -> str:
    """The page: links to /static assets, or (`inline`) one self-contained HTML with assets and `embed` data."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    if not inline:
        return html
    css = (STATIC / "view.css").read_text(encoding="utf-8")
    js = (STATIC / "view.js").read_text(encoding="utf-8")
    charts = (STATIC / "echarts.min.js").read_text(encoding="utf-8")
    blob = json.dumps(embed, separators=(",", ":")).replace("</", "<\\/")  # safe inside <script>
    html = html.replace('<link rel="stylesheet" href="static/view.css">', f"<style>\n{css}\n</style>")
    charts = charts.replace("</script", "<\\/script")
    html = html.replace('<script src="static/echarts.min.js"></script>', f"<script>{charts}</script>")
    html = html.replace('<script src="static/view.js"></script>',
                        f"<script>window.BDH_EMBED = {blob};</script>\n<script>\n{js}\n</script>")
    return html


class TokenGuard:
    """ASGI wrapper: a request without the access token (query `token`, the cookie set when it was right, or
    `Authorization: Bearer`) gets a 401."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token
        self.cookie = hashlib.sha256(b"bdh view token:" + token.encode()).hexdigest()  # not the token itself

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        req = Request(scope)
        name = f"bdh_view_{(scope.get('server') or ('', ''))[1]}"  # per port: two viewers on one host keep theirs
        by_query = same_secret(req.query_params.get("token"), self.token)
        if not (by_query or bearer_ok(req.headers.get("authorization"), self.token)
                or same_secret(req.cookies.get(name), self.cookie)):
            return await JSONResponse({"error": "missing or wrong access token: open the URL that bdh view printed "
                                       "(it ends in ?token=...) or send 'Authorization: Bearer TOKEN'"}, 401,
                                      headers={"www-authenticate": "Bearer"})(scope, receive, send)
        if not by_query:
            return await self.app(scope, receive, send)
        cookie = f"{name}={self.cookie}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_cookie(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), (b"set-cookie", cookie)]}
            await send(msg)

        return await self.app(scope, receive, send_cookie)


def json_response(obj, status: int = 200):
    """JSON straight from `json.dumps` (FastAPI's jsonable_encoder walks every number: ~8x slower on a 2,000-token
    text view)."""
    from fastapi.responses import Response

    return Response(json.dumps(obj, separators=(",", ":"), allow_nan=False), status_code=status,
                    media_type="application/json")


def add_error_handlers(app) -> None:
    """Bad input is a 4xx with `{"error": "one line"}` (a RequestError with its status, a ValueError 400, too large
    413); anything else a 500 with one JSON line, never a bare error page (the server keeps running)."""
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(ValueError)
    async def _value_error(request, exc: ValueError):
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse({"error": msg}, status_code=413 if isinstance(exc, data.TooLarge) else 400)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"},
                            status_code=500)


async def body_json(request) -> dict:
    """The request body as a JSON object, or a RequestError: over MAX_BODY bytes (413), not UTF-8 or not a JSON
    object (400)."""
    n = request.headers.get("content-length")
    declared = int(n) if n is not None and n.isdigit() else None
    raw, seen = b"", 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen <= MAX_BODY:
            raw += chunk
        elif seen > DRAIN_MAX:  # stop reading: the client may see the connection close before the 413
            break
    # an oversized body is read (up to DRAIN_MAX) and dropped, so the client reliably gets the 413 rather than
    # a connection reset while it is still sending
    if seen > MAX_BODY:
        raise RequestError(413, f"request body of {declared or seen} bytes; at most {MAX_BODY}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"request body is not JSON ({e.msg} at offset {e.pos})") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body: expected a JSON object")
    return body


def create_app(viewer: Viewer, token: str | None = None):
    """The FastAPI app serving `viewer` (`token`: every request needs it, see `TokenGuard`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="bdh view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app)

    def run(fn, *args, **kw):
        with viewer.lock:
            return json_response(fn(*args, **kw))

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page_html()

    @app.get("/api/info")
    def info():
        return viewer.info()

    @app.post("/api/text")
    async def text(request: Request):
        body = await body_json(request)
        args = (viewer.model, _text(body))
        kw = {"top_k": _field(body, "top_k", int, 5), "neuron_kind": _field(body, "neuron_kind", str, "xy")}
        return await _threaded(run, data.text_view, *args, **kw)

    @app.post("/api/attention")
    async def attention(request: Request):
        body = await body_json(request)
        return await _threaded(run, data.attention_row, viewer.model, _text(body), _field(body, "t", int))

    @app.get("/api/neuron")
    async def neuron(layer: str, head: str, neuron: str):
        vals = []
        for name, v in (("layer", layer), ("head", head), ("neuron", neuron)):
            try:
                vals.append(int(v))
            except ValueError:
                raise RequestError(422, f"{name} {v!r}: expected an integer") from None
        return await _threaded(run, data.neuron_view, viewer.model, *vals, viewer.index)

    @app.post("/api/sigma")
    async def sigma(request: Request):
        body = await body_json(request)
        pairs = _field(body, "pairs", list, None, what="a list of [i, j] pairs")
        return await _threaded(run, data.sigma_view, viewer.model, _text(body), _field(body, "layer", int),
                               pairs, U=_field(body, "U", str, "rope"))

    @app.post("/api/concepts")
    async def concepts(request: Request):
        body = await body_json(request)
        return await _threaded(run, data.concept_search, viewer.model, _field(body, "concept", list),
                               _field(body, "contrast", list), _field(body, "layer", int), U=_field(body, "U", str, "rope"))

    @app.post("/api/state")
    async def state(request: Request):
        body = await body_json(request)
        text = _text(body)
        points = _field(body, "points", int, 64)

        def go():
            return data.state_view(viewer.model, text, points=points,
                                   alt_model=viewer.alt_model() if data.has_rho_state(viewer.model) else None)

        return await _threaded(run, go)

    return app if token is None else TokenGuard(app, token)


async def _threaded(fn, *args, **kw):
    """Run a blocking computation in the thread pool (the event loop keeps serving)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kw)
