"""`bdh tasks sweep`, the runs: every run of the plan trained (or a finished one reused) and evaluated by
`bdh tasks compare`'s `execute`, in `--jobs` processes, then the reports."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..compare.planning import MODELS, Run, expected_s
from ..compare.running import _finished, execute_tuned, read_curve, run_config, run_dir
from .planning import Variant, plan_sweep, scaled_labels
from .reporting import write_reports


def label_rows(runs: list[Run], variants: list[Variant], results: dict[str, list[dict]]) -> list[dict]:
    """The result rows of `runs` (plan order), each with "variant" (the variant's name, or the baseline arm's),
    "settings" (its `section.key=value` overrides, "; "-joined) and "baseline" (a GPT reference arm). A BDH run's
    rows at its trained passes go to its variant; with a `scaled` label (`scaled_labels`), the rows at the passes
    `pass_evals` gives each size (the trained passes where none) go to that label too."""
    rows = []
    for r in runs:
        if r.key not in results:
            continue
        if r.model != MODELS[0]:
            rows += [{**row, "variant": r.model, "settings": "FLOP-matched", "baseline": True}
                     for row in results[r.key]]
            continue
        for v in (v for v in variants if v.dir == r.variant):
            at = {s: p for p, s in r.pass_evals} if v.scaled else {}
            rows += [{**row, "variant": v.name, "settings": "; ".join(v.settings), "baseline": False}
                     for row in results[r.key] if row["passes"] == at.get(row["size"], row["trained_passes"])]
    return rows


def sweep(preset_name: str = "quick", out: str | os.PathLike = "runs/tasks-sweep", *, tasks=None, seeds=None,
          grids=(), variants=(), sets=(), mults=None, baselines=(), lrs=None, lr_seeds: int = 1,
          scale_passes: int | None = None, overwrite: bool = False,
          device: str | None = None, threads: int | None = None, jobs: int = 1, progress: bool = True,
          command: str | None = None) -> list[dict]:
    """Run the sweep into `out` and write its reports; the result rows (`label_rows`).

    `lrs`: a learning-rate sweep per task, variant and baseline on the first `lr_seeds` seeds, the value chosen on
    the validation set (compare's two phases, `execute_tuned`). `scale_passes`: each variant also reported at
    test-time layer passes scaled with the length, at most that many (NAME+scaled-passes).

    Checked before anything runs or is written: every option, every variant's resolved config, and every run
    directory (one holding a model from other settings is replaced only with `overwrite`; a finished run of the
    same config is reused, its evaluation too)."""
    preset, vs, runs = plan_sweep(preset_name, tasks, seeds, grids=grids, variants=variants, sets=sets, mults=mults,
                                  baselines=baselines, lrs=lrs, lr_seeds=lr_seeds, scale_passes=scale_passes,
                                  device=device, threads=threads)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs {jobs!r}: expected a positive integer (runs at once)")
    out = Path(out)
    from ...checkpoint import check_output_dir

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    check_output_dir(out, overwrite=False)  # OUT itself never holds a model
    for r in runs:
        toml = run_config(r, preset, device, threads).to_toml()
        check_output_dir(run_dir(out, r), overwrite=overwrite or _finished(toml, run_dir(out, r)))
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    t0 = time.time()
    bar = tqdm(total=expected_s(runs), unit="est-s", desc="tasks sweep", disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est-s [{elapsed}<{remaining}] {postfix}")
    try:
        results, chosen = execute_tuned(runs, preset, out, overwrite, device, threads, jobs, bar)
    finally:
        bar.close()
    labels = scaled_labels(vs, scale_passes)
    rows = label_rows(runs, labels, results)
    done = [r for r in runs if r.key in results]
    write_reports(rows, done, labels, out, preset_name=preset_name, preset=preset, sets=tuple(sets or ()),
                  grids=list(grids or ()), wall_s=time.time() - t0, command=command or f"sweep(preset={preset_name!r})",
                  lr_choice=chosen, curves={r.key: read_curve(run_dir(out, r), r) for r in done})
    return rows
