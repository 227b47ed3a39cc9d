"""Decode throughput: BDH's recurrent decode (O(1) per token) vs the reference's quadratic recompute.

    python -m benchmarks.decode                     # full run: contexts 64 .. 8192 (a few minutes on 2 cores)
    python -m benchmarks.decode --quick             # smoke test: contexts 64, 256, a few tokens (< 30 s)
    python -m benchmarks.decode --out benchmarks/results/decode.json --max-quadratic-ctx 4096

For every context length `ctx` the same random prompt feeds both methods, with the same weights:

(a) recurrent: `model.prefill(prompt[:, :ctx], form="chunked")` (untimed), then K consecutive
    `model.step(token, state)` calls are timed (the tokens are the prompt's continuation, fixed in advance);
(b) quadratic (the reference `generate()`): every new token re-runs the whole prefix with the parallel form,
    `model(prompt[:, :ctx + i + 1], form="parallel")`, and takes the last logits.

Both decode the same tokens, so the first decoded token's logits of (a) and (b) must agree: the max |delta|
is printed and saved for every context where both ran. Timings are medians over repeats, measured
under torch.inference_mode in fp32, batch 1, eval mode. For a shared, noisy machine: the recurrent repeats
run round-robin over the contexts (its tok/s and flatness come from these), and every quadratic repeat is
preceded by one recurrent repeat at the same context; the ratio is the median of those paired recurrent
samples over the quadratic median (the ratio against the round-robin median is saved too). cpu/wall is the
process's CPU time over wall time: about the thread count on idle cores, lower when others take them. The JSON also records peak RSS per phase, the state
size vs the parallel form's score memory, machine info and the flatness of (a)'s tokens/s over contexts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


import torch

from .common import (
    current_rss_bytes,
    format_machine,
    human_bytes,
    machine_info,
    median_time,
    peak_rss_bytes,
    reset_peak_rss,
    summarize,
    time_once,
    write_json,
)

from bdh import BDH, BDHConfig

FULL_CONTEXTS = (64, 256, 1024, 4096, 8192)
QUICK_CONTEXTS = (64, 256)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode.json"
QUICK_OUT = Path(__file__).resolve().parent / "results" / "decode_quick.json"

# Target configuration of the issue: d=128, h=4, N=1024 per head (multiplier N*h/d = 32), L=4, bytes.
TARGET = dict(n_layer=4, n_embd=128, n_head=4, mlp_internal_dim_multiplier=32, vocab_size=256, dropout=0.0)


def quadratic_plan(ctx: int, quick: bool) -> tuple[int, int, int]:
    """(tokens per repeat, repeats, warm-up repeats) of the quadratic decode at `ctx`."""
    if quick:
        return (2, 2, 1)
    if ctx <= 256:
        return (8, 5, 1)
    if ctx <= 1024:
        return (3, 5, 1)
    if ctx <= 4096:
        return (2, 2, 0)
    return (1, 1, 0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="contexts 64 and 256, a few tokens: a smoke test (< 30 s)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT.name}, quick: {QUICK_OUT.name})")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="context lengths (default 64 256 1024 4096 8192)")
    p.add_argument("--steps", type=int, default=None, help="timed recurrent steps per repeat K (default 64; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="recurrent repeats per context (default 11; quick 3)")
    p.add_argument("--quad-tokens", type=int, default=None, help="quadratic tokens per repeat at every context (default: by context)")
    p.add_argument("--quad-repeats", type=int, default=None, help="quadratic repeats at every context (default: by context)")
    p.add_argument("--max-quadratic-ctx", type=int, default=None, help="skip the quadratic decode above this context")
    p.add_argument("--verify-ctx", type=int, default=None, help="context whose logit agreement is headlined (default 1024; quick 256)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=None, metavar="STEPS",
                   help="torch.profiler over STEPS recurrent steps at the verify context (default 32; quick 0: off)")
    p.add_argument("--no-overhead-probe", action="store_true", help="skip the fixed-cost probe (tiny model, same ops)")
    a = p.parse_args(argv)
    a.contexts = sorted(set(a.contexts or (QUICK_CONTEXTS if a.quick else FULL_CONTEXTS)))
    a.steps = a.steps or (16 if a.quick else 64)
    a.repeats = a.repeats or (3 if a.quick else 11)
    a.verify_ctx = a.verify_ctx or (256 if a.quick else 1024)
    a.profile = (0 if a.quick else 32) if a.profile is None else a.profile
    a.out = a.out or (QUICK_OUT if a.quick else DEFAULT_OUT)
    if min(a.contexts) < 1 or a.steps < 1 or a.repeats < 1:
        p.error("contexts, --steps and --repeats must be positive")
    return a


# ----------------------------------------------------------------------------- the two decoders
class Recurrent:
    """The recurrent decoder at one context: prefilled state (untimed) and K fixed continuation tokens."""

    def __init__(self, model: BDH, prompt: torch.Tensor, ctx: int, steps: int):
        self.model, self.ctx, self.steps = model, ctx, steps
        _, self.state0 = model.prefill(prompt[:, :ctx], form="chunked")  # untimed
        self.toks = [prompt[:, ctx + i].contiguous() for i in range(steps)]  # (1,) each
        self.times: list[float] = []  # round-robin samples (seconds per K steps)
        self.cpu: list[float] = []
        self.paired: list[float] = []  # samples taken right before each quadratic repeat
        self.peak_rss = 0
        self.rss_before = current_rss_bytes()

    def run(self):
        s = self.state0
        for t in self.toks:
            _, s = self.model.step(t, s)
        return s

    def first_logits(self) -> torch.Tensor:
        return self.model.step(self.toks[0], self.state0)[0][0].clone()

    def sample(self, into: list[float], cpu: list[float] | None = None) -> None:
        reset_peak_rss()
        wall, c = time_once(self.run)
        self.peak_rss = max(self.peak_rss, peak_rss_bytes())
        into.append(wall)
        if cpu is not None:
            cpu.append(c)

    def result(self) -> dict:
        t = summarize(self.times, self.cpu)
        return {
            "status": "ok",
            "tokens_per_repeat": self.steps,
            "tok_s": self.steps / t["median_s"],
            "ms_per_token": 1e3 * t["median_s"] / self.steps,
            "tok_s_best": self.steps / t["min_s"],
            "timing": t,
            "paired_tok_s": self.steps / statistics.median(self.paired) if self.paired else None,
            "paired_times_s": self.paired,
            "rss_before_bytes": self.rss_before,
            "peak_rss_bytes": self.peak_rss,
            "state_bytes": self.state0.nbytes(),
        }


def time_quadratic(
    model: BDH, prompt: torch.Tensor, ctx: int, tokens: int, repeats: int, warmup: int, rec: Recurrent
) -> tuple[dict, torch.Tensor]:
    """The reference decode: re-run the whole prefix (parallel form) for each of `tokens` new tokens.

    Each timed repeat is preceded by one recurrent repeat at the same context (`rec.paired`), so the ratio
    compares samples taken under the same machine load."""
    first = {}

    def run():
        for i in range(tokens):
            logits, _ = model(prompt[:, : ctx + i + 1], form="parallel")
            if i == 0:
                first["logits"] = logits[0, -1].clone()
            del logits

    for _ in range(warmup):
        run()
    rss_before = current_rss_bytes()
    times, cpu, peak = [], [], 0
    for _ in range(repeats):
        rec.sample(rec.paired)
        reset_peak_rss()
        wall, c = time_once(run)
        peak = max(peak, peak_rss_bytes())
        times.append(wall)
        cpu.append(c)
    t = summarize(times, cpu)
    c = model.config
    T = ctx + tokens  # the longest prefix this measurement re-ran
    return {
        "status": "ok",
        "tokens_per_repeat": tokens,
        "warmup_repeats": warmup,
        "tok_s": tokens / t["median_s"],
        "ms_per_token": 1e3 * t["median_s"] / tokens,
        "tok_s_best": tokens / t["min_s"],
        "timing": t,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        # The parallel form materialises (B, nh, T, T) fp32 scores per layer (two of them while
        # `(QR @ K^T) * mask` runs) plus the (T, T) mask; layers run one after another.
        "scores_bytes_per_layer": 1 * c.n_head * T * T * 4,
        "mask_bytes": T * T * 4,
    }, first["logits"]


# ----------------------------------------------------------------------------- extra probes
def overhead_probe(steps: int, repeats: int, seed: int) -> dict:
    """Fixed per-step cost: the same op sequence on a tiny model (d=8, N=2 per head, L=4) where the kernels
    do almost no arithmetic, so its step time is Python + dispatch + allocation overhead."""
    torch.manual_seed(seed)
    tiny = BDH(BDHConfig(n_layer=4, n_embd=8, n_head=4, mlp_internal_dim_multiplier=1, vocab_size=256, dropout=0.0)).eval()
    state0 = tiny.init_state(1)
    toks = [torch.randint(0, 256, (1,)) for _ in range(steps)]

    def run():
        s = state0
        for t in toks:
            _, s = tiny.step(t, s)

    t = median_time(run, repeats=repeats, warmup=1)
    return {"config": tiny.config.to_dict(), "ms_per_token": 1e3 * t["median_s"] / steps, "timing": t}


def profile_steps(model: BDH, prompt: torch.Tensor, ctx: int, steps: int, top: int = 15) -> dict:
    from torch.profiler import ProfilerActivity, profile

    _, state0 = model.prefill(prompt[:, :ctx], form="chunked")
    toks = [prompt[:, ctx + i].contiguous() for i in range(steps)]
    s = state0
    for t in toks[:4]:  # warm
        _, s = model.step(t, s)
    s = state0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for t in toks:
            _, s = model.step(t, s)
        wall = time.perf_counter() - t0
    ka = prof.key_averages()
    rows = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self_us = sum(e.self_cpu_time_total for e in ka)
    table = [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_us_per_step": e.self_cpu_time_total / steps,
            "pct_of_op_time": 100.0 * e.self_cpu_time_total / total_self_us if total_self_us else None,
        }
        for e in rows[:top]
    ]
    return {
        "ctx": ctx,
        "steps": steps,
        "wall_ms_per_step_under_profiler": 1e3 * wall / steps,
        "op_self_ms_per_step": total_self_us / steps / 1e3,
        "ops_per_step": sum(e.count for e in ka) / steps,
        "top_ops": table,
    }


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    config = BDHConfig(**TARGET)
    model = BDH(config).eval()
    info = machine_info()
    max_ctx = max(a.contexts)
    qplan_longest = max(quadratic_plan(c, a.quick)[0] for c in a.contexts) if a.quad_tokens is None else a.quad_tokens
    g = torch.Generator().manual_seed(a.seed + 1)
    prompt = torch.randint(0, config.vocab_size, (1, max_ctx + max(a.steps, qplan_longest)), generator=g)

    print(f"BDH decode benchmark ({'quick' if a.quick else 'full'})")
    print(f"machine: {format_machine(info)}")
    print(
        f"config:  L={config.n_layer} d={config.D} h={config.n_head} N={config.N} (n={config.n}) V={config.vocab_size} "
        f"params={model.num_params():,} fp32 batch 1 eval, {model.flops_per_token() / 1e6:.1f} MFLOP/token (recurrent)"
    )
    print(f"recurrent: K={a.steps} steps x {a.repeats} repeats (median); quadratic: model(prefix, form='parallel') per token")
    print(flush=True)

    results = []
    with torch.inference_mode():
        # (a) recurrent: prefill every context (untimed), one warm-up repeat each, then `repeats` round-robin
        # passes over the contexts (starting at a different context each pass), so that slow phases of a noisy
        # machine spread over all contexts instead of landing on one.
        recs = {ctx: Recurrent(model, prompt, ctx, a.steps) for ctx in a.contexts}
        for r in recs.values():
            r.run()
        order = list(a.contexts)
        for i in range(a.repeats):
            for ctx in order[i % len(order):] + order[: i % len(order)]:
                recs[ctx].sample(recs[ctx].times, recs[ctx].cpu)
        for ctx in a.contexts:
            rec = recs[ctx].result()
            print(f"  ctx {ctx:>5}: recurrent {rec['tok_s']:9.1f} tok/s ({rec['ms_per_token']:.3f} ms/token, "
                  f"cpu/wall {rec['timing']['cpu_per_wall']:.2f})", flush=True)

        # (b) quadratic, each repeat paired with one recurrent repeat at the same context.
        for ctx in a.contexts:
            row = {"ctx": ctx}
            if a.max_quadratic_ctx is not None and ctx > a.max_quadratic_ctx:
                quad = {"status": "skipped", "reason": f"ctx {ctx} > --max-quadratic-ctx {a.max_quadratic_ctx}"}
                print(f"  ctx {ctx:>5}: quadratic skipped", flush=True)
            else:
                nt, nr, nw = quadratic_plan(ctx, a.quick)
                nt = a.quad_tokens or nt
                nr = a.quad_repeats or nr
                quad, ql = time_quadratic(model, prompt, ctx, nt, nr, nw, recs[ctx])
                print(
                    f"  ctx {ctx:>5}: quadratic {quad['tok_s']:9.3f} tok/s ({quad['ms_per_token']:.1f} ms/token, "
                    f"{nt} tokens x {nr} repeats, cpu/wall {quad['timing']['cpu_per_wall']:.2f})",
                    flush=True,
                )
            rec = recs[ctx].result()
            if quad["status"] == "ok":
                rl = recs[ctx].first_logits()
                row["max_abs_diff_logits"] = (rl - ql).abs().max().item()
                row["max_abs_logit"] = ql.abs().max().item()
                row["same_argmax"] = bool(rl.argmax() == ql.argmax())
                row["ratio_recurrent_over_quadratic"] = rec["paired_tok_s"] / quad["tok_s"]
                row["ratio_roundrobin_recurrent_over_quadratic"] = rec["tok_s"] / quad["tok_s"]
            else:
                row["max_abs_diff_logits"] = None
                row["ratio_recurrent_over_quadratic"] = "skipped"
            row["recurrent"], row["quadratic"] = rec, quad
            results.append(row)

        overhead = None
        if not a.no_overhead_probe:
            overhead = overhead_probe(a.steps, a.repeats, a.seed)
        prof = None
        if a.profile > 0:
            pctx = a.verify_ctx if a.verify_ctx in a.contexts else a.contexts[0]
            prof = profile_steps(model, prompt, pctx, a.profile)

    # ------------------------------------------------------------------ summary
    def flatness(values):
        v = list(values)
        med = statistics.median(v)
        return 100.0 * (max(v) / min(v) - 1.0), 100.0 * max(abs(x / med - 1.0) for x in v)

    rec_tps = {r["ctx"]: r["recurrent"]["tok_s"] for r in results}
    rec_best = {r["ctx"]: r["recurrent"]["tok_s_best"] for r in results}
    flat, dev = flatness(rec_tps.values())
    flat_best, dev_best = flatness(rec_best.values())
    by_ctx = {r["ctx"]: r for r in results}
    for r in results:
        if r["quadratic"]["status"] == "ok":
            r["ratio_best_over_best"] = r["recurrent"]["tok_s_best"] / r["quadratic"]["tok_s_best"]
    vrow = by_ctx.get(a.verify_ctx)
    if vrow is None or vrow["max_abs_diff_logits"] is None:
        vrow = next((r for r in results if r["max_abs_diff_logits"] is not None), None)
    r1024 = by_ctx.get(1024, {}).get("ratio_recurrent_over_quadratic")
    r1024_best = by_ctx.get(1024, {}).get("ratio_best_over_best")

    hdr = (
        f"{'ctx':>5} | {'rec tok/s':>9} {'(best)':>8} {'ms/tok':>7} | {'quad tok/s':>10} {'(best)':>9} {'ms/tok':>8} | "
        f"{'ratio':>7} {'(best)':>7} | {'max|dlogit|':>11} | {'state':>7} | {'scores/layer':>12} | {'RSS rec':>9} | {'RSS quad':>9}"
    )
    print()
    print("recurrent: median (best) of its round-robin repeats; quadratic: median (best); ratio: paired recurrent "
          "median / quadratic median (best / best); RSS: peak resident set size during that phase")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        rec, q = r["recurrent"], r["quadratic"]
        ok = q["status"] == "ok"
        print(
            f"{r['ctx']:>5} | {rec['tok_s']:>9.1f} {'(' + format(rec['tok_s_best'], '.1f') + ')':>8} {rec['ms_per_token']:>7.3f} | "
            + (f"{q['tok_s']:>10.3f} {'(' + format(q['tok_s_best'], '.3f') + ')':>9} {q['ms_per_token']:>8.1f} | "
               f"{r['ratio_recurrent_over_quadratic']:>6.0f}x {'(' + format(r['ratio_best_over_best'], '.0f') + 'x)':>7} | "
               f"{r['max_abs_diff_logits']:>11.2e} | " if ok else f"{'skipped':>10} {'':>9} {'-':>8} | {'-':>7} {'':>7} | {'-':>11} | ")
            + f"{human_bytes(rec['state_bytes']):>7} | "
            + (f"{human_bytes(q['scores_bytes_per_layer']):>12} | " if ok else f"{human_bytes(config.n_head * (r['ctx'] + 1) ** 2 * 4):>12} | ")
            + f"{human_bytes(rec['peak_rss_bytes']):>9} | "
            + (f"{human_bytes(q['peak_rss_bytes']):>9}" if ok else f"{'-':>9}")
        )
    print()
    print(f"recurrent tok/s over contexts {a.contexts[0]}..{a.contexts[-1]}: max/min - 1 = {flat:.1f}% on medians "
          f"({flat_best:.1f}% on best); max deviation from the median context {dev:.1f}% ({dev_best:.1f}% on best)")
    if vrow is not None:
        print(f"agreement at ctx {vrow['ctx']}: max |logit(recurrent) - logit(quadratic)| = {vrow['max_abs_diff_logits']:.3e} "
              f"(max |logit| {vrow['max_abs_logit']:.3f}, same argmax: {vrow['same_argmax']})")
    if overhead is not None:
        ref = by_ctx.get(a.verify_ctx, results[0])["recurrent"]["ms_per_token"]
        print(f"fixed cost per step (same ops on a d=8, N=2 model): {overhead['ms_per_token']:.3f} ms "
              f"= {100 * overhead['ms_per_token'] / ref:.0f}% of the target model's {ref:.3f} ms/step")
    if prof is not None:
        print(f"\ntorch.profiler, {prof['steps']} steps at ctx {prof['ctx']}: {prof['ops_per_step']:.0f} ops/step, "
              f"op self time {prof['op_self_ms_per_step']:.3f} ms/step, wall {prof['wall_ms_per_step_under_profiler']:.3f} ms/step "
              "(under the profiler)")
        print(f"  {'op':<28} {'calls/step':>10} {'self us/step':>12} {'% op time':>9}")
        for e in prof["top_ops"][:12]:
            print(f"  {e['op']:<28} {e['calls_per_step']:>10.1f} {e['self_us_per_step']:>12.1f} {e['pct_of_op_time']:>8.1f}%")
    targets = {
        "ratio_at_1024_target": 200.0,
        "ratio_at_1024": r1024,
        "ratio_at_1024_best_over_best": r1024_best,
        "ratio_at_1024_met": (r1024 >= 200.0) if isinstance(r1024, float) else None,
        "flatness_target_pct": 15.0,
        "flatness_pct": flat,
        "flatness_pct_best": flat_best,
        "flatness_met": flat <= 15.0 if len(rec_tps) > 1 else None,
    }
    print(
        "\ntargets: ratio at 1024 >= 200x: "
        + (f"{r1024:.0f}x (best/best {r1024_best:.0f}x) -> {'MET' if targets['ratio_at_1024_met'] else 'NOT MET'}"
           if isinstance(r1024, float) else "n/a")
        + f"; recurrent flat within 15%: {flat:.1f}% -> {'MET' if targets['flatness_met'] else 'NOT MET'}"
    )

    load_end = list(os.getloadavg())
    ncpu = info["cpu_affinity"] or info["cpu_count"] or 1
    peak_load = max(load_end[0], (info["loadavg_1_5_15"] or [0.0])[0])
    contended = peak_load > ncpu + 0.5  # this process alone accounts for at most `threads` <= cores
    if contended:
        print(f"\nWARNING: 1-minute load average reached {peak_load:.1f} on {ncpu} cores: other processes competed for the "
              "CPU during this run, so medians (and the flatness) are unreliable; the (best) columns are the least "
              "disturbed samples. With more torch threads than free cores, each parallel op can wait a scheduler slice: "
              "try --threads 1.")

    out = {
        "benchmark": "decode",
        "mode": "quick" if a.quick else "full",
        "machine": info,
        "config": {**config.to_dict(), "N": config.N, "n": config.n, "params": model.num_params(),
                   "flops_per_token_recurrent": model.flops_per_token(), "dtype": "float32", "batch_size": 1},
        "settings": {
            "contexts": a.contexts, "recurrent_steps": a.steps, "recurrent_repeats": a.repeats, "recurrent_warmup": 1,
            "quad_tokens": a.quad_tokens, "quad_repeats": a.quad_repeats, "max_quadratic_ctx": a.max_quadratic_ctx,
            "seed": a.seed, "threads": torch.get_num_threads(), "inference_mode": True,
            "prefill_form": "chunked", "quadratic_form": "parallel",
            "tokens": "random prompt; decoded tokens are its continuation, fixed in advance, identical for both methods",
        },
        "results": results,
        "recurrent_tok_s_by_ctx": rec_tps,
        "recurrent_tok_s_best_by_ctx": rec_best,
        "recurrent_flatness_pct": flat,
        "recurrent_flatness_pct_best": flat_best,
        "recurrent_max_dev_from_median_pct": dev,
        "recurrent_max_dev_from_median_pct_best": dev_best,
        "verification": None if vrow is None else {
            "ctx": vrow["ctx"], "max_abs_diff_logits": vrow["max_abs_diff_logits"],
            "max_abs_logit": vrow["max_abs_logit"], "same_argmax": vrow["same_argmax"],
        },
        "targets": targets,
        "overhead_probe": overhead,
        "profile": prof,
        "loadavg_at_end": load_end,
        "contended": contended,
        "wall_s": time.perf_counter() - t_start,
    }
    path = write_json(a.out, out)
    print(f"\nwrote {os.path.relpath(path)} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
