"""`bdh compare`: train the BDH and GPT ladders on equal tokens and compare them.

    bdh compare --preset cpu --out runs/compare                 # the 3 smallest CPU rungs
    bdh compare --preset cpu --rungs 6 --set train.steps=2000   # the whole CPU ladder, longer
    bdh compare --preset gpu --out runs/compare-gpu             # the paper's 25M-800M ladder (GPU)

Every run uses the same trainer (`bdh.training.train`, the one training loop, through `bdh train`), data,
tokenizer, schedule, seeds and batch order (random crops drawn from `train.data_seed`), differing only in
`[model]`. Each training runs in its own process (`bdh train`), so its peak memory is its own; a finished run (its `summary.json` present, same `run.toml`) is reused when the
command is repeated, so an interrupted comparison continues where it stopped.

OUT/compare.csv, compare.md, compare.json, compare_params.png (val bits/byte vs parameters),
compare_tokens.png (val bits/byte vs tokens seen), and OUT/<rung>/<bdh|gpt>/ (each a `bdh train` run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..io import atomic_path, atomic_write_text
from ..training.config import DataConfig, RunConfig, TrainConfig, apply_override
from .ladders import MAX_PARAM_GAP, Rung, get_ladder

PRESETS = {
    # 2 CPU cores: bytes-level Shakespeare, 128-byte crops, 16 x 128 x 128 = 262,144 training tokens per run
    "cpu": {
        "ladder": "cpu",
        "rungs": 3,
        "data": {"corpus": "shakespeare", "tokenizer": "bytes", "block_size": 128, "batching": "random"},
        "train": {"steps": 128, "batch_size": 16, "lr": 2e-3, "warmup": 16, "decay": "cosine", "min_lr_ratio": 0.1,
                  "weight_decay": 0.1, "grad_clip": 1.0, "log_every": 16, "eval_every": 32, "eval_tokens": 16384,
                  "final_eval_tokens": 65536, "eval_batch_size": 16, "sample_tokens": 0, "checkpoint_every": 0,
                  "threads": 0, "processes": 1},
    },
    # the paper's setting (B.2): lr 1e-3, 1000 warmup steps, linear decay to 1e-4, weight decay 0.1
    "gpu": {
        "ladder": "gpu",
        "rungs": 6,
        "data": {"corpus": "shakespeare", "tokenizer": "bytes", "block_size": 512, "batching": "random"},
        "train": {"steps": 10000, "batch_size": 32, "lr": 1e-3, "warmup": 1000, "decay": "linear",
                  "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "log_every": 50, "eval_every": 500,
                  "eval_tokens": 262144, "final_eval_tokens": 0, "eval_batch_size": 32, "sample_tokens": 0,
                  "checkpoint_every": 1000, "precision": "auto"},
    },
}

FIELDS = ["rung", "model", "params", "val_loss", "val_bpb", "val_tokens", "tokens", "train_time_s", "tok_per_s",
          "peak_rss_mib", "peak_cuda_mib", "config"]


def run_configs(rung: Rung, preset: dict, overrides: list[str]) -> dict[str, RunConfig]:
    """The two runs of a rung: identical [data] and [train], the rung's [model]."""
    runs = {}
    for kind, model in (("bdh", dict(rung.bdh)), ("gpt", {"model_type": "gpt", **rung.gpt})):
        run = RunConfig(model=model, data=DataConfig(**preset["data"]), train=TrainConfig(**preset["train"]),
                        name=f"compare-{rung.name}-{kind}")
        for item in overrides:
            if item.split("=", 1)[0].strip().startswith("model."):
                raise ValueError(f"--set {item!r}: the models come from the ladder; only data.* and train.* can be set")
            apply_override(run, item)
        run.validate()
        runs[kind] = run
    return runs


def _finished(run: RunConfig, out: Path) -> bool:
    """`out` holds the finished run of exactly this config (reused, never retrained)."""
    toml = out / "compare-run.toml"
    return (out / "summary.json").is_file() and toml.is_file() and toml.read_text() == run.to_toml()


def check_corpus(run: RunConfig, flag: str = "--data") -> None:
    """The run's corpus resolves and (bytes tokenizer) is longer than one block: the error `bdh train` would
    give, raised before any training starts or anything is written."""
    from ..data.corpora import resolve_corpus

    d = run.data
    splits = resolve_corpus(d.corpus, jsonl_field=d.jsonl_field, encoding_errors=d.encoding_errors,
                            val_fraction=d.val_fraction, seed=run.train.data_seed)
    if not splits.train.strip():
        raise ValueError(f"{flag} {d.corpus!r}: the training split is empty")
    if d.tokenizer == "bytes":  # other tokenizers: counted by `bdh train` itself
        n_train, n_val = len(splits.train.encode("utf-8")), len(splits.val.encode("utf-8"))
        if n_train < d.block_size + 1:
            raise ValueError(f"{flag} {d.corpus!r}: the training split has {n_train} tokens, fewer than "
                             f"data.block_size + 1 = {d.block_size + 1}")
        if n_val < 2:
            raise ValueError(f"{flag} {d.corpus!r}: the validation split has {n_val} token(s); need >= 2")


