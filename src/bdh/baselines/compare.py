"""`bdh compare`: train the BDH and GPT ladders, parameter-matched and FLOP-matched, and compare them.

    bdh compare --preset cpu --out runs/compare                 # the 3 smallest CPU rungs, three arms per rung
    bdh compare --preset cpu --list                             # the arms: params, FLOPs/token, steps, FLOPs
    bdh compare --preset cpu --match params                     # BDH and the equal-token GPT only
    bdh compare --preset cpu --rungs 6 --set train.steps=2000   # the whole CPU ladder, longer
    bdh compare --preset gpu --out runs/compare-gpu             # the paper's 25M-800M ladder (GPU)

The arms of a rung (`--match`; every arm states what it is matched on):
    bdh        the reference: the preset's steps
    gpt        the rung's GPT (parameters within 5%) on BDH's steps: equal parameters and tokens
    gpt-flops  the same GPT trained more steps, round(F_bdh / (tokens/step x f_gpt)), so that its total training
               FLOPs equal BDH's F_bdh = steps x tokens/step x f_bdh to within half a step's FLOPs; f = the model
               FLOPs of one training token, `bdh.interface.token_flops(config, T).training` (3 x the forward
               matmul FLOPs at T = data.block_size). Its lr schedule (warmup, decay) spans its own steps.

Every run uses the same trainer (`bdh.training.train`, the one training loop, through `bdh train`), data,
tokenizer, schedule, seeds and batch order (random crops drawn from `train.data_seed`), differing only in
`[model]` (and `train.steps` for the FLOP-matched arm). Each training runs in its own process (`bdh train`), so its
peak memory is its own; a finished run (its `summary.json` present, same `run.toml`) is reused when the
command is repeated, so an interrupted comparison continues where it stopped.

OUT/compare.csv (one row per arm: params, FLOPs/token, steps, tokens, training FLOPs, wall-clock, loss),
compare.md, compare.json (rows and curves), compare_curves.csv (every validation of every run: step, tokens,
training FLOPs, training wall-clock, loss, bits/byte, read from each run's metrics.jsonl), compare_flops.png (val
bits/byte vs training FLOPs), compare_wall.png (vs training wall-clock), compare_tokens.png (vs tokens seen),
compare_params.png (vs parameters), and OUT/<rung>/<bdh|gpt|gpt-flops>/ (each a `bdh train` run).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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
        "match": "both",  # --match default: the FLOP-matched GPT costs ~3x the GPT steps, minutes here
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
        "match": "params",  # --match default: at T=512 BDH costs 12-13x a GPT token, a FLOP-matched GPT ~130k steps
        "data": {"corpus": "shakespeare", "tokenizer": "bytes", "block_size": 512, "batching": "random"},
        "train": {"steps": 10000, "batch_size": 32, "lr": 1e-3, "warmup": 1000, "decay": "linear",
                  "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "log_every": 50, "eval_every": 500,
                  "eval_tokens": 262144, "final_eval_tokens": 0, "eval_batch_size": 32, "sample_tokens": 0,
                  "checkpoint_every": 1000, "precision": "auto"},
    },
}

FIELDS = ["rung", "arm", "model", "matched", "params", "flops_per_token", "steps", "tokens", "train_flops",
          "val_loss", "val_bpb", "val_tokens", "train_time_s", "tok_per_s", "peak_rss_mib", "peak_cuda_mib", "config"]
CURVE_FIELDS = ["rung", "arm", "split", "step", "tokens", "train_flops", "elapsed_s", "val_loss", "val_bpb"]

MATCHES = {"params": ("bdh", "gpt"), "flops": ("bdh", "gpt-flops"), "both": ("bdh", "gpt", "gpt-flops")}
MATCHED = {"bdh": "reference", "gpt": "params, tokens", "gpt-flops": "params, training FLOPs"}
_VOCAB = {"bytes": 256, "gpt2": 50257}  # bpe: data.bpe_vocab_size


def vocab_size_of(data: DataConfig) -> int:
    """The vocabulary the runs' tokenizer will have (for FLOPs and parameters before training; the reports use
    each run's config.json)."""
    return _VOCAB.get(data.tokenizer, data.bpe_vocab_size)


