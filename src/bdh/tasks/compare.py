"""`bdh tasks compare`: BDH vs GPT (ALiBi) vs GPT (RoPE) on the reasoning tasks, the generalisation protocol.

    bdh tasks compare --preset cpu --out runs/tasks-cpu --jobs 2 --threads 1   # 7 CPU tasks, 3 seeds, < 1 h
    bdh tasks compare --preset cpu --tasks parity --out DIR      # one task's comparison
    bdh tasks compare --preset gpu --out runs/tasks-gpu          # larger models and steps, sudoku9 included
    bdh tasks compare --preset cpu --list                        # the plan: runs, parameters, estimated time

Protocol, per task of the preset:

* three models at matched parameters: BDH (the preset's shape) and two GPTs of the preset's depth and heads,
  one with ALiBi and one with RoPE positions. The GPT's width is chosen so its MLP is closest to 4x, and its MLP
  width (`mlp_dim`) is then solved so that its parameter count matches BDH's at the task's vocabulary; a gap
  above 5% (`bdh.baselines.ladders.MAX_PARAM_GAP`) refuses the preset before anything runs;
* equal training: one `task_run_config` per model and seed with the same steps, batch, learning-rate schedule,
  data seed (so the same examples in the same order) and sizes <= the task's training size; `--seeds` seeds each
  (seed s: model initialisation and data seed s);
* evaluation (`evaluate_task`, exact match on fresh examples from one evaluation seed) at 1x, 2x, 4x, 8x the
  training size (clipped to the task's largest size), BDH further (16x, 32x as the preset allows) with its
  constant-size state beside the GPT's growing KV cache (`state_bytes`), and BDH at other numbers of layer passes
  than it was trained with (L-1, L+1, 2L at 1x and 2x: weights shared across layers, depth as test-time compute).

OUT/results.csv (one row per task, model, seed, size, passes), summary.json, summary.md (mean +- std and
min-max over seeds), acc_size_TASK.png (accuracy and state bytes vs size; the seed spread as a band),
passes_TASK.png (BDH accuracy vs layer passes), report.html (self-contained: the PNGs inline as base64), and
OUT/runs/TASK/MODEL/seedS/ (each a training run; a finished one with the same settings is reused, its
evaluation too, so an interrupted comparison continues where it stopped; a model from other settings is
replaced only with --overwrite).
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import html
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from ..baselines.ladders import MAX_PARAM_GAP
from ..io import atomic_path, atomic_write_text

MODELS = ("bdh", "gpt-alibi", "gpt-rope")

# Each preset: tasks, seeds, the BDH shape, the GPT depth/heads (width and MLP solved to match BDH), training
# (steps, batch, lr; the rest from the shipped task-tiny config), and the evaluation grid.
PRESETS: dict[str, dict] = {
    # the test suite's: one task, two seeds, seconds
    "smoke": {
        "tasks": ["parity"], "seeds": 2,
        "bdh": {"n_layer": 2, "n_embd": 16, "n_head": 2, "mlp_internal_dim_multiplier": 4, "dropout": 0.0},
        "gpt": {"n_layer": 2, "n_head": 2, "dropout": 0.0},
        "train": {"steps": 8, "batch_size": 8, "lr": 3e-3, "warmup": 2},
        "mults": [1, 2], "bdh_mults": [4], "passes": ["L-1", "L+1"], "pass_mults": [1],
        "n_examples": 16, "eval_batch_size": 16,
    },
    # 2 CPU cores (--jobs 2 --threads 1): the 7 small tasks, 3 seeds, 2000 steps (1500 for the three slowest)
    "cpu": {
        "tasks": ["parity", "mqar", "copy", "vartrack", "addition", "eca", "sudoku4"], "seeds": 3,
        "bdh": {"n_layer": 3, "n_embd": 64, "n_head": 4, "mlp_internal_dim_multiplier": 8, "dropout": 0.0},
        "gpt": {"n_layer": 3, "n_head": 4, "dropout": 0.0},
        "train": {"steps": 2000, "batch_size": 32, "lr": 2e-3, "warmup": 100},
        "task_train": {"vartrack": {"steps": 1500}, "eca": {"steps": 1500}, "sudoku4": {"steps": 1500}},
        "mults": [1, 2, 4, 8], "bdh_mults": [16, 32], "passes": ["L-1", "L+1", "2L"], "pass_mults": [1, 2],
        "n_examples": 256, "eval_batch_size": 64,
    },
    # one GPU: every task including reverse and 9x9 Sudoku, larger models, longer training, further extrapolation
    "gpu": {
        "tasks": ["parity", "mqar", "copy", "reverse", "vartrack", "addition", "eca", "sudoku4", "sudoku9"],
        "seeds": 3,
        "bdh": {"n_layer": 6, "n_embd": 256, "n_head": 4, "mlp_internal_dim_multiplier": 32, "dropout": 0.0},
        "gpt": {"n_layer": 6, "n_head": 8, "dropout": 0.0},
        "train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "warmup": 250},
        "mults": [1, 2, 4, 8], "bdh_mults": [16, 32, 64, 128], "passes": ["L-1", "L+1", "2L"],
        "pass_mults": [1, 2], "n_examples": 1024, "eval_batch_size": 128,
    },
}

FIELDS = ["task", "model", "seed", "size", "mult", "passes", "trained_passes", "accuracy", "token_accuracy", "loss",
          "tokens",
          "state_bytes", "params", "train_tokens", "train_time_s", "eval_examples"]

# effective training/eval speed used for the time estimate of `--list` and the progress bar's weights
# (floating-point operations per second of one CPU thread, measured on this project's 2-core machine)
CPU_FLOPS = 2.5e10


# ----------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class Run:
    task_ref: str
    task_name: str
    model: str  # bdh | gpt-alibi | gpt-rope
    seed: int
    model_cfg: dict  # model fields incl. model_type
    params: int
    train_size: int
    eval_sizes: list[int]  # at the trained number of passes
    pass_evals: list[tuple[int, int]]  # (passes, size): BDH at other depths
    est_s: float

    @property
    def key(self) -> str:
        return f"{self.task_name}/{self.model}/seed{self.seed}"


def match_gpt(bdh_params: int, vocab: int, gpt: dict, positions: str) -> dict:
    """A GPT of `gpt`'s depth and heads with parameters matched to `bdh_params`: the width (a multiple of 2 x heads,
    so RoPE's head dimension is even) whose solved MLP width is closest to 4x, then the MLP width solved exactly."""
    from ..baselines.gpt import GPTConfig

    L, h = gpt["n_layer"], gpt["n_head"]
    best = None
    for d in range(2 * h, 4097, 2 * h):
        fixed = GPTConfig(n_layer=L, n_embd=d, n_head=h, vocab_size=vocab, mlp_dim=1, positions=positions).num_params()
        H = 1 + round((bdh_params - fixed) / (2 * L * d))  # each MLP unit: d in + d out weights per layer
        if H < d:  # an MLP narrower than the width: d too large
            break
        score = abs(math.log(H / (4 * d)))
        if best is None or score < best[0]:
            best = (score, d, H)
    if best is None:
        raise ValueError(f"no GPT with n_layer={L}, n_head={h} has about {bdh_params:,} parameters at vocabulary "
                         f"{vocab}: expected a larger BDH or a shallower GPT in the preset")
    _, d, H = best
    return {"model_type": "gpt", **gpt, "n_embd": d, "mlp_dim": H, "positions": positions}