def _train(run: RunConfig, out: Path, echo, overwrite: bool = False) -> dict:
    """One `bdh train` in a child process (reused when `out` already holds its finished run)."""
    summary = out / "summary.json"
    if _finished(run, out):
        echo(f"  reusing the finished run in {out}")
        return json.loads(summary.read_text())
    atomic_write_text(out / "compare-run.toml", run.to_toml())
    for stale in (summary, out / "checkpoints"):  # an unfinished or different earlier run: start over
        if stale.exists():
            import shutil

            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    cmd = [sys.executable, "-m", "bdh.cli", "train", "--config", str(out / "compare-run.toml"), "--out", str(out),
           "--no-progress"] + (["--overwrite"] if overwrite else [])
    with open(out / "train.log", "w", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0 or not summary.is_file():
        tail = (out / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise ChildProcessError(f"training {out} failed (exit {rc}): " + " | ".join(tail))  # an OSError: one line
    return json.loads(summary.read_text())


def _curve(out: Path, tokens_per_step: int) -> list[tuple[int, float]]:
    """(tokens seen, val bits/byte) of the periodic evaluations and the final one."""
    pts = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") in ("val", "final"):
            pts.append((r["step"] * tokens_per_step, r["bpb"], r["split"]))
    final = [(t, b) for t, b, s in pts if s == "final"][-1:]
    last = final[0][0] if final else None  # the final eval (larger) replaces the periodic one at the same step
    return [(t, b) for t, b, s in pts if s == "val" and t != last] + final


def compare(preset: str = "cpu", out: str | os.PathLike = "runs/compare", *, rungs: int | None = None,
            overrides: list[str] = (), data: str | None = None, overwrite: bool = False, echo=print) -> list[dict]:
    """Train the first `rungs` rungs of `preset`'s ladder (both models) and write the reports into `out`.

    Checked before anything runs or is written: the settings, the corpus, and every run directory (a model in one
    that is not this config's finished run is replaced only with `overwrite`)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    ladder = get_ladder(p["ladder"])
    k = p["rungs"] if rungs is None else rungs
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ladder):
        raise ValueError(f"--rungs {k!r}: expected an integer in [1, {len(ladder)}] (the {p['ladder']} ladder)")
    overrides = list(overrides) + ([f"data.corpus={json.dumps(data)}"] if data is not None else [])
    plans = [(r, run_configs(r, p, overrides)) for r in ladder[:k]]  # every config validated before any training
    check_corpus(plans[0][1]["bdh"], "--data" if data is not None else "data.corpus")  # all runs share [data]
    out = Path(out)
    from ..checkpoint import check_output_dir

    for rung, runs in plans:
        for kind, run in runs.items():
            where = out / rung.name / kind
            check_output_dir(where, overwrite=overwrite or _finished(run, where))
    rows: list[dict] = []
    curves: dict[str, list] = {}
    t0 = time.time()
    for rung, runs in plans:
        for kind, run in runs.items():
            where = out / rung.name / kind
            echo(f"[{time.time() - t0:6.0f}s] rung {rung.name}: training {kind.upper()} -> {where}")
            s = _train(run, where, echo, overwrite)
            tps = run.train.batch_size * run.train.grad_accum * run.data.block_size
            curves[f"{rung.name}/{kind}"] = _curve(where, tps)
            cfg = json.loads((where / "config.json").read_text())
            rows.append({"rung": rung.name, "model": kind, "params": s["params"], "val_loss": s["val_loss"],
                         "val_bpb": s["val_bpb"], "val_tokens": s["val_tokens"], "tokens": s["tokens"],
                         "train_time_s": s["train_time_s"], "tok_per_s": s["tok_per_s"],
                         "peak_rss_mib": s.get("peak_rss_mib"), "peak_cuda_mib": s.get("peak_cuda_mib"),
                         "config": _shape(cfg)})
            echo(f"         {kind.upper()} {rows[-1]['config']}: {s['params']:,} params, val {s['val_bpb']:.4f} "
                 f"bits/byte, {s['tok_per_s']:,.0f} tok/s")
        b, g = rows[-2]["params"], rows[-1]["params"]
        if abs(g - b) / b > MAX_PARAM_GAP:  # another vocabulary than the ladder's 256
            echo(f"  warning: rung {rung.name}: parameter counts differ by {abs(g - b) / b:.1%} (> 5%) with this "
                 "tokenizer's vocabulary")
    write_reports(rows, curves, out, preset=preset, command=" ".join(["bdh", "compare"] + sys.argv[2:]) if
                  sys.argv[1:2] == ["compare"] else f"compare(preset={preset!r})", wall_s=time.time() - t0)
    return rows


def _shape(cfg: dict) -> str:
    if cfg.get("model_type") == "gpt":
        return f"L={cfg['n_layer']} d={cfg['n_embd']} h={cfg['n_head']}"
    n = cfg["mlp_internal_dim_multiplier"] * cfg["n_embd"]
    return f"L={cfg['n_layer']} d={cfg['n_embd']} h={cfg['n_head']} n={n}"


def markdown_table(rows: list[dict]) -> str:
    by = {(r["rung"], r["model"]): r for r in rows}
    lines = ["| rung | BDH params | GPT params | BDH val bits/byte | GPT val bits/byte | BDH tok/s | GPT tok/s | "
             "BDH peak RSS | GPT peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for rung in dict.fromkeys(r["rung"] for r in rows):
        b, g = by.get((rung, "bdh")), by.get((rung, "gpt"))
        if b is None or g is None:
            continue
        mem = lambda r: "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:,.0f} MiB"  # noqa: E731
        lines.append(f"| {rung} | {b['params']:,} | {g['params']:,} | {b['val_bpb']:.4f} | {g['val_bpb']:.4f} | "
                     f"{b['tok_per_s']:,.0f} | {g['tok_per_s']:,.0f} | {mem(b)} | {mem(g)} |")
    return "\n".join(lines)


def write_reports(rows: list[dict], curves: dict, out: Path, *, preset: str, command: str, wall_s: float) -> None:
    from ..analysis.plotting import plt_figure, save

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "compare.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    tokens = rows[0]["tokens"] if rows else 0
    md = (f"# BDH vs GPT ({preset} preset, {tokens:,} training tokens per run)\n\n`{command}`\n\n"
          + markdown_table(rows) + f"\n\nValidation: bits per byte on the held-out split. Training time, sum over the runs: "
          f"{sum(r['train_time_s'] for r in rows) / 60:.1f} min; wall of this invocation {wall_s / 60:.1f} min "
          "(finished runs are reused).\n")
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.json", json.dumps({"preset": preset, "command": command, "rows": rows,
                                                        "curves": curves, "wall_s": wall_s}, indent=2))
    fig, (ax,) = plt_figure()
    for kind, style in (("bdh", "o-"), ("gpt", "s--")):
        pts = [(r["params"], r["val_bpb"]) for r in rows if r["model"] == kind]
        if pts:
            ax.plot(*zip(*pts), style, label=kind.upper())
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="validation bits/byte", title=f"BDH vs GPT at {tokens:,} tokens")
    ax.legend()
    save(fig, out / "compare_params.png")
    fig, (ax,) = plt_figure(width=7)
    for name, pts in curves.items():
        if pts:
            ax.plot(*zip(*pts), "-" if name.endswith("bdh") else "--", marker=".", label=name)
    ax.set(xlabel="training tokens seen", ylabel="validation bits/byte", title="validation during training")
    ax.legend(fontsize=7)
    save(fig, out / "compare_tokens.png")


# ----------------------------------------------------------------------------------------------- CLI
def cmd_compare(args: argparse.Namespace) -> int:
    if args.list:
        from .ladders import param_table

        print(param_table(PRESETS[args.preset]["ladder"] if args.preset in PRESETS else args.preset))
        return 0
    from ..runtime import apply_run_options

    apply_run_options(args)  # --threads range check
    overrides = ([f"train.threads={args.threads}"] if args.threads is not None else []) + (args.set or [])
    rows = compare(args.preset, args.out or f"runs/compare-{args.preset}", rungs=args.rungs,
                   overrides=overrides, data=args.data, overwrite=args.overwrite)
    print()
    print(markdown_table(rows))
    print(f"\nreports in {args.out or f'runs/compare-{args.preset}'} (compare.md, compare.csv, compare_*.png)")
    return 0


def register(sub) -> None:
    from ..runtime import add_run_options, positive_int

    c = sub.add_parser("compare", help="train the BDH and GPT ladders on equal tokens; CSV, markdown and plots",
                       description="Train parameter-matched BDH and GPT models (same data, order, schedule, seeds).")
    c.add_argument("--preset", default="cpu", help="cpu (2 cores, the 3 smallest rungs) or gpu (the paper's ladder)")
    c.add_argument("--rungs", type=positive_int, default=None, help="train the first K rungs (default: the preset's)")
    c.add_argument("--out", default=None, help="output directory (default runs/compare-PRESET)")
    c.add_argument("--data", default=None, help="corpus (as bdh train --data)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="data.* / train.* override for every run")
    c.add_argument("--overwrite", action="store_true",
                   help="retrain a run directory that holds a model from other settings (refused otherwise)")
    c.add_argument("--list", action="store_true", help="print the ladder's parameter counts and exit")
    add_run_options(c, device=False, threads_help="torch CPU threads of every training run (= train.threads; "
                                                  "default: the preset's)")
    c.set_defaults(func=cmd_compare)
