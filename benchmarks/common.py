"""Shared helpers for the benchmarks: machine description, memory readings, the timers (a median of repeats,
interleaved A/B rounds), and how one benchmark starts another in a child process.

`benchmarks` is a package: every benchmark runs from the repository root as ``python -m benchmarks.<name>``
and imports these helpers as ``from .common import ...`` (no ``sys.path`` edits).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


def module_command(name: str, *args) -> list[str]:
    """argv of ``python -m benchmarks.NAME ARGS...``: a benchmark run in a child process (with `child_env`)."""
    return [sys.executable, "-m", f"benchmarks.{name}", *map(str, args)]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) with the repository root first on PYTHONPATH, so ``-m benchmarks.NAME`` resolves
    in a child started from any working directory."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags(wanted=("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "neon")) -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def git_commit(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """HEAD commit and whether the working tree has changes (None fields when git is unavailable)."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info() -> dict[str, Any]:
    """Platform, CPU, cores, RAM, Python/torch versions, torch threads, load average, git commit."""
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = None
    mem = _mem_total_bytes()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "ram_bytes": mem,
        "ram_gib": None if mem is None else round(mem / 2**30, 1),
        "loadavg_1_5_15": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": capability,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "mkl": bool(torch.backends.mkl.is_available()),
        "git": git_commit(),
        "ld_preload": os.environ.get("LD_PRELOAD") or None,  # a preloaded allocator (jemalloc, tcmalloc) changes timings
        "argv": sys.argv,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_machine(info: dict[str, Any]) -> str:
    g = info.get("git") or {}
    commit = (g.get("commit") or "?")[:12] + ("+dirty" if g.get("dirty") else "")
    return (
        f"{info['cpu_model']} | {info['cpu_affinity'] or info['cpu_count']} cores usable "
        f"({info['cpu_count']} online) | {info['ram_gib']} GiB RAM | torch {info['torch']} "
        f"({info['torch_cpu_capability']}), {info['torch_num_threads']} threads | load {info['loadavg_1_5_15']} "
        f"| git {commit}"
    )


