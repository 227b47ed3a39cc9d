"""Where a BDH training step spends its time: per-operator time, memory traffic and FLOPs.

    python -m benchmarks.train_profile                 # default config + CPU ladder rungs 0.8M and 3.2M, 1 thread
    python -m benchmarks.train_profile --quick         # smaller shapes, a smoke test (~20 s)
    python -m benchmarks.train_profile --configs default --steps 5

One training step is the trainer's own: `bdh.training.trainer.LossModule` (forward, cross-entropy; the default
config's carried TBPTT state), backward, gradient clipping and the AdamW step. Per aten operator (forward and
backward alike) it reports:

- time: wall time of each call, taken by a `TorchDispatchMode` around the operator (after autograd, so forward
  and backward operators alike, at the level where composite operators such as `relu` or `stack` are still one
  call), summed over `--steps` steps after two warm-up steps and reported per step and as a share of the step;
- bytes: in the same pass, the bytes the operator reads and writes: the sizes of its tensor inputs plus its
  outputs (each tensor counted once per call; a lower bound of its memory traffic, ignoring re-reads inside a
  kernel; 0 for views; an in-place operator's tensor counts as read and written);
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one step (matmuls; elementwise work counts 0 there);
- GB/s and GFLOP/s achieved per operator, so memory-bound work (high bytes, low FLOPs) stands out.

The process's allocator is tuned as `bdh train` tunes it (`common.apply_malloc`: `bdh.allocator.keep_freed_memory`;
`--malloc default` profiles glibc's own settings, under which every large activation is page-faulted in again
each step).

Writes benchmarks/results/train_profile.json and train_profile.md (a table per config, the top operators by
time, and the share of the step in matmul-class operators vs everything else).
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bdh.interface import token_flops

from .common import add_malloc_arg, apply_malloc, machine_info, train_step_fn, write_json

RESULTS = Path(__file__).resolve().parent / "results"
MATMUL_OPS = {"mm", "bmm", "addmm", "matmul", "linear", "baddbmm", "addbmm", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention_for_cpu_backward"}


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size() if x.layout == torch.strided else 0
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(y) for y in x)
    if isinstance(x, dict):
        return sum(_nbytes(y) for y in x.values())
    return 0


class OpMeter(TorchDispatchMode):
    """Per aten operator (overload packet name): wall seconds, bytes read (tensor inputs) and written (outputs),
    calls. One thread on the CPU: an operator has finished when its call returns."""

    def __init__(self):
        super().__init__()
        self.seconds = collections.Counter()
        self.bytes = collections.Counter()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        dt = time.perf_counter() - t0
        name = func.overloadpacket.__name__
        self.seconds[name] += dt
        rets = func._schema.returns
        alias = rets[0].alias_info if rets else None
        if alias is None or alias.is_write:  # views (view, transpose, expand, ...) move no data; in-place ops do
            self.bytes[name] += _nbytes(args) + _nbytes(kwargs) + _nbytes(out)
        self.calls[name] += 1
        return out


def configs(quick: bool) -> dict[str, dict]:
    """name -> {model (BDHConfig), B, T, carry}: the default run's step and two CPU-ladder rungs."""
    from bdh.baselines.ladders import CPU_LADDER
    from bdh.training.config import load_run_config

    run = load_run_config("default")
    default = run.model_config(256)
    B = run.train.batch_size // 2  # one of the default run's two processes
    out = {"default": {"model": default, "B": B, "T": run.data.block_size, "carry": run.data.batching == "tbptt"}}
    for rung in CPU_LADDER:
        if rung.name in ("0.8M", "3.2M"):
            b, _ = rung.configs(256)
            T = 64 if quick else 256
            out[f"ladder-{rung.name}"] = {"model": b, "B": (512 if quick else 4096) // T, "T": T, "carry": False}
    if quick:
        out["default"]["B"] = 4
    return out


def make_step(spec: dict, seed: int = 0):
    """A closure running one training step of `spec` (`common.train_step_fn`), and the model."""
    from bdh.interface import build_model

    torch.manual_seed(seed)
    model = build_model(copy.deepcopy(spec["model"]))
    return train_step_fn(model, spec["B"], spec["T"], spec["carry"], seed), model


def profile(name: str, spec: dict, steps: int) -> dict:
    step, model = make_step(spec)
    for _ in range(2):
        step()
    fc = FlopCounterMode(display=False)
    with fc:
        step()
    flops = collections.Counter()
    for op, n in fc.get_flop_counts().get("Global", {}).items():
        flops[getattr(op, "__name__", str(op)).split(".")[0]] += n
    plain = []
    for _ in range(steps):  # the step without instrumentation, for the overhead of the meter
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
    meter = OpMeter()
    t0 = time.perf_counter()
    with meter:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t0) / steps
    total = sum(meter.seconds.values()) / steps
    rows = []
    for op in sorted(meter.seconds, key=lambda o: -meter.seconds[o]):
        t = meter.seconds[op] / steps
        b = meter.bytes[op] / steps
        f = flops.get(op, 0)
        rows.append({"op": op, "s_per_step": t, "share": t / total if total else 0.0, "calls": meter.calls[op] // steps,
                     "bytes": b, "flops": f, "GB_s": b / t / 1e9 if t > 0 else None,
                     "GFLOP_s": f / t / 1e9 if t > 0 and f else None})
    mm = sum(r["s_per_step"] for r in rows if r["op"] in MATMUL_OPS)
    cfg = spec["model"]
    return {"config": name, "model": cfg.to_dict(), "params": model.num_params(), "B": spec["B"], "T": spec["T"],
            "carry": spec["carry"], "step_s": statistics.median(plain), "metered_step_s": wall, "ops_s": total,
            "matmul_share": mm / total if total else 0, "bytes_per_step": sum(r["bytes"] for r in rows),
            "flops_per_step": sum(flops.values()),
            # the model interface's count of the same step (from an empty state; a carried state adds its read)
            "analytic_flops_per_step": token_flops(cfg, spec["T"]).executed_training * spec["B"] * spec["T"],
            "tokens_per_s": spec["B"] * spec["T"] / statistics.median(plain),
            "ops": rows}


