"""`bdh tasks list | train | eval` (and `compare`, `sweep` from `bdh.tasks.compare`, `bdh.tasks.sweep`, where present).

    bdh tasks list
    bdh tasks train --task parity --out runs/parity                 # task-tiny config: BDH, ~1-2 min on 1 thread
    bdh tasks train --task parity --model gpt --out runs/parity-gpt
    bdh tasks train --task path/to/my_task.py:MyTask --set train.steps=100 --out runs/mine
    bdh tasks eval --model runs/parity --multiples 1,2,4,8 [--passes 2,3,4] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _int_list(text: str) -> list[int]:
    """argparse `type=`: comma-separated positive integers."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers, e.g. 16,32,64") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers, e.g. 16,32,64")
    return vals


def cmd_list(args: argparse.Namespace) -> int:
    from . import TASKS, load_task

    load_task("parity")  # registers the built-ins
    rows = []
    for name in TASKS:
        t = load_task(name)
        doc = (type(t).__doc__ or "").strip().splitlines()
        rows.append({"name": name, "size": t.size_name, "train_size": t.train_size, "max_size": t.largest_size,
                     "vocab": t.vocab_size, "description": doc[0] if doc else ""})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len("task"), *(len(r["name"]) for r in rows))
    print(f"{'task':<{w}} {'size knob':<10} {'train':>5} {'max':>5} {'vocab':>5}  description")
    for r in rows:
        print(f"{r['name']:<{w}} {r['size']:<10} {r['train_size']:>5} {r['max_size']:>5} {r['vocab']:>5}  "
              f"{r['description']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..checkpoint import check_output_dir
    from ..cli import apply_run_options
    from ..training.trainer import launch
    from .run import task_run_config

    apply_run_options(args)  # --threads, checked first
    overrides = list(args.set or [])
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    run = task_run_config(args.task, model_type=args.model, config=args.config, overrides=overrides,
                          seed=args.seed, steps=args.steps)
    out = Path(args.out) if args.out else Path("runs") / f"task-{Path(args.task).stem.replace(':', '-')}-{run.model_type}"
    if args.resume is None:
        check_output_dir(out, overwrite=args.overwrite)
    s = launch(run, out, resume=args.resume, progress=False if args.no_progress else None, overwrite=args.overwrite)
    print(f"val accuracy {s.get('val_accuracy', float('nan')):.3f} | val loss {s['val_loss']:.4f} nats/answer | "
          f"{s['step']} steps | {s['train_time_s']:.0f}s | model in {out} (bdh tasks eval --model {out})")
    return 0


def _run_data(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "run.json").read_text(encoding="utf-8"))["config"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def cmd_eval(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..cli import apply_run_options
    from ..training.config import TASK_PREFIX
    from . import TaskError, load_task
    from .evaluate import check_passes, evaluate_task, scaled_passes, with_layers

    device = apply_run_options(args)
    model_dir = Path(args.model)
    data = _run_data(model_dir)
    ref = args.task
    if ref is None:
        corpus = data.get("corpus", "")
        if not corpus.startswith(TASK_PREFIX):
            raise TaskError(f"--model {str(model_dir)!r}: not a task run (no task in its run.json); expected --task REF")
        ref = corpus[len(TASK_PREFIX):]
    task = load_task(ref)
    train_size = data.get("task_size") or task.train_size
    if args.sizes:
        sizes = args.sizes
    else:
        sizes = [m * train_size for m in (args.multiples or [1, 2, 4, 8])]
        if args.multiples is None:  # the default multiples stop at the task's largest size
            sizes = [s for s in sizes if s <= task.largest_size] or [task.largest_size]
    for s in sizes:
        task.check_size(s)
    passes = args.passes or [None]
    if args.passes:
        for k in passes:
            check_passes(k, "--passes")
    model = load_model(model_dir, device=device)
    if args.passes or args.scale_passes:
        for k in (args.passes or [model.config.n_layer]):
            with_layers(model, k)  # refuses every count for a model with per-layer weights, before any work
    if args.scale_passes:  # each size at (passes) x ceil(size / train size): more passes on longer inputs
        passes = [scaled_passes(k or model.config.n_layer, train_size) for k in passes]
    if args.drift and "rho_state" not in model.capabilities:
        raise TaskError(f"--drift: model_type {model.config.MODEL_TYPE!r} has no rho state to measure")
    rows = []
    for k in passes:
        for r in evaluate_task(model, task, sizes, n_examples=args.n, seed=args.seed, batch_size=args.batch_size,
                               n_layer=k):
            rows.append({"task": task.name, "multiple": r["size"] / train_size, **r})
    if args.drift:  # statistics of the model at its own n_layer (bdh.analysis.drift)
        from ..analysis.drift import length_drift

        drift = {d["size"]: d for d in length_drift(model, task, sizes, n_examples=min(args.n, 16), seed=args.seed)}
        for r in rows:
            r.update({k: v for k, v in drift[r["size"]].items() if k not in ("size", "tokens")})
    if args.json:
        print(json.dumps({"model": str(model_dir), "task": task.name, "train_size": train_size, "rows": rows}))
        return 0
    print(f"{task.name}: {task.size_name} trained up to {train_size}; {args.n} examples per size ({model_dir})")
    print(f"{'passes':>6} {task.size_name:>8} {'x train':>7} {'accuracy':>8} {'loss':>8} {'tokens':>7} {'state bytes':>12}")
    if args.drift:
        print(" (drift at the model's n_layer: x/y active = fraction of neurons > 0, all positions | last quarter; "
              "rho = mean ||rho||_F after the last token, and per token)")
    for r in rows:
        extra = (f"  x {r['x_active']:.4f}|{r['x_active_last']:.4f}  y {r['y_active']:.4f}|{r['y_active_last']:.4f}"
                 f"  rho {r['rho_norm']:.4g} ({r['rho_norm_per_token']:.4g}/token)") if args.drift else ""
        print(f"{r['n_layer'] or '-':>6} {r['size']:>8} {r['multiple']:>7.2g} {r['accuracy']:>8.3f} {r['loss']:>8.4f} "
              f"{r['tokens']:>7} {r['state_bytes']:>12,}{extra}")
    return 0


def register(sub) -> None:
    from ..cli import add_run_options, positive_int, seed_value
    from ..training.cli import add_run_dir_options

    p = sub.add_parser("tasks", help="reasoning-over-time tasks: list, train, eval",
                       description="Synthetic tasks with a size knob (bdh.tasks): train on small sizes, evaluate on "
                                   "larger ones.")
    ts = p.add_subparsers(dest="tasks_command", required=True)

    lp = ts.add_parser("list", help="the built-in tasks")
    lp.add_argument("--json", action="store_true", help="print JSON")
    lp.set_defaults(func=cmd_list)

    tp = ts.add_parser("train", help="train a model on a task (the task-tiny config; the ordinary trainer)")
    tp.add_argument("--task", required=True, help="a built-in task (bdh tasks list), FILE.py:NAME or module:NAME")
    from ..interface import model_types

    tp.add_argument("--model", choices=model_types(), default=None,
                    help="model type (default: the config's; task-tiny is BDH; another type uses its declared "
                         "tiny_task_model, e.g. gpt a GPT of similar size)")
    tp.add_argument("--config", default=None, help="shipped config name or .toml path (default task-tiny)")
    tp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set data.task_size=24 (repeatable)")
    tp.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (= --set train.steps=N)")
    tp.add_argument("--seed", type=seed_value, default=0, help="train.seed and train.data_seed (default 0)")
    add_run_dir_options(tp, "runs/task-<task>-<model>")
    tp.set_defaults(func=cmd_train)

    ep = ts.add_parser("eval", help="exact-match accuracy, loss and state bytes per size of a trained model")
    ep.add_argument("--model", required=True, help="model directory (bdh tasks train --out)")
    ep.add_argument("--task", default=None, help="task reference (default: the one the model was trained on)")
    ep.add_argument("--sizes", type=_int_list, default=None, help="sizes, e.g. 16,32,64 (default: --multiples)")
    ep.add_argument("--multiples", type=_int_list, default=None,
                    help="multiples of the training size (default 1,2,4,8, stopping at the task's max size)")
    ep.add_argument("--n", type=positive_int, default=256, help="examples per size (default 256)")
    ep.add_argument("--passes", type=_int_list, default=None,
                    help="layer passes to evaluate, e.g. 1,2,3, at most 64 (BDH: weights shared across layers)")
    ep.add_argument("--scale-passes", action="store_true",
                    help="each size at passes x ceil(size / training size), at most 64 (the passes: --passes, else the "
                         "model's n_layer): more depth on longer inputs")
    ep.add_argument("--drift", action="store_true",
                    help="BDH: also the active fraction of x/y neurons and ||rho|| per size (bdh.analysis.drift)")
    ep.add_argument("--seed", type=seed_value, default=1234, help="seed of the evaluation examples (default 1234)")
    ep.add_argument("--batch-size", type=positive_int, default=64, help="examples evaluated together (default 64)")
    ep.add_argument("--json", action="store_true", help="print JSON")
    add_run_options(ep)
    ep.set_defaults(func=cmd_eval)

    import importlib

    for name in ("compare", "sweep"):  # `bdh tasks compare`, `bdh tasks sweep` (bdh.tasks.NAME), where present
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        if callable(getattr(mod, "register", None)):
            mod.register(ts)
