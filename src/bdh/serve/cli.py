"""`bdh serve --model DIR`: serve one or more saved models over the OpenAI API (see `bdh.serve.app`).

Imports nothing heavy at module level (`bdh --help` works without fastapi / uvicorn / torch loaded).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..cli import add_run_options, apply_run_options, int_at_least, positive_int
from ..netsec import AccessKey, listen_socket

API_KEY = AccessKey("--api-key", "BDH_API_KEY", "an API key")


def _model_spec(text: str) -> tuple[str, str]:
    """`DIR` or `NAME=DIR` -> (name, dir); the name defaults to the directory's base name."""
    if "=" in text and not os.path.isdir(text):
        name, path = text.split("=", 1)
    else:
        path = text
        name = os.path.basename(os.path.normpath(os.path.abspath(text)))
    if not name or not all(c.isalnum() or c in "-_.:" for c in name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected DIR or NAME=DIR with a NAME of letters, digits, - _ . :")
    return name, path


class _LogFormat(logging.Formatter):
    """`bdh serve: warning: ...`, as the server's other lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"bdh serve: {record.levelname.lower()}: {super().format(record)}"


def cmd_serve(args: argparse.Namespace) -> int:
    device = apply_run_options(args)
    names = [n for n, _ in args.model]
    if len(set(names)) != len(names):
        raise ValueError(f"--model: two models are named the same ({names}); name them with NAME=DIR")
    api_key = API_KEY.resolve(args.api_key)
    sock = listen_socket(args.host, args.port)
    try:
        return _serve(args, device, api_key, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, device, api_key: str | None, sock) -> int:
    log = logging.getLogger("bdh.serve")  # the store's warnings (unreadable session files) and request failures
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogFormat())
        log.addHandler(handler)
    log.setLevel(args.log_level.upper())
    try:
        import uvicorn

        from .app import Limits, Served, create_app
    except ModuleNotFoundError as e:
        raise ValueError(f"bdh serve needs {e.name}: pip install 'bdh[serve]'") from None
    import time

    from ..checkpoint import load_model
    from .engine import Engine
    from ..checkpoint import model_fingerprint
    from .sessions import UNREADABLE, SessionStore

    served, fps = {}, {}
    for name, path in args.model:
        model = load_model(path, device=device)
        engine = Engine(model, model.tokenizer, max_batch=args.max_batch, max_queue=args.max_queue, name=name)
        served[name] = Served(name, model, model.tokenizer, engine, int(time.time()))
        fps[name] = model_fingerprint(path)
    store = SessionStore(args.sessions_dir, {k: s.model for k, s in served.items()}, fps,
                         memory_cap=args.session_memory_mb << 20, max_sessions=args.max_sessions)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens)
    app = create_app(served, store, api_key=api_key, limits=limits)
    warning = API_KEY.warning("bdh serve", args.host, api_key, "use the models and read every session")
    if warning:
        print(warning, file=sys.stderr)
    for name, s in served.items():
        print(f"bdh serve: model {name!r} ({type(s.model.config).MODEL_TYPE}, {s.model.num_params():,} params)",
              file=sys.stderr)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    host = f"[{args.host}]" if ":" in args.host else args.host
    unreadable = f", {len(store.unreadable)} unreadable moved to {store.dir / UNREADABLE}" if store.unreadable else ""
    print(f"bdh serve: http://{host}:{port}/v1  sessions in {args.sessions_dir} "
          f"({store.stats()['sessions']} found{unreadable})  max batch {args.max_batch}  "
          f"API key {'required' if api_key else 'off'}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level, timeout_keep_alive=5,
                            limit_concurrency=args.max_connections)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down, then raised the signal again
        pass
    if not server.started:
        raise ValueError(f"the server on {args.host}:{port} did not start (see the errors above)")
    return 0


def register(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with persistent sessions and batched decode")
    s.add_argument("--model", action="append", required=True, type=_model_spec, metavar="[NAME=]DIR",
                   help="model directory to serve (repeatable: several models side by side); its id is NAME or "
                        "the directory's name")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int_at_least(0, 65535), default=8000)
    s.add_argument("--max-batch", type=positive_int, default=32, help="rows decoded together per model (default 32)")
    s.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting per model (default 256)")
    s.add_argument("--sessions-dir", default="bdh-sessions", help="where session states are saved (default ./bdh-sessions)")
    s.add_argument("--session-memory-mb", type=positive_int, default=256,
                   help="session states kept in memory, MiB (least recently used go back to disk; default 256)")
    s.add_argument("--max-sessions", type=positive_int, default=10000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $BDH_API_KEY, else off)")
    s.add_argument("--max-prompt-tokens", type=positive_int, default=4096)
    s.add_argument("--max-tokens", type=positive_int, default=1024, help="the largest max_tokens a request may ask")
    s.add_argument("--max-body-bytes", type=positive_int, default=1 << 20)
    s.add_argument("--max-connections", type=positive_int, default=512, help="concurrent connections (then 503)")
    s.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning")
    add_run_options(s)
    s.set_defaults(func=cmd_serve)