def table(res: dict, top: int = 20) -> str:
    lines = [f"### {res['config']} ({res['params']:,} params, B={res['B']} T={res['T']}"
             + (", carried state" if res["carry"] else "") + ")", "",
             f"step {res['step_s'] * 1e3:.1f} ms median ({res['tokens_per_s']:,.0f} tokens/s; "
             f"{res['metered_step_s'] * 1e3:.1f} ms metered, {res['ops_s'] / res['metered_step_s']:.0%} of it in operators); "
             f"matmul-class operators {res['matmul_share']:.0%} of operator time; "
             f"{res['bytes_per_step'] / 1e9:.2f} GB moved, {res['flops_per_step'] / 1e9:.2f} GFLOP per step counted "
             f"({res['analytic_flops_per_step'] / 1e9:.2f} by the model's FLOP model"
             + (", from an empty state)" if res["carry"] else ")"), "",
             "| op | ms/step | share | calls | MB | MFLOP | GB/s | GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for r in res["ops"][:top]:
        gbs = f"{r['GB_s']:.1f}" if r["GB_s"] else "–"
        gfs = f"{r['GFLOP_s']:.1f}" if r["GFLOP_s"] else "–"
        lines.append(f"| {r['op']} | {r['s_per_step'] * 1e3:.2f} | {r['share']:.1%} | {r['calls']} | "
                     f"{r['bytes'] / 1e6:.1f} | {r['flops'] / 1e6:.1f} | {gbs} | {gfs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke test")
    p.add_argument("--steps", type=int, default=3, help="profiled steps per config (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--configs", default=None, help="comma-separated: default, ladder-0.8M, ladder-3.2M")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_profile[_quick].json)")
    add_malloc_arg(p)
    args = p.parse_args(argv)
    malloc = apply_malloc(args.malloc)
    if args.steps < 1 or args.threads < 1:
        p.error("--steps and --threads: expected positive integers")
    torch.set_num_threads(args.threads)
    specs = configs(args.quick)
    if args.configs:
        want = [c.strip() for c in args.configs.split(",")]
        unknown = [c for c in want if c not in specs]
        if unknown:
            p.error(f"--configs {args.configs!r}: unknown {unknown}; expected some of {', '.join(specs)}")
        specs = {k: specs[k] for k in want}
    results = []
    for name, spec in specs.items():
        res = profile(name, spec, args.steps)
        results.append(res)
        print(table(res, top=12), "\n", flush=True)
    out = Path(args.out) if args.out else RESULTS / ("train_profile_quick.json" if args.quick else "train_profile.json")
    write_json(out, {"machine": machine_info(), "threads": args.threads, "steps": args.steps, **malloc,
                     "results": results})
    md = ["# BDH training step profile", "", f"`python -m benchmarks.train_profile{' --quick' if args.quick else ''}`"
          f" ({args.threads} thread(s), {args.steps} profiled steps, malloc {args.malloc})", ""] + [table(r) + "\n" for r in results]
    out.with_suffix(".md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