def model_configs(preset: dict, vocab: int) -> dict[str, tuple[dict, int]]:
    """model name -> (model config fields incl. model_type, parameters) at `vocab`; ValueError beyond +-5%."""
    from ..baselines.gpt import GPTConfig
    from ..config import BDHConfig

    bdh = {"model_type": "bdh", **preset["bdh"]}
    pb = BDHConfig(**preset["bdh"], vocab_size=vocab).num_params()
    out = {"bdh": (bdh, pb)}
    for pos in ("alibi", "rope"):
        g = match_gpt(pb, vocab, preset["gpt"], pos)
        pg = GPTConfig(**{k: v for k, v in g.items() if k != "model_type"}, vocab_size=vocab).num_params()
        if abs(pg - pb) / pb > MAX_PARAM_GAP:
            raise ValueError(f"GPT ({pos}) has {pg:,} parameters, BDH {pb:,} at vocabulary {vocab}: more than "
                             f"{MAX_PARAM_GAP:.0%} apart; expected a preset whose models can be matched")
        out[f"gpt-{pos}"] = (g, pg)
    return out


def passes_list(spec: list[str], L: int) -> list[int]:
    """["L-1", "L+1", "2L"] at L -> [L-1, L+1, 2L], without L itself, values < 1 or repeats."""
    out = []
    for s in spec:
        m = re.fullmatch(r"(\d*)L([+-]\d+)?", s)
        v = (int(m.group(1) or 1) * L + int(m.group(2) or 0)) if m else int(s)
        if v >= 1 and v != L and v not in out:
            out.append(v)
    return out


