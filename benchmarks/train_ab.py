"""A/B of the BDH training step: an earlier source tree against this one, in ONE process, repeats interleaved.

    git worktree add /tmp/bdh-base <commit>        # or: git archive <commit> src | tar -x -C /tmp/bdh-base
    python -m benchmarks.train_ab --baseline /tmp/bdh-base/src --threads 1
    python -m benchmarks.train_ab --baseline /tmp/bdh-base/src --configs default,3.2M --repeats 9

The baseline's `bdh` package is copied to a temporary directory as `bdh_base` (its imports are relative), so
both versions of the model run side by side in the same process, on the same machine load: every timed step of
one is followed by a step of the other (order alternating), and the ratio is taken per pair (median of the
paired ratios) as well as of the medians. One step = the trainer's `LossModule` (carried TBPTT state for
`default`), backward, gradient clipping, AdamW, as `benchmarks/train_profile.py`. Before timing, both sides'
first losses (same seed, same weights) are compared.

Configs: `default` (the default run's per-process step: B=8, T=64, carried state) and the CPU ladder rungs
`0.8M`, `1.6M`, `3.2M` at the `bdh compare --preset cpu` shape (B=16, T=128). `--malloc tuned` (default)
applies `bdh.allocator.keep_freed_memory()` (`common.apply_malloc`) to the whole process (both sides): it cannot
be A/B-ed within one process; run twice with `--malloc default` / `tuned` for its effect.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path


import torch

from .common import (add_malloc_arg, apply_malloc, format_machine, interleaved_times, machine_info, train_step_fn,
                     write_json)

RESULTS = Path(__file__).resolve().parent / "results"


def shapes() -> dict[str, tuple[dict, int, int, bool]]:
    """name -> (BDHConfig fields, B, T, carry)."""
    out = {"default": (dict(n_layer=2, n_embd=64, n_head=8, mlp_internal_dim_multiplier=16, dropout=0.0,
                            damping="alibi", chunk_size=128), 8, 64, True)}
    for name, n in (("0.8M", 4096), ("1.6M", 8192), ("3.2M", 16384)):
        out[name] = (dict(n_layer=2, n_embd=64, n_head=4, mlp_internal_dim_multiplier=n // 64, dropout=0.0), 16, 128, False)
    return out


def make_step(model_mod, config_mod, kw: dict, B: int, T: int, carry: bool, seed: int = 0):
    """One side's step: its own BDH class (`bdh_base` or `bdh`) in the shared closure (`common.train_step_fn`)."""
    torch.manual_seed(seed)
    return train_step_fn(model_mod.BDH(config_mod.BDHConfig(**kw, vocab_size=256)), B, T, carry, seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="the baseline's src/ directory (holding bdh/)")
    p.add_argument("--configs", default="default,0.8M,1.6M,3.2M", help="comma-separated: default, 0.8M, 1.6M, 3.2M")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per side and config (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    add_malloc_arg(p)
    p.add_argument("--out", default=str(RESULTS / "train_ab.json"))
    a = p.parse_args(argv)
    src = Path(a.baseline) / "bdh"
    if not (src / "model.py").is_file():
        p.error(f"--baseline {a.baseline!r}: expected a src/ directory holding bdh/model.py")
    known = shapes()
    want = [c.strip() for c in a.configs.split(",")]
    if any(c not in known for c in want) or a.repeats < 1:
        p.error(f"--configs {a.configs!r} / --repeats {a.repeats}: expected some of {', '.join(known)} and repeats >= 1")
    torch.set_num_threads(a.threads)
    malloc = apply_malloc(a.malloc)
    tmp = Path(tempfile.mkdtemp(prefix="bdh-ab-"))
    shutil.copytree(src, tmp / "bdh_base", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(tmp))
    import bdh_base.config as base_config
    import bdh_base.model as base_model

    import bdh.config as new_config
    import bdh.model as new_model

    info = machine_info()
    print(f"train A/B: {a.baseline} (base) vs {Path(new_model.__file__).parent} (new); {format_machine(info)}; "
          f"{a.threads} thread(s), malloc {a.malloc}, {a.repeats} interleaved repeats", flush=True)
    rows = []
    for name in want:
        kw, B, T, carry = known[name]
        steps = {"base": make_step(base_model, base_config, kw, B, T, carry),
                 "new": make_step(new_model, new_config, kw, B, T, carry)}
        first, times = interleaved_times(steps, a.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        paired = statistics.median(b / n for b, n in zip(times["base"], times["new"]))
        row = {"config": name, "B": B, "T": T, "carry": carry, "first_loss": first,
               "first_loss_abs_diff": abs(first["base"] - first["new"]), "times_s": times,
               "tok_s": {k: B * T / m for k, m in med.items()}, "speedup": med["base"] / med["new"],
               "speedup_paired_median": paired}
        rows.append(row)
        print(f"{name:>7} B={B} T={T}: base {row['tok_s']['base']:>8.0f} tok/s, new {row['tok_s']['new']:>8.0f} tok/s: "
              f"{row['speedup']:.2f}x (paired {paired:.2f}x); first loss |diff| {row['first_loss_abs_diff']:.1e}",
              flush=True)
        del steps
    shutil.rmtree(tmp, ignore_errors=True)
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start {info['loadavg_1_5_15']}, at end {load_end}")
    path = write_json(Path(a.out), {"benchmark": "train_ab", "machine": info, "baseline": a.baseline,
                                    "threads": a.threads, **malloc, "repeats": a.repeats, "results": rows,
                                    "loadavg_at_end": load_end})
    print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
