"""Speed of the BDH graph simulator: rounds/s and tokens/s vs neurons n and edges, on CPU.

    python -m benchmarks.graph_speed                 # full: n up to 32768, up to ~1M edges (a few minutes)
    python -m benchmarks.graph_speed --quick         # smoke test (< 30 s)
    python -m benchmarks.graph_speed --threads 2 --out benchmarks/results/graph_speed.json

Part A, the BDH graph model (Def. 3, Table 1(b); `bdh.graph.BDHGraph`): five random non-negative graphs
G_x^e, G_x^i, G_y^e, G_y^i, G_s with m edges each (5m edges in all), L = 4 layers (16 rounds per token),
batch 1, float32, the fast (CSR) engine. Two sweeps: edges at n = 32768, and n at a fixed m. A few
configurations are also run with the gather/scatter reference engine (`fast=False`) for the ratio.
Memory is O(n + edges): graphs and state are reported in bytes; no n x n matrix is ever formed. The engine
does the same work whatever the activity (no event-driven shortcuts), so random graphs time it fairly even
though their dynamics are mostly silent (the active fractions of X, Y, A are saved).

Part B, the graph form of a BDH-GPU model (`bdh.graph.from_gpu`) at the default config (n = 1024, d = 128,
h = 4, L = 4, random weights: speed does not depend on training): exact Claim 3 hubs and direct-edge
budgets, batch 1 and 8. Its synapses sit on the per-head blocks (h N^2 = 262144 edges per layer).

Timings are medians over repeats of `--tokens` consecutive tokens (after one warm-up token), with the
process's CPU/wall ratio (about the thread count on idle cores, lower when other processes take them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


import torch

from .common import format_machine, human_bytes, machine_info, median_time, peak_rss_bytes, write_json

from bdh import BDH, BDHConfig
from bdh.graph import random_bdh_graph
from bdh.graph.from_gpu import BDHGPUGraph, GPUWeights

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "graph_speed.json"
QUICK_OUT = Path(__file__).resolve().parent / "results" / "graph_speed_quick.json"
L = 4


def graph_bytes(model) -> int:
    total = 0
    for g in model.graphs.values():
        parts = (g.first, g.second) if hasattr(g, "first") else (g,)
        total += sum(p.nbytes() for p in parts)
    return total


def bench_table1(n: int, m: int, tokens: int, repeats: int, fast: bool = True) -> dict:
    model = random_bdh_graph(n, m, n_layer=L, seed=0, dtype=torch.float32, fast=fast)
    g = torch.Generator().manual_seed(1)
    x_in = (torch.rand(tokens + 1, 1, n, generator=g) < 0.05).float()  # ~5% active inputs
    state = model.init_state(1)
    model.step(state, x_in[0])  # warm-up (CSR patterns, allocations)

    def run():
        for t in range(tokens):
            model.step(state, x_in[t + 1])

    s = median_time(run, repeats=repeats, warmup=0)
    edges = sum(model.num_edges().values())
    active = {k: float((state.nodes[k] != 0).float().mean()) for k in ("X", "Y", "A")}
    tok_s = tokens / s["median_s"]
    return {
        "part": "table1", "engine": "fast" if fast else "reference", "n": n, "m_per_graph": m, "edges": edges,
        "layers": L, "rounds_per_token": model.rounds_per_token, "tokens_per_s": tok_s,
        "rounds_per_s": tok_s * model.rounds_per_token, "edge_updates_per_s": tok_s * L * edges,
        "graph_bytes": graph_bytes(model), "state_bytes": state.nbytes(), "timing": s,
        "finite": bool(torch.isfinite(state.nodes["X"]).all()), "active_fraction_at_end": active,
    }


def bench_gpu_form(budget, B: int, tokens: int, repeats: int, W: GPUWeights) -> dict:
    gform = BDHGPUGraph(W, budget=budget)
    idx = torch.randint(0, W.vocab_size, (B, tokens + 1), generator=torch.Generator().manual_seed(2))
    state = gform.init_state(B)
    gform.step(state, idx[:, 0])

    def run():
        for t in range(tokens):
            gform.step(state, idx[:, t + 1])

    s = median_time(run, repeats=repeats, warmup=0)
    e = gform.num_edges()
    tok_s = B * tokens / s["median_s"]
    return {
        "part": "gpu_form", "routing": "claim3 hubs" if budget is None else "direct", "budget_per_graph": budget,
        "batch": B, "n": W.n, "d": W.d, "parameter_edges": e["parameter graphs (G_x, G_y)"],
        "synapse_edges_per_layer": e["Gs"], "tokens_per_s": tok_s, "rounds_per_s": tok_s / B * len(gform.program),
        "state_bytes": state.nbytes(), "timing": s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke test (< 30 s)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--tokens", type=int, default=None, help="timed tokens per repeat (default 4; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="repeats (default 3; quick 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokens = args.tokens or (2 if args.quick else 4)
    repeats = args.repeats or (2 if args.quick else 3)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    info = machine_info()
    print(format_machine(info))
    if args.quick:
        edge_sweep = [(4096, m) for m in (4000, 20000)]
        n_sweep = [(n, 10000) for n in (1024, 4096)]
        ref_cfg = [(1024, 10000)]
        gpu_cfg = dict(n_layer=2, n_embd=64, n_head=4, mlp_internal_dim_multiplier=8, dropout=0.0)
        gpu_runs = [(None, 1), (4096, 1)]
    else:
        edge_sweep = [(32768, m) for m in (10000, 50000, 100000, 200000)]  # 50k .. 1M edges in all
        n_sweep = [(n, 50000) for n in (1024, 4096, 16384, 32768)]
        ref_cfg = [(4096, 50000), (32768, 200000)]
        gpu_cfg = dict(n_layer=4, n_embd=128, n_head=4, mlp_internal_dim_multiplier=8, dropout=0.0)
        gpu_runs = [(None, 1), (None, 8), (16 * 1024, 1), (128 * 1024, 1), (1024 * 1024, 1), (128 * 1024, 8)]
    rows = []
    print(f"\nA. BDH graph model (Table 1), L={L} ({4 * L} rounds/token), batch 1, float32")
    print(f"{'engine':>9} {'n':>7} {'m/graph':>8} {'edges':>9} {'rounds/s':>9} {'tokens/s':>9} "
          f"{'edge-upd/s':>11} {'graphs':>10} {'state':>10} {'cpu/wall':>8}")
    seen = set()
    for n, m in edge_sweep + n_sweep:
        if (n, m) in seen:
            continue
        seen.add((n, m))
        for fast in (True, False) if (n, m) in ref_cfg else (True,):
            r = bench_table1(n, m, tokens if fast else max(1, tokens // 2), repeats, fast)
            rows.append(r)
            print(f"{r['engine']:>9} {n:>7} {m:>8} {r['edges']:>9} {r['rounds_per_s']:>9.1f} {r['tokens_per_s']:>9.2f} "
                  f"{r['edge_updates_per_s']:>11.3g} {human_bytes(r['graph_bytes']):>10} "
                  f"{human_bytes(r['state_bytes']):>10} {r['timing']['cpu_per_wall']:>8.2f}")
    for n, m in ref_cfg:
        f = [r for r in rows if r["part"] == "table1" and (r["n"], r["m_per_graph"]) == (n, m)]
        if len(f) == 2:
            print(f"  fast / reference engine at n={n}, m={m}: {f[0]['tokens_per_s'] / f[1]['tokens_per_s']:.2f}x")
    torch.manual_seed(0)
    W = GPUWeights.from_model(BDH(BDHConfig(**gpu_cfg)).eval(), torch.float32)
    print(f"\nB. graph form of BDH-GPU (n={W.n}, d={W.d}, h={W.n_head}, L={W.n_layer}; random weights), float32")
    print(f"{'routing':>12} {'edges/graph':>12} {'param edges':>12} {'batch':>5} {'tokens/s':>9} {'rounds/s':>9} "
          f"{'state':>10}")
    for budget, B in gpu_runs:
        r = bench_gpu_form(budget, B, tokens, repeats, W)
        rows.append(r)
        print(f"{r['routing']:>12} {'-' if budget is None else budget:>12} {r['parameter_edges']:>12} {B:>5} "
              f"{r['tokens_per_s']:>9.2f} {r['rounds_per_s']:>9.1f} {human_bytes(r['state_bytes']):>10}")
    info["peak_rss_bytes"] = peak_rss_bytes()
    print(f"\npeak RSS {human_bytes(info['peak_rss_bytes'])}")
    write_json(out, {"machine": info, "threads": args.threads, "tokens": tokens, "repeats": repeats, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