def scaled_sizes(task, mults) -> list[int]:
    """train_size x each multiple, clipped to the task's largest size, without repeats."""
    out = []
    for m in mults:
        s = min(task.train_size * m, task.largest_size)
        if s not in out:
            out.append(s)
    return out


def _seq_len(task, size: int) -> int:
    return len(task.checked_example(random.Random(0), size).inputs)


def _flops_per_token(cfg: dict, params: int, vocab: int, T: int, passes: int | None = None) -> float:
    """Forward FLOPs per token (2 per multiply-add) of a sequence of T tokens, attention included."""
    if cfg["model_type"] == "bdh":
        L = passes or cfg["n_layer"]
        n, d = cfg["mlp_internal_dim_multiplier"] * cfg["n_embd"], cfg["n_embd"]
        return 2 * (L * (3 * n * d + 2 * n * min(T, 256)) + d * vocab)  # attention: T x n per token, chunks of <= 256
    L, d = cfg["n_layer"], cfg["n_embd"]
    return 2 * (params - vocab * d + L * 2 * d * T + vocab * d)


def plan(preset_name: str, tasks: list[str] | None = None, seeds: int | None = None) -> tuple[dict, list[Run]]:
    """The preset and every run of the comparison, validated (tasks, sizes, parameter matching) before anything
    runs or is written."""
    from . import load_task

    if preset_name not in PRESETS:
        raise ValueError(f"--preset {preset_name!r}: expected one of {', '.join(p for p in PRESETS if p != 'smoke')}"
                         " (or smoke, the test suite's)")
    preset = PRESETS[preset_name]
    refs = list(tasks) if tasks else list(preset["tasks"])
    if len(set(refs)) != len(refs):
        raise ValueError(f"--tasks {','.join(refs)!r}: a task is named twice")
    n_seeds = preset["seeds"] if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"--seeds {n_seeds!r}: expected a positive integer")
    runs: list[Run] = []
    for ref in refs:
        task = load_task(ref)  # TaskError (a ValueError) names an unknown task
        task.check_size(task.train_size)
        t = train_settings(preset, task.name)
        steps, batch = t["steps"], t["batch_size"]
        cfgs = model_configs(preset, task.vocab_size)
        sizes = scaled_sizes(task, preset["mults"])
        far = [s for s in scaled_sizes(task, preset["bdh_mults"]) if s not in sizes]
        L = preset["bdh"]["n_layer"]
        pass_sizes = scaled_sizes(task, preset["pass_mults"])
        lens = {s: _seq_len(task, s) for s in dict.fromkeys(sizes + far + pass_sizes + [task.train_size])}
        T_train = lens[task.train_size]
        for model, (cfg, params) in cfgs.items():
            is_bdh = model == "bdh"
            ev = sizes + (far if is_bdh else [])
            pe = [(p, s) for p in passes_list(preset["passes"], L) for s in pass_sizes] if is_bdh else []
            V = task.vocab_size
            flops = 3 * steps * batch * T_train * _flops_per_token(cfg, params, V, T_train)
            flops += sum(preset["n_examples"] * lens[s] * _flops_per_token(cfg, params, V, lens[s]) for s in ev)
            flops += sum(preset["n_examples"] * lens[s] * _flops_per_token(cfg, params, V, lens[s], p) for p, s in pe)
            for seed in range(n_seeds):
                runs.append(Run(ref, task.name, model, seed, cfg, params, task.train_size, ev, pe,
                                flops / CPU_FLOPS + 2.0))
    return preset, runs


