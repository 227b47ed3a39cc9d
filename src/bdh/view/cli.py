"""`bdh view`: parse arguments, load the model, serve the viewer (or export one static page).

    bdh view --model runs/default                         # http://127.0.0.1:8765/
    bdh view --model runs/default --host 0.0.0.0 --token T  # every interface; open http://HOST:8765/?token=T
    bdh view --model runs/default --export page.html --text "To be, or not to be"

No heavy import at module level (`bdh --help` works without fastapi / uvicorn).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_run_options, apply_run_options, int_at_least, positive_int
from ..netsec import AccessKey, listen_socket

DEFAULT_PORT = 8765
VIEW_TOKEN = AccessKey("--token", "BDH_VIEW_TOKEN", "an access token")


def _port(text: str) -> int:
    return int_at_least(0, 65535)(text)


def load_viewer_model(path: str, device="cpu"):
    """The model of a directory, or a ValueError / FileNotFoundError of one line naming the directory."""
    from ..checkpoint import CheckpointError, load_model

    if not Path(path).exists():
        raise FileNotFoundError(f"--model {path!r}: model directory does not exist")
    if not Path(path).is_dir():
        raise ValueError(f"--model {path!r}: not a directory; expected a model directory (config.json + model.safetensors)")
    try:
        return load_model(path, device=device)
    except CheckpointError as e:
        raise ValueError(f"--model {path!r}: {str(e).splitlines()[0]}") from None


def read_text_file(path: str) -> str:
    """The UTF-8 text of `path`, or a one-line error naming it (missing, a directory, not UTF-8)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--text-file {path!r}: no such file")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text-file {path!r}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def export_page(model, text: str, out: str | Path) -> Path:
    """One self-contained HTML page (assets inline, no network) with the Text view (and the State view for BDH)
    of `text`."""
    from ..io import atomic_write_text
    from . import data
    from .app import page_html

    embed = {"info": data.model_summary(model), "text": data.text_view(model, text)}
    if data.has_rho_state(model):
        embed["state"] = data.state_view(model, text)
    return atomic_write_text(out, page_html(embed, inline=True))


def cmd_view(args: argparse.Namespace) -> int:
    device = apply_run_options(args)
    if args.text is not None and args.text_file is not None:
        raise ValueError("--text and --text-file: give one of them")
    if (args.text is not None or args.text_file is not None) and args.export is None:
        raise ValueError("--text / --text-file go with --export PAGE.html")
    if args.token is not None and args.export is not None:
        raise ValueError("--token goes with the live server; an --export page is a static file, with no server")
    token = VIEW_TOKEN.resolve(args.token) if args.export is None else None
    text = None
    if args.export is not None:
        if args.text_file is not None:
            text = read_text_file(args.text_file)
        else:
            text = args.text
        if not text:
            raise ValueError("--export needs --text TEXT or --text-file FILE (non-empty)")
        from .data import MAX_TEXT_CHARS

        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"the text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
    sock = listen_socket(args.host, args.port) if args.export is None else None  # a busy port: before any work
    try:
        return _view(args, device, text, token, sock)
    finally:
        if sock is not None:
            sock.close()


def _view(args: argparse.Namespace, device, text: str | None, token: str | None, sock) -> int:
    model = load_viewer_model(args.model, device)
    if args.export is not None:
        out = export_page(model, text, args.export)
        print(f"page: {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained)")
        return 0
    from . import data
    from .app import Viewer, create_app

    index = None
    if data.has_neurons(model) and not args.no_index:
        from ..analysis.report import default_corpus
        from .index import load_or_build_index

        corpus = args.data or default_corpus(args.model)
        index = load_or_build_index(model, args.model, corpus, max_tokens=args.index_tokens, progress=not args.quiet,
                                    log=lambda s: print(s, file=sys.stderr, flush=True))
    serve(create_app(Viewer(model, args.model, index), token=token), sock, args.host, quiet=args.quiet, token=token)
    return 0


def serve(app, sock, host: str, *, quiet: bool = False, token: str | None = None) -> None:
    """Serve `app` on the bound socket `sock` (`bdh.netsec.listen_socket`) until interrupted; first warn when
    `host` is reachable from other machines without a `token`, and print the URL (with `?token=` when there is one)."""
    from urllib.parse import quote

    import uvicorn

    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    warning = VIEW_TOKEN.warning("bdh view", host, token, "use the model and read its weights through the API")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    query = f"?token={quote(token, safe='')}" if token else ""
    print(f"bdh view: http://{shown}:{port}/{query}  (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet)
    uvicorn.Server(config).run(sockets=[sock])


def register(sub) -> None:
    v = sub.add_parser("view", help="interactive local viewer of neurons, synapses and state (web page)")
    v.add_argument("--model", required=True, help="model directory (save_pretrained / bdh train --out)")
    v.add_argument("--data", default=None,
                   help="corpus spec for the neuron index (default: the model's training corpus, else pydoc); validation split")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free port)")
    v.add_argument("--token", default=None,
                   help="require this access token for the page and the API: open the printed URL (?token=...), "
                        "or send 'Authorization: Bearer TOKEN' (default: $BDH_VIEW_TOKEN, else off)")
    v.add_argument("--index-tokens", type=positive_int, default=1 << 20,
                   help="validation tokens indexed for the neurons' top contexts (default 1048576)")
    v.add_argument("--no-index", action="store_true", help="do not build or load the neuron index")
    v.add_argument("--export", default=None, metavar="PAGE.html", help="write one self-contained page and exit")
    v.add_argument("--text", default=None, help="text of the exported page")
    v.add_argument("--text-file", default=None, help="UTF-8 file with the text of the exported page")
    v.add_argument("--quiet", action="store_true", help="no progress bar or access log")
    add_run_options(v)
    v.set_defaults(func=cmd_view)
