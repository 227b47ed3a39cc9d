"""`bdh tasks compare`, the runs: one training run per task, model and seed (reused when finished), its
evaluation at sizes and passes, and `compare`, which runs the plan (`--jobs` processes) and writes the reports."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ...io import atomic_write_text
from .planning import Run, plan, train_settings
from .reporting import write_reports

def _task_api():
    """`task_run_config` and `evaluate_task` from bdh.tasks (a clear error while they are missing)."""
    from ... import tasks

    try:
        return tasks.task_run_config, tasks.evaluate_task
    except AttributeError as e:  # pragma: no cover
        raise ValueError(f"bdh.tasks has no {e.name!r}: the task training/evaluation API is missing") from None


def run_config(r: Run, preset: dict, device: str | None = None, threads: int | None = None):
    task_run_config, _ = _task_api()
    t = {**train_settings(preset, r.task_name), **({"lr": r.lr} if r.lr else {})}
    steps = r.steps or t["steps"]
    over = [f"train.{k}={json.dumps(v)}" for k, v in t.items() if k != "steps"]
    over += ["train.sample_tokens=0", "train.checkpoint_every=0"]  # seed: train.seed = train.data_seed
    if device is not None:
        over.append(f"train.device={json.dumps(device)}")
    if threads is not None:
        over.append(f"train.threads={threads}")
    model = {k: v for k, v in r.model_cfg.items() if k != "model_type"}
    run = task_run_config(r.task_ref, model_type=r.model_cfg["model_type"], model=model, steps=steps,
                          seed=r.seed, overrides=over + list(r.overrides))  # a sweep's variant: last
    run.name = (f"tasks-compare-{r.task_name}-{r.model}" + (f"-{r.variant}" if r.variant else "")
                + (f"-lr{r.lr:g}" if r.sweep else "") + f"-seed{r.seed}")
    return run


def run_dir(out: Path, r: Run) -> Path:
    """OUT/runs/TASK/ARM/seedS (OUT/runs/TASK/ARM/lrLR/seedS in a learning-rate sweep)."""
    return Path(out) / "runs" / r.key


def read_curve(where: Path, r: Run) -> dict:
    """The run's evaluations along training, from the trainer's metrics.jsonl: {"val": [{"step", "elapsed_s",
    "tokens" (training tokens seen), "flops" (tokens x training FLOPs per token), "accuracy", "loss"}, ...],
    "train": [{"step", "loss", "tokens", "elapsed_s"}, ...], "final": {"accuracy", "loss"} (the whole validation
    set at the end)}. Validation examples: `bdh.tasks.validation.VAL_SEED`, not the test examples' seed."""
    train, val, final = [], [], {}
    path = Path(where) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            split = rec.get("split")
            if split == "train":
                train.append({k: rec.get(k) for k in ("step", "loss", "tokens", "elapsed_s")})
            elif split == "val" and rec.get("accuracy") is not None:
                val.append({k: rec.get(k) for k in ("step", "elapsed_s", "accuracy", "loss")})
            elif split == "final":
                final = {k: rec.get(k) for k in ("accuracy", "loss")}
    tokens_at = {t["step"]: t["tokens"] for t in train if t.get("tokens") is not None}
    last = max(tokens_at) if tokens_at else None
    for v in val:  # the training tokens at the evaluation's step (a train record of the same step, else pro rata)
        tok = tokens_at.get(v["step"])
        if tok is None and last:
            tok = round(tokens_at[last] * v["step"] / last)
        v["tokens"] = tok
        v["flops"] = None if tok is None else tok * r.flops_per_token
    return {"val": val, "train": train, "final": final}


def _finished(run_toml: str, where: Path) -> bool:
    """`where` holds the finished run of exactly this config (its model saved): reused, never retrained."""
    t = where / "compare-run.toml"
    return (where / "model.safetensors").is_file() and (where / "config.json").is_file() and t.is_file() \
        and t.read_text(encoding="utf-8") == run_toml


def _eval_key(r: Run, preset: dict) -> dict:
    return {"sizes": r.eval_sizes, "passes": [list(p) for p in r.pass_evals], "n_examples": preset["n_examples"],
            "batch_size": preset["eval_batch_size"], "seed": 1234, "fields": "token_accuracy,correct"}


