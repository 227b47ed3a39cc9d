"""Training throughput: BDH parallel vs chunked form (same weights, same loss) vs GPT at equal parameters.

    python -m benchmarks.train_speed --threads 1            # full: T = 256, 1024, 2048 at 4096 tokens/step
    python -m benchmarks.train_speed --quick                # smoke test: T = 64, 256 at 512 tokens/step (~0.5-1 min)
    python -m benchmarks.train_speed --device cuda --dtype bf16 --compile   # on a GPU (skips cleanly without one)
    python -m benchmarks.train_speed --threads 1 --ladder 0.8M,1.6M,3.2M --no-memory   # BDH vs GPT per CPU-ladder rung

`--ladder`: instead of the default config, the parameter-matched CPU-ladder rungs (`bdh.baselines.ladders`) at
the shape `bdh compare --preset cpu` trains (T = 128, 16 sequences per step; `--seq-lens` / `--tokens-per-step`
override), BDH in its "auto" form (parallel at T <= chunk_size) and the rung's GPT, repeats interleaved. Per
rung: tokens/s of each, the measured BDH/GPT time ratio, the analytic ratio of executed training FLOPs per
token (formulas below), and the target: measured within 1.5x of analytic.

`--malloc tuned` (the default) tunes glibc malloc as `bdh train` does (`bdh.allocator.keep_freed_memory`: freed
activations are reused instead of page-faulted in again every step; `common.apply_malloc`); `--malloc default`
measures without it, and is how `benchmarks/allocators.py` measures jemalloc and tcmalloc (LD_PRELOAD).

For every sequence length T the batch is B = tokens_per_step / T, so every configuration trains on the same
number of tokens per step. Three configurations run at every T:

- `bdh-parallel`: the default BDH config (src/bdh/configs/default.toml: L=2, d=64, h=8, n=1024, ALiBi damping),
  `model(x, y, form="parallel")` (the quadratic reference form, T x T scores);
- `bdh-chunked`: the same initial weights (a deep copy), `form="chunked"` with chunk C = config.chunk_size (128);
- `gpt`: the GPT-2 baseline (src/bdh/baselines/gpt.py, ALiBi) whose parameter count is closest to BDH's
  (searched over n_layer, n_embd at 4 heads and a 4d MLP; within 5%, both counts printed and saved).

One training step = forward + cross-entropy + backward + AdamW step (+ zero_grad); tokens/s = B*T / the median
step time. Repeats run round-robin over the three configurations (a shared, noisy machine: the ratios come from
interleaved samples of the same run). Before timing, the parallel and chunked losses (and gradients) of the
same weights on the same batch are compared: they must agree to 1e-4 (fp32; 2e-2 in bf16).

Peak memory: every configuration runs again in a fresh subprocess (this script with the hidden --one flag) for
two training steps, which reports its peak RSS (VmHWM; lifetime, includes the ~0.3 GB of Python + torch) and
the increase of the peak over the RSS right after building model and optimizer ("step peak"). On CUDA the
child reports torch.cuda.max_memory_allocated instead.

FLOPs: the model interface's FLOP model of each type (`bdh.interface.token_flops`; the formulas are in the
docstrings of `BDH.flops` and `GPT.flops`, tested against torch.utils.flop_counter by tests/test_flops.py):
matmul FLOPs per token, 2 per multiply-add; LayerNorm, ReLU, RoPE, masks, softmax and the optimizer are not
counted. Training model FLOPs per token = 3 x forward (backward = 2 x forward): what MFU counts, as usual.

"Executed" counts use the full T (C) keys per query, because the parallel form (and GPT's SDPA with an
ALiBi mask on CPU) computes the full T x T product and masks it afterwards: this is the work the hardware
does, and what MFU is computed from. The "causal" counts use the (T-1)/2 (resp. (C-1)/2) earlier keys a query
actually attends to on average (BDH is strictly causal; GPT's (T+1)/2 includes the token itself): the work a
perfect causal kernel would do. BDH's backward executes fewer than 2 x forward: its scores' gradient is one
product (G + G^T) QR instead of two, since keys = queries (`bdh.attention.gram`), and the chunked form skips
the gradient of the first chunk's read of the constant initial state (`TokenFlops.executed_training`); "HFU"
(hardware FLOPs utilization) divides those executed FLOPs instead, so it is the lower, stricter figure for
BDH (for GPT the two are equal).

MFU = achieved FLOP/s (training model FLOPs per token x tokens/s) / a measured matmul peak: the median
FLOP/s of a large square fp32 GEMM (2048^3; bf16 with --dtype bf16) with the same thread count on the same
machine, measured before and after the training runs (both samples pooled). On a shared CPU other processes
take slices of the core during both measurements; "MFU (cpu)" divides by this process's CPU seconds instead of
wall seconds, for the training step and the GEMM alike (cpu/wall, printed per configuration, says how much of
the core the process actually got).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


import torch

from .common import (
    add_malloc_arg,
    apply_malloc,
    child_env,
    current_rss_bytes,
    format_machine,
    human_bytes,
    machine_info,
    module_command,
    peak_rss_bytes,
    reset_peak_rss,
    summarize,
    write_json,
)

from bdh import BDH, BDHConfig
from bdh.baselines.gpt import GPT, GPTConfig
from bdh.interface import TokenFlops, token_flops

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_speed.json"
QUICK_OUT = HERE / "results" / "train_speed_quick.json"
DEFAULT_TOML = HERE.parent / "src" / "bdh" / "configs" / "default.toml"
CONFIGS = ("bdh-parallel", "bdh-chunked", "gpt")

# The default training config's [model] table (kept in sync with src/bdh/configs/default.toml, read when present).
FALLBACK_MODEL = dict(n_layer=2, n_embd=64, n_head=8, mlp_internal_dim_multiplier=16, dropout=0.0, damping="alibi",
                      chunk_size=128)


# ----------------------------------------------------------------------------- configs
def default_bdh_config(vocab_size: int = 256) -> BDHConfig:
    model = dict(FALLBACK_MODEL)
    try:
        import tomllib

        with open(DEFAULT_TOML, "rb") as f:
            model = dict(tomllib.load(f)["model"])
    except (OSError, KeyError, ImportError):
        pass
    model["dropout"] = 0.0  # deterministic: the parallel/chunked loss check and fair timings
    return BDHConfig(**model, vocab_size=vocab_size)


def gpt_at_params(target: int, vocab_size: int = 256, n_head: int = 4, layers=range(2, 9), max_gap: float = 0.05) -> GPTConfig:
    """The GPT (ALiBi, 4 heads, MLP 4d, n_embd a multiple of n_head) with the parameter count closest to `target`.

    Ties (within 0.5%) go to the shallower model. Raises if nothing is within `max_gap`.
    """
    best = None
    for L in layers:
        for d in range(n_head * 4, 1025, n_head):
            cfg = GPTConfig(n_layer=L, n_embd=d, n_head=n_head, vocab_size=vocab_size, dropout=0.0, positions="alibi")
            gap = abs(cfg.num_params() - target) / target
            if best is None or gap < best[0] - 0.005:
                best = (gap, cfg)
    if best is None or best[0] > max_gap:
        raise ValueError(f"no GPT within {max_gap:.0%} of {target} parameters")
    return best[1]


# ----------------------------------------------------------------------------- FLOPs
def flops_of(name: str, bcfg: BDHConfig, gcfg: GPTConfig, T: int, causal: bool = False) -> TokenFlops:
    """The model interface's FLOP model (`bdh.interface.token_flops`) of one configuration at sequence length T."""
    if name == "gpt":
        return token_flops(gcfg, T, causal=causal)
    return token_flops(bcfg, T, form=name.split("-")[1], causal=causal)


