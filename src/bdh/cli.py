"""The `bdh` command line: a thin layer that parses arguments and calls the library.

Each command module exposes `register(subparsers)`, which adds its sub-parser with `func=handler`.
Errors in user input end the program with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

COMMAND_MODULES = ("bdh.cli", "bdh.training.cli", "bdh.analysis.cli", "bdh.graph.cli", "bdh.baselines.compare")


def _load_model(path: str):
    from .models import load_model

    return load_model(path)  # BDH or the GPT baseline, with the tokenizer saved beside it (bytes when none)


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load_model(args.model)
    if args.prompt == "":
        raise ValueError("--prompt is empty: expected at least one character")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for delta in model.stream(
        args.prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        **({} if args.sparse == "auto" else {"sparse": args.sparse == "on"}),
    ):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def model_info(model) -> dict:
    """Config, parameter counts (actual and 3nd + 2Vd), FLOPs per token and state size of a model."""
    c = model.config
    if not hasattr(c, "N"):  # the GPT baseline: its KV cache grows with the context
        return {"config": {"model_type": "gpt", **c.to_dict()}, "params_actual": model.num_params(),
                "params_formula": c.num_params(), "params_match": model.num_params() == c.num_params(),
                "flops_per_token_decode_at_context_1024": model.flops_per_token(1024),
                "kv_cache_bytes_per_token_fp32": 2 * c.n_layer * c.n_embd * 4, "dtype": str(model.dtype).removeprefix("torch.")}
    state_bytes = c.n_layer * c.n * c.D * 4
    return {
        "config": c.to_dict(),
        "neurons_per_head_N": c.N,
        "neurons_n": c.n,
        "params_actual": model.num_params(),
        "params_formula_3nd_2Vd": c.num_params(),
        "params_match": model.num_params() == c.num_params(),
        "flops_per_token_decode": model.flops_per_token(),
        "state_bytes_per_sequence_fp32": state_bytes,
        "state_floats_per_sequence": c.n_layer * c.n * c.D,
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(_load_model(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"]
    if c.get("model_type") == "gpt":
        print(f"GPT baseline at {args.model}")
        print(f"  layers L={c['n_layer']}  d={c['n_embd']}  heads={c['n_head']}  mlp={c['mlp_dim'] or 4 * c['n_embd']}  "
              f"positions={c['positions']}  vocab V={c['vocab_size']}  dtype={info['dtype']}")
        print(f"  parameters: {info['params_actual']:,}")
        print(f"  FLOPs/token (decode at context 1024): {info['flops_per_token_decode_at_context_1024']:,}")
        print(f"  KV cache: {info['kv_cache_bytes_per_token_fp32']:,} bytes fp32 per token of context")
        return 0
    print(f"BDH-GPU model at {args.model}")
    print(f"  layers L={c['n_layer']}  d={c['n_embd']}  heads h={c['n_head']}  N/head={info['neurons_per_head_N']}  "
          f"n={info['neurons_n']}  vocab V={c['vocab_size']}")
    print(f"  damping={c['damping']}  rope_theta={c['rope_theta']:g}  dropout={c['dropout']}  dtype={info['dtype']}")
    ok = "ok" if info["params_match"] else "MISMATCH"
    print(f"  parameters: {info['params_actual']:,} (3nd + 2Vd = {info['params_formula_3nd_2Vd']:,}: {ok})")
    print(f"  FLOPs/token (recurrent decode): {info['flops_per_token_decode']:,}")
    mib = info["state_bytes_per_sequence_fp32"] / 2**20
    print(f"  state per sequence: {info['state_floats_per_sequence']:,} floats = {mib:.2f} MiB fp32 (constant in context)")
    return 0


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate text from a saved model")
    g.add_argument("--model", required=True, help="model directory (save_pretrained / bdh train --out)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--sparse", choices=("auto", "on", "off"), default="auto",
                   help="BDH decode path: auto (sparse where it pays, per layer and token), on (sparse), off (dense)")
    g.set_defaults(func=cmd_generate)
    i = sub.add_parser("info", help="config, parameter count, FLOPs per token and state size of a model")
    i.add_argument("--model", required=True)
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="bdh", description="BDH, the Dragon Hatchling")
    p.add_argument("--version", action="version", version=f"bdh {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bdh: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad input: one line, non-zero exit
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"bdh {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
