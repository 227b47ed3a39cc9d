"""`bdh tasks compare`: BDH vs GPT (ALiBi) vs GPT (RoPE) on the reasoning tasks, the generalisation protocol.

    bdh tasks compare --preset cpu --out runs/tasks-cpu --jobs 2 --threads 1   # 7 CPU tasks, 3 seeds, < 1 h
    bdh tasks compare --preset cpu --tasks parity --out DIR      # one task's comparison
    bdh tasks compare --preset gpu --out runs/tasks-gpu          # larger models and steps, sudoku9 included
    bdh tasks compare --preset cpu --list                        # the plan: runs, parameters, FLOPs, estimated time
    bdh tasks compare --preset cpu --match params,flops          # + GPT arms matched by training FLOPs
    bdh tasks compare --preset cpu --tasks copy --lrs 1e-3,2e-3,4e-3   # a learning-rate sweep per arm

Protocol, per task of the preset:

* three models at matched parameters: BDH (the preset's shape) and two GPTs of the preset's depth and heads,
  one with ALiBi and one with RoPE positions. The GPT's width is chosen so its MLP is closest to 4x, and its MLP
  width (`mlp_dim`) is then solved so that its parameter count matches BDH's at the task's vocabulary; a gap
  above 5% (`bdh.baselines.ladders.MAX_PARAM_GAP`) refuses the preset before anything runs. `--match flops` (or
  `params,flops` for both) adds arms `gpt-alibi-flops`, `gpt-rope-flops`: the same GPTs trained for
  round(steps x BDH's training FLOPs per token / the GPT's) steps, so their training FLOPs equal BDH's (FLOPs per
  token: `bdh.interface.token_flops(config, T_train).training`, the model type's one FLOP model);
* equal training: one `task_run_config` per model and seed with the same steps, batch, learning-rate schedule,
  data seed (so the same examples in the same order) and sizes <= the task's training size; `--seeds` seeds each
  (seed s: model initialisation and data seed s);
* evaluation (`evaluate_task`, exact match on fresh examples from one evaluation seed) at 1x, 2x, 4x, 8x the
  training size (clipped to the task's largest size), BDH further (16x, 32x as the preset allows) with its
  constant-size state beside the GPT's growing KV cache (`state_bytes`), and BDH at other numbers of layer passes
  than it was trained with (L-1, L+1, 2L at 1x and 2x: weights shared across layers, depth as test-time compute);
* statistics: every accuracy with a 95% bootstrap interval over examples and seeds (`bdh.tasks.evaluate.
  bootstrap_interval`); a task counts as learned only where some arm reaches 0.95 exact match at the training
  size, otherwise its table says "not learned at this budget"; per arm the training FLOPs, tokens and wall-clock,
  and steps / FLOPs / wall-clock to 0.95 from the validation records along each run (the trainer's metrics.jsonl,
  validation seed 777, not the test examples); for a "pairs" task (MQAR) the training loss against ln(pairs);
* `--lrs A,B,C`: every arm and seed trained at each learning rate; per task and arm the value with the best mean
  validation accuracy is reported (its rows "selected" in results.csv), the others kept in OUT/runs/TASK/ARM/lrLR/.

OUT/results.csv (one row per task, model, seed, size, passes), summary.json, summary.md (mean +- std and
min-max over seeds), acc_size_TASK.png (accuracy and state bytes vs size; the seed spread as a band),
passes_TASK.png (BDH accuracy vs layer passes), curves_TASK.png (validation accuracy vs training FLOPs and vs
wall-clock along each run; MQAR's loss vs ln(pairs)), report.html (self-contained: the PNGs inline as base64), and
OUT/runs/TASK/MODEL/seedS/ (each a training run; a finished one with the same settings is reused, its
evaluation too, so an interrupted comparison continues where it stopped; a model from other settings is
replaced only with --overwrite).

The package: `planning` (presets, models, sizes, the plan and its time estimate), `running` (training and
evaluating each run, `compare` with --jobs), `reporting` (CSV, tables, plots, HTML), `command` (the arguments).
"""

from .command import add_compare_parser, cmd_compare, register
from .planning import (CPU_FLOPS, MATCHES, MODELS, PRESETS, Run, arms, match_gpt, model_configs, parse_lrs,
                       parse_match, passes_list, plan, plan_table, scaled_sizes, train_settings)
from .reporting import (FIELDS, LEARNED, compute_rows, learned, plateau, plot_curves, plot_task, steps_to, summarize,
                        task_tables, write_reports)
from .running import choose_lrs, compare, execute, read_curve, run_config, run_dir

__all__ = ["CPU_FLOPS", "FIELDS", "LEARNED", "MATCHES", "MODELS", "PRESETS", "Run", "add_compare_parser", "arms",
           "choose_lrs", "cmd_compare", "compare", "compute_rows", "execute", "learned", "match_gpt", "model_configs",
           "parse_lrs", "parse_match", "passes_list", "plan", "plan_table", "plateau", "plot_curves", "plot_task",
           "read_curve", "register", "run_config", "run_dir", "scaled_sizes", "steps_to", "summarize", "task_tables",
           "train_settings", "write_reports"]
