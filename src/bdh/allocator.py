"""CPU training memory: keep freed blocks mapped instead of returning them to the OS (glibc malloc).

A training step allocates and frees the same large (B, h, T, N) activations and gradients every step. glibc
serves blocks above its mmap threshold (which it never raises beyond 32 MiB) with fresh `mmap`ed pages and
unmaps them on `free`, so every step page-faults and zero-fills all of them again: at the CPU ladder's
n = 8192 (16 x 128 tokens, 67 MB per activation) that doubled the training step (benchmarks/train_speed.py
--ladder, README). `keep_freed_memory()` sets M_MMAP_MAX = 0 (every block from the heap) and M_TRIM_THRESHOLD
to 2 GiB - 1 (freed memory stays mapped), so each step reuses the previous step's pages. The cost is resident
memory: heap fragmentation keeps more of it mapped (measured: the 3.2M ladder rung at 16 x 128 tokens, peak RSS
1.7 -> 3.2 GiB; the default config's parallel form at T = 2048, 1.5 -> 2.8 GiB; the chunked form unchanged).

Process-wide and permanent (glibc has no way to read the previous values back); `bdh train` and
`bdh.training.train` call it on CPU, and a training loop of one's own can call it too. Linux with glibc malloc
only: elsewhere, and when another allocator is preloaded, a no-op returning False. `BDH_MALLOC_TUNE=0` in the
environment turns it off.

The alternative PyTorch's CPU performance guide recommends, another allocator through LD_PRELOAD, measured at
the same ladder rungs (benchmarks/allocators.py, results/allocators.json): tcmalloc (libtcmalloc_minimal.so.4)
reuses these blocks by itself, as fast as this setting, at 0.6-0.75x its peak RSS (about glibc's untuned
peak); jemalloc does the same only with MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 (its defaults purge
blocks above 8 MiB eagerly: page faults and speed as under glibc's defaults).
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
    if not glibc_malloc_active():  # not glibc, or another allocator (LD_PRELOAD jemalloc/tcmalloc) serves malloc
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _applied


def glibc_malloc_active() -> bool:
    """True when glibc's malloc serves this process: the `malloc` the process resolves is libc.so.6's own.

    An allocator preloaded with LD_PRELOAD (jemalloc, tcmalloc) interposes `malloc`; `mallopt` then still
    "succeeds" (returns 1: glibc's, which tunes the unused glibc heap, under jemalloc; tcmalloc's own, a stub,
    under tcmalloc) while changing nothing, so the comparison of addresses decides instead.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")  # libc.so.6: glibc's soname (musl: libc.so)
        libc.mallopt  # noqa: B018 (AttributeError when the C library has none)
        address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        return address(process.malloc) == address(libc.malloc)
    except (OSError, AttributeError):
        return False
