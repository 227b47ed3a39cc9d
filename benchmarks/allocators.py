"""CPU allocators for training: glibc's defaults, glibc tuned as `bdh train` tunes it, jemalloc, tcmalloc.

    python -m benchmarks.allocators                  # rungs 0.8M and 3.2M, 2 rounds (~10-15 min on the shared 2-core CPU)
    python -m benchmarks.allocators --quick          # smoke test: 0.8M at 512 tokens/step, 1 round, no memory (~1 min)
    python -m benchmarks.allocators --allocators glibc-tuned,jemalloc --rounds 1

A BDH training step on CPU allocates and frees the same large activations every step. With glibc's default
settings every block above the mmap threshold is a fresh `mmap`, page-faulted in and zero-filled again each
step; `bdh.allocator.keep_freed_memory()` (what `bdh train` and `bdh.training.train` apply on CPU) keeps freed
memory mapped instead. PyTorch's CPU performance tuning guide recommends another allocator instead, jemalloc or
tcmalloc preloaded with LD_PRELOAD, which reuse freed memory by themselves. This measures the four:

| allocator | how |
|---|---|
| glibc-default | `train_speed.py --malloc default` |
| glibc-tuned | `train_speed.py --malloc tuned` (bdh.allocator.keep_freed_memory) |
| jemalloc | `LD_PRELOAD=libjemalloc.so.2`, `--malloc default` (jemalloc's own defaults, no MALLOC_CONF) |
| jemalloc-keep | the same with `MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1` (never purge freed pages) |
| tcmalloc | `LD_PRELOAD=libtcmalloc_minimal.so.4`, `--malloc default` |

jemalloc's defaults do not keep these blocks: a request above `oversize_threshold` (8 MiB) is served by a
dedicated arena that jemalloc purges eagerly whenever dirty pages decay at all (dirty_decay_ms > 0), so every
step page-faults its large activations in again, as under glibc's defaults (measured: a freed 64 MiB tensor
re-allocated faults all 16,385 pages in again under the defaults, under `dirty_decay_ms:60000`, and under
`torch.backends.xeon.run_cpu`'s `oversize_threshold:1,background_thread:true,metadata_thp:auto`; none under
`dirty_decay_ms:-1`). Hence jemalloc-keep.

The library is found with `ldconfig -p` or in the usual library folders; an allocator that is not installed
(Debian: `apt-get install libjemalloc2 libtcmalloc-minimal4`) is skipped and said so.

Speed: every round runs `benchmarks/train_speed.py --ladder RUNGS --threads 1` once per allocator, each in its
own subprocess (the allocator is process-wide), the allocators' order rotating from round to round. Per rung it
times BDH (auto form: parallel at T = 128) and the rung's parameter-matched GPT, steps interleaved, and this
pools every round's samples: tokens/s (per wall second, and per CPU second of the process: user + system time,
which counts the page faults and discounts what other processes took), the measured BDH/GPT time ratio and the
ratio of that to the analytic FLOP ratio (1.0 = BDH's step costs what its FLOPs say, relative to GPT). On a
shared, noisy machine the within-run BDH/GPT ratio is the robust figure (both models see the same load, and
GPT, whose activations are small, hardly depends on the allocator); absolute tokens/s from different
subprocesses, minutes apart, are not (compare tokens per CPU second instead, and read the load averages).

Memory: one fresh subprocess per allocator, rung and model (this script's hidden --child mode) trains
`--memory-steps` steps and reports its peak RSS (VmHWM, reset after building model and optimizer, so: the
training steps' peak, including the ~0.3-0.4 GB of Python and torch), the RSS after the last step (what stays
mapped between steps), and the minor page faults per step after the first (the cost glibc's defaults pay).
These children of jemalloc and tcmalloc call `keep_freed_memory()` as `bdh train` does: under a preloaded
allocator it must report False and change nothing (`bdh.allocator.glibc_malloc_active`), which the JSON
records (`keep_freed_memory_applied`, `glibc_malloc_active`, and the allocator library mapped in the process).

Writes benchmarks/results/allocators.json (quick: allocators_quick.json): machine info, settings, per allocator
its library, each round's train_speed results, and per rung the pooled figures and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .common import (
    apply_malloc,
    child_env as bench_env,
    current_rss_bytes,
    format_machine,
    human_bytes,
    machine_info,
    module_command,
    peak_rss_bytes,
    reset_peak_rss,
    write_json,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "allocators.json"
QUICK_OUT = HERE / "results" / "allocators_quick.json"
JEMALLOC = ("libjemalloc.so.2", "libjemalloc.so.1", "libjemalloc.so")
KEEP_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # jemalloc: never return freed ("dirty") pages to the OS
# name -> (shared-library names to preload, first found wins; train_speed --malloc; MALLOC_CONF or None)
ALLOCATORS = {
    "glibc-default": ((), "default", None),
    "glibc-tuned": ((), "tuned", None),
    "jemalloc": (JEMALLOC, "default", None),
    "jemalloc-keep": (JEMALLOC, "default", KEEP_CONF),
    "tcmalloc": (("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"), "default", None),
}


# ----------------------------------------------------------------------------- finding the libraries
def find_library(names) -> str | None:
    """The path of the first of `names` that `ldconfig -p` lists (this machine's architecture first) or that
    lies in a usual library folder; None when none is installed."""
    m = platform.machine()
    listed: dict[str, list[str]] = {}
    for ldconfig in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            r = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        for line in r.stdout.splitlines():
            if "=>" in line:
                left, path = line.split("=>", 1)
                listed.setdefault(left.split()[0], []).append(path.strip())
        break
    arch_tag = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(m, f"{m}-linux-gnu")
    folders = [f"/usr/lib/{arch_tag}", f"/lib/{arch_tag}", "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib"]
    for name in names:
        paths = [p for p in listed.get(name, []) if os.path.exists(p)]
        paths.sort(key=lambda p: (arch_tag not in p and "lib64" not in p))  # this architecture's copy first
        if paths:
            return paths[0]
        for folder in folders:
            p = os.path.join(folder, name)
            if os.path.exists(p):
                return p
    return None


def mapped_allocators() -> list[str]:
    """The jemalloc/tcmalloc libraries mapped into this process (/proc/self/maps)."""
    found = set()
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "jemalloc" in path or "tcmalloc" in path:
                    found.add(os.path.basename(path))
    except OSError:
        pass
    return sorted(found)


# ----------------------------------------------------------------------------- memory child
def child(spec: dict) -> dict:
    """Runs in a fresh process (under the allocator's LD_PRELOAD): `steps` training steps of one model of one
    rung; peak RSS, RSS after the last step, minor page faults per step after the first."""
    import torch

    torch.set_num_threads(1)
    malloc = apply_malloc(spec["malloc"])  # "tuned" = keep_freed_memory(), as bdh train calls it
    from bdh.allocator import glibc_malloc_active
    from bdh.baselines.ladders import CPU_LADDER

    from . import train_speed as ts

    bcfg, gcfg = {r.name: r for r in CPU_LADDER}[spec["rung"]].configs(256)
    T, B = spec["T"], spec["tokens_per_step"] // spec["T"]
    name = "bdh-auto" if spec["model"] == "bdh" else "gpt"
    tr = ts.Trainer(name, ts.build(spec["model"], bcfg, gcfg, 0), B, T, 256, torch.device("cpu"), torch.float32,
                    False, 0)
    base = current_rss_bytes()
    reset_peak_rss()
    tr.step()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(spec["steps"] - 1):
        tr.step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"model": spec["model"], "rung": spec["rung"], "T": T, "B": B, "steps": spec["steps"],
            "rss_after_setup_bytes": base, "peak_rss_bytes": peak_rss_bytes(), "rss_end_bytes": current_rss_bytes(),
            "minor_faults_per_step": faults / max(1, spec["steps"] - 1),
            "keep_freed_memory_applied": malloc["malloc_applied"], "glibc_malloc_active": glibc_malloc_active(),
            "mapped_allocator_libs": mapped_allocators(), "ld_preload": os.environ.get("LD_PRELOAD"),
            "malloc_conf": os.environ.get("MALLOC_CONF")}


def child_env(name: str, lib: str | None) -> dict:
    env = {**bench_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k in ("LD_PRELOAD", "MALLOC_CONF"):
        env.pop(k, None)
    if lib:
        env["LD_PRELOAD"] = lib
    if ALLOCATORS[name][2]:
        env["MALLOC_CONF"] = ALLOCATORS[name][2]
    return env


def run_child(spec: dict, name: str, lib: str | None) -> dict:
    r = subprocess.run(module_command("allocators", "--child", json.dumps(spec)), capture_output=True, text=True,
                       env=child_env(name, lib))
    if r.returncode != 0:
        return {"status": "failed", "returncode": r.returncode, "stderr": r.stderr[-2000:]}
    return {"status": "ok", **json.loads(r.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------- speed (train_speed.py --ladder)
def run_ladder(a, name: str, lib: str | None, out: Path) -> dict:
    cmd = module_command("train_speed", "--ladder", ",".join(a.rungs), "--threads", "1", "--repeats", a.repeats,
                         "--malloc", ALLOCATORS[name][1], "--out", out)
    if a.quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(name, lib))
    wall = time.perf_counter() - t0
    for line in r.stdout.splitlines():
        if " T=" in line and "tok/s" in line:
            print(f"    {name:<13} {line.strip()}", flush=True)
    if r.returncode != 0:
        return {"status": "failed", "returncode": r.returncode, "stderr": r.stderr[-2000:], "wall_s": wall}
    if "cannot be preloaded" in r.stderr:  # ld.so ignored the library: this would measure glibc
        return {"status": "failed", "stderr": r.stderr[-2000:], "wall_s": wall}
    return {"status": "ok", "wall_s": wall, **json.loads(out.read_text(encoding="utf-8"))}


def pooled(rounds: list[dict], rung: str) -> dict:
    """Per rung: every round's step times pooled; tokens/s per wall and per CPU second; BDH/GPT ratios."""
    rows = [row for rd in rounds if rd["status"] == "ok" for row in rd["results"] if row["rung"] == rung]
    if not rows:
        return {"status": "failed"}
    tokens = rows[0]["B"] * rows[0]["T"]
    t = {k: [x for row in rows for x in row["timing"][k]["times_s"]] for k in ("bdh", "gpt")}
    c = {k: [x for row in rows for x in row["timing"][k]["cpu_s"]] for k in ("bdh", "gpt")}
    med = {k: statistics.median(v) for k, v in t.items()}
    med_cpu = {k: statistics.median(v) for k, v in c.items()}
    flop_ratio = rows[0]["flop_ratio"]
    paired = [b / g for row in rows for b, g in zip(row["timing"]["bdh"]["times_s"], row["timing"]["gpt"]["times_s"])]
    out = {"status": "ok", "T": rows[0]["T"], "B": rows[0]["B"], "samples": len(t["bdh"]),
           "tok_s": {k: tokens / m for k, m in med.items()},
           "tok_per_cpu_s": {k: tokens / m for k, m in med_cpu.items()},
           "cpu_per_wall": {k: sum(c[k]) / sum(t[k]) for k in t},
           "time_ratio": med["bdh"] / med["gpt"], "time_ratio_paired_median": statistics.median(paired),
           "cpu_time_ratio": med_cpu["bdh"] / med_cpu["gpt"], "flop_ratio": flop_ratio,
           "time_over_flop_ratio_per_round": [row["time_over_flop_ratio"] for row in rows]}
    out["time_over_flop_ratio"] = out["time_ratio"] / flop_ratio
    out["paired_over_flop_ratio"] = out["time_ratio_paired_median"] / flop_ratio
    out["cpu_time_over_flop_ratio"] = out["cpu_time_ratio"] / flop_ratio
    return out


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="0.8M at 512 tokens/step, 1 round, 2 repeats, no memory")
    p.add_argument("--rungs", default=None, help="comma-separated CPU-ladder rungs (default 0.8M,3.2M; quick 0.8M)")
    p.add_argument("--allocators", default=",".join(ALLOCATORS), help=f"some of {', '.join(ALLOCATORS)}")
    p.add_argument("--rounds", type=int, default=None, help="train_speed runs per allocator, order rotating (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per model and run (default 3; quick 2)")
    p.add_argument("--memory-steps", type=int, default=4, help="training steps of each memory subprocess (default 4)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--out", type=Path, default=None, help="JSON (default results/allocators.json; quick allocators_quick.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.rungs = [x.strip() for x in (a.rungs or ("0.8M" if a.quick else "0.8M,3.2M")).split(",")]
    a.allocators = [x.strip() for x in a.allocators.split(",")]
    bad = [x for x in a.allocators if x not in ALLOCATORS]
    if bad:
        p.error(f"--allocators: unknown {bad}; expected some of {', '.join(ALLOCATORS)}")
    a.rounds = a.rounds or (1 if a.quick else 2)
    a.repeats = a.repeats or (2 if a.quick else 3)
    a.no_memory = a.no_memory or a.quick
    a.out = a.out or (QUICK_OUT if a.quick else DEFAULT_OUT)
    if a.rounds < 1 or a.repeats < 1 or a.memory_steps < 2:
        p.error("--rounds, --repeats >= 1 and --memory-steps >= 2 expected")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    t_start = time.perf_counter()
    info = machine_info()
    libs: dict[str, str | None] = {}
    res: dict[str, dict] = {}
    for name in a.allocators:
        names = ALLOCATORS[name][0]
        lib = find_library(names) if names else None
        if names and lib is None:
            res[name] = {"status": "skipped", "reason": f"not installed (none of {', '.join(names)} found)"}
            print(f"{name}: skipped: not installed (none of {', '.join(names)}; Debian: apt-get install "
                  f"{'libjemalloc2' if 'jemalloc' in name else 'libtcmalloc-minimal4'})", flush=True)
            continue
        libs[name] = lib
        res[name] = {"status": "ok", "library": lib, "malloc": ALLOCATORS[name][1], "malloc_conf": ALLOCATORS[name][2],
                     "rounds": []}
    names = list(libs)
    settings = {"rungs": a.rungs, "rounds": a.rounds, "repeats": a.repeats, "threads": 1, "quick": a.quick,
                "memory_steps": None if a.no_memory else a.memory_steps, "allocators": a.allocators,
                "bdh_malloc_tune_env": os.environ.get("BDH_MALLOC_TUNE")}
    print(f"allocators: {', '.join(names)}; rungs {', '.join(a.rungs)}; {a.rounds} round(s) x {a.repeats} timed steps "
          f"per model; machine: {format_machine(info)}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bdh-alloc-"))
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for name in order:
            rd = run_ladder(a, name, libs[name], tmp / f"{name}-{r}.json")
            rd["round"] = r
            res[name]["rounds"].append(rd)
            if rd["status"] != "ok":
                print(f"    {name}: train_speed failed: {rd.get('stderr', '')[-500:]}", flush=True)
    for name in names:
        res[name]["rungs"] = {rung: pooled(res[name]["rounds"], rung) for rung in a.rungs}
        ok = [rd for rd in res[name]["rounds"] if rd["status"] == "ok"]
        if not ok:
            res[name]["status"] = "failed"
    if not a.no_memory:
        print("memory: one subprocess per allocator, rung and model", flush=True)
        for name in names:
            for rung in a.rungs:
                mem = {}
                for model in ("bdh", "gpt"):
                    # preloaded allocators: "tuned" calls keep_freed_memory() as bdh train does (must be a no-op)
                    spec = {"rung": rung, "model": model, "T": 128, "tokens_per_step": 2048, "steps": a.memory_steps,
                            "malloc": "tuned" if libs[name] else ALLOCATORS[name][1]}
                    mem[model] = run_child(spec, name, libs[name])
                    m = mem[model]
                    if m["status"] == "ok":
                        print(f"    {name:<13} {rung:>5} {model}: peak RSS {human_bytes(m['peak_rss_bytes'])}, end "
                              f"{human_bytes(m['rss_end_bytes'])}, {m['minor_faults_per_step']:.0f} faults/step, "
                              f"keep_freed_memory {m['keep_freed_memory_applied']}, glibc malloc "
                              f"{m['glibc_malloc_active']}, mapped {m['mapped_allocator_libs'] or '-'}", flush=True)
                    else:
                        print(f"    {name} {rung} {model}: failed: {m.get('stderr', '')[-300:]}", flush=True)
                res[name]["rungs"][rung]["memory"] = mem
    for rd in (rd for name in names for rd in res[name]["rounds"]):
        rd.pop("machine", None)  # the same machine: kept once, at the top

    # --- table
    ref = res.get("glibc-tuned", {}).get("rungs", {})
    hdr = (f"{'allocator':<13} {'rung':>5} | {'BDH tok/s':>9} {'(/cpu s)':>9} | {'GPT tok/s':>9} {'(/cpu s)':>9} | "
           f"{'BDH/GPT time':>12} {'(paired)':>8} | {'/ FLOP ratio':>12} {'(cpu)':>6} | {'BDH peak RSS':>12} "
           f"{'GPT peak RSS':>12} | {'BDH faults/step':>15} | {'BDH vs tuned':>20}")
    lines = [hdr, "-" * len(hdr)]
    for name in a.allocators:
        if res[name]["status"] == "skipped":
            lines.append(f"{name:<13} skipped: {res[name]['reason']}")
            continue
        for rung in a.rungs:
            x = res[name]["rungs"][rung]
            if x["status"] != "ok":
                lines.append(f"{name:<13} {rung:>5} | failed")
                continue
            mem = x.get("memory", {})
            bm, gm = mem.get("bdh", {}), mem.get("gpt", {})
            vs = "-"
            rx = ref.get(rung, {})
            if rx.get("status") == "ok" and name != "glibc-tuned":
                speed = x["tok_per_cpu_s"]["bdh"] / rx["tok_per_cpu_s"]["bdh"]
                rss = (bm.get("peak_rss_bytes") or 0) / (rx.get("memory", {}).get("bdh", {}).get("peak_rss_bytes") or 1)
                x["bdh_vs_glibc_tuned"] = {"tok_per_cpu_s": speed, "peak_rss": rss if bm.get("peak_rss_bytes") else None,
                                           "time_over_flop_ratio": x["time_over_flop_ratio"] / rx["time_over_flop_ratio"]}
                vs = f"{speed:.2f}x speed" + (f", {rss:.2f}x RSS" if bm.get("peak_rss_bytes") else "")
            lines.append(
                f"{name:<13} {rung:>5} | {x['tok_s']['bdh']:>9.0f} {x['tok_per_cpu_s']['bdh']:>9.0f} | "
                f"{x['tok_s']['gpt']:>9.0f} {x['tok_per_cpu_s']['gpt']:>9.0f} | {x['time_ratio']:>11.2f}x "
                f"{x['time_ratio_paired_median']:>7.2f}x | {x['time_over_flop_ratio']:>11.2f}x "
                f"{x['cpu_time_over_flop_ratio']:>5.2f}x | {human_bytes(bm.get('peak_rss_bytes')):>12} "
                f"{human_bytes(gm.get('peak_rss_bytes')):>12} | "
                f"{format(bm['minor_faults_per_step'], '.0f') if 'minor_faults_per_step' in bm else '-':>15} | {vs:>20}")
    load_end = [round(x, 2) for x in os.getloadavg()]
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\nBDH/GPT time / FLOP ratio: 1.0 = BDH's step costs what its FLOPs say relative to GPT's (target <= 1.5). "
          f"The within-run BDH/GPT ratio is the robust figure on this shared machine; tok/s compare across allocators "
          f"only roughly (per CPU second better than per wall second). Load average at start "
          f"{info['loadavg_1_5_15']}, at end {load_end}.")
    out = {"benchmark": "allocators", "mode": "quick" if a.quick else "full", "machine": info, "settings": settings,
           "status": "ok" if any(res[n]["status"] == "ok" for n in names) else "failed", "allocators": res,
           "table": table, "loadavg_at_end": load_end, "wall_s": time.perf_counter() - t_start}
    path = write_json(a.out, out)
    print(f"wrote {os.path.relpath(path)} ({out['wall_s']:.0f} s)")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
