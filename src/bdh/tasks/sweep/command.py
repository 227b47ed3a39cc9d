"""`bdh tasks sweep`: its arguments, parsed and checked here, and the command (the plan, or `running.sweep`)."""

from __future__ import annotations

import argparse

from ..compare.command import (_parse_seeds, add_run_arguments, invoked_command, parse_run_arguments, parse_tasks,
                               print_summary)
from ..compare.planning import parse_lrs
from .planning import parse_baselines, parse_mults, plan_sweep, plan_table
from .running import sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from ...runtime import apply_run_options

    apply_run_options(argparse.Namespace(threads=args.threads, device=args.device))  # --threads/--device checked
    tasks = parse_tasks(args.tasks)
    seeds = _parse_seeds(args.seeds)
    mults = parse_mults(args.mults)
    baselines = parse_baselines(args.baselines)
    sets, grids, variants = list(args.set or []), list(args.grid or []), list(args.variant or [])
    lrs = parse_lrs(args.lrs)
    lr_seeds = _parse_seeds(args.lr_seeds, "--lr-seeds")
    scale = None if args.scale_passes is None else _parse_seeds(args.scale_passes, "--scale-passes")
    kw = dict(grids=grids, variants=variants, sets=sets, mults=mults, baselines=baselines, lrs=lrs, lr_seeds=lr_seeds,
              scale_passes=scale, device=args.device, threads=args.threads)
    if args.list:
        _, vs, runs = plan_sweep(args.preset, tasks, seeds, **kw)
        print(plan_table(args.preset, vs, runs, tuple(sets)))
        return 0
    out = args.out or f"runs/tasks-sweep-{args.preset}"
    command = invoked_command("sweep", args.preset)
    sweep(args.preset, out, tasks=tasks, seeds=seeds, overwrite=args.overwrite, jobs=args.jobs,
          progress=not args.no_progress, command=command, **kw)
    print_summary(out, "acc_mult_*.png, curves_*.png")
    return 0


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add `sweep` to the `bdh tasks` sub-commands."""
    c = subparsers.add_parser(
        "sweep", help="a grid of BDH options x tasks x seeds: accuracy vs length multiple, CSV, markdown, plots, HTML",
        description="Train the preset's BDH with every combination of --grid options (and each --variant) on the "
                    "tasks, several seeds, evaluate each at the length multiples, and report accuracy vs multiple "
                    "per variant with 95%% bootstrap intervals (FLOP-matched GPT baselines with --baselines). "
                    "Finished runs are reused: an interrupted sweep continues where it stopped.")
    c.add_argument("--preset", default="quick",
                   help="the base model, training and evaluation: quick (default), cpu, gpu (bdh tasks compare's)")
    c.add_argument("--tasks", default=None, help="comma-separated tasks (default: the preset's)")
    c.add_argument("--grid", action="append", metavar="SECTION.KEY=V1,V2,...",
                   help="an option and its values, e.g. 'model.damping=null,\"alibi\"' (values parsed like --set; "
                        "repeatable: the variants are the cartesian product)")
    c.add_argument("--variant", action="append", metavar="NAME:SECTION.KEY=VALUE;...",
                   help="a named variant, e.g. 'best:model.damping=\"alibi\";model.rope_theta=1000' (repeatable; "
                        "'base:' for the base model)")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="a setting of every variant (the base), e.g. train.steps=500 (repeatable)")
    c.add_argument("--seeds", default=None, help="seeds per variant (default: the preset's)")
    c.add_argument("--mults", default=None,
                   help="length multiples of the training size to evaluate, e.g. 1,2,4,8 (default: the preset's, "
                        "clipped to each task's largest size)")
    c.add_argument("--baselines", default=None,
                   help="GPT reference lines, e.g. gpt-alibi,gpt-rope: compare's FLOP-matched arms at the base BDH "
                        "(default none)")
    c.add_argument("--lrs", default=None,
                   help="a learning-rate sweep, e.g. 1e-3,3e-3,1e-2: per task, variant and baseline, each value "
                        "trained on the tuning seeds and the one with the best validation accuracy used for every "
                        "seed (default: the preset's one learning rate)")
    c.add_argument("--lr-seeds", default="1", help="the seeds the learning rates are swept on (default 1)")
    c.add_argument("--scale-passes", default=None, metavar="MAX",
                   help="also report each variant at test-time layer passes scaled with the length: L x ceil(size / "
                        "train size), at most MAX (variant NAME+scaled-passes; depth as test-time compute)")
    add_run_arguments(c, "tasks-sweep", "variants, runs, parameters, FLOPs, estimated time")
    c.set_defaults(func=lambda a: cmd_sweep(parse_run_arguments(a)))
    return c


register = add_sweep_parser
