"""`bdh tasks sweep`: a grid of model/training options x tasks x seeds, resumable, in parallel processes.

    bdh tasks sweep --preset quick --tasks copy --grid 'model.damping=null,"alibi"' --grid model.rope_theta=65536,1000 \
        --seeds 3 --jobs 2 --threads 1 --baselines gpt-alibi,gpt-rope --out runs/sweep
    bdh tasks sweep --preset cpu --tasks parity,copy --variant 'best:model.damping="alibi";model.rope_theta=1000' \
        --variant base: --set train.steps=1000 --list                      # the plan only: writes nothing

The base model is the preset's BDH (`bdh tasks compare`'s PRESETS: shape, training steps/batch/lr, evaluation
sizes and examples) with --set applied; each variant adds its settings (any `section.key=value` that `bdh train
--set` takes, applied last, so new config options work as soon as the config knows them). `--grid KEY=V1,V2`
(repeatable): the variants are the cartesian product, each named by its settings that differ from the base
(`damping=alibi,rope_theta=1000`; `base` when none do); `--variant NAME:K=V;K=V` adds hand-picked ones.
`--baselines gpt-alibi,gpt-rope`: compare's FLOP-matched GPT arms at the base BDH (its parameters; the steps that
equal its training FLOPs), reference lines in every plot. Every variant's config is resolved and validated before
anything runs (a bad key or value: one line naming it, nothing written).

Each run is a compare run (`bdh.tasks.compare.running.execute`: trained, or a finished one of the same config
reused with its evaluation) in OUT/runs/TASK/bdh/VARIANT/seedS (baselines OUT/runs/TASK/ARM/seedS), evaluated at
the preset's length multiples (1x..32x where the task allows; --mults) with each example's outcome. OUT/results.csv
(one row per variant x task x seed x size), summary.json, summary.md (per task a table variant x multiple, mean
[95% bootstrap interval over examples and seeds]; the best variant per task at 4x; with two or more --grid options
the mean per option value), acc_mult_TASK.png (one line per variant, baselines dashed) and report.html
(self-contained: the PNGs inline as base64).
"""

from .command import add_sweep_parser, cmd_sweep, register
from .planning import (BASELINES, Variant, make_variants, parse_baselines, parse_grid, parse_mults, parse_sets,
                       parse_variant, plan_sweep, plan_table, split_top, sweep_preset)
from .reporting import FIELDS, best_per_task, main_effects, plot_task, sweep_summary, task_table, write_reports
from .running import label_rows, sweep

__all__ = ["BASELINES", "FIELDS", "Variant", "add_sweep_parser", "best_per_task", "cmd_sweep", "label_rows",
           "main_effects", "make_variants", "parse_baselines", "parse_grid", "parse_mults", "parse_sets",
           "parse_variant", "plan_sweep", "plan_table", "plot_task", "register", "split_top", "sweep",
           "sweep_preset", "sweep_summary", "task_table", "write_reports"]
