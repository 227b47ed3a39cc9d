"""Speed of `bdh view`: a 2,000-token text rendered end to end, and the neuron index over a validation set.

    python -m benchmarks.view_speed                          # default-config model, random weights (see below)
    python -m benchmarks.view_speed --model runs/default     # a trained model directory
    python -m benchmarks.view_speed --quick                  # smoke test (< 1 min)

Without `--model` the model is the `default` run config's BDH-GPU (src/bdh/configs/default.toml: L=2, d=64,
h=8, N=128, ALiBi damping) with *random weights*, saved to a temporary directory: the cost of these views does
not depend on training (dense tensors, same shapes), but a trained model's activity levels differ.

Measured (medians over `--repeats`, after one warm-up):
1. `text_view_s`: `bdh.view.data.text_view` on the text (Python only: forward with hooks, loss, top-k, activity).
2. `api_text_s`: POST /api/text to a real uvicorn server on loopback (JSON encode + transfer + decode).
3. `browser_render_s`: in Debian's headless Chromium (Playwright), from the click on "Analyse" until the ECharts
   heatmap reports `finished` with the tokens, tables and loss colours in the DOM: the end-to-end figure.
4. `state_view_s`: POST /api/state (‖rho‖ after 64 points, model and toggled damping).
5. `index_build_s`: `load_or_build_index` over the validation split of the run's corpus (Shakespeare's 4
   held-out plays for `default`), no cache: windows of 256 tokens, top-16 contexts and histograms for
   x_sparse and xy of every neuron, written beside the model.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


import torch

from .common import format_machine, machine_info, median_time, summarize, write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "view_speed.json"
QUICK_OUT = Path(__file__).resolve().parent / "results" / "view_speed_quick.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]


def default_model_dir(tmp: Path) -> tuple[Path, str]:
    """The default run config's model with random weights (seed 0), bytes tokenizer; and its corpus."""
    from bdh.interface import build_model
    from bdh.tokenization import ByteTokenizer
    from bdh.training.config import load_run_config

    run = load_run_config("default")
    torch.manual_seed(0)
    model = build_model(run.model_config(256))
    d = tmp / "default-random"
    model.save_pretrained(d, tokenizer=ByteTokenizer())
    return d, run.data.corpus


def start_server(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/", server, th


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def browser_render(url: str, text: str, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#text", text)
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            page.click("#run")
            page.wait_for_function("document.getElementById('heatmap').dataset.rendered === '1' && "
                                   "document.getElementById('tokens').dataset.ready === '1'", timeout=60_000)
            dt = time.perf_counter() - t0
            if i:  # the first is the warm-up
                times.append(dt)
            n = page.locator(".tok").count()
        b.close()
    out = summarize(times)
    out["tokens_in_dom"] = n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the default config, random weights)")
    ap.add_argument("--corpus", default=None, help="corpus spec of the index (default: the run's corpus)")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens of the rendered text")
    ap.add_argument("--index-tokens", type=int, default=1 << 20, help="cap on the validation tokens indexed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="smoke test: 300 tokens, 32768 index tokens, 2 repeats")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--no-index", action="store_true", help="skip the neuron index build")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.index_tokens, args.repeats = 300, 32768, 2
    torch.set_num_threads(args.threads)

    from bdh.analysis.report import default_corpus
    from bdh.checkpoint import load_model
    from bdh.data.corpora import resolve_corpus
    from bdh.view import data
    from bdh.view.app import Viewer, create_app
    from bdh.view.index import INDEX_NAME, load_or_build_index

    tmp = tempfile.TemporaryDirectory(prefix="view_speed_")
    if args.model is None:
        model_dir, corpus = default_model_dir(Path(tmp.name))
        weights = "default config, random weights (seed 0)"
    else:
        model_dir, corpus = Path(args.model), default_corpus(args.model)
        weights = f"trained: {args.model}"
    corpus = args.corpus or corpus
    model = load_model(model_dir)
    info = machine_info()
    print(format_machine(info))
    print(f"model: {model_dir} ({weights}); {model.num_params():,} parameters; corpus {corpus!r}")
    val = resolve_corpus(corpus).val
    ids = model.tokenizer.encode(val[: 8 * args.tokens])[: args.tokens]
    text = model.tokenizer.decode(ids)
    n_tok = len(model.tokenizer.encode(text))
    res = {"machine": info, "model_dir": str(model_dir), "weights": weights, "config": model.config.to_dict(),
           "params": model.num_params(), "corpus": corpus, "text_tokens": n_tok, "text_chars": len(text),
           "threads": args.threads}

    res["text_view_s"] = median_time(lambda: data.text_view(model, text), repeats=args.repeats)
    print(f"text_view (Python) {n_tok} tokens: median {res['text_view_s']['median_s']:.3f} s")
    viewer = Viewer(model, str(model_dir), None)
    url, server, th = start_server(create_app(viewer))
    body = post(url + "api/text", {"text": text})
    res["api_text_bytes"] = len(json.dumps(body))
    res["api_text_s"] = median_time(lambda: post(url + "api/text", {"text": text}), repeats=args.repeats)
    print(f"POST /api/text: median {res['api_text_s']['median_s']:.3f} s ({res['api_text_bytes'] / 1e6:.2f} MB JSON)")
    res["state_view_s"] = median_time(lambda: post(url + "api/state", {"text": text}), repeats=args.repeats)
    print(f"POST /api/state: median {res['state_view_s']['median_s']:.3f} s")
    if not args.no_browser and Path(CHROMIUM).exists():
        res["browser_render_s"] = browser_render(url, text, args.repeats)
        print(f"browser end to end (click -> heatmap rendered): median {res['browser_render_s']['median_s']:.3f} s "
              f"(min {res['browser_render_s']['min_s']:.3f}, max {res['browser_render_s']['max_s']:.3f})")
    server.should_exit = True
    th.join(10)

    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    if args.no_index:
        write_json(out, res)
        print(f"saved {out}")
        return 0
    index_dir = Path(tmp.name) / "index-model"  # a copy without a cached index
    index_dir.mkdir()
    for f in model_dir.iterdir():
        if f.is_file() and f.name != INDEX_NAME:
            (index_dir / f.name).write_bytes(f.read_bytes())
    t0, c0 = time.perf_counter(), time.process_time()
    index = load_or_build_index(model, index_dir, corpus, max_tokens=args.index_tokens)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    load_or_build_index(model, index_dir, corpus, max_tokens=args.index_tokens, progress=False)
    cached = time.perf_counter() - t1
    res["index"] = {"build_s": wall, "cpu_per_wall": cpu / wall, "tokens": index.meta["n_tokens"],
                    "val_chars": len(val), "file_bytes": (index_dir / INDEX_NAME).stat().st_size, "load_cached_s": cached}
    print(f"neuron index: {index.meta['n_tokens']:,} validation tokens of {corpus!r} in {wall:.1f} s "
          f"({index.meta['n_tokens'] / wall:,.0f} tokens/s); {res['index']['file_bytes'] / 1e6:.1f} MB; cached load {cached:.3f} s")
    write_json(out, res)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
