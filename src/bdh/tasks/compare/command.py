"""`bdh tasks compare`: its arguments, parsed and checked here, and the command (the plan, or `running.compare`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .planning import parse_lrs, parse_match, plan, plan_table
from .running import compare

# ----------------------------------------------------------------------------------------------- CLI
def _parse_seeds(text: str | None, flag: str = "--seeds") -> int | None:
    if text is None:
        return None
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a positive integer") from None
    if v < 1:
        raise ValueError(f"{flag} {text}: expected a positive integer")
    return v


def cmd_compare(args: argparse.Namespace) -> int:
    from ...runtime import apply_run_options

    apply_run_options(argparse.Namespace(threads=args.threads, device=args.device))  # --threads/--device checked
    tasks = parse_tasks(args.tasks)
    seeds = _parse_seeds(args.seeds)
    match = None if args.match is None else parse_match(args.match)
    lrs = parse_lrs(args.lrs)
    lr_seeds = None if args.lr_seeds is None else _parse_seeds(args.lr_seeds, "--lr-seeds")
    preset, runs = plan(args.preset, tasks, seeds, match=match, lrs=lrs, lr_seeds=lr_seeds)
    if args.list:
        print(plan_table(args.preset, runs))
        return 0
    out = args.out or f"runs/tasks-compare-{args.preset}"
    compare(args.preset, out, tasks=tasks, seeds=seeds, overwrite=args.overwrite, device=args.device,
            threads=args.threads, jobs=args.jobs, progress=not args.no_progress,
            command=invoked_command("compare", args.preset), match=match, lrs=lrs, lr_seeds=lr_seeds)
    print_summary(out, "*.png")
    return 0


def parse_tasks(text: str | None) -> list[str] | None:
    """--tasks "parity,copy" -> ["parity", "copy"]; None when not given; ValueError naming an empty item."""
    if text is None:
        return None
    tasks = [t.strip() for t in text.split(",")]
    if not all(tasks):
        raise ValueError(f"--tasks {text!r}: expected comma-separated task names")
    return tasks


def invoked_command(name: str, preset: str) -> str:
    """The command line as typed (`bdh tasks NAME ...`), for the reports."""
    if sys.argv[1:3] == ["tasks", name]:
        return " ".join(["bdh", "tasks", name] + sys.argv[3:])
    return f"bdh tasks {name} --preset {preset}"


def print_summary(out, plots: str) -> None:
    """summary.md without its image lines, then where the reports are."""
    md = (Path(out) / "summary.md").read_text(encoding="utf-8")
    print("\n".join(line for line in md.splitlines() if not line.startswith("![")))
    print(f"\nreports in {out} (results.csv, summary.json, summary.md, {plots}, report.html)")


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Add `compare` to the `bdh tasks` sub-commands."""
    c = subparsers.add_parser(
        "compare", help="BDH vs GPT (ALiBi, RoPE) matched on parameters and/or training FLOPs: CSV, markdown, "
                        "plots, HTML",
        description="Train BDH, GPT-ALiBi and GPT-RoPE at matched parameters (+-5%%), and with --match flops at "
                    "equal training FLOPs, several seeds and a learning-rate sweep, and evaluate them at multiples "
                    "of the training size (BDH also at other depths).")
    c.add_argument("--preset", default="cpu",
                   help="cpu (2 cores, <= 1 h with --jobs 2), quick (one task, <= 5 min) or gpu (one large GPU)")
    c.add_argument("--tasks", default=None, help="comma-separated tasks (default: the preset's)")
    c.add_argument("--seeds", default=None, help="seeds per model (default: the preset's, 3)")
    c.add_argument("--match", default=None,
                   help="params (the GPTs at BDH's parameters and steps), flops (arms MODEL-flops: the same "
                        "parameter-matched GPTs trained for the steps that make their training FLOPs equal BDH's) or "
                        "params,flops (both); default the preset's (flops for cpu, quick and gpu)")
    c.add_argument("--lrs", default=None,
                   help="a learning-rate sweep, e.g. 1e-3,3e-3,1e-2: every arm trained at each on the tuning seeds; "
                        "per task and arm the value with the best validation accuracy is used (default: the preset's)")
    c.add_argument("--lr-seeds", default=None,
                   help="the seeds the learning rates are swept on; the other seeds train only at the chosen value "
                        "(default: the preset's, 1)")
    add_run_arguments(c, "tasks-compare", "runs, parameters, FLOPs per token, training FLOPs, estimated time")
    c.set_defaults(func=lambda a: cmd_compare(parse_run_arguments(a)))
    return c


def add_run_arguments(c: argparse.ArgumentParser, name: str, plan: str) -> None:
    """The arguments of a command that trains many runs (`bdh tasks compare`, `bdh tasks sweep`): --out, --overwrite,
    --list, --no-progress, --device, --threads, --jobs."""
    c.add_argument("--out", default=None, help=f"output directory (default runs/{name}-PRESET)")
    c.add_argument("--overwrite", action="store_true",
                   help="retrain a run directory that holds a model from other settings (refused otherwise)")
    c.add_argument("--list", action="store_true", help=f"print the plan ({plan}) and exit")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--device", default=None, help="training device (default: the trainer's auto)")
    c.add_argument("--threads", type=str, default=None, help="torch CPU threads per run (1 on a shared CPU)")
    c.add_argument("--jobs", type=str, default="1",
                   help="training runs at once, each in its own process (default 1; 2 on 2 cores with --threads 1)")


def parse_run_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """--jobs and --threads as integers (ValueError naming the flag and value)."""
    try:
        args.jobs = int(args.jobs)
    except ValueError:
        raise ValueError(f"--jobs {args.jobs!r}: expected a positive integer (runs at once)") from None
    if args.threads is not None:
        try:
            args.threads = int(args.threads)
        except ValueError:
            raise ValueError(f"--threads {args.threads!r}: expected a positive integer") from None
    return args


register = add_compare_parser