def tokens_per_step(run: RunConfig) -> int:
    return run.train.batch_size * run.train.grad_accum * run.data.block_size


def training_flops_per_token(model_config, run: RunConfig) -> float:
    """Model FLOPs of one training token: `bdh.interface.token_flops(config, T).training`, T = data.block_size,
    in the run's train.form."""
    from ..interface import token_flops

    return token_flops(model_config, run.data.block_size, form=run.train.form).training


def flop_matched_steps(target_flops: float, flops_per_token: float, tokens_per_step: int) -> int:
    """The number of steps whose training FLOPs come nearest `target_flops` (at least 1): within half a step."""
    return max(1, round(target_flops / (flops_per_token * tokens_per_step)))


def _check_match(match: str) -> None:
    if match not in MATCHES:
        raise ValueError(f"--match {match!r}: expected one of {', '.join(MATCHES)}")


def run_configs(rung: Rung, preset: dict, overrides: list[str], match: str = "params") -> dict[str, RunConfig]:
    """The runs of a rung (`MATCHES[match]`): identical [data] and [train], the rung's [model]; the FLOP-matched
    GPT with train.steps set so its training FLOPs equal BDH's (`flop_matched_steps`)."""
    _check_match(match)
    runs = {}
    for arm in MATCHES[match]:
        model = dict(rung.bdh) if arm == "bdh" else {"model_type": "gpt", **rung.gpt}
        run = RunConfig(model=model, data=DataConfig(**preset["data"]), train=TrainConfig(**preset["train"]),
                        name=f"compare-{rung.name}-{arm}")
        for item in overrides:
            if item.split("=", 1)[0].strip().startswith("model."):
                raise ValueError(f"--set {item!r}: the models come from the ladder; only data.* and train.* can be set")
            apply_override(run, item)
        run.validate()
        runs[arm] = run
    if "gpt-flops" in runs:
        b, g = runs["bdh"], runs["gpt-flops"]
        V = vocab_size_of(b.data)
        target = b.train.steps * tokens_per_step(b) * training_flops_per_token(b.model_config(V), b)
        g.train.steps = flop_matched_steps(target, training_flops_per_token(g.model_config(V), g), tokens_per_step(g))
        g.validate()
    return runs


def arm_plan(rung: Rung, arm: str, run: RunConfig) -> dict:
    """What an arm will train: params, training FLOPs/token, steps, tokens, total training FLOPs."""
    cfg = run.model_config(vocab_size_of(run.data))
    f, tps = training_flops_per_token(cfg, run), tokens_per_step(run)
    return {"rung": rung.name, "arm": arm, "model": cfg.MODEL_TYPE, "matched": MATCHED[arm],
            "config": _shape({"model_type": cfg.MODEL_TYPE, **dataclasses.asdict(cfg)}), "params": cfg.num_params(),
            "flops_per_token": f, "steps": run.train.steps, "tokens": run.train.steps * tps,
            "train_flops": run.train.steps * tps * f}


