"""`bdh tasks sweep`, the runs: every run of the plan trained (or a finished one reused) and evaluated by
`bdh tasks compare`'s `execute`, in `--jobs` processes, then the reports."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..compare.planning import MODELS, Run, expected_s
from ..compare.running import _execute_all, _finished, run_config, run_dir
from .planning import Variant, plan_sweep
from .reporting import write_reports


def label_rows(runs: list[Run], variants: list[Variant], results: dict[str, list[dict]]) -> list[dict]:
    """The result rows of `runs` (plan order), each with "variant" (the variant's name, or the baseline arm's),
    "settings" (its `section.key=value` overrides, "; "-joined) and "baseline" (a GPT reference arm)."""
    by_dir = {v.dir: v for v in variants}
    rows = []
    for r in runs:
        if r.key not in results:
            continue
        v = by_dir.get(r.variant) if r.model == MODELS[0] else None
        for row in results[r.key]:
            rows.append({**row, "variant": v.name if v else r.model,
                         "settings": "; ".join(v.settings) if v else "FLOP-matched",
                         "baseline": v is None})
    return rows


def sweep(preset_name: str = "quick", out: str | os.PathLike = "runs/tasks-sweep", *, tasks=None, seeds=None,
          grids=(), variants=(), sets=(), mults=None, baselines=(), overwrite: bool = False,
          device: str | None = None, threads: int | None = None, jobs: int = 1, progress: bool = True,
          command: str | None = None) -> list[dict]:
    """Run the sweep into `out` and write its reports; the result rows (`label_rows`).

    Checked before anything runs or is written: every option, every variant's resolved config, and every run
    directory (one holding a model from other settings is replaced only with `overwrite`; a finished run of the
    same config is reused, its evaluation too)."""
    preset, vs, runs = plan_sweep(preset_name, tasks, seeds, grids=grids, variants=variants, sets=sets, mults=mults,
                                  baselines=baselines, device=device, threads=threads)
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
        results = _execute_all(runs, preset, out, overwrite, device, threads, jobs, bar)
    finally:
        bar.close()
    rows = label_rows(runs, vs, results)
    write_reports(rows, runs, vs, out, preset_name=preset_name, preset=preset, sets=tuple(sets or ()),
                  grids=list(grids or ()), wall_s=time.time() - t0,
                  command=command or f"sweep(preset={preset_name!r})")
    return rows