def plan_table(preset_name: str, runs: list[Run]) -> str:
    """A markdown table of the plan: per task and model, the parameters, the shape, the sizes and the estimate."""
    lines = [f"preset {preset_name}: {len(runs)} runs, estimated {sum(r.est_s for r in runs) / 60:.1f} min "
             "(one CPU thread)", "",
             "| task | model | params | shape | seeds | eval sizes | other passes | est. min |", "|---|---|---|---|---|---|---|---|"]
    seen: dict[tuple, list[Run]] = {}
    for r in runs:
        seen.setdefault((r.task_name, r.model), []).append(r)
    for (task, model), rs in seen.items():
        r = rs[0]
        c = r.model_cfg
        shape = (f"L={c['n_layer']} d={c['n_embd']} h={c['n_head']} n={c['mlp_internal_dim_multiplier'] * c['n_embd']}"
                 if model == "bdh" else f"L={c['n_layer']} d={c['n_embd']} h={c['n_head']} mlp={c['mlp_dim']}")
        passes = ", ".join(sorted({str(p) for p, _ in r.pass_evals})) or "-"
        lines.append(f"| {task} | {model} | {r.params:,} | {shape} | {len(rs)} | {', '.join(map(str, r.eval_sizes))} | "
                     f"{passes} | {sum(x.est_s for x in rs) / 60:.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- running
def _task_api():
    """`task_run_config` and `evaluate_task` from bdh.tasks (a clear error while they are missing)."""
    from .. import tasks

    try:
        return tasks.task_run_config, tasks.evaluate_task
    except AttributeError as e:  # pragma: no cover
        raise ValueError(f"bdh.tasks has no {e.name!r}: the task training/evaluation API is missing") from None


def train_settings(preset: dict, task_name: str) -> dict:
    """The preset's training settings for one task: `train`, updated by `task_train[task_name]` where given."""
    return {**preset["train"], **preset.get("task_train", {}).get(task_name, {})}


def run_config(r: Run, preset: dict, device: str | None = None, threads: int | None = None):
    task_run_config, _ = _task_api()
    t = train_settings(preset, r.task_name)
    over = [f"train.{k}={json.dumps(v)}" for k, v in t.items() if k != "steps"]
    over += ["train.sample_tokens=0", "train.checkpoint_every=0"]  # seed: train.seed = train.data_seed
    if device is not None:
        over.append(f"train.device={json.dumps(device)}")
    if threads is not None:
        over.append(f"train.threads={threads}")
    model = {k: v for k, v in r.model_cfg.items() if k != "model_type"}
    run = task_run_config(r.task_ref, model_type=r.model_cfg["model_type"], model=model, steps=t["steps"],
                          seed=r.seed, overrides=over)
    run.name = f"tasks-compare-{r.task_name}-{r.model}-seed{r.seed}"
    return run


def _finished(run_toml: str, where: Path) -> bool:
    """`where` holds the finished run of exactly this config (its model saved): reused, never retrained."""
    t = where / "compare-run.toml"
    return (where / "model.safetensors").is_file() and (where / "config.json").is_file() and t.is_file() \
        and t.read_text(encoding="utf-8") == run_toml


def _eval_key(r: Run, preset: dict) -> dict:
    return {"sizes": r.eval_sizes, "passes": [list(p) for p in r.pass_evals], "n_examples": preset["n_examples"],
            "batch_size": preset["eval_batch_size"], "seed": 1234, "fields": "token_accuracy"}


def execute(r: Run, preset: dict, where: Path, *, overwrite: bool, device=None, threads=None) -> list[dict]:
    """Train (or reuse) one run and evaluate it (or reuse its evaluation); its result rows."""
    import torch

    from ..checkpoint import load_model
    from ..training import train

    _, evaluate_task = _task_api()
    from . import load_task

    task = load_task(r.task_ref)
    run = run_config(r, preset, device, threads)
    toml = run.to_toml()
    ev_path = where / "compare-eval.json"
    key = _eval_key(r, preset)
    if _finished(toml, where):
        info = json.loads((where / "compare-train.json").read_text(encoding="utf-8"))
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
    model.eval()
    L = r.model_cfg["n_layer"]
    base = {"task": r.task_name, "model": r.model, "seed": r.seed, "trained_passes": L, "params": info["params"],
            "train_tokens": info["train_tokens"], "train_time_s": info["train_time_s"],
            "eval_examples": preset["n_examples"]}
    rows = []
    kw = {"n_examples": preset["n_examples"], "seed": 1234, "batch_size": preset["eval_batch_size"]}
    groups = [(None, r.eval_sizes)] + [(p, [s for q, s in r.pass_evals if q == p])
                                       for p in dict.fromkeys(q for q, _ in r.pass_evals)]
    for passes, sizes in groups:
        with torch.no_grad():
            res = evaluate_task(model, task, sizes, n_layer=passes, **kw)
        for e in res:
            rows.append({**base, "size": e["size"], "mult": round(e["size"] / r.train_size, 4),
                         "passes": passes or L, "accuracy": e["accuracy"], "token_accuracy": e["token_accuracy"],
                         "loss": e["loss"], "tokens": e["tokens"],
                         "state_bytes": e["state_bytes"]})
    atomic_write_text(ev_path, json.dumps({"key": key, "rows": rows}, indent=1))
    return rows


def _job_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _execute_job(r: Run, preset: dict, where: Path, overwrite: bool, device, threads) -> list[dict]:
    return execute(r, preset, where, overwrite=overwrite, device=device, threads=threads)


def compare(preset_name: str = "cpu", out: str | os.PathLike = "runs/tasks-compare", *, tasks=None, seeds=None,
            overwrite: bool = False, device: str | None = None, threads: int | None = None, jobs: int = 1,
            progress: bool = True, command: str | None = None) -> list[dict]:
    """Run the comparison of `preset_name` into `out` and write the reports; the result rows.

    `jobs` > 1 runs that many training runs at once, each in its own process (e.g. 2 on 2 cores with threads=1);
    the results are the same as one at a time (each run is seeded on its own).

    Checked before anything runs or is written: the preset, the tasks, the seeds, the parameter matching, and
    every run directory (one holding a model from other settings is replaced only with `overwrite`)."""
    preset, runs = plan(preset_name, tasks, seeds)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs {jobs!r}: expected a positive integer (runs at once)")
    out = Path(out)
    from ..checkpoint import check_output_dir

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    check_output_dir(out, overwrite=False)  # OUT itself never holds a model (it is not a run directory)
    tomls = {}
    for r in runs:  # every run directory checked before any training
        where = out / "runs" / r.task_name / r.model / f"seed{r.seed}"
        toml = run_config(r, preset, device, threads).to_toml()
        tomls[r.key] = toml
        check_output_dir(where, overwrite=overwrite or _finished(toml, where))
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    t0 = time.time()
    total = sum(r.est_s for r in runs)
    bar = tqdm(total=total, unit="est-s", desc="tasks compare", disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est-s [{elapsed}<{remaining}] {postfix}")
    results: dict[int, list[dict]] = {}
    jobs_args = [(r, preset, out / "runs" / r.task_name / r.model / f"seed{r.seed}", overwrite, device, threads)
                 for r in runs]
    try:
        if jobs == 1:
            for i, a in enumerate(jobs_args):
                bar.set_postfix_str(a[0].key)
                results[i] = _execute_job(*a)
                bar.update(a[0].est_s)
        else:  # independent runs in `jobs` processes, the longest first; rows kept in plan order
            import multiprocessing
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            order = sorted(range(len(runs)), key=lambda i: -runs[i].est_s)
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_job_init, initargs=(threads or max(1, (os.cpu_count() or 1) // jobs),)) as ex:
                pending = {ex.submit(_execute_job, *jobs_args[i]): i for i in order}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        i = pending.pop(f)
                        results[i] = f.result()  # a failed run raises here, the others are cancelled
                        bar.set_postfix_str(runs[i].key)
                        bar.update(runs[i].est_s)
    finally:
        bar.close()
    rows = [row for i in range(len(runs)) for row in results[i]]
    wall = time.time() - t0
    write_reports(rows, runs, out, preset_name=preset_name, preset=preset, wall_s=wall,
                  command=command or f"compare(preset={preset_name!r})")
    return rows


# ----------------------------------------------------------------------------------------------- reports
def _stats(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "min": min(xs),
            "max": max(xs), "n": len(xs)}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, std, min and max over seeds per (task, model, size, passes)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["model"], r["size"], r["passes"]), []).append(r)
    out = []
    for (task, model, size, passes), rs in groups.items():
        out.append({"task": task, "model": model, "size": size, "mult": rs[0]["mult"], "passes": passes,
                    "trained_passes": rs[0]["trained_passes"], "params": rs[0]["params"],
                    "seeds": sorted(r["seed"] for r in rs), "accuracy": _stats([r["accuracy"] for r in rs]),
                    "token_accuracy": _stats([r.get("token_accuracy") for r in rs]),
                    "loss": _stats([r["loss"] for r in rs]), "tokens": rs[0]["tokens"],
                    "state_bytes": rs[0]["state_bytes"]})
    return out


def _acc(s: dict) -> str:
    a = s["accuracy"]
    if a["mean"] is None:
        return "n/a"
    return f"{a['mean']:.3f} ± {a['std']:.3f} [{a['min']:.3f}–{a['max']:.3f}]"


def _tok(s: dict) -> str:
    a = s.get("token_accuracy") or {}
    return "n/a" if a.get("mean") is None else f"{a['mean']:.3f}"


def _bytes(b) -> str:
    if b is None:
        return "n/a"
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:,.1f} {unit}"
    return f"{b:,} B"


def task_tables(summary: list[dict], task: str) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(header, rows) of the size table and of BDH's passes table for `task`."""
    at_trained = [s for s in summary if s["task"] == task and s["passes"] == s["trained_passes"]]
    models = [m for m in MODELS if any(s["model"] == m for s in at_trained)]
    by = {(s["model"], s["size"]): s for s in at_trained}
    sizes = sorted({s["size"] for s in at_trained})
    head = (["size", "x train", "tokens"] + [f"{m} accuracy" for m in models] + [f"{m} tok-acc" for m in models]
            + [f"{m} state" for m in models])
    body = []
    for size in sizes:
        any_s = next(by[(m, size)] for m in models if (m, size) in by)
        body.append([str(size), f"{any_s['mult']:g}", str(any_s["tokens"])]
                    + [_acc(by[(m, size)]) if (m, size) in by else "–" for m in models]
                    + [_tok(by[(m, size)]) if (m, size) in by else "–" for m in models]
                    + [_bytes(by[(m, size)]["state_bytes"]) if (m, size) in by else "–" for m in models])
    bdh = [s for s in summary if s["task"] == task and s["model"] == "bdh"]
    psizes = sorted({s["size"] for s in bdh if s["passes"] != s["trained_passes"]})
    passes = sorted({s["passes"] for s in bdh if s["size"] in psizes})
    pby = {(s["passes"], s["size"]): s for s in bdh}
    phead = ["BDH passes"] + [f"size {s}" for s in psizes]
    pbody = [[f"{p}" + (" (trained)" if bdh and p == bdh[0]["trained_passes"] else "")]
             + [_acc(pby[(p, s)]) if (p, s) in pby else "–" for s in psizes] for p in passes] if psizes else []
    return head, body, phead, pbody


def _md(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body])


