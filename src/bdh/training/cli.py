"""`bdh train` and `bdh eval`: parse arguments, call `bdh.training`.

    bdh train                                   # the default config: Shakespeare, bytes, ~8 min on 2 CPU cores
    bdh train --config tiny --set train.steps=50 --out runs/tiny
    bdh train --config my.toml --data corpus.txt --out runs/x --resume   # a finished run: "already finished"
    bdh train --config tiny --out runs/m --overwrite --threads 1     # replace the model saved in runs/m
    torchrun --nproc_per_node=2 -m bdh.cli train --config tiny --out runs/ddp
    bdh eval --model runs/tiny [--data SPEC] [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .trainer import launch

    overrides = list(args.set or [])
    if args.threads is not None:
        from ..cli import THREADS_MAX

        if not 1 <= args.threads <= THREADS_MAX:
            raise ValueError(f"--threads {args.threads}: expected a positive integer (at most {THREADS_MAX})")
        overrides.append(f"train.threads={args.threads}")
    if args.data is not None:
        overrides.append(f"data.corpus={json.dumps(args.data)}")
    run = load_run_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / run.name
    t0 = time.time()
    s = launch(run, out, resume=args.resume, progress=None if not args.no_progress else False,
               overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: one report
        return 0
    if s.get("val_bpb") is None:  # a task run (data.corpus = "task:REF"): accuracy, no bits/byte
        print(f"val loss {s['val_loss']:.4f} nats/answer | accuracy {s.get('val_accuracy', float('nan')):.3f} | "
              f"{s['step']} steps | wall {time.time() - t0:.0f}s | model in {out} (bdh tasks eval --model {out})")
        return 0
    print(f"val loss {s['val_loss']:.4f} nats/token | {s['val_bpb']:.4f} bits/byte | {s['step']} steps | "
          f"{s['tok_per_s']:,.0f} tok/s | wall {time.time() - t0:.0f}s | model in {out}")
    return 0


def _run_settings(model_dir: Path) -> dict:
    """The resolved config of the run that trained `model_dir` (run.json of a run, trainer.json of a checkpoint)."""
    for name, key in (("run.json", "config"), ("trainer.json", "run_config")):
        try:
            return json.loads((model_dir / name).read_text(encoding="utf-8"))[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {}


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..checkpoint import load_model
    from ..cli import apply_run_options
    from ..data.corpora import resolve_corpus
    from ..tokenization import load_tokenizer
    from .evaluation import evaluate, token_byte_lengths

    device = apply_run_options(args)  # --threads (a positive integer) and --device, checked first
    for name, least in (("block_size", 1), ("batch_size", 1), ("tokens", 0)):
        v = getattr(args, name)
        if v is not None and v < least:
            raise ValueError(f"--{name.replace('_', '-')} {v}: expected an integer >= {least}")
    model_dir = Path(args.model)
    model = load_model(model_dir, device=device)  # any registered model type
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"{model_dir}: tokenizer vocab_size {tokenizer.vocab_size} != model vocab_size {model.config.vocab_size}"
        )
    settings = _run_settings(model_dir)
    data = settings.get("data", {})
    if args.threads is None and settings.get("train", {}).get("threads", 0):
        torch.set_num_threads(settings["train"]["threads"])  # the training run's train.threads
    corpus = args.data or data.get("corpus", "shakespeare")
    if corpus.startswith("task:"):
        raise ValueError(f"--model {str(model_dir)!r} was trained on {corpus!r}: evaluate it with bdh tasks eval "
                         f"--model {model_dir}")
    block = args.block_size or data.get("block_size", 256)
    carry = args.carry if args.carry is not None else data.get("batching") == "tbptt"
    train = settings.get("train", {})  # defaults that reproduce the run's own final evaluation
    batch_size = args.batch_size if args.batch_size is not None else train.get("eval_batch_size", 32)
    max_tokens = args.tokens if args.tokens is not None else train.get("final_eval_tokens", 0)
    form = train.get("form", "auto")
    val = resolve_corpus(corpus, jsonl_field=data.get("jsonl_field", "text"),
                         encoding_errors=data.get("encoding_errors", "strict"),
                         val_fraction=data.get("val_fraction", 0.1)).val
    tokens = np.asarray(tokenizer.encode(val), dtype=np.int64)
    res = evaluate(model, tokens, token_byte_lengths(tokenizer), block, batch_size=batch_size,
                   max_tokens=max_tokens, carry=carry, form=form)
    if args.json:
        print(json.dumps({"model": str(model_dir), "corpus": corpus, "block_size": block, "carry": carry, **res}))
    else:
        state = "carried" if carry else "reset"
        print(f"{corpus} validation: loss {res['loss']:.4f} nats/token | {res['bpb']:.4f} bits/byte | "
              f"{res['tokens']:,} tokens, {res['bytes']:,} bytes (block {block}, state {state})")
    return 0


def add_run_dir_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """--out, --resume, --overwrite, --threads, --no-progress: the options of every command that runs `train`."""
    p.add_argument("--out", default=None, help=f"run directory (default {default_out}); ends holding the model")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --out, or from the given checkpoint/run directory")
    p.add_argument("--overwrite", action="store_true",
                   help="a new run may replace a model already saved in --out (refused otherwise)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process, 1 to 1024 (= --set train.threads=N)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (text lines instead)")


def register(sub) -> None:
    from ..cli import add_run_options

    p = sub.add_parser("train", help="train a BDH model (TOML config + overrides)",
                       description="Train BDH. Configs: tiny, default, reference-25m, or a .toml path.")
    p.add_argument("--config", default="default",
                   help="shipped config name (tiny, default, reference-25m) or .toml path")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="corpus: shakespeare, pydoc, gettext:fr, a file, directory, glob or .jsonl (= data.corpus)")
    add_run_dir_options(p, "runs/<config name>")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="validation loss (nats/token) and bits/byte of a saved model")
    e.add_argument("--model", required=True, help="model directory (bdh train --out)")
    e.add_argument("--data", default=None, help="corpus spec (default: the one the model was trained on)")
    e.add_argument("--block-size", type=int, default=None, help="tokens per chunk (default: the training block size)")
    e.add_argument("--batch-size", type=int, default=None,
                   help="validation streams evaluated together (default: the run's train.eval_batch_size, else 32)")
    e.add_argument("--tokens", type=int, default=None,
                   help="evaluate at most this many tokens, 0 = all (default: the run's train.final_eval_tokens, else 0)")
    e.add_argument("--carry", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the attention state along each stream (default: if trained with TBPTT)")
    add_run_options(e, threads_help="torch CPU threads, a positive integer (default: the training run's train.threads)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_eval)
