"""The `bdh` command line: a thin layer that parses arguments and calls the library.

Each command module exposes `register(subparsers)`, which adds its sub-parser with `func=handler`.
Errors in user input end the program with one line on stderr and a non-zero exit status.
Commands that run a model share `--device` / `--threads` and the argparse value types: they live in the library
(`bdh.runtime`, used by library modules too) and are re-exported here for the command modules.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from .generation import SEED_MAX  # noqa: F401 (re-exported: seeds in [0, 2^63))
from .runtime import (  # noqa: F401 (re-exported for the command modules)
    THREADS_MAX,
    add_run_options,
    apply_run_options,
    fraction,
    int_at_least,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_device,
    seed_value,
)

# (no "bdh.hf.cli": importing it would run bdh/hf/__init__.py, which imports transformers and registers the Auto
# classes, seconds on every command; the lm-eval entry point is `python -m bdh.hf.lm_eval`)
COMMAND_MODULES = ("bdh.cli", "bdh.training.cli", "bdh.analysis.cli", "bdh.graph.cli", "bdh.baselines.compare",
                   "bdh.tasks.cli", "bdh.view.cli", "bdh.serve.cli")


# ----------------------------------------------------------------------------- commands
def _load_model(path: str, device="cpu"):
    from .checkpoint import load_model

    return load_model(path, device=device)  # any registered model type, with the tokenizer saved beside it


def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import check_options

    device = apply_run_options(args)
    if args.prompt == "":
        raise ValueError("--prompt is empty: expected at least one character")
    # every option, with the library's own checks, before the model is loaded (errors name the value)
    check_options(args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  seed=args.seed, stop=args.stop)
    model = _load_model(args.model, device)
    deltas = model.stream(  # checks the options against the model (e.g. --sparse on) before returning
        args.prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        **({} if args.sparse == "auto" else {"sparse": args.sparse == "on"}),
    )
    first = next(deltas, "")  # the prompt's logits checked (a corrupt model fails here), before anything is printed
    sys.stdout.write(args.prompt + first)  # only now: nothing is printed for a bad option or model
    sys.stdout.flush()
    for delta in deltas:
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def model_info(model) -> dict:
    """Model type, config, parameter counts, FLOPs per decode step and state size of any registered model.

    Generic (`bdh.interface`): the state size is measured on a one-token state; the config's own `num_params()`
    (a closed formula, e.g. BDH's 3nd + 2Vd) is compared with the actual count when the config has one."""
    import torch

    c = model.config
    info = {"model_type": type(c).MODEL_TYPE, "model_class": type(model).__name__, "config": c.to_dict(),
            "capabilities": sorted(model.capabilities), "params_actual": model.num_params()}
    if callable(getattr(c, "num_params", None)):
        info["params_formula"] = c.num_params()
        info["params_match"] = info["params_formula"] == info["params_actual"]
    info["flops_per_token_decode"] = model.flops_per_token()
    with torch.no_grad():  # the state after one token: BDH's is constant in the context, a KV cache grows per token
        ids = torch.zeros(1, dtype=torch.long, device=next(model.parameters()).device)
        _, state = model.step(ids, model.init_state(1))
    info["state_bytes_after_1_token"] = sum(t.numel() * t.element_size() for t in model.state_to_tensors(state).values())
    info["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return info


def cmd_info(args: argparse.Namespace) -> int:
    apply_run_options(args)  # --threads
    info = model_info(_load_model(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model_class']} model (model_type {info['model_type']!r}) at {args.model}")
    print("  " + "  ".join(f"{k}={v}" for k, v in info["config"].items()))
    params = f"  parameters: {info['params_actual']:,}"
    if "params_formula" in info:
        params += f" (config formula {info['params_formula']:,}: {'ok' if info['params_match'] else 'MISMATCH'})"
    print(params)
    print(f"  FLOPs/token (decode step): {info['flops_per_token_decode']:,}")
    print(f"  state per sequence after 1 token: {info['state_bytes_after_1_token']:,} bytes ({info['dtype']})")
    print(f"  capabilities: {', '.join(info['capabilities']) or 'none'}")
    return 0


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate text from a saved model")
    g.add_argument("--model", required=True, help="model directory (save_pretrained / bdh train --out)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=seed_value, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--sparse", choices=("auto", "on", "off"), default="auto",
                   help="BDH decode path: auto (sparse where it pays, per layer and token), on (sparse), off (dense)")
    add_run_options(g)
    g.set_defaults(func=cmd_generate)
    i = sub.add_parser("info", help="config, parameter count, FLOPs per token and state size of a model")
    i.add_argument("--model", required=True)
    i.add_argument("--json", action="store_true", help="print JSON")
    add_run_options(i, device=False)  # runs one decode step on the CPU
    i.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

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
    _add_debug(p, False)
    return p


DEBUG_HELP = "on an error, print the whole traceback (also BDH_DEBUG=1)"


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    """--debug on `parser` and on every (sub)command below it, so that it may be given anywhere."""
    parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child, argparse.SUPPRESS)  # a subcommand's default must not reset the top level's


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("BDH_DEBUG", "").strip() not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bdh: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad input: one line, non-zero exit
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"bdh {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 (a bug, not bad input: one line naming it, the traceback on request)
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"bdh {args.command}: internal error: {type(e).__name__}{': ' + msg if msg else ''} (run again with "
              "--debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