# ----------------------------------------------------------------------------- device helpers
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> dict:
    """FLOP/s of a square GEMM (size^3 multiply-adds), `repeats` timed after one warm-up."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    sync(device)
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "flops": 2 * size**3, "times_s": times, "cpu_s": cpu}


# ----------------------------------------------------------------------------- one configuration
class Trainer:
    def __init__(self, name: str, model: torch.nn.Module, B: int, T: int, V: int, device, dtype, compile_: bool, seed: int):
        self.name, self.B, self.T = name, B, T
        self.form = name.split("-")[1] if name.startswith("bdh") else "auto"
        self.model = model.to(device).train()
        self.device, self.dtype = device, dtype
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
        g = torch.Generator().manual_seed(seed)
        data = torch.randint(0, V, (B, T + 1), generator=g).to(device)
        self.x, self.y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        self.fwd = torch.compile(self.model) if compile_ else self.model
        self.times: list[float] = []
        self.cpu: list[float] = []

    def step(self) -> float:
        with autocast_ctx(self.device, self.dtype):
            _, loss = self.fwd(self.x, self.y, form=self.form)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed_step(self) -> None:
        sync(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        self.step()
        sync(self.device)
        self.times.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)


def build(name: str, bcfg: BDHConfig, gcfg: GPTConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return GPT(gcfg) if name == "gpt" else BDH(bcfg)


def profile_step(tr: Trainer) -> dict:
    """Share of one training step's operator self time spent in matrix multiplies (torch.profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tr.step()
    mm_ops = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    ev = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in ev)
    mm = sum(t for k, t in ev if k in mm_ops)
    top = sorted(ev, key=lambda x: -x[1])[:10]
    return {"config": tr.name, "T": tr.T, "B": tr.B, "op_self_ms": total / 1e3, "matmul_self_ms": mm / 1e3,
            "matmul_share": mm / total if total else None,
            "top_ops": [{"op": k, "self_ms": t / 1e3, "share": t / total} for k, t in top]}