def _html_table(head: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def plot_task(summary: list[dict], task: str, out: Path) -> list[Path]:
    """acc_size_TASK.png (accuracy with the seed min-max band, and state bytes, vs size) and passes_TASK.png."""
    from ..analysis.plotting import plt_figure, save

    styles = {"bdh": ("o-", "C0"), "gpt-alibi": ("s--", "C1"), "gpt-rope": ("^:", "C2")}
    files = []
    fig, (ax, ax2) = plt_figure(1, 2, width=11, height=4)
    for m, (st, col) in styles.items():
        pts = sorted((s["size"], s) for s in summary if s["task"] == task and s["model"] == m
                     and s["passes"] == s["trained_passes"] and s["accuracy"]["mean"] is not None)
        if not pts:
            continue
        x = [p[0] for p in pts]
        a = [p[1]["accuracy"] for p in pts]
        ax.plot(x, [v["mean"] for v in a], st, color=col, label=f"{m} ({pts[0][1]['params']:,} params)")
        ax.fill_between(x, [v["min"] for v in a], [v["max"] for v in a], color=col, alpha=0.2)
        ax2.plot(x, [p[1]["state_bytes"] for p in pts], st, color=col, label=m)
    train = next((s["size"] / s["mult"] for s in summary if s["task"] == task), None)
    if train:
        ax.axvline(train, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="size (log2; dashed: training size)", ylabel="exact-match accuracy", ylim=(-0.02, 1.02),
           title=f"{task}: accuracy vs size (band: seed min–max)")
    ax.legend(fontsize=8)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set(xlabel="size (log2)", ylabel="inference state bytes per sequence", title="BDH state vs GPT KV cache")
    ax2.legend(fontsize=8)
    files.append(save(fig, out / f"acc_size_{task}.png"))
    bdh = [s for s in summary if s["task"] == task and s["model"] == "bdh"]
    psizes = sorted({s["size"] for s in bdh if s["passes"] != s["trained_passes"]})
    if psizes:
        fig, (ax,) = plt_figure()
        for i, size in enumerate(psizes):
            pts = sorted((s["passes"], s["accuracy"]) for s in bdh if s["size"] == size and s["accuracy"]["mean"] is not None)
            x = [p[0] for p in pts]
            ax.plot(x, [p[1]["mean"] for p in pts], "o-", color=f"C{i}", label=f"size {size}")
            ax.fill_between(x, [p[1]["min"] for p in pts], [p[1]["max"] for p in pts], color=f"C{i}", alpha=0.2)
        ax.axvline(bdh[0]["trained_passes"], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="layer passes at test time (dashed: trained)", ylabel="exact-match accuracy",
               ylim=(-0.02, 1.02), title=f"{task}: BDH depth as test-time compute")
        ax.legend(fontsize=8)
        files.append(save(fig, out / f"passes_{task}.png"))
    return files


def write_reports(rows: list[dict], runs: list[Run], out: Path, *, preset_name: str, preset: dict, wall_s: float,
                  command: str) -> None:
    from ..analysis.plotting import jsonable

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    summary = summarize(rows)
    tasks = list(dict.fromkeys(r.task_name for r in runs))
    params = {t: {r.model: r.params for r in runs if r.task_name == t} for t in tasks}
    settings = {k: v for k, v in preset.items() if k != "tasks"}
    n_seeds = len({r.seed for r in runs})
    atomic_write_text(out / "summary.json", json.dumps(jsonable({
        "preset": preset_name, "command": command, "tasks": tasks, "seeds": n_seeds, "settings": settings,
        "params": params, "summary": summary, "wall_s": wall_s}), indent=2))
    steps = {t: train_settings(preset, t)["steps"] for t in tasks}
    steps_txt = (f"{next(iter(steps.values()))} steps" if len(set(steps.values())) == 1
                 else "steps " + ", ".join(f"{t} {v}" for t, v in steps.items()))
    intro = (f"Preset `{preset_name}`: {n_seeds} seeds per model, {steps_txt}, batch {preset['train']['batch_size']} "
             f"(the same examples in the same order for every model of a seed), sizes <= the training size. "
             f"Accuracy: exact match on {preset['n_examples']} fresh examples per size, mean ± std [min–max] over "
             f"seeds; tok-acc: the fraction of answer tokens right (partial credit), mean over seeds. "
             f"State: BDH's ρ (constant) vs the GPT's KV cache at the sequence's length. "
             f"Wall time of this invocation {wall_s / 60:.1f} min (finished runs are reused).")
    md = [f"# BDH vs GPT on reasoning tasks ({preset_name} preset)", "", f"`{command}`", "", intro, ""]
    body_html = [f"<h1>BDH vs GPT on reasoning tasks ({html.escape(preset_name)} preset)</h1>",
                 f"<p><code>{html.escape(command)}</code></p>", f"<p>{html.escape(intro)}</p>"]
    for task in tasks:
        head, body, phead, pbody = task_tables(summary, task)
        pp = ", ".join(f"{m} {p:,}" for m, p in params[task].items())
        md += [f"## {task}", "", f"Parameters: {pp}.", "", _md(head, body), ""]
        body_html += [f"<h2>{html.escape(task)}</h2>", f"<p>Parameters: {html.escape(pp)}.</p>", _html_table(head, body)]
        if pbody:
            md += ["BDH at other numbers of layer passes (weights shared across layers):", "", _md(phead, pbody), ""]
            body_html += ["<p>BDH at other numbers of layer passes (weights shared across layers):</p>",
                          _html_table(phead, pbody)]
        for png in plot_task(summary, task, out):
            md += [f"![{png.stem}]({png.name})", ""]
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body_html.append(f'<p><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}"></p>')
    atomic_write_text(out / "summary.md", "\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f4f4f4}img{max-width:100%}")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>bdh tasks compare</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body_html) + "\n</body></html>\n")
    atomic_write_text(out / "report.html", page)


