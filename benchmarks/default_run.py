"""The default `bdh train`, end to end, an earlier tree against this one: wall clock, tokens/s and final loss.

    git archive <commit> src | tar -x -C /tmp/bdh-base            # the baseline's source tree
    python -m benchmarks.default_run --baseline /tmp/bdh-base/src --rounds 1
    python -m benchmarks.default_run --baseline /tmp/bdh-base/src --quick    # 300 steps each (smoke run)

Each round runs the whole command `python -m bdh train` (its own config: `src/bdh/configs/default.toml` of each
tree, two DDP processes of one thread) once per side, alternating which goes first, in fresh subprocesses with
`PYTHONPATH` pointing at that side's `src/`, into a fresh run directory. Recorded per run: the wall clock of the
command (start to exit: start-up, training, periodic evals, the final evaluation on the whole validation split,
the sample, the saves), the trainer's training time and tokens/s (`summary.json`), the final validation loss
(nats/byte), the optimizer and step count of the config, peak RSS. Figures are medians over rounds; every run is
in the JSON. `--set SECTION.KEY=VALUE` is passed to both sides (e.g. `--set train.steps=300`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "default_run.json"
QUICK_OUT = HERE / "results" / "default_run_quick.json"


def run_side(src: str, out_dir: Path, overrides: list[str]) -> dict:
    """`python -m bdh train` against the `bdh` package in `src`; its summary and the command's wall clock."""
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "bdh", "train", "--out", str(out_dir), "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bdh train ({src}) failed with code {r.returncode}:\n{r.stderr[-3000:]}")
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    train_cfg = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))["config"]["train"]
    return {"src": src, "wall_s": wall, "train_time_s": summary["train_time_s"], "tok_per_s": summary["tok_per_s"],
            "val_loss": summary["val_loss"], "val_tokens": summary["val_tokens"], "steps": summary["step"],
            "tokens": summary["tokens"], "optimizer": train_cfg.get("optimizer", "adamw"),
            "peak_rss_mib": summary.get("peak_rss_mib")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="the baseline commit's src/ directory")
    p.add_argument("--current", default=str(HERE.parent / "src"), help="this tree's src/ (default)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config override passed to both sides (repeatable)")
    p.add_argument("--quick", action="store_true", help="300 steps per side, no periodic evals (smoke run)")
    p.add_argument("--out", default=None, help=f"JSON output (default results/{DEFAULT_OUT.name}; quick {QUICK_OUT.name})")
    a = p.parse_args(argv)
    from .common import format_machine, machine_info, write_json

    for name in ("baseline", "current"):
        if not Path(getattr(a, name), "bdh", "__init__.py").is_file():
            p.error(f"--{name} {getattr(a, name)!r}: expected a src/ directory holding bdh/__init__.py")
    if a.rounds < 1:
        p.error(f"--rounds {a.rounds}: expected a positive integer")
    overrides = list(a.overrides)
    if a.quick:
        overrides = ["train.steps=300", "train.eval_every=0", "train.sample_every=0", "train.checkpoint_every=0",
                     "train.final_eval_tokens=32768", "train.sample_tokens=0"] + overrides
    info = machine_info()
    print(format_machine(info), flush=True)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bdh-default-run-") as tmp:
        for r in range(a.rounds):
            order = ("baseline", "current") if r % 2 == 0 else ("current", "baseline")
            rd = {}
            for side in order:
                rd[side] = run_side(getattr(a, side), Path(tmp) / f"{side}-{r}", overrides)
                x = rd[side]
                print(f"round {r + 1}/{a.rounds} {side}: {x['steps']} steps ({x['optimizer']}), wall {x['wall_s']:.1f} s, "
                      f"{x['tok_per_s']:,.0f} tok/s, val loss {x['val_loss']:.4f}", flush=True)
            rd["wall_ratio"] = rd["baseline"]["wall_s"] / rd["current"]["wall_s"]
            rd["loss_diff"] = rd["current"]["val_loss"] - rd["baseline"]["val_loss"]
            rounds.append(rd)
    med = {side: {k: statistics.median(rd[side][k] for rd in rounds)
                  for k in ("wall_s", "train_time_s", "tok_per_s", "val_loss")} for side in ("baseline", "current")}
    ratios = {"wall_baseline_over_current": statistics.median(rd["wall_ratio"] for rd in rounds),
              "tok_per_s_current_over_baseline": med["current"]["tok_per_s"] / med["baseline"]["tok_per_s"],
              "val_loss_current_minus_baseline": statistics.median(rd["loss_diff"] for rd in rounds)}
    print(f"\n| median of {a.rounds} round(s) | baseline | current |")
    print("|---|---|---|")
    for k in ("wall_s", "train_time_s", "tok_per_s", "val_loss"):
        print(f"| {k} | {med['baseline'][k]:,.4g} | {med['current'][k]:,.4g} |")
    print(f"wall clock baseline / current: {ratios['wall_baseline_over_current']:.3f}x; tokens/s current / baseline: "
          f"{ratios['tok_per_s_current_over_baseline']:.3f}x; val loss current - baseline: "
          f"{ratios['val_loss_current_minus_baseline']:+.4f} nats/byte")
    out = a.out or str(QUICK_OUT if a.quick else DEFAULT_OUT)
    write_json(out, {"benchmark": "default_run", "machine": info, "args": vars(a), "overrides": overrides,
                     "median": med, "ratios": ratios, "rounds": rounds})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