def run_one(spec: dict) -> dict:
    """Child process: two training steps of one configuration; peak memory."""
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    bcfg, gcfg = BDHConfig.from_dict(spec["bdh"]), GPTConfig.from_dict(spec["gpt"])
    model = build(spec["name"], bcfg, gcfg, spec["seed"])
    tr = Trainer(spec["name"], model, spec["B"], spec["T"], bcfg.vocab_size, device, dtype, spec["compile"], spec["seed"])
    sync(device)
    base = current_rss_bytes()
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    for _ in range(2):
        tr.step()
    sync(device)
    out = {
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_setup_bytes": base,
        "wall_s": time.perf_counter() - t0,
    }
    out["step_peak_rss_bytes"] = None if base is None else out["peak_rss_bytes"] - base
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        out["cuda_step_peak_bytes"] = out["cuda_peak_bytes"] - cuda_base
    return out


def measure_memory(name, T, B, a, bcfg, gcfg) -> dict:
    spec = {"name": name, "T": T, "B": B, "threads": a.threads, "device": a.device, "dtype": a.dtype, "malloc": a.malloc,
            "compile": a.compile, "seed": a.seed, "bdh": bcfg.to_dict(), "gpt": gcfg.to_dict()}
    r = subprocess.run(module_command("train_speed", "--one", json.dumps(spec), "--malloc", a.malloc),
                       capture_output=True, text=True, env=child_env())
    if r.returncode != 0:
        return {"status": "failed", "stderr": r.stderr[-2000:]}
    return {"status": "ok", **json.loads(r.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="T = 64, 256 at 512 tokens/step, 2 repeats: a smoke test")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the shared 2-core machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda without a GPU: writes a 'skipped' result)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="fp32, or bf16/fp16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (compile time is not timed)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None, help="T values (default 256 1024 2048; quick 64 256)")
    p.add_argument("--tokens-per-step", type=int, default=None, help="B*T (default 4096; quick 512)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per configuration (default 5; quick 2)")
    p.add_argument("--peak-size", type=int, default=None, help="GEMM size of the matmul peak (default 2048; quick 1024)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the torch.profiler breakdown of one step per configuration at the largest T")
    p.add_argument("--memory-repeats", type=int, default=None,
                   help="fresh subprocesses per configuration for peak memory, median (default 3; quick 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory subprocesses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default results/{DEFAULT_OUT.name}; quick {QUICK_OUT.name})")
    p.add_argument("--ladder", default=None, help="comma-separated CPU-ladder rungs (e.g. 0.8M,1.6M,3.2M): BDH vs GPT "
                   "per rung at T=128, 2048 tokens/step (the `bdh compare --preset cpu` shape)")
    add_malloc_arg(p)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ladder:
        a.seq_lens = a.seq_lens or [128]
        a.tokens_per_step = a.tokens_per_step or (512 if a.quick else 2048)
    a.seq_lens = a.seq_lens or ([64, 256] if a.quick else [256, 1024, 2048])
    a.tokens_per_step = a.tokens_per_step or (512 if a.quick else 4096)
    a.repeats = a.repeats or (2 if a.quick else 5)
    a.peak_size = a.peak_size or (1024 if a.quick else 2048)
    a.memory_repeats = a.memory_repeats or (1 if a.quick else 3)
    a.out = a.out or (QUICK_OUT if a.quick else DEFAULT_OUT)
    for T in a.seq_lens:
        if a.tokens_per_step % T:
            p.error(f"--tokens-per-step {a.tokens_per_step} is not a multiple of T={T}")
    return a


