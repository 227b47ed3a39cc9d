"""Decode throughput vs context: BDH recurrent / quadratic recompute vs GPT KV cache / full recompute.

    python -m benchmarks.decode_compare --threads 1         # full: contexts 64 .. 8192, the 0.8M ladder rung
    python -m benchmarks.decode_compare --quick             # smoke test: contexts 64, 256 (< 1 min)
    python -m benchmarks.decode_compare --rung 3.2M --max-recompute-ctx 1024
    python -m benchmarks.decode_compare --device cuda --dtype bf16 --compile   # on a GPU (skips without one)

Models: a parameter-matched pair of the CPU ladder (`bdh.baselines.ladders.CPU_LADDER`, default rung 0.8M:
BDH d=64 L=2 h=4 n=4096 vs GPT L=4 d=128 h=4, ALiBi; counts within 5%, printed), random weights (speed does
not depend on training), batch 1, eval mode, torch.inference_mode.

For every context length `ctx`, the same random prompt is prefilled (untimed) and K continuation tokens,
fixed in advance, are decoded by four methods:

(a) BDH recurrent: `bdh.step(tok, state, inplace=True)` from a clone of the prefilled (chunked-form) state;
(b) BDH quadratic recompute (the reference `generate`): `bdh(prefix, form="parallel")` for every new token;
(c) GPT KV cache: `gpt.step(tok, cache, inplace=True)` from a copy of the prefilled cache with capacity for the
    K new tokens reserved up front (steady-state decode: the cache's geometric growth, an O(ctx) copy every
    doubling, is amortised away in a long generation and is kept out of the timed loop);
(d) GPT full recompute: `gpt(prefix)` for every new token.

(a) and (c) repeat round-robin (alternating, medians of the same run), (b) and (d) run a few tokens at the
contexts up to --max-recompute-ctx (their cost grows as ctx^2 per token). The first decoded token's logits of
(a) vs (b) and of (c) vs (d) must agree (max |delta| saved). Memory: bytes of BDH's state (constant,
L*h*N*d*4) vs GPT's KV cache (2*L*ctx*d*4), both from `state.nbytes()`. FLOPs per decoded token from the
models' `flops_per_token` (BDH: 2*(5nd*L + dV); GPT: 2*(L(4d^2 + 2dH) + dV) + 4*L*d*(ctx+1)).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


import torch

from .common import format_machine, human_bytes, machine_info, peak_rss_bytes, summarize, write_json

from bdh import BDH
from bdh.baselines.gpt import GPT, GPTState
from bdh.baselines.ladders import CPU_LADDER

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "decode_compare.json"
QUICK_OUT = HERE / "results" / "decode_compare_quick.json"
FULL_CONTEXTS = (64, 256, 1024, 2048, 4096, 8192)
QUICK_CONTEXTS = (64, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recompute_plan(ctx: int, quick: bool) -> tuple[int, int]:
    """(tokens per repeat, repeats) of the recompute decoders at `ctx`."""
    if quick:
        return (2, 2)
    if ctx <= 256:
        return (4, 5)
    if ctx <= 1024:
        return (2, 3)
    return (1, 3)


def reserve(state: GPTState, extra: int) -> GPTState:
    """A copy of the cache with room for `extra` more slots (no reallocation while decoding them)."""
    S = state.length

    def grow(b: torch.Tensor) -> torch.Tensor:
        out = b.new_zeros(b.shape[0], b.shape[1], S + extra, b.shape[3])
        out[:, :, :S] = b[:, :, :S]
        return out

    return GPTState([grow(b) for b in state.k_buf], [grow(b) for b in state.v_buf], S, state.pos.clone())


class Incremental:
    """K steps of `model.step(tok, state, inplace=True)` from a fresh copy of the prefilled state."""

    def __init__(self, model, prompt, ctx, steps, device):
        self.model, self.steps, self.device = model, steps, device
        _, self.state0 = model.prefill(prompt[:, :ctx])  # untimed (BDH: "auto" = chunked above C tokens)
        self.toks = [prompt[:, ctx + i].contiguous() for i in range(steps)]
        self.times: list[float] = []
        self.is_gpt = isinstance(self.state0, GPTState)

    def fresh(self):
        return reserve(self.state0, self.steps) if self.is_gpt else self.state0.clone()

    def first_logits(self) -> torch.Tensor:
        return self.model.step(self.toks[0], self.fresh(), inplace=True)[0][0].float().clone()

    def sample(self) -> None:
        s = self.fresh()
        sync(self.device)
        t0 = time.perf_counter()
        for t in self.toks:
            _, s = self.model.step(t, s, inplace=True)
        sync(self.device)
        self.times.append(time.perf_counter() - t0)

    def result(self) -> dict:
        t = summarize(self.times)
        return {"status": "ok", "tok_s": self.steps / t["median_s"], "tok_s_best": self.steps / t["min_s"],
                "ms_per_token": 1e3 * t["median_s"] / self.steps, "tokens_per_repeat": self.steps, "timing": t,
                "state_bytes": self.state0.nbytes()}


def time_recompute(model, prompt, ctx, tokens, repeats, device, is_bdh) -> tuple[dict, torch.Tensor]:
    first = {}
    kw = {"form": "parallel"} if is_bdh else {}

    def run():
        for i in range(tokens):
            logits, _ = model(prompt[:, : ctx + i + 1], **kw)
            if i == 0:
                first["logits"] = logits[0, -1].float().clone()
            del logits
        sync(device)

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    t = summarize(times)
    return {"status": "ok", "tok_s": tokens / t["median_s"], "tok_s_best": tokens / t["min_s"],
            "ms_per_token": 1e3 * t["median_s"] / tokens, "tokens_per_repeat": tokens, "timing": t}, first["logits"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="contexts 64 and 256, few tokens: a smoke test")
    p.add_argument("--rung", default="0.8M", help="CPU ladder rung (default 0.8M): " + ", ".join(r.name for r in CPU_LADDER))
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="default 64 256 1024 2048 4096 8192")
    p.add_argument("--steps", type=int, default=None, help="timed incremental steps per repeat (default 32; quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="incremental repeats per context (default 9; quick 3)")
    p.add_argument("--max-recompute-ctx", type=int, default=2048, help="skip (b) and (d) above this context (default 2048)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model weights dtype (default fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the step functions (compile time untimed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    a.contexts = sorted(set(a.contexts or (QUICK_CONTEXTS if a.quick else FULL_CONTEXTS)))
    a.steps = a.steps or (8 if a.quick else 32)
    a.repeats = a.repeats or (3 if a.quick else 9)
    a.out = a.out or (QUICK_OUT if a.quick else DEFAULT_OUT)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    info = machine_info()
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    rung = next((r for r in CPU_LADDER if r.name == a.rung), None)
    if rung is None:
        sys.exit(f"--rung {a.rung!r}: expected one of {[r.name for r in CPU_LADDER]}")
    base = {"benchmark": "decode_compare", "mode": "quick" if a.quick else "full", "machine": info,
            "settings": {"rung": a.rung, "contexts": a.contexts, "steps": a.steps, "repeats": a.repeats,
                         "max_recompute_ctx": a.max_recompute_ctx, "threads": a.threads, "device": a.device,
                         "dtype": a.dtype, "compile": a.compile, "seed": a.seed, "batch_size": 1}}
    if device.type == "cuda" and not torch.cuda.is_available():
        print("decode_compare: --device cuda but CUDA is not available: skipped")
        write_json(a.out, {**base, "status": "skipped", "reason": "CUDA not available"})
        return 0
    bcfg, gcfg = rung.configs()
    torch.manual_seed(a.seed)
    bdh = BDH(bcfg).to(device=device, dtype=dtype).eval()
    gpt = GPT(gcfg).to(device=device, dtype=dtype).eval()
    if a.compile:
        bdh.step = torch.compile(bdh.step)
        gpt.step = torch.compile(gpt.step)
    pb, pg = bdh.num_params(), gpt.num_params()
    print(f"decode compare benchmark ({base['mode']}, {a.device}, {a.dtype}{', compiled' if a.compile else ''})")
    print(f"machine: {format_machine(info)}")
    print(f"rung {rung.name}: BDH L={bcfg.n_layer} d={bcfg.D} h={bcfg.n_head} n={bcfg.n}: {pb:,} params | "
          f"GPT L={gcfg.n_layer} d={gcfg.n_embd} h={gcfg.n_head}: {pg:,} params ({(pg - pb) / pb:+.1%})")
    print(f"incremental: K={a.steps} steps x {a.repeats} repeats (alternating BDH/GPT); recompute up to ctx "
          f"{a.max_recompute_ctx}\n", flush=True)
    g = torch.Generator().manual_seed(a.seed + 1)
    prompt = torch.randint(0, bcfg.vocab_size, (1, max(a.contexts) + a.steps + 8), generator=g).to(device)

    rows = []
    with torch.inference_mode():
        for ctx in a.contexts:
            inc = {"bdh": Incremental(bdh, prompt, ctx, a.steps, device), "gpt": Incremental(gpt, prompt, ctx, a.steps, device)}
            for d in inc.values():  # warm-up (and compilation)
                for _ in range(1 if a.quick else 2):
                    d.sample()
                d.times.clear()
            for r in range(a.repeats):
                for k in (("bdh", "gpt") if r % 2 == 0 else ("gpt", "bdh")):
                    inc[k].sample()
            row = {"ctx": ctx, "bdh_recurrent": inc["bdh"].result(), "gpt_kv_cache": inc["gpt"].result(),
                   "bdh_flops_per_token": bdh.flops_per_token(), "gpt_flops_per_token": gpt.flops_per_token(ctx)}
            row["bdh_state_bytes"] = row["bdh_recurrent"]["state_bytes"]
            row["gpt_kv_cache_bytes"] = row["gpt_kv_cache"]["state_bytes"]
            row["bdh_over_gpt_kv_tok_s"] = row["bdh_recurrent"]["tok_s"] / row["gpt_kv_cache"]["tok_s"]
            # paired ratio: the median of per-repeat ratios (samples taken back to back)
            pairs = [tg / tb for tb, tg in zip(inc["bdh"].times, inc["gpt"].times)]
            row["bdh_over_gpt_kv_tok_s_paired"] = statistics.median(pairs)
            for key, model, is_bdh, rec in (("bdh_quadratic", bdh, True, inc["bdh"]), ("gpt_recompute", gpt, False, inc["gpt"])):
                if ctx > a.max_recompute_ctx:
                    row[key] = {"status": "skipped", "reason": f"ctx {ctx} > --max-recompute-ctx {a.max_recompute_ctx}"}
                    continue
                nt, nr = recompute_plan(ctx, a.quick)
                row[key], ql = time_recompute(model, prompt, ctx, nt, nr, device, is_bdh)
                row[key]["max_abs_diff_logits_vs_incremental"] = (rec.first_logits() - ql).abs().max().item()
                row[key]["max_abs_logit"] = ql.abs().max().item()
            rows.append(row)
            br, gk = row["bdh_recurrent"], row["gpt_kv_cache"]
            bq, gr = row["bdh_quadratic"], row["gpt_recompute"]
            print(f"ctx {ctx:>5}: BDH rec {br['tok_s']:8.1f} tok/s | GPT KV {gk['tok_s']:8.1f} tok/s | "
                  f"BDH/GPT {row['bdh_over_gpt_kv_tok_s']:.2f}x (paired {row['bdh_over_gpt_kv_tok_s_paired']:.2f}x)"
                  + (f" | BDH quad {bq['tok_s']:.2f}" if bq["status"] == "ok" else "")
                  + (f" | GPT recompute {gr['tok_s']:.2f}" if gr["status"] == "ok" else ""), flush=True)
            del inc

    hdr = (f"{'ctx':>5} | {'BDH rec':>8} {'BDH quad':>8} {'GPT KV':>8} {'GPT rec':>8} | {'BDH/GPT-KV':>10} | "
           f"{'BDH state':>9} {'GPT KV':>9} | {'BDH MFLOP':>9} {'GPT MFLOP':>9} | {'|dlogit| BDH':>12} {'GPT':>8}")
    print("\ntokens/s (medians); BDH/GPT-KV: ratio of medians; memory: state / KV cache bytes; MFLOP per decoded token")
    print(hdr + "\n" + "-" * len(hdr))

    def f(r, key):
        return f"{r[key]['tok_s']:>8.2f}" if r[key]["status"] == "ok" else f"{'-':>8}"

    def dl(r, key):
        return f"{r[key]['max_abs_diff_logits_vs_incremental']:.1e}" if r[key]["status"] == "ok" else "-"

    for r in rows:
        print(f"{r['ctx']:>5} | {f(r, 'bdh_recurrent')} {f(r, 'bdh_quadratic')} {f(r, 'gpt_kv_cache')} {f(r, 'gpt_recompute')} | "
              f"{r['bdh_over_gpt_kv_tok_s']:>9.2f}x | {human_bytes(r['bdh_state_bytes']):>9} {human_bytes(r['gpt_kv_cache_bytes']):>9} | "
              f"{r['bdh_flops_per_token'] / 1e6:>9.2f} {r['gpt_flops_per_token'] / 1e6:>9.2f} | {dl(r, 'bdh_quadratic'):>12} {dl(r, 'gpt_recompute'):>8}")
    at = next((r for r in rows if r["ctx"] == 4096), rows[-1])
    ratio = at["bdh_over_gpt_kv_tok_s"]
    crossover = next((r["ctx"] for r in rows if r["gpt_kv_cache_bytes"] >= r["bdh_state_bytes"]), None)
    targets = {"ctx": at["ctx"], "bdh_over_gpt_kv": ratio, "bdh_over_gpt_kv_paired": at["bdh_over_gpt_kv_tok_s_paired"],
               "target": 1.0, "met": ratio >= 1.0, "memory_crossover_ctx": crossover}
    print(f"\ntarget: BDH recurrent decode at ctx {at['ctx']} >= GPT KV-cache decode: {ratio:.2f}x "
          f"(paired {at['bdh_over_gpt_kv_tok_s_paired']:.2f}x) -> {'MET' if ratio >= 1 else 'NOT MET'}")
    print(f"GPT's KV cache outgrows BDH's state ({human_bytes(rows[0]['bdh_state_bytes'])}) from ctx "
          f"{crossover if crossover else '> ' + str(rows[-1]['ctx'])}")
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start {info['loadavg_1_5_15']}, at end {load_end}; peak RSS {human_bytes(peak_rss_bytes())}")
    out = {**base, "status": "ok",
           "bdh_config": {**bcfg.to_dict(), "n": bcfg.n, "params": pb},
           "gpt_config": {**gcfg.to_dict(), "params": pg},
           "results": rows, "targets": targets, "loadavg_at_end": load_end, "wall_s": time.perf_counter() - t_start}
    path = write_json(a.out, out)
    print(f"wrote {os.path.relpath(path)} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
