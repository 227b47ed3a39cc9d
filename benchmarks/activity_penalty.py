"""Sparsity vs quality: the default run trained with several `train.activity_penalty` weights.

    python -m benchmarks.activity_penalty --steps 800 --penalty 0 --penalty 0.03 --penalty 0.1 --penalty 0.3 \\
        --penalty 1 --penalty 3

Every weight is one `bdh train --config default --set train.steps=STEPS --set train.activity_penalty=W`
subprocess (the config's processes, one thread each; `--jobs` runs at a time; a finished run in `--runs` is
reused). Then, per model, on the same English prompt and 64 sampled tokens as benchmarks/sparse_decode.py: the fraction of x_sparse > 0, of active state rows (RoPE pairs, the rows the sparse
decode path reads and writes) and of x*y > 0 per layer, and the final validation loss of the run. Writes
JSON (--out, default benchmarks/results/activity_penalty.json) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


import torch

from .common import format_machine, machine_info, write_json
from .sparse_decode import activity, make_prompt, sample_tokens

from bdh import load_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "activity_penalty.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--penalty", type=float, action="append", help="train.activity_penalty (repeatable; default 0, 0.1, 0.3)")
    p.add_argument("--config", default="default", help="the run config (shipped name or TOML)")
    p.add_argument("--steps", type=int, default=800, help="train.steps of every run")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="extra KEY=VALUE for every run")
    p.add_argument("--runs", default="runs/activity-penalty", help="where the runs go (finished ones are reused)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def train_all(args, penalties: list[float]) -> dict[float, Path]:
    dirs = {lam: Path(args.runs) / f"penalty-{lam:g}" for lam in penalties}
    todo = [lam for lam, d in dirs.items() if not (d / "summary.json").is_file()]
    running: list[tuple[float, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            lam = todo.pop(0)
            cmd = [sys.executable, "-m", "bdh", "train", "--config", args.config, "--out", str(dirs[lam]),
                   "--set", f"train.steps={args.steps}", "--set", f"train.activity_penalty={lam}",
                   "--set", "train.threads=1", "--set", "train.sample_tokens=0", "--set", "train.eval_every=0"]
            for o in args.overrides:
                cmd += ["--set", o]
            print(" ".join(cmd[1:]), flush=True)
            dirs[lam].parent.mkdir(parents=True, exist_ok=True)
            with open(f"{dirs[lam]}.log", "w") as log:  # the child keeps its own handle
                running.append((lam, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        for lam, proc in list(running):
            if proc.poll() is not None:
                running.remove((lam, proc))
                if proc.returncode:
                    raise SystemExit(f"training with activity_penalty={lam:g} failed (exit {proc.returncode}); "
                                     f"see {dirs[lam]}.log")
        time.sleep(1)
    return dirs


def main(argv=None) -> int:
    args = parse_args(argv)
    penalties = args.penalty or [0.0, 0.1, 0.3]
    info = machine_info()
    print(format_machine(info))
    dirs = train_all(args, penalties)
    torch.set_num_threads(1)
    results = []
    for lam, d in dirs.items():
        model = load_model(d).float()
        prompt = make_prompt(model, 1)
        with torch.inference_mode():
            _, state = model.prefill(prompt[:, :-1])
        toks = sample_tokens(model, state, 64, args.seed, prompt[:, -1])
        summary = json.loads((d / "summary.json").read_text())
        results.append({"activity_penalty": lam, "run": str(d), "n": model.config.n,
                        "val_loss": summary["val_loss"], "val_bpb": summary["val_bpb"],
                        "activity": activity(model, state, toks)})
    base = next((r["val_loss"] for r in results if r["activity_penalty"] == 0), None)
    print(f"\n{args.config} config, {args.steps} steps, activity over 64 sampled tokens (batch 1)\n")
    print("| activity_penalty | val loss (nats/token) | vs no penalty | x > 0 per layer | active state rows per layer "
          "| x*y > 0 per layer |")
    print("|---|---|---|---|---|---|")
    for r in results:
        per = {k: " / ".join(f"{a[k]:.1%}" for a in r["activity"]) for k in ("x_active", "rows_active", "xy_active")}
        delta = "-" if base is None else f"{r['val_loss'] - base:+.4f}"
        print(f"| {r['activity_penalty']:g} | {r['val_loss']:.4f} | {delta} | {per['x_active']} | {per['rows_active']} "
              f"| {per['xy_active']} |")
    out = write_json(args.out, {"machine": info, "config": args.config, "steps": args.steps,
                                "overrides": args.overrides, "results": results})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