def plan(preset: str = "cpu", *, rungs: int | None = None, overrides: list[str] = (), data: str | None = None,
         match: str = "both") -> list[tuple[Rung, dict[str, RunConfig]]]:
    """The rungs and their arms' run configs, validated (nothing read or written)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    _check_match(match)
    p = PRESETS[preset]
    ladder = get_ladder(p["ladder"])
    k = p["rungs"] if rungs is None else rungs
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ladder):
        raise ValueError(f"--rungs {k!r}: expected an integer in [1, {len(ladder)}] (the {p['ladder']} ladder)")
    overrides = list(overrides) + ([f"data.corpus={json.dumps(data)}"] if data is not None else [])
    return [(r, run_configs(r, p, overrides, match)) for r in ladder[:k]]


def plan_table(plans: list[tuple[Rung, dict[str, RunConfig]]]) -> str:
    """The arms as a markdown table (`bdh compare --list`)."""
    lines = ["| rung | arm | matched | shape | params | FLOPs/token | steps | tokens | training FLOPs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rung, runs in plans:
        for arm, run in runs.items():
            a = arm_plan(rung, arm, run)
            lines.append(f"| {a['rung']} | {arm} | {a['matched']} | {a['config']} | {a['params']:,} | "
                         f"{a['flops_per_token']:,.0f} | {a['steps']:,} | {a['tokens']:,} | {a['train_flops']:.4g} |")
    return "\n".join(lines)


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


def read_curve(out: Path, tokens_per_step: int, flops_per_token: float) -> list[dict]:
    """The validation curve of the run in `out`, from its metrics.jsonl: one point per periodic evaluation
    (every train.eval_every steps) and the final one (which replaces a periodic one at the same step), each with
    step, tokens seen, training FLOPs (tokens x `flops_per_token`), training wall-clock (elapsed_s: the training
    steps' time, evaluations excluded), val_loss (nats/token) and val_bpb."""
    pts = []
    for line in (Path(out) / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("split") in ("val", "final"):
            tokens = r["step"] * tokens_per_step
            pts.append({"split": r["split"], "step": r["step"], "tokens": tokens,
                        "train_flops": tokens * flops_per_token, "elapsed_s": r.get("elapsed_s"),
                        "val_loss": r.get("loss"), "val_bpb": r.get("bpb")})
    final = [p for p in pts if p["split"] == "final"][-1:]
    last = final[0]["step"] if final else None
    return [p for p in pts if p["split"] == "val" and p["step"] != last] + final


def compare(preset: str = "cpu", out: str | os.PathLike = "runs/compare", *, rungs: int | None = None,
            overrides: list[str] = (), data: str | None = None, overwrite: bool = False, match: str = "both",
            echo=print) -> list[dict]:
    """Train the first `rungs` rungs of `preset`'s ladder (the arms of `match`: "params", "flops" or "both", see
    the module's docstring) and write the reports into `out`.

    Checked before anything runs or is written: the settings, the corpus, and every run directory (a model in one
    that is not this config's finished run is replaced only with `overwrite`)."""
    plans = plan(preset, rungs=rungs, overrides=overrides, data=data, match=match)  # every config validated first
    check_corpus(plans[0][1]["bdh"], "--data" if data is not None else "data.corpus")  # all runs share [data]
    out = Path(out)
    from ..checkpoint import check_output_dir
    from ..interface import config_from_dict

    for rung, runs in plans:
        for arm, run in runs.items():
            where = out / rung.name / arm
            check_output_dir(where, overwrite=overwrite or _finished(run, where))
    rows: list[dict] = []
    curves: dict[str, list] = {}
    t0 = time.time()
    for rung, runs in plans:
        for arm, run in runs.items():
            where = out / rung.name / arm
            a = arm_plan(rung, arm, run)
            echo(f"[{time.time() - t0:6.0f}s] rung {rung.name}: training {arm} (matched: {a['matched']}; "
                 f"{a['steps']:,} steps, {a['train_flops']:.4g} training FLOPs) -> {where}")
            s = _train(run, where, echo, overwrite)
            cfg = json.loads((where / "config.json").read_text())
            f = training_flops_per_token(config_from_dict(cfg), run)  # the tokenizer's actual vocabulary
            curves[f"{rung.name}/{arm}"] = read_curve(where, tokens_per_step(run), f)
            rows.append({"rung": rung.name, "arm": arm, "model": cfg.get("model_type", "bdh"), "matched": a["matched"],
                         "params": s["params"], "flops_per_token": f, "steps": run.train.steps, "tokens": s["tokens"],
                         "train_flops": s["tokens"] * f, "val_loss": s["val_loss"], "val_bpb": s["val_bpb"],
                         "val_tokens": s["val_tokens"], "train_time_s": s["train_time_s"], "tok_per_s": s["tok_per_s"],
                         "peak_rss_mib": s.get("peak_rss_mib"), "peak_cuda_mib": s.get("peak_cuda_mib"),
                         "config": _shape(cfg)})
            echo(f"         {arm} {rows[-1]['config']}: {s['params']:,} params, val {s['val_bpb']:.4f} "
                 f"bits/byte, {s['tok_per_s']:,.0f} tok/s, {s['train_time_s']:.0f} s")
        rr = {r["arm"]: r for r in rows if r["rung"] == rung.name}
        b, g = rr["bdh"]["params"], next(r["params"] for k, r in rr.items() if k != "bdh")
        if abs(g - b) / b > MAX_PARAM_GAP:  # another vocabulary than the ladder's 256
            echo(f"  warning: rung {rung.name}: parameter counts differ by {abs(g - b) / b:.1%} (> 5%) with this "
                 "tokenizer's vocabulary")
    write_reports(rows, curves, out, preset=preset, command=" ".join(["bdh", "compare"] + sys.argv[2:]) if
                  sys.argv[1:2] == ["compare"] else f"compare(preset={preset!r}, match={match!r})",
                  wall_s=time.time() - t0, match=match)
    return rows


def _shape(cfg: dict) -> str:
    if cfg.get("model_type") == "gpt":
        return f"L={cfg['n_layer']} d={cfg['n_embd']} h={cfg['n_head']}"
    n = cfg["mlp_internal_dim_multiplier"] * cfg["n_embd"]
    return f"L={cfg['n_layer']} d={cfg['n_embd']} h={cfg['n_head']} n={n}"


def _arm(r: dict) -> str:
    return r.get("arm", r["model"])


def markdown_table(rows: list[dict]) -> str:
    """Per rung: BDH beside the parameter-matched, equal-token GPT (arm "gpt")."""
    by = {(r["rung"], _arm(r)): r for r in rows}
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


def arms_table(rows: list[dict]) -> str:
    """One row per arm: what it is matched on, params, FLOPs/token, steps, tokens, training FLOPs, training
    wall-clock, val bits/byte."""
    lines = ["| rung | arm | matched | shape | params | FLOPs/token | steps | tokens | training FLOPs | wall | "
             "val bits/byte | tok/s | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:,.0f} MiB"
        lines.append(f"| {r['rung']} | {_arm(r)} | {r['matched']} | {r['config']} | {r['params']:,} | "
                     f"{r['flops_per_token']:,.0f} | {r['steps']:,} | {r['tokens']:,} | {r['train_flops']:.4g} | "
                     f"{r['train_time_s']:.1f} s | {r['val_bpb']:.4f} | {r['tok_per_s']:,.0f} | {mem} |")
    return "\n".join(lines)


def _style(name: str) -> str:
    return {"bdh": "-", "gpt": "--", "gpt-flops": ":"}.get(name.rsplit("/", 1)[-1], "-.")


def write_reports(rows: list[dict], curves: dict, out: Path, *, preset: str, command: str, wall_s: float,
                  match: str = "both") -> None:
    from ..analysis.plotting import plt_figure, save

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "compare.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    with atomic_path(out / "compare_curves.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        for name, pts in curves.items():
            rung, arm = name.rsplit("/", 1)
            w.writerows({"rung": rung, "arm": arm, **p} for p in pts)
    tokens = rows[0]["tokens"] if rows else 0
    rung_table = markdown_table(rows) + "\n\n" if any(_arm(r) == "gpt" for r in rows) else ""
    md = (f"# BDH vs GPT ({preset} preset, --match {match}, {tokens:,} training tokens per BDH run)\n\n`{command}`\n\n"
          + rung_table + arms_table(rows)
          + "\n\nMatched: `gpt` has BDH's parameters (within 5%) and tokens; `gpt-flops` the same GPT trained "
          "more steps so that its training FLOPs (steps x tokens/step x FLOPs/token, "
          "`bdh.interface.token_flops(config, T).training` at T = data.block_size) equal BDH's to within half a "
          "step. Validation: bits per byte on the held-out split. Wall: training time of the run (evaluations "
          f"excluded). Training time, sum over the runs: {sum(r['train_time_s'] for r in rows) / 60:.1f} min; "
          f"wall of this invocation {wall_s / 60:.1f} min (finished runs are reused).\n")
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.json", json.dumps({"preset": preset, "match": match, "command": command,
                                                        "rows": rows, "curves": curves, "wall_s": wall_s}, indent=2))
    fig, (ax,) = plt_figure()
    for arm, style in (("bdh", "o-"), ("gpt", "s--"), ("gpt-flops", "^:")):
        pts = [(r["params"], r["val_bpb"]) for r in rows if _arm(r) == arm]
        if pts:
            ax.plot(*zip(*pts), style, label=arm)
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="validation bits/byte", title="BDH vs GPT (final validation)")
    ax.legend()
    save(fig, out / "compare_params.png")
    for key, xlabel, fname, log in (("tokens", "training tokens seen", "compare_tokens.png", False),
                                    ("train_flops", "training FLOPs (model FLOPs, 3 x forward)",
                                     "compare_flops.png", True),
                                    ("elapsed_s", "training wall-clock (s, evaluations excluded)",
                                     "compare_wall.png", True)):
        fig, (ax,) = plt_figure(width=7)
        for name, pts in curves.items():
            xy = [(p[key], p["val_bpb"]) for p in pts if p.get(key) and p.get("val_bpb") is not None]
            if xy:
                ax.plot(*zip(*xy), _style(name), marker=".", label=name)
        if log:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="validation bits/byte", title="validation during training")
        if curves:
            ax.legend(fontsize=7)
        save(fig, out / fname)


