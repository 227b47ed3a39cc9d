"""Speed of the task generators (bdh.tasks): examples/s and tokens/s per built-in task, at its train size and 8x.

    python -m benchmarks.task_speed                   # ~1 s per task and size
    python -m benchmarks.task_speed --quick           # ~0.2 s per task and size
    python -m benchmarks.task_speed --tasks parity,sudoku9 --seconds 2 --out benchmarks/results/task_speed.json

Each measurement times `Task.batch(rng, size, batch)` (generation, validation by `checked_example`, padding into
tensors), repeated until `--seconds` have passed, single process, one thread. Sizes above a task's max_size
(Sudoku: blanks are bounded by the grid) are clipped to it. Tokens are the batch's padded (B, T) positions.
Example generation must not be the bottleneck of task training: a tiny model on 2 CPU cores consumes a few
thousand tokens/s, so the bar is >= 20k tokens/s at train size.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path


import torch

from .common import format_machine, machine_info, write_json

from bdh.tasks import TASKS, load_task

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "task_speed.json"
QUICK_OUT = Path(__file__).resolve().parent / "results" / "task_speed_quick.json"
BAR_TOKENS_PER_S = 20_000


def measure(task, size: int, batch: int, seconds: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    task.batch(rng, size, batch)  # warm-up (caches, first-call costs)
    n_ex = n_tok = n_ans = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        x, _, m = task.batch(rng, size, batch)
        n_ex += x.shape[0]
        n_tok += x.numel()
        n_ans += int(m.sum())
        wall = time.perf_counter() - t0
        if wall >= seconds:
            break
    cpu = time.process_time() - c0
    return {
        "size": size, "batch": batch, "examples": n_ex, "tokens": n_tok, "wall_s": wall, "cpu_s": cpu,
        "examples_per_s": n_ex / wall, "tokens_per_s": n_tok / wall, "answers_per_s": n_ans / wall,
        "tokens_per_example": n_tok / n_ex, "cpu_per_wall": cpu / wall if wall else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: every built-in)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing budget per task and size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="0.2 s per task and size")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seconds = 0.2 if args.quick else args.seconds
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    load_task("parity")  # registers the built-ins
    names = args.tasks.split(",") if args.tasks else list(TASKS)

    info = machine_info()
    print(format_machine(info))
    print(f"Task.batch(rng, size, {args.batch}), {seconds:g} s per row, 1 thread\n")
    header = f"{'task':<10} {'size':>14} {'tokens/ex':>9} {'examples/s':>11} {'tokens/s':>11} {'answers/s':>10}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in names:
        task = load_task(name)
        for mult in (1, 8):
            size = mult * task.train_size
            if task.max_size is not None:
                size = min(size, task.max_size)
            r = measure(task, size, args.batch, seconds)
            r.update(task=name, size_name=task.size_name, multiple=mult, train_size=task.train_size)
            rows.append(r)
            label = f"{task.size_name}={size}" + ("" if size == mult * task.train_size else "*")
            flag = "  < bar" if mult == 1 and r["tokens_per_s"] < BAR_TOKENS_PER_S else ""
            print(f"{name:<10} {label:>14} {r['tokens_per_example']:>9.0f} {r['examples_per_s']:>11,.0f} "
                  f"{r['tokens_per_s']:>11,.0f} {r['answers_per_s']:>10,.0f}{flag}")
    print("\n* clipped to the task's max_size (8x the train size is beyond what the task can generate)")
    slow = [r["task"] for r in rows if r["multiple"] == 1 and r["tokens_per_s"] < BAR_TOKENS_PER_S]
    print(f"train size below {BAR_TOKENS_PER_S:,} tokens/s: {', '.join(slow) if slow else 'none'}")
    write_json(out, {"benchmark": "task_speed", "machine": info, "seconds_per_row": seconds, "batch": args.batch,
                     "bar_tokens_per_s": BAR_TOKENS_PER_S, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