def ladder(a) -> int:
    """BDH vs GPT tokens/s per CPU-ladder rung, against the analytic FLOP ratio (`--ladder`)."""
    from bdh.baselines.ladders import CPU_LADDER

    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    info = machine_info()
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    rungs = {r.name: r for r in CPU_LADDER}
    want = [x.strip() for x in a.ladder.split(",")]
    unknown = [x for x in want if x not in rungs]
    if unknown:
        raise SystemExit(f"--ladder {a.ladder!r}: unknown rung(s) {unknown}; expected some of {', '.join(rungs)}")
    base = {"benchmark": "train_speed_ladder", "mode": "quick" if a.quick else "full", "machine": info,
            "settings": {"device": a.device, "dtype": a.dtype, "compile": a.compile, "threads": a.threads,
                         "seq_lens": a.seq_lens, "tokens_per_step": a.tokens_per_step, "repeats": a.repeats,
                         "rungs": want, "malloc": a.malloc, "malloc_applied": a.malloc_applied, "seed": a.seed}}
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train_speed: --device cuda but CUDA is not available: skipped")
        write_json(a.out, {**base, "status": "skipped", "reason": "CUDA not available"})
        return 0
    print(f"train speed, CPU ladder ({base['mode']}, {a.device}, {a.dtype}{', compiled' if a.compile else ''}); "
          f"machine: {format_machine(info)}; {a.tokens_per_step} tokens/step, {a.repeats} timed steps each "
          f"(interleaved), {a.threads} thread(s), malloc {a.malloc}", flush=True)
    rows = []
    for T in a.seq_lens:
        B = a.tokens_per_step // T
        for name in want:
            bcfg, gcfg = rungs[name].configs(256)
            form = "parallel" if T <= bcfg.chunk_size else "chunked"
            trs = {"bdh": Trainer("bdh-auto", build("bdh", bcfg, gcfg, a.seed), B, T, 256, device, dtype, a.compile, a.seed),
                   "gpt": Trainer("gpt", build("gpt", bcfg, gcfg, a.seed), B, T, 256, device, dtype, a.compile, a.seed)}
            for tr in trs.values():
                tr.step()
            for r in range(a.repeats):
                for k in (("bdh", "gpt") if r % 2 == 0 else ("gpt", "bdh")):
                    trs[k].timed_step()
            f = {"bdh": token_flops(bcfg, T), "gpt": token_flops(gcfg, T)}  # BDH "auto": `form`
            fl = {k: v.training for k, v in f.items()}
            fl_causal = {"bdh": token_flops(bcfg, T, causal=True).training, "gpt": token_flops(gcfg, T, causal=True).training}
            med = {k: statistics.median(tr.times) for k, tr in trs.items()}
            paired = statistics.median(b / g for b, g in zip(trs["bdh"].times, trs["gpt"].times))
            row = {"rung": name, "T": T, "B": B, "bdh_form": form,
                   "bdh_params": trs["bdh"].model.num_params(), "gpt_params": trs["gpt"].model.num_params(),
                   "tok_s": {k: B * T / m for k, m in med.items()},
                   "timing": {k: summarize(tr.times, tr.cpu) for k, tr in trs.items()},
                   "train_flops_per_token": fl, "train_flops_per_token_causal": fl_causal,
                   "flop_ratio": fl["bdh"] / fl["gpt"], "flop_ratio_causal": fl_causal["bdh"] / fl_causal["gpt"],
                   "flop_ratio_executed": f["bdh"].executed_training / f["gpt"].executed_training,
                   "time_ratio": med["bdh"] / med["gpt"], "time_ratio_paired_median": paired}
            row["time_over_flop_ratio"] = row["time_ratio"] / row["flop_ratio"]
            row["target_met"] = row["time_over_flop_ratio"] <= 1.5
            rows.append(row)
            print(f"{name:>5} T={T} B={B}: BDH ({form}) {row['tok_s']['bdh']:>8.0f} tok/s, GPT {row['tok_s']['gpt']:>8.0f} tok/s; "
                  f"time ratio {row['time_ratio']:.2f}x (paired {paired:.2f}x), FLOP ratio {row['flop_ratio']:.2f}x "
                  f"(causal {row['flop_ratio_causal']:.2f}x, executed {row['flop_ratio_executed']:.2f}x): "
                  f"{row['time_over_flop_ratio']:.2f}x the FLOP ratio -> "
                  + ("MET" if row["target_met"] else "NOT MET") + " (target <= 1.5x)", flush=True)
            del trs
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start {info['loadavg_1_5_15']}, at end {load_end}")
    out = {**base, "status": "ok", "results": rows, "loadavg_at_end": load_end, "wall_s": time.perf_counter() - t_start}
    path = write_json(a.out, out)
    print(f"wrote {os.path.relpath(path)} ({out['wall_s']:.0f} s)")
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    a.malloc_applied = apply_malloc(a.malloc, a.device)["malloc_applied"]  # common.apply_malloc: as the trainer
    if a.one is not None:
        print(json.dumps(run_one(json.loads(a.one))))
        return 0
    if a.ladder:
        if a.out in (DEFAULT_OUT, QUICK_OUT):
            a.out = HERE / "results" / ("train_speed_ladder_quick.json" if a.quick else "train_speed_ladder.json")
        return ladder(a)
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    info = machine_info()
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    bcfg = default_bdh_config()
    gcfg = gpt_at_params(bcfg.num_params(), bcfg.vocab_size)
    base = {"benchmark": "train_speed", "mode": "quick" if a.quick else "full", "machine": info,
            "settings": {"device": a.device, "dtype": a.dtype, "compile": a.compile, "threads": a.threads,
                         "seq_lens": a.seq_lens, "tokens_per_step": a.tokens_per_step, "repeats": a.repeats,
                         "malloc": a.malloc, "malloc_applied": a.malloc_applied, "seed": a.seed, "optimizer": "AdamW(lr=1e-3, wd=0.1, betas=(0.9, 0.95))"}}
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train_speed: --device cuda but CUDA is not available: skipped")
        write_json(a.out, {**base, "status": "skipped", "reason": "CUDA not available"})
        return 0
    if a.compile and device.type == "cpu":
        print("note: --compile on CPU compiles C++ kernels (needs a compiler; slow to start)")

    bdh_params = BDH(bcfg).num_params()
    gpt_params = GPT(gcfg).num_params()
    gap = (gpt_params - bdh_params) / bdh_params
    print(f"train speed benchmark ({base['mode']}, {a.device}, {a.dtype}{', compiled' if a.compile else ''})")
    print(f"machine: {format_machine(info)}")
    print(f"BDH: L={bcfg.n_layer} d={bcfg.D} h={bcfg.n_head} n={bcfg.n} C={bcfg.chunk_size} damping={bcfg.damping}: "
          f"{bdh_params:,} params")
    print(f"GPT: L={gcfg.n_layer} d={gcfg.n_embd} h={gcfg.n_head} MLP {gcfg.hidden} ALiBi: {gpt_params:,} params "
          f"({gap:+.1%} vs BDH)")
    print(f"{a.tokens_per_step} tokens/step, {a.repeats} timed steps per config (round-robin), {a.threads} thread(s)\n",
          flush=True)

    pk = matmul_peak(device, dtype, a.peak_size, 3 if a.quick else 5)
    peak_samples, peak_cpu = pk["times_s"], pk["cpu_s"]
    rows = []
    for T in a.seq_lens:
        B = a.tokens_per_step // T
        # --- the same weights in both BDH forms: loss and gradient agreement
        bdh0 = build("bdh-parallel", bcfg, gcfg, a.seed)
        trs = {
            "bdh-parallel": Trainer("bdh-parallel", bdh0, B, T, bcfg.vocab_size, device, dtype, a.compile, a.seed),
            "bdh-chunked": Trainer("bdh-chunked", copy.deepcopy(bdh0), B, T, bcfg.vocab_size, device, dtype, a.compile, a.seed),
            "gpt": Trainer("gpt", build("gpt", bcfg, gcfg, a.seed), B, T, bcfg.vocab_size, device, dtype, a.compile, a.seed),
        }
        losses, grads = {}, {}
        for name in ("bdh-parallel", "bdh-chunked"):
            tr = trs[name]
            with autocast_ctx(device, dtype):
                _, loss = tr.fwd(tr.x, tr.y, form=tr.form)
            loss.backward()
            losses[name] = float(loss.detach())
            grads[name] = [p.grad.detach().clone() for p in tr.model.parameters()]
            tr.opt.zero_grad(set_to_none=True)
        loss_diff = abs(losses["bdh-parallel"] - losses["bdh-chunked"])
        grad_diff = max((gp - gc).abs().max().item() for gp, gc in zip(grads["bdh-parallel"], grads["bdh-chunked"]))
        grad_scale = max(g.abs().max().item() for g in grads["bdh-parallel"])
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        assert loss_diff <= tol, f"T={T}: parallel loss {losses['bdh-parallel']} vs chunked {losses['bdh-chunked']}"
        print(f"T={T:>5} B={B:>3}: loss parallel {losses['bdh-parallel']:.6f} chunked {losses['bdh-chunked']:.6f} "
              f"|diff| {loss_diff:.1e} (tol {tol:g}); max |grad diff| {grad_diff:.1e} (max |grad| {grad_scale:.1e})",
              flush=True)
        del grads
        # --- timing: one warm-up step each, then round-robin
        for tr in trs.values():
            tr.step()
        for r in range(a.repeats):
            names = list(CONFIGS)
            for name in names[r % 3:] + names[: r % 3]:
                trs[name].timed_step()
        row = {"T": T, "B": B, "tokens_per_step": B * T, "loss_parallel": losses["bdh-parallel"],
               "loss_chunked": losses["bdh-chunked"], "loss_abs_diff": loss_diff, "loss_tolerance": tol,
               "grad_max_abs_diff": grad_diff, "grad_max_abs": grad_scale, "configs": {}}
        for name, tr in trs.items():
            t = summarize(tr.times, tr.cpu)
            tps = B * T / t["median_s"]
            f = flops_of(name, bcfg, gcfg, T)
            fwd, fwd_causal = f.forward, flops_of(name, bcfg, gcfg, T, causal=True).forward
            row["configs"][name] = {
                "timing": t, "tok_s": tps, "tok_s_best": B * T / t["min_s"],
                "params": gpt_params if name == "gpt" else bdh_params,
                "fwd_flops_per_token": fwd, "fwd_flops_per_token_causal": fwd_causal,
                "train_flops_per_token": 3 * fwd, "train_flops_per_token_causal": 3 * fwd_causal,
                "achieved_flop_s": 3 * fwd * tps,
            }
            row["configs"][name]["executed_train_flops_per_token"] = f.executed_training
            row["configs"][name]["executed_flop_s"] = f.executed_training * tps
            print(f"   {name:<13} {tps:>9.0f} tok/s  ({1e3 * t['median_s']:.0f} ms/step, cpu/wall {t['cpu_per_wall']:.2f}, "
                  f"{3 * fwd / 1e6:.2f} MFLOP/token, {3 * fwd * tps / 1e9:.2f} GFLOP/s)", flush=True)
        if a.profile and device.type == "cpu" and T == max(a.seq_lens):
            row["profile"] = [profile_step(trs[k]) for k in CONFIGS]
            for pr in row["profile"]:
                flops = flops_of(pr["config"], bcfg, gcfg, T).training * B * T
                pr["matmul_flop_s"] = flops / (pr["matmul_self_ms"] / 1e3)  # the counted FLOPs over matmul time only
                print(f"   profile {pr['config']:<13}: matmul share of op time {100 * pr['matmul_share']:.0f}%, "
                      f"{pr['matmul_flop_s'] / 1e9:.1f} GFLOP/s inside matmuls "
                      f"(top: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in pr["top_ops"][:4]) + ")",
                      flush=True)
        del trs, bdh0
        rows.append(row)
    pk = matmul_peak(device, dtype, a.peak_size, 3 if a.quick else 5)
    peak_samples += pk["times_s"]
    peak_cpu += pk["cpu_s"]
    peak_flop_s = 2 * a.peak_size**3 / statistics.median(peak_samples)
    # per CPU-second of this process: discounts the time other processes took the core (threads=1 on CPU)
    peak_flop_cpu_s = 2 * a.peak_size**3 / statistics.median(peak_cpu) if device.type == "cpu" else None
    print(f"\nmatmul peak ({a.peak_size}^3 {a.dtype} GEMM, {a.threads} thread(s), median of {len(peak_samples)} "
          f"before/after): {peak_flop_s / 1e9:.1f} GFLOP/s per wall second"
          + (f", {peak_flop_cpu_s / 1e9:.1f} GFLOP/s per CPU second" if peak_flop_cpu_s else ""), flush=True)

    # --- memory, one subprocess per configuration
    for row in rows:
        for name, cr in row["configs"].items():
            cr["mfu"] = cr["achieved_flop_s"] / peak_flop_s
            cr["hfu"] = cr["executed_flop_s"] / peak_flop_s
            if peak_flop_cpu_s:
                cpu_med = statistics.median(cr["timing"]["cpu_s"])
                cr["achieved_flop_per_cpu_s"] = cr["train_flops_per_token"] * row["tokens_per_step"] / cpu_med
                cr["mfu_cpu"] = cr["achieved_flop_per_cpu_s"] / peak_flop_cpu_s
            if a.no_memory:
                cr["memory"] = {"status": "skipped"}
            else:
                samples = [measure_memory(name, row["T"], row["B"], a, bcfg, gcfg) for _ in range(a.memory_repeats)]
                ok = [m for m in samples if m["status"] == "ok"]
                if len(ok) < len(samples):
                    cr["memory"] = next(m for m in samples if m["status"] != "ok")
                else:  # the median of each field over the fresh subprocesses
                    cr["memory"] = {"status": "ok", "samples": ok, **{
                        k: statistics.median(m[k] for m in ok) for k in ok[0] if isinstance(ok[0][k], (int, float))}}
            if cr["memory"]["status"] != "ok":
                print(f"memory {name} T={row['T']}: {cr['memory']['status']} {cr['memory'].get('stderr', '')[-300:]}")
        p, c, g = (row["configs"][k] for k in CONFIGS)
        row["chunked_over_parallel_tok_s"] = c["tok_s"] / p["tok_s"]
        row["bdh_chunked_over_gpt_tok_s"] = c["tok_s"] / g["tok_s"]
        for key in ("peak_rss_bytes", "step_peak_rss_bytes", "cuda_peak_bytes"):
            if p["memory"].get(key) and c["memory"].get(key) is not None:
                row[f"chunked_over_parallel_{key}"] = c["memory"][key] / p["memory"][key]

    # --- table
    mem_key = "cuda_peak_bytes" if device.type == "cuda" else "peak_rss_bytes"
    step_key = "cuda_step_peak_bytes" if device.type == "cuda" else "step_peak_rss_bytes"
    hdr = (f"{'T':>5} {'B':>3} | {'config':<13} | {'tok/s':>8} {'(best)':>8} | {'MFLOP/tok':>9} | {'GFLOP/s':>7} | "
           f"{'MFU':>6} {'(cpu)':>7} {'HFU':>6} | {'peak mem':>9} | {'step peak':>9}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for row in rows:
        for name, cr in row["configs"].items():
            m = cr["memory"]
            print(f"{row['T']:>5} {row['B']:>3} | {name:<13} | {cr['tok_s']:>8.0f} {'(' + format(cr['tok_s_best'], '.0f') + ')':>8} | "
                  f"{cr['train_flops_per_token'] / 1e6:>9.2f} | {cr['achieved_flop_s'] / 1e9:>7.2f} | {100 * cr['mfu']:>5.1f}% "
                  f"{'(' + format(100 * cr['mfu_cpu'], '.1f') + '%)' if cr.get('mfu_cpu') else '':>7} "
                  f"{100 * cr['hfu']:>5.1f}% | "
                  f"{human_bytes(m.get(mem_key)):>9} | {human_bytes(m.get(step_key)):>9}")
        mr = row.get(f"chunked_over_parallel_{mem_key}")
        ms = row.get(f"chunked_over_parallel_{step_key}")
        print(f"{'':>9} | chunked/parallel: {row['chunked_over_parallel_tok_s']:.2f}x tok/s, "
              + (f"{mr:.2f}x peak mem, {ms:.2f}x step peak" if mr is not None else "memory n/a")
              + f"; chunked/GPT {row['bdh_chunked_over_gpt_tok_s']:.2f}x tok/s; |loss diff| {row['loss_abs_diff']:.1e}")

    # --- targets (at the largest T, and MFU of the default config's chunked form = the form used by training)
    last = rows[-1]
    speed = last["chunked_over_parallel_tok_s"]
    mem = last.get(f"chunked_over_parallel_{mem_key}")
    mfu_default = max(r["configs"]["bdh-chunked"]["mfu"] for r in rows)
    mfu_best = max(cr["mfu"] for r in rows for k, cr in r["configs"].items() if k.startswith("bdh"))
    targets = {
        "at_T": last["T"],
        "chunked_speedup": speed, "chunked_speedup_target": 3.0, "chunked_speedup_met": speed >= 3.0,
        "chunked_memory_ratio": mem, "chunked_memory_ratio_target": 0.5,
        "chunked_memory_met": None if mem is None else mem <= 0.5,
        "chunked_step_memory_ratio": last.get(f"chunked_over_parallel_{step_key}"),
        "mfu_bdh_chunked_max": mfu_default, "mfu_bdh_max": mfu_best, "mfu_target": 0.6,
        "hfu_bdh_max": max(cr["hfu"] for r in rows for k, cr in r["configs"].items() if k.startswith("bdh")),
        "mfu_met": mfu_best >= 0.6,
        "mfu_cpu_bdh_max": max((cr.get("mfu_cpu") or 0.0) for r in rows for k, cr in r["configs"].items() if k.startswith("bdh")) or None,
    }
    print(f"\ntargets at T={last['T']}: chunked >= 3x parallel tok/s: {speed:.2f}x -> {'MET' if speed >= 3 else 'NOT MET'}; "
          + (f"chunked peak memory <= 0.5x parallel: {mem:.2f}x -> {'MET' if mem <= 0.5 else 'NOT MET'}; " if mem else "")
          + f"BDH training MFU >= 60%: best {100 * mfu_best:.1f}% (chunked {100 * mfu_default:.1f}%) -> "
          + ("MET" if mfu_best >= 0.6 else "NOT MET") + f" (HFU, executed FLOPs: best {100 * targets['hfu_bdh_max']:.1f}%)"
          + (f" (per CPU second, discounting time other processes took: best {100 * targets['mfu_cpu_bdh_max']:.1f}%)"
             if targets["mfu_cpu_bdh_max"] else ""))
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start {info['loadavg_1_5_15']}, at end {load_end}")
    out = {**base, "status": "ok",
           "bdh_config": {**bcfg.to_dict(), "n": bcfg.n, "N": bcfg.N, "params": bdh_params},
           "gpt_config": {**gcfg.to_dict(), "params": gpt_params, "param_gap": gap},
           "matmul_peak": {"size": a.peak_size, "dtype": a.dtype, "flop_s": peak_flop_s, "flop_per_cpu_s": peak_flop_cpu_s,
                           "times_s": peak_samples, "cpu_s": peak_cpu},
           "results": rows, "targets": targets, "loadavg_at_end": load_end,
           "wall_s": time.perf_counter() - t_start}
    path = write_json(a.out, out)
    print(f"wrote {os.path.relpath(path)} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
