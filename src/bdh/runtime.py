"""What a command that runs a model shares, as a library: the device, the CPU threads, and argument value types.

`add_run_options(parser)` adds `--device` / `--threads`; `apply_run_options(args)` checks them (a ValueError
naming the flag) and sets torch's threads; `resolve_device(spec)` is the device check alone. The argparse `type=`
helpers (`positive_int`, `int_at_least`, `seed_value`, `fraction`, ...) turn a bad value into one line naming it
and the expected range. Library modules that define or run commands (`bdh.baselines.compare`,
`bdh.tasks.compare`, `bdh.hf.lm_eval`) import them from here; `bdh.cli` re-exports them for the command modules.
"""

from __future__ import annotations

import argparse
import math

from .generation import SEED_MAX  # seeds in [0, 2^63): torch.Generator.manual_seed's range

__all__ = ["THREADS_MAX", "add_run_options", "apply_run_options", "resolve_device", "seed_value", "int_at_least",
           "positive_int", "nonneg_int", "fraction", "nonneg_float", "positive_float"]

THREADS_MAX = 1024  # far more OpenMP threads crash (libgomp: thread creation fails, or a segfault at 100000)


# ----------------------------------------------------------------------------- --device / --threads
def add_run_options(p: argparse.ArgumentParser, *, device: bool = True, threads_default: int | None = None,
                    threads_help: str = "torch CPU threads, a positive integer (default: torch's choice)") -> None:
    """Add `--device` (default cpu) and `--threads` to a command that runs a model; see `apply_run_options`."""
    if device:
        p.add_argument("--device", default="cpu", help="torch device to run the model on: cpu (default), cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=threads_default, help=threads_help)


def resolve_device(spec: str):
    """The torch.device named by `spec`, or ValueError (one line) when it is malformed or not on this machine."""
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {spec!r}: not a torch device; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"--device {spec!r}: CUDA is not available ({why}); expected --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"--device {spec!r}: this machine has {n} CUDA device(s); expected cuda:0 .. cuda:{n - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {spec!r}: MPS is not available on this machine; expected --device cpu")
        return dev
    if dev.type == "meta":
        raise ValueError(f"--device {spec!r}: the meta device holds no data; expected cpu, cuda, cuda:N or mps")
    try:  # any other backend torch knows (xpu, ...): usable if it can hold a tensor
        torch.empty(1, device=dev)
    except Exception as e:  # noqa: BLE001 (backends raise RuntimeError, AssertionError, ...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--device {spec!r}: not usable on this machine ({first}); expected --device cpu") from None
    return dev


def apply_run_options(args: argparse.Namespace):
    """Validate `--threads` (set torch's CPU threads) and `--device`; the torch.device (None without --device).

    Call it first in a handler, before anything is loaded: bad values are a ValueError naming the flag."""
    import torch

    threads = getattr(args, "threads", None)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= THREADS_MAX:
            raise ValueError(f"--threads {threads}: expected a positive integer (at most {THREADS_MAX})")
    device = resolve_device(args.device) if getattr(args, "device", None) is not None else None
    if threads is not None:
        torch.set_num_threads(threads)
    return device


# ----------------------------------------------------------------------------- argparse value types
def seed_value(text: str) -> int:
    """argparse `type=` for --seed: an integer in [0, 2^63 - 1] (argparse turns the ValueError into one line)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer in [0, {SEED_MAX}]") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text}: expected an integer in [0, {SEED_MAX}]")
    return v


def int_at_least(lo: int, hi: int | None = None):
    """argparse `type=` factory: an integer >= `lo` (and <= `hi`); the error names the value and the range."""
    want = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {want}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{text}: expected {want}")
        return v

    parse.__name__ = f"int_at_least_{lo}"
    return parse


positive_int = int_at_least(1)  # counts: tokens, steps, runs, sequences
nonneg_int = int_at_least(0)  # counts where 0 means none / off


def _float_in(text: str, lo: float, hi: float, lo_open: bool, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}") from None
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        raise argparse.ArgumentTypeError(f"{text}: expected {what}")
    return v


def fraction(text: str) -> float:
    """argparse `type=`: a number in [0, 1]."""
    return _float_in(text, 0.0, 1.0, False, "a number in [0, 1]")


def nonneg_float(text: str) -> float:
    """argparse `type=`: a finite number >= 0 (e.g. a temperature)."""
    return _float_in(text, 0.0, math.inf, False, "a finite number >= 0")


def positive_float(text: str) -> float:
    """argparse `type=`: a finite number > 0 (e.g. a learning rate)."""
    return _float_in(text, 0.0, math.inf, True, "a finite number > 0")