def execute(r: Run, preset: dict, where: Path, *, overwrite: bool, device=None, threads=None,
            evaluate: bool = True) -> list[dict]:
    """Train (or reuse) one run and evaluate it (or reuse its evaluation); its result rows ([] when not
    `evaluate`: trained only, e.g. a learning rate of a sweep that may not be chosen)."""
    import torch

    from ...checkpoint import load_model
    from ...training import train

    _, evaluate_task = _task_api()
    from .. import load_task

    task = load_task(r.task_ref)
    run = run_config(r, preset, device, threads)
    toml = run.to_toml()
    ev_path = where / "compare-eval.json"
    key = _eval_key(r, preset)
    if _finished(toml, where):
        info = json.loads((where / "compare-train.json").read_text(encoding="utf-8"))
        if not evaluate:
            return []
        if ev_path.is_file():
            saved = json.loads(ev_path.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                return saved["rows"]
        dev = device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(where, device=dev)
    else:
        check = where / "config.json"
        if (check.exists() or (where / "model.safetensors").exists()) and not overwrite:
            raise ValueError(f"output {str(where)!r} already holds a model from other settings: pass --overwrite "
                             "to replace it")
        where.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.json", "checkpoints", "compare-eval.json", "compare-train.json", "compare-run.toml"):
            p = where / stale
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        t0 = time.time()
        result = train(run, where, progress=False, echo=lambda *a, **k: None, overwrite=True)
        info = {"train_time_s": round(time.time() - t0, 2), "train_tokens": result.summary.get("tokens"),
                "params": result.model.num_params()}
        atomic_write_text(where / "compare-train.json", json.dumps(info, indent=2))
        atomic_write_text(where / "compare-run.toml", toml)  # last: marks the run finished
        model = result.model
    if not evaluate:
        return []
    model.eval()
    L = r.model_cfg["n_layer"]
    tokens = info["train_tokens"]
    base = {"task": r.task_name, "model": r.model, "seed": r.seed, "trained_passes": L, "params": info["params"],
            "train_tokens": tokens, "train_time_s": info["train_time_s"], "steps": r.steps, "lr": r.lr,
            "flops_per_token": r.flops_per_token,
            "train_flops": None if tokens is None else tokens * r.flops_per_token,
            "eval_examples": preset["n_examples"]}
    rows = []
    kw = {"n_examples": preset["n_examples"], "seed": 1234, "batch_size": preset["eval_batch_size"]}
    groups = [(None, r.eval_sizes)] + [(p, [s for q, s in r.pass_evals if q == p])
                                       for p in dict.fromkeys(q for q, _ in r.pass_evals)]
    for passes, sizes in groups:
        with torch.no_grad():
            res = evaluate_task(model, task, sizes, n_layer=passes, per_example=True, **kw)
        for e in res:
            rows.append({**base, "size": e["size"], "mult": round(e["size"] / r.train_size, 4),
                         "passes": passes or L, "accuracy": e["accuracy"], "token_accuracy": e["token_accuracy"],
                         "loss": e["loss"], "tokens": e["tokens"],
                         "state_bytes": e["state_bytes"], "correct": "".join(map(str, e["correct"]))})
    atomic_write_text(ev_path, json.dumps({"key": key, "rows": rows}, indent=1))
    return rows


def _job_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _execute_job(r: Run, preset: dict, where: Path, overwrite: bool, device, threads, evaluate=True) -> list[dict]:
    return execute(r, preset, where, overwrite=overwrite, device=device, threads=threads, evaluate=evaluate)


def compare(preset_name: str = "cpu", out: str | os.PathLike = "runs/tasks-compare", *, tasks=None, seeds=None,
            overwrite: bool = False, device: str | None = None, threads: int | None = None, jobs: int = 1,
            progress: bool = True, command: str | None = None, match: tuple[str, ...] | None = None,
            lrs: list[float] | None = None, lr_seeds: int | None = None) -> list[dict]:
    """Run the comparison of `preset_name` into `out` and write the reports; the result rows (each with "selected":
    its learning rate is the one chosen on the validation set, `choose_lrs`; always true without a sweep).

    `match`, `lrs`, `lr_seeds`: the arms and the learning-rate sweep (`plan`). In two phases: every run of the
    tuning seeds trained (each learning rate; evaluated at once without a sweep), then, per task and arm, the
    runs at the value chosen on their validation sets evaluated and the other seeds trained and evaluated at it
    (the runs at the other values are trained, never evaluated on the test examples).

    `jobs` > 1 runs that many training runs at once, each in its own process (e.g. 2 on 2 cores with threads=1);
    the results are the same as one at a time (each run is seeded on its own).

    Checked before anything runs or is written: the preset, the tasks, the seeds, the parameter matching, and
    every run directory (one holding a model from other settings is replaced only with `overwrite`)."""
    preset, runs = plan(preset_name, tasks, seeds, match=match, lrs=lrs, lr_seeds=lr_seeds)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs {jobs!r}: expected a positive integer (runs at once)")
    out = Path(out)
    from ...checkpoint import check_output_dir

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    check_output_dir(out, overwrite=False)  # OUT itself never holds a model (it is not a run directory)
    for r in runs:  # every run directory checked before any training
        toml = run_config(r, preset, device, threads).to_toml()
        check_output_dir(run_dir(out, r), overwrite=overwrite or _finished(toml, run_dir(out, r)))
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    from .planning import expected_s

    t0 = time.time()
    bar = tqdm(total=expected_s(runs), unit="est-s", desc="tasks compare", disable=not progress,
               dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est-s [{elapsed}<{remaining}] {postfix}")
    try:
        results, chosen = execute_tuned(runs, preset, out, overwrite, device, threads, jobs, bar)
    finally:
        bar.close()
    done = [r for r in runs if r.key in results]  # plan order
    rows = [row for r in done for row in results[r.key]]
    curves = {r.key: read_curve(run_dir(out, r), r) for r in done}
    lr_choice = {(t, m): v for (t, m, _), v in chosen.items()}  # compare: no variants
    for row in rows:
        row["selected"] = lr_choice[(row["task"], row["model"])]["lr"] == row["lr"]
    wall = time.time() - t0
    write_reports(rows, done, out, preset_name=preset_name, preset=preset, wall_s=wall,
                  command=command or f"compare(preset={preset_name!r})", curves=curves, lr_choice=lr_choice)
    return rows


def execute_tuned(runs: list[Run], preset: dict, out: Path, overwrite: bool, device, threads, jobs: int,
                  bar) -> tuple[dict[str, list[dict]], dict[tuple[str, str, str], dict]]:
    """(run key -> its result rows, (task, arm, variant) -> `choose_lrs`'s choice), in two phases: every run of the
    tuning seeds trained (each learning rate; evaluated at once without a sweep), then, per task, arm and variant,
    the runs at the value chosen on their validation sets evaluated and the other seeds (`pending`) trained and
    evaluated at it. The runs at the other values are trained, never evaluated on the test examples: no rows."""
    first = [r for r in runs if not r.pending]
    results = _execute_all(first, preset, out, overwrite, device, threads, jobs, bar, evaluate=lambda r: not r.sweep)
    curves = {r.key: read_curve(run_dir(out, r), r) for r in first}
    chosen = choose_lrs(first, curves)  # on the tuning seeds' validation sets
    second = [r for r in runs if (r.pending or r.sweep) and not results.get(r.key)  # trained only, or not yet
              and r.lr == chosen[(r.task_name, r.model, r.variant)]["lr"]]
    results.update(_execute_all(second, preset, out, overwrite, device, threads, jobs, bar))
    return {k: v for k, v in results.items() if v}, chosen


def _execute_all(runs: list[Run], preset: dict, out: Path, overwrite: bool, device, threads, jobs: int,
                 bar, evaluate=lambda r: True) -> dict[str, list[dict]]:
    """run key -> its result rows, every run of `runs` trained (or reused) and, where `evaluate(run)`, evaluated:
    one at a time, or in `jobs` processes (the longest first); a failed run raises, the others are cancelled."""
    results: dict[str, list[dict]] = {}
    if jobs == 1:
        for r in runs:
            bar.set_postfix_str(r.key)
            results[r.key] = _execute_job(r, preset, run_dir(out, r), overwrite, device, threads, evaluate(r))
            bar.update(r.est_s)
        return results
    if not runs:
        return results
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_job_init,
                             initargs=(threads or max(1, (os.cpu_count() or 1) // jobs),)) as ex:
        pending = {ex.submit(_execute_job, r, preset, run_dir(out, r), overwrite, device, threads, evaluate(r)): r
                   for r in sorted(runs, key=lambda r: -r.est_s)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                r = pending.pop(f)
                results[r.key] = f.result()
                bar.set_postfix_str(r.key)
                bar.update(r.est_s)
    return results


def choose_lrs(runs: list[Run], curves: dict[str, dict]) -> dict[tuple[str, str, str], dict]:
    """(task, arm, variant) -> {"lr": the chosen learning rate, "val": {lr: mean final validation accuracy over
    seeds}, "val_loss": {lr: mean final validation loss}}:
    the highest mean accuracy on the runs' validation sets (`VAL_SEED`, not the test examples), ties to the lower
    mean validation loss, then the smaller learning rate. One learning rate: that one."""
    by: dict[tuple[str, str, str], dict[float, list[dict]]] = {}
    for r in runs:
        final = curves.get(r.key, {}).get("final", {})
        by.setdefault((r.task_name, r.model, r.variant), {}).setdefault(r.lr, []).append(final)
    out = {}
    for k, per_lr in by.items():
        def mean(xs):
            xs = [x for x in xs if x is not None]
            return sum(xs) / len(xs) if xs else None
        val = {lr: mean([f.get("accuracy") for f in fs]) for lr, fs in per_lr.items()}
        loss = {lr: mean([f.get("loss") for f in fs]) for lr, fs in per_lr.items()}
        best = min(per_lr, key=lambda lr: (-(val[lr] if val[lr] is not None else -1.0),
                                           loss[lr] if loss[lr] is not None else float("inf"), lr))
        out[k] = {"lr": best, "val": val, "val_loss": loss}
    return out


