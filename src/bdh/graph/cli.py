"""`bdh graph`: the BDH graph form of a trained BDH-GPU checkpoint.

    bdh graph kl   --model runs/default [--budgets 1024 32768 ...] [--gains exact meanfield calibrated]
                   [--plot kl.png] [--json kl.json]
    bdh graph run  --model runs/default --prompt "ROMEO:" [--budget 65536] [--max-new-tokens 40]
                   [--export out/graph --format both --sigma-top 10000 --snapshot-every 16]
    bdh graph info --model runs/default [--budget 65536]

Every subcommand takes `--threads N` (default 1); `kl` and `run` take `--device` (BDH-GPU's device in `run`;
the graph form is a CPU simulator, and `kl` compares on the CPU).

`kl` prints, for every edge budget, the mean KL per token between BDH-GPU's next-token distribution and the
graph form's on held-out text (the validation split of `--corpus`, or `--text FILE`), and optionally plots
it. `run` builds the graph form (exact Claim 3 hubs without `--budget`), feeds the prompt token by token
through the round-by-round simulator, prints its greedy continuation next to BDH-GPU's, and exports the
graphs and sigma snapshots (CSV edge lists and/or GraphML) for external tools.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from ..cli import add_run_options, apply_run_options, nonneg_int, positive_int
from ..io import atomic_write_json
from ..tokenization import model_tokenizer


def _load(path: str):
    from ..model import BDH

    model = BDH.from_pretrained(path)
    return model, model_tokenizer(model)


def _heldout(args, tok, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(eval ids (B, T) from the validation text, calibration ids (B, T) from the training text)."""
    from ..data.corpora import read_text_source, resolve_corpus, split_text

    B, T = args.batch, args.seq_len  # positive (checked by argparse)
    if args.text:
        val = read_text_source(args.text)
        train = split_text(val).train
    else:
        splits = resolve_corpus(args.corpus)
        val, train = splits.val, splits.train

    def windows(text: str, what: str) -> torch.Tensor:
        ids = torch.tensor(tok.encode(text[: 4 * B * T * 8]) if len(text) > 4 * B * T * 8 else tok.encode(text))
        if len(ids) < B * T:
            raise ValueError(f"{what} text has {len(ids)} tokens; --batch {B} x --seq-len {T} needs {B * T}")
        if int(ids.max()) >= vocab:
            raise ValueError(f"{what} text has token id {int(ids.max())} outside the model's vocabulary {vocab}")
        starts = torch.linspace(0, len(ids) - T, B).long()  # evenly spread, deterministic
        return torch.stack([ids[s:s + T] for s in starts.tolist()])

    return windows(val, "held-out"), windows(train, "calibration")


