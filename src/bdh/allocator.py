"""CPU training memory: keep freed blocks mapped instead of returning them to the OS (glibc malloc).

A training step allocates and frees the same large (B, h, T, N) activations and gradients every step. glibc
serves blocks above its mmap threshold (which it never raises beyond 32 MiB) with fresh `mmap`ed pages and
unmaps them on `free`, so every step page-faults and zero-fills all of them again: at the CPU ladder's
n = 8192 (16 x 128 tokens, 67 MB per activation) that doubled the training step (benchmarks/train_speed.py
--ladder, README). `keep_freed_memory()` sets M_MMAP_MAX = 0 (every block from the heap) and M_TRIM_THRESHOLD
to 2 GiB - 1 (freed memory stays mapped), so each step reuses the previous step's pages. The cost is resident
memory: heap fragmentation keeps more of it mapped (measured: the 3.2M ladder rung at 16 x 128 tokens, peak RSS
1.7 -> 3.2 GiB; the default config's parallel form at T = 2048, 1.5 -> 2.8 GiB; the chunked form unchanged).

Process-wide and permanent (glibc has no way to read the previous values back); `bdh train` calls it on CPU.
Linux with glibc only (elsewhere: a no-op returning False); `BDH_MALLOC_TUNE=0` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc for repeated large allocations (module docstring). Idempotent; True if applied."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("BDH_MALLOC_TUNE", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _applied