# ----------------------------------------------------------------------------------------------- CLI
def _parse_seeds(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a positive integer") from None
    if v < 1:
        raise ValueError(f"--seeds {text}: expected a positive integer")
    return v


def cmd_compare(args: argparse.Namespace) -> int:
    from ..cli import apply_run_options

    apply_run_options(argparse.Namespace(threads=args.threads, device=args.device))  # --threads/--device checked
    tasks = None
    if args.tasks is not None:
        tasks = [t.strip() for t in args.tasks.split(",")]
        if not all(tasks):
            raise ValueError(f"--tasks {args.tasks!r}: expected comma-separated task names")
    seeds = _parse_seeds(args.seeds)
    preset, runs = plan(args.preset, tasks, seeds)
    if args.list:
        print(plan_table(args.preset, runs))
        return 0
    out = args.out or f"runs/tasks-compare-{args.preset}"
    command = " ".join(["bdh", "tasks", "compare"] + sys.argv[3:]) if sys.argv[1:3] == ["tasks", "compare"] \
        else f"bdh tasks compare --preset {args.preset}"
    progress = not args.no_progress
    compare(args.preset, out, tasks=tasks, seeds=seeds, overwrite=args.overwrite, device=args.device,
            threads=args.threads, jobs=args.jobs, progress=progress, command=command)
    md = (Path(out) / "summary.md").read_text(encoding="utf-8")
    print("\n".join(line for line in md.splitlines() if not line.startswith("![")))
    print(f"\nreports in {out} (results.csv, summary.json, summary.md, *.png, report.html)")
    return 0


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Add `compare` to the `bdh tasks` sub-commands."""
    c = subparsers.add_parser(
        "compare", help="BDH vs GPT (ALiBi, RoPE) at matched parameters on the tasks: CSV, markdown, plots, HTML",
        description="Train BDH, GPT-ALiBi and GPT-RoPE at matched parameters (+-5%%) on equal tokens, several "
                    "seeds, and evaluate them at 1x..8x the training size (BDH further, and at other depths).")
    c.add_argument("--preset", default="cpu", help="cpu (2 cores, < 1 h) or gpu (larger, sudoku9 included)")
    c.add_argument("--tasks", default=None, help="comma-separated tasks (default: the preset's)")
    c.add_argument("--seeds", default=None, help="seeds per model (default: the preset's, 3)")
    c.add_argument("--out", default=None, help="output directory (default runs/tasks-compare-PRESET)")
    c.add_argument("--overwrite", action="store_true",
                   help="retrain a run directory that holds a model from other settings (refused otherwise)")
    c.add_argument("--list", action="store_true", help="print the plan (runs, parameters, estimated time) and exit")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--device", default=None, help="training device (default: the trainer's auto)")
    c.add_argument("--threads", type=str, default=None, help="torch CPU threads per run (1 on a shared CPU)")
    c.add_argument("--jobs", type=str, default="1",
                   help="training runs at once, each in its own process (default 1; 2 on 2 cores with --threads 1)")
    c.set_defaults(func=_cmd_compare_checked)
    return c


def _cmd_compare_checked(args: argparse.Namespace) -> int:
    try:
        args.jobs = int(args.jobs)
    except ValueError:
        raise ValueError(f"--jobs {args.jobs!r}: expected a positive integer (runs at once)") from None
    if args.threads is not None:
        try:
            args.threads = int(args.threads)
        except ValueError:
            raise ValueError(f"--threads {args.threads!r}: expected a positive integer") from None
    return cmd_compare(args)


register = add_compare_parser