def cmd_kl(args: argparse.Namespace) -> int:
    from .kl import default_budgets, kl_vs_budget, plot_kl_vs_budget

    if args.torch_device.type != "cpu":  # kl_vs_budget runs BDH-GPU beside the graph form, a CPU simulator
        raise ValueError(f"--device {args.device!r}: `bdh graph kl` compares BDH-GPU with the graph form on the CPU "
                         "(float64); expected --device cpu")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib (pip install matplotlib)")
    model, tok = _load(args.model)
    idx, cal = _heldout(args, tok, model.config.vocab_size)
    budgets = args.budgets or default_budgets(model.config.n, args.points)
    dtype = torch.float64 if args.float64 else torch.float32
    res = kl_vs_budget(model, idx, budgets, dtype=dtype, calibrate_idx=cal, gains=tuple(args.gains),
                       synapses=args.synapses, echo=lambda s: print(s, flush=True))
    res["model"] = str(args.model)
    res["corpus"] = args.text or args.corpus
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_kl_vs_budget(res, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .export import FORMATS, export_graph
    from .from_gpu import build_graph_form

    if args.prompt == "":
        raise ValueError("--prompt is empty: expected at least one character")
    if args.format not in FORMATS:
        raise ValueError(f"--format={args.format!r}: expected one of {FORMATS}")
    model, tok = _load(args.model)
    ids = tok.encode(args.prompt)
    if max(ids) >= model.config.vocab_size:
        raise ValueError(f"prompt token id {max(ids)} outside the model's vocabulary {model.config.vocab_size}")
    dtype = torch.float64 if args.float64 else torch.float32
    g = build_graph_form(model, budget=args.budget, dtype=dtype, synapses=args.synapses)
    e = g.num_edges()
    route = "exact Claim 3 hubs" if args.budget is None else f"{args.budget} strongest edges per graph"
    print(f"graph form: n={g.n} neurons, {route}; parameter edges {e['parameter graphs (G_x, G_y)']:,}, "
          f"synapses {e['Gs']:,} per layer x {g.W.n_layer} layers")
    state = g.init_state(1)
    out = Path(args.export) if args.export else None
    snaps = []
    sigma_note = ("sigma_l(i, j) = sum over past tokens of gamma^(t-tau) Z_y(i) Q(j) = (D_y rho_l)(i, j) inside a "
                  "head, in RoPE's rotated-key basis (signed); i, j neuron ids h*N + k")
    with torch.no_grad():
        for t, tid in enumerate(ids):
            logits = g.step(state, torch.tensor([tid]))
            if out is not None and args.snapshot_every and (t + 1) % args.snapshot_every == 0 and t + 1 < len(ids):
                snaps.append(export_graph(out / f"sigma_t{t + 1}", {"Gs": g.graphs["Gs"]}, state, n=g.n,
                                          head=g.W.head_of(), sigma_top=args.sigma_top, fmt=args.format,
                                          meta={"snapshot_after_tokens": t + 1, "sigma": sigma_note}))
        if out is not None:
            export_graph(out, g.graphs, state, n=g.n, head=g.W.head_of(), sigma_top=args.sigma_top, fmt=args.format,
                         meta={"model": str(args.model), "budget": args.budget, "prompt": args.prompt,
                               "tokens": len(ids), "sigma": sigma_note,
                               "sigma_snapshots": [str(s[0].parent) for s in snaps]})
            print(f"exported graphs and sigma after {len(ids)} tokens to {out} ({args.format}); "
                  f"{len(snaps)} earlier sigma snapshots")
        # greedy continuation: graph form vs BDH-GPU (both greedy, same prompt)
        gen = []
        for _ in range(args.max_new_tokens):
            nxt = int(logits[0].argmax())
            gen.append(nxt)
            logits = g.step(state, torch.tensor([nxt]))
        dev = args.torch_device  # BDH-GPU itself runs on --device; the graph form above on the CPU
        ref = model if dev.type == "cpu" else copy.deepcopy(model).to(dev)
        ref_logits, ref_state = ref.prefill(torch.tensor([ids], device=dev))
        ref_gen, last = [], ref_logits[0, -1]
        for _ in range(args.max_new_tokens):
            nxt = int(last.argmax())
            ref_gen.append(nxt)
            lg, ref_state = ref.step(torch.tensor([nxt], device=dev), ref_state)
            last = lg[0]
    if args.max_new_tokens:
        same = sum(a == b for a, b in zip(gen, ref_gen))
        print(f"graph form (greedy): {args.prompt}{tok.decode(gen)!r}")
        print(f"BDH-GPU    (greedy): {args.prompt}{tok.decode(ref_gen)!r}")
        print(f"agreement: {same}/{len(gen)} tokens")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .from_gpu import build_graph_form

    model, _ = _load(args.model)
    g = build_graph_form(model, budget=args.budget, dtype=torch.float32, synapses=args.synapses)
    st = g.init_state(1)
    info = {"n": g.n, "d": g.W.d, "n_head": g.W.n_head, "n_layer": g.W.n_layer, "budget": args.budget,
            "edges": g.num_edges(), "state_bytes_fp32": st.nbytes(), "rounds_per_token": len(g.program)}
    print(json.dumps(info, indent=2))
    return 0


def handler(args: argparse.Namespace) -> int:
    return {"kl": cmd_kl, "run": cmd_run, "info": cmd_info}[args.graph_command](args)


def register(sub) -> None:
    p = sub.add_parser("graph", help="the BDH graph form of a checkpoint: KL vs edge budget, run, export")
    gs = p.add_subparsers(dest="graph_command", required=True)

    def common(q, budget: bool = True, device: bool = True):
        q.add_argument("--model", required=True, help="model directory (save_pretrained / bdh train --out)")
        add_run_options(q, device=device, threads_default=1,
                        threads_help="torch threads (default 1: sparse steps gain little and avoid OpenMP stalls)")
        q.add_argument("--float64", action="store_true", help="run the graph form in float64 (default float32)")
        q.add_argument("--synapses", type=positive_int, default=None,
                       help="k random synapse partners per neuron (default: full head blocks, exact attention)")
        if budget:
            q.add_argument("--budget", type=nonneg_int, default=None,
                           help="edges kept per parameter graph (G_x, G_y); default: exact Claim 3 hubs")

    k = gs.add_parser("kl", help="mean KL per token between BDH-GPU and the graph form vs the edge budget")
    common(k, budget=False)
    k.add_argument("--budgets", type=nonneg_int, nargs="+", default=None, help="edge budgets (default: n .. n^2, geometric)")
    k.add_argument("--points", type=positive_int, default=7, help="number of default budgets")
    k.add_argument("--corpus", default="shakespeare", help="corpus whose validation split is the held-out text")
    k.add_argument("--text", default=None, help="a text file instead (its last 10%% is held out)")
    k.add_argument("--batch", type=positive_int, default=16, help="held-out sequences")
    k.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sequence")
    k.add_argument("--gains", nargs="+", default=["exact", "meanfield"], choices=["exact", "meanfield", "calibrated"],
                   help="LayerNorm modes: exact (d-space gain hubs), meanfield (RMS over neurons), calibrated "
                        "(constants, fully local); the last two are fitted on training text")
    k.add_argument("--plot", default=None, help="write the KL-vs-budget figure (PNG)")
    k.add_argument("--json", default=None, help="write the numbers as JSON")
    r = gs.add_parser("run", help="run a prompt through the graph form; export graphs and sigma snapshots")
    common(r)
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-new-tokens", type=nonneg_int, default=40, help="greedy tokens after the prompt (0: none)")
    r.add_argument("--export", default=None, help="directory for edge lists / GraphML")
    r.add_argument("--format", default="csv", help="csv, graphml or both")
    r.add_argument("--sigma-top", type=nonneg_int, default=10000, help="synapses per layer in a snapshot (strongest |sigma|)")
    r.add_argument("--snapshot-every", type=nonneg_int, default=0, help="also export sigma every K prompt tokens (0: never)")
    i = gs.add_parser("info", help="edge counts and state size of the graph form")
    common(i, device=False)  # builds the graph form (CPU), runs no model
    p.set_defaults(func=_with_threads)


def _with_threads(args: argparse.Namespace) -> int:
    args.torch_device = apply_run_options(args)  # --threads (all), --device (kl, run): None without --device
    return handler(args)


def main(argv=None) -> int:
    """`python -m bdh.graph.cli ...` (the same as `bdh graph ...`)."""
    p = argparse.ArgumentParser(prog="bdh")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        print(f"bdh graph: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
