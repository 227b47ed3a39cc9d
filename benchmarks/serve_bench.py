"""`bdh serve`: batched decode throughput, memory per session (BDH state vs GPT KV cache), a bounded load test.

    python -m benchmarks.serve_bench --quick          # a few minutes on 2 CPU cores
    python -m benchmarks.serve_bench                  # more requests and repeats

Models: the default BDH (`bdh/configs/default.toml`: d=64, L=2, h=8, n=1024, damping) and the GPT baseline at
the same parameter count (`gpt-default.toml`: L=2, d=92, h=4, ALiBi; -1% params), random weights (speed and
state size do not depend on training), byte tokenizer, saved to a temporary directory and served by real
`python -m bdh serve` subprocesses on loopback (--threads 1).

(1) Throughput: C concurrent clients (1, 8, 32), each sending R completions of T tokens one after another
    (greedy, non-streaming), against a server that batches (--max-batch 32: continuous batching) and one that
    serves requests one at a time (--max-batch 1), both running during the whole measurement; the two are
    measured alternately, `--repeats` times, and the ratio of the medians (completion tokens/s, wall clock of
    the whole run including HTTP) is reported per C and model.
(2) Memory per session: the bytes of the real state tensors (`state_to_tensors`) after prefilling random
    contexts of 1k / 4k / 16k tokens: BDH's rho (constant) vs GPT's KV cache (linear), and the size of the
    session file `bdh serve` writes for it.
(3) Load test (`bdh.serve.loadtest`): N clients x M requests with a session each, alternating streaming and
    non-streaming; counts failed requests and lost sessions (token count != sum of the turns), latency
    percentiles.
Results are printed and saved as JSON (with machine info) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import torch

from .common import format_machine, human_bytes, machine_info, write_json

from bdh.generation import prefill_in_pieces
from bdh.interface import build_model
from bdh.serve.loadtest import httpx_module, load_test
from bdh.checkpoint import model_fingerprint
from bdh.serve.sessions import SessionStore
from bdh.tokenization import ByteTokenizer
from bdh.training.config import load_run_config

HERE = Path(__file__).resolve().parent
MODELS = {"bdh": "default", "gpt": "gpt-default"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, dirs: dict[str, Path], sessions: Path, max_batch: int, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "bdh", "serve", "--port", str(self.port), "--sessions-dir", str(sessions),
                "--max-batch", str(max_batch), "--threads", str(threads), "--max-tokens", "4096",
                "--max-queue", "1024"]
        for name, d in dirs.items():
            args += ["--model", f"{name}={d}"]
        self.proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        httpx = httpx_module()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def health(self) -> dict:
        return httpx_module().get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_models(root: Path) -> tuple[dict[str, Path], dict[str, torch.nn.Module]]:
    dirs, models = {}, {}
    for name, cfg in MODELS.items():
        torch.manual_seed(0)
        m = build_model(load_run_config(cfg).model_config(256)).eval()
        m.save_pretrained(root / name, ByteTokenizer())
        dirs[name], models[name] = root / name, m
    return dirs, models


def memory_per_session(dirs, models, contexts, tmp: Path) -> list[dict]:
    store = SessionStore(tmp / "mem-sessions", models, {k: model_fingerprint(d) for k, d in dirs.items()})
    rows = []
    g = torch.Generator().manual_seed(0)
    for ctx in contexts:
        ids = torch.randint(0, 256, (1, ctx), generator=g)
        row = {"context": ctx}
        for name, m in models.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                logits, state = prefill_in_pieces(m, ids)
            tensors = m.state_to_tensors(state)
            sid = store.create(name)["id"]
            info = store.commit(store.acquire(sid, name), state, logits[0], ctx)
            row[name] = {"state_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
                         "session_file_bytes": info["file_bytes"], "prefill_s": time.perf_counter() - t0}
            store.delete(sid)
        row["gpt_over_bdh"] = row["gpt"]["state_bytes"] / row["bdh"]["state_bytes"]
        rows.append(row)
        print(f"  context {ctx:>6}: BDH state {human_bytes(row['bdh']['state_bytes'])} "
              f"(file {human_bytes(row['bdh']['session_file_bytes'])})  GPT KV cache "
              f"{human_bytes(row['gpt']['state_bytes'])} (file {human_bytes(row['gpt']['session_file_bytes'])})  "
              f"GPT/BDH {row['gpt_over_bdh']:.1f}x", flush=True)
    return rows


def throughput(batched: Server, single: Server, clients_list, requests: int, max_tokens: int, repeats: int):
    out = []
    for name in MODELS:
        for srv in (batched, single):  # warm up both paths
            asyncio.run(load_test(srv.url, name, clients=2, requests=1, max_tokens=4, sessions=False, stream=False))
        for c in clients_list:
            tps = {"batched": [], "one_at_a_time": []}
            for _ in range(repeats):
                for label, srv in (("batched", batched), ("one_at_a_time", single)):
                    s = asyncio.run(load_test(srv.url, name, clients=c, requests=requests, max_tokens=max_tokens,
                                              sessions=False, stream=False))
                    if s["failed"]:
                        raise RuntimeError(f"{name} {label} c={c}: {s['errors']}")
                    tps[label].append(s["tokens_per_s"])
            row = {"model": name, "clients": c, "requests_per_client": requests, "max_tokens": max_tokens,
                   "tokens_per_s_batched": tps["batched"], "tokens_per_s_one_at_a_time": tps["one_at_a_time"],
                   "median_batched": statistics.median(tps["batched"]),
                   "median_one_at_a_time": statistics.median(tps["one_at_a_time"])}
            row["speedup"] = row["median_batched"] / row["median_one_at_a_time"]
            out.append(row)
            print(f"  {name} clients {c:>3}: batched {row['median_batched']:8.0f} tok/s   one at a time "
                  f"{row['median_one_at_a_time']:8.0f} tok/s   x{row['speedup']:.2f}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests and repeats (a few minutes)")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=None, help="requests per client (default 2 quick, 4 full)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 32 quick, 64 full)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3 quick, 5 full)")
    p.add_argument("--contexts", default="1024,4096,16384")
    p.add_argument("--load-clients", type=int, default=None, help="load test clients (default 16 quick, 32 full)")
    p.add_argument("--load-requests", type=int, default=None, help="load test requests per client (default 4 / 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    q = a.quick
    requests = a.requests or (2 if q else 4)
    max_tokens = a.max_tokens or (32 if q else 64)
    repeats = a.repeats or (3 if q else 5)
    load_clients, load_requests = a.load_clients or (16 if q else 32), a.load_requests or (4 if q else 8)
    clients_list = [int(x) for x in a.clients.split(",")]
    contexts = [int(x) for x in a.contexts.split(",")]
    out_path = Path(a.out) if a.out else HERE / "results" / ("serve_bench_quick.json" if q else "serve_bench.json")
    torch.set_num_threads(a.threads)
    info = machine_info()
    print(format_machine(info), flush=True)
    result: dict = {"machine": info, "settings": {"clients": clients_list, "requests_per_client": requests,
                                                 "max_tokens": max_tokens, "repeats": repeats, "contexts": contexts,
                                                 "load_clients": load_clients, "load_requests": load_requests,
                                                 "server_threads": a.threads}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs, models = make_models(tmp)
        result["models"] = {k: {"config": MODELS[k], "params": m.num_params()} for k, m in models.items()}
        print("models: " + ", ".join(f"{k} ({MODELS[k]}, {m.num_params():,} params)" for k, m in models.items()))
        print("memory per session (real state tensors after a prefilled context):", flush=True)
        result["memory"] = memory_per_session(dirs, models, contexts, tmp)
        batched = Server(dirs, tmp / "s-batched", 32, a.threads)
        single = Server(dirs, tmp / "s-single", 1, a.threads)
        try:
            print(f"throughput ({requests} requests x {max_tokens} tokens per client, {repeats} alternating "
                  "repeats, medians):", flush=True)
            result["throughput"] = throughput(batched, single, clients_list, requests, max_tokens, repeats)
            print(f"load test ({load_clients} clients x {load_requests} requests, sessions, streaming every other):",
                  flush=True)
            result["load_test"] = {}
            for name in MODELS:
                s = asyncio.run(load_test(batched.url, name, clients=load_clients, requests=load_requests,
                                          max_tokens=max_tokens, sessions=True, stream=True))
                result["load_test"][name] = s
                lat = s["latency_ms"]
                print(f"  {name}: {s['ok']}/{s['requests']} ok, {s['failed']} failed, {s['lost_sessions']} lost "
                      f"sessions, {s['tokens_per_s']:.0f} tok/s, latency ms p50 {lat['p50']:.0f} p90 {lat['p90']:.0f} "
                      f"p99 {lat['p99']:.0f} max {lat['max']:.0f}", flush=True)
            result["server_stats"] = {"batched": batched.health(), "one_at_a_time": single.health()}
        finally:
            batched.stop()
            single.stop()
    write_json(out_path, result)
    print(f"saved {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