# ----------------------------------------------------------------------------- memory
def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start, or since the last successful `reset_peak_rss`.

    Reads VmHWM from /proc/self/status (which `reset_peak_rss` can reset) and falls back to
    resource.getrusage (lifetime peak; kilobytes on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return lifetime_peak_rss_bytes()


def lifetime_peak_rss_bytes() -> int:
    """resource.getrusage peak RSS of this process (on Linux, `reset_peak_rss` resets this mark too)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark (Linux: write 5 to /proc/self/clear_refs). True when it worked.

    When it does not work, `peak_rss_bytes` keeps reporting the lifetime peak, so per-phase peaks are only
    meaningful when phases run from the smallest to the largest.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- CPU allocator
MALLOC_CHOICES = ("tuned", "default")
_malloc: dict[str, Any] | None = None  # the setting this process's training benchmark chose (apply_malloc)


def add_malloc_arg(p, default: str = "tuned") -> None:
    """The `--malloc` option of a training benchmark (`apply_malloc`)."""
    p.add_argument("--malloc", choices=MALLOC_CHOICES, default=default,
                   help="tuned (default): glibc malloc keeps freed memory, as `bdh train` and bdh.training.train set it "
                   "on CPU (bdh.allocator.keep_freed_memory); default: glibc's own settings (also the way to measure "
                   "an allocator preloaded with LD_PRELOAD)")


def _keep_freed_memory() -> Callable[[], bool]:
    try:
        from bdh.allocator import keep_freed_memory
    except ImportError:  # a worker running against an earlier tree's `bdh` (core_regression.py): this tree's module
        import importlib.util

        spec = importlib.util.spec_from_file_location("_bdh_allocator", REPO_ROOT / "src" / "bdh" / "allocator.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        keep_freed_memory = mod.keep_freed_memory
    return keep_freed_memory


def apply_malloc(mode: str = "tuned", device: str = "cpu") -> dict[str, Any]:
    """The CPU allocator setting of every benchmark that trains (one home for it): "tuned" applies
    `bdh.allocator.keep_freed_memory()` on CPU as the trainer does (without it BDH's training step was 2x slower
    at the CPU ladder's sizes); "default" leaves glibc's settings. Process-wide and permanent, so the first call
    decides: a later call asking for the other mode raises. `train_step_fn` applies "tuned" when the script has
    not chosen. Returns {"malloc", "malloc_applied", "ld_preload"} for the JSON (applied is False off glibc, on
    CUDA, under BDH_MALLOC_TUNE=0, and under an LD_PRELOADed jemalloc/tcmalloc).
    """
    global _malloc
    if mode not in MALLOC_CHOICES:
        raise ValueError(f"malloc mode {mode!r}: expected one of {MALLOC_CHOICES}")
    if _malloc is not None:
        if _malloc["malloc"] != mode and _malloc["malloc_applied"]:
            raise RuntimeError(f"apply_malloc({mode!r}): this process's allocator is already {_malloc['malloc']!r}")
        return dict(_malloc)
    applied = mode == "tuned" and str(device).split(":")[0] == "cpu" and _keep_freed_memory()()
    _malloc = {"malloc": mode, "malloc_applied": bool(applied), "ld_preload": os.environ.get("LD_PRELOAD") or None}
    return dict(_malloc)


# ----------------------------------------------------------------------------- timing
def median_time(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, setup: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Run `fn` `warmup` times untimed, then `repeats` times timed (perf_counter); summary in seconds.

    `setup`, when given, runs untimed before every call (warm-up calls included). Returns
    {"median_s", "min_s", "max_s", "mean_s", "stdev_s", "repeats", "times_s", "cpu_per_wall", "cpu_s"}: cpu_per_wall is
    this process's CPU time over wall time while timing (about the thread count when the cores are free;
    well below it when other processes take the cores).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected >= 1")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return summarize(times, cpu)


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
                      ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """A/B (or more) timing on a shared machine: `warmup` untimed calls of each function, then `repeats` rounds
    that call each once in an order rotated every round (A B, B A, ... for two), so a slow spell of the machine
    falls on every side alike; ratios come from these interleaved samples.

    Returns (the first call's result per name, e.g. the first training step's loss; wall seconds per name)."""
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: expected both >= 1")
    first = {k: f() for k, f in fns.items()}
    for _ in range(warmup - 1):
        for f in fns.values():
            f()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return first, times


def train_step_fn(model, B: int, T: int, carry: bool, seed: int = 0, bf16: bool = False) -> Callable[[], float]:
    """A closure running one training step of `model` on a fixed random (B, T) byte batch; returns the loss.

    The trainer's step (`bdh.training.trainer.LossModule`, form "auto"): forward + cross-entropy, backward,
    gradient clipping at 1, AdamW (lr 1e-3, weight decay 0.1), zero_grad; with `carry`, the state is carried
    (detached) from one step to the next as TBPTT does. `model` is any `LanguageModel` (also an earlier source
    tree's BDH, `benchmarks/train_ab.py`). The model is put in train mode. `bf16`: the forward under bf16 autocast
    on the model's device, as `train.precision = "bf16"` runs it. The process's CPU allocator is set as the
    trainer sets it (`apply_malloc("tuned")`) unless the script chose already.
    """
    import contextlib

    import torch

    from bdh.training.trainer import LossModule

    if _malloc is None:  # the trainer's allocator setting, unless the script chose one (apply_malloc)
        apply_malloc("tuned", next(model.parameters()).device.type)
    model.train()
    lm = LossModule(model, "auto", False, carry)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 256, (B, T), generator=g), torch.randint(0, 256, (B, T), generator=g)
    box = {"state": None}

    dev = next(model.parameters()).device.type
    autocast = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> float:
        with autocast():
            obj, _, new = lm(x, y, box["state"])
        obj.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if new is not None:
            box["state"] = model.carry_state(new)
        return float(obj.detach())

    return step


def time_once(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of `fn`."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def summarize(times: list[float], cpu: list[float] | None = None) -> dict[str, Any]:
    """Median/min/max/mean/stdev of wall times (seconds), and CPU/wall when CPU times are given."""
    if not times:
        raise ValueError("summarize: no times")
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "repeats": len(times),
        "times_s": times,
        "cpu_per_wall": None if cpu is None else sum(cpu) / sum(times),
        "cpu_s": cpu,
    }


# ----------------------------------------------------------------------------- output
def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`bdh.io.atomic_write_json` (indent 2, parent folders created); kept because every benchmark calls it.

    Imported here, not at the top: a benchmark's worker may run against an earlier tree's `bdh` (without `io`)."""
    from bdh.io import atomic_write_json

    return atomic_write_json(path, data)