# ----------------------------------------------------------------------------------------------- CLI
def _overrides(args: argparse.Namespace) -> list[str]:
    return ([f"train.threads={args.threads}"] if args.threads is not None else []) + (args.set or [])


def cmd_compare(args: argparse.Namespace) -> int:
    from ..runtime import apply_run_options

    if args.preset in PRESETS and args.match is None:
        args.match = PRESETS[args.preset]["match"]
    if args.list:
        from .ladders import param_table

        plans = plan(args.preset, rungs=args.rungs, overrides=_overrides(args), data=args.data, match=args.match)
        run = plans[0][1]["bdh"]
        print(param_table(PRESETS[args.preset]["ladder"], vocab_size_of(run.data), run.data.block_size))
        print()
        print(plan_table(plans))
        return 0
    apply_run_options(args)  # --threads range check
    out = args.out or f"runs/compare-{args.preset}"
    rows = compare(args.preset, out, rungs=args.rungs, overrides=_overrides(args), data=args.data,
                   overwrite=args.overwrite, match=args.match)
    print()
    print(arms_table(rows))
    print(f"\nreports in {out} (compare.md, compare.csv, compare.json, compare_curves.csv, compare_*.png)")
    return 0


def register(sub) -> None:
    from ..runtime import add_run_options, positive_int

    c = sub.add_parser(
        "compare", help="train BDH and GPT ladders, parameter- and FLOP-matched; CSV, markdown, loss curves",
        description="Train BDH and the parameter-matched GPT of each ladder rung (same data, order, schedule, "
                    "seeds) and report each arm's params, FLOPs/token, steps, tokens, training FLOPs, wall-clock and "
                    "validation loss, with loss-vs-FLOPs and loss-vs-wall-clock curves (from each run's "
                    "metrics.jsonl). Arms: 'bdh'; 'gpt' (matched on params and tokens: BDH's steps); 'gpt-flops' "
                    "(matched on params and training FLOPs: the same GPT trained round(F_bdh / (tokens/step x "
                    "f_gpt)) steps, F_bdh = steps x tokens/step x f_bdh, f = bdh.interface.token_flops(config, "
                    "T=data.block_size).training, so its total is within half a step's FLOPs of BDH's).")
    c.add_argument("--preset", default="cpu", help="cpu (2 cores, the 3 smallest rungs) or gpu (the paper's ladder)")
    c.add_argument("--rungs", type=positive_int, default=None, help="train the first K rungs (default: the preset's)")
    c.add_argument("--match", default=None, choices=list(MATCHES),
                   help="the GPT arms: params (equal params and tokens), flops (equal params and training FLOPs: "
                        "more GPT steps) or both (default: the preset's, both for cpu, params for gpu)")
    c.add_argument("--out", default=None, help="output directory (default runs/compare-PRESET)")
    c.add_argument("--data", default=None, help="corpus (as bdh train --data)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="data.* / train.* override for every run")
    c.add_argument("--overwrite", action="store_true",
                   help="retrain a run directory that holds a model from other settings (refused otherwise)")
    c.add_argument("--list", action="store_true",
                   help="print the ladder and the arms (params, FLOPs/token, steps, tokens, training FLOPs) and exit "
                        "without training")
    add_run_options(c, device=False, threads_help="torch CPU threads of every training run (= train.threads; "
                                                  "default: the preset's)")
    c.set_defaults(func=cmd_compare)
