"""`bdh analyze` and `bdh merge`: parse arguments, call `bdh.analysis`.

    bdh analyze --model runs/default --out report/            # plots, report.json, report.html
    bdh merge runs/en-fr runs/en-pt -o runs/merged            # neuron concatenation (paper §7.1)
    bdh merge-experiment --base runs/default --a gettext:fr --b gettext:de --out runs/merge   # §7.1, Table 2
"""

from __future__ import annotations

import argparse
import sys

from ..cli import add_run_options, apply_run_options, fraction, int_at_least, positive_int, SEED_MAX, seed_value


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..model import BDH
    from .concepts import read_sentences
    from .report import SECTIONS, default_corpus, analyze

    device = apply_run_options(args)
    if args.max_tokens < 2:
        raise ValueError(f"--max-tokens {args.max_tokens}: expected at least 2")
    # the sentence files first (a missing or binary file is named as such), the model before anything is written
    concept = read_sentences(args.concept, label="--concept") if args.concept is not None else None
    contrast = read_sentences(args.contrast, label="--contrast") if args.contrast is not None else None
    if (concept is None) != (contrast is None):
        given, missing = ("--concept", "--contrast") if contrast is None else ("--contrast", "--concept")
        raise ValueError(f"{given} needs {missing} too (the concept and contrast sentence files go together, one "
                         "sentence per line in each)")
    skip = set(args.skip or ())
    sections = [s for s in SECTIONS if s not in skip]
    if not sections:
        raise ValueError(f"--skip leaves no section to run (sections: {', '.join(SECTIONS)})")
    model = BDH.from_pretrained(args.model, device=device)
    L = model.config.n_layer
    for layer in args.synapse_layers or ():
        if not 1 <= layer < L:
            raise ValueError(f"--synapse-layers {layer}: expected layers in [1, {L - 1}] (sigma of layer l reads "
                             f"layer l-1; this model has {L} layers)")
    rep = analyze(
        model, args.out,
        corpus=args.corpus or default_corpus(args.model),
        max_tokens=args.max_tokens,
        block=args.block,
        concept=concept,
        contrast=contrast,
        synapse_layers=args.synapse_layers,
        synapse_U=args.sigma_u,
        sigma_tokens=args.sigma_tokens,
        graph_runs=args.graph_runs,
        repeated_fact_periods=args.fact_periods,
        sections=sections,
        seed=args.seed,
        log=(lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True)),
    )
    for line in rep["findings"]:
        print("- " + line)
    print(f"report: {args.out}/report.html (numbers in report.json)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..checkpoint import check_output_dir
    from .merge import merge_pretrained

    # before anything is loaded or written: never onto an input, never over a model without --overwrite
    check_output_dir(args.out, overwrite=args.overwrite, inputs=(args.model_a, args.model_b))
    m = merge_pretrained(args.model_a, args.model_b, args.out, alpha=args.alpha)
    c = m.config
    print(f"merged model: N={c.N} neurons per head (n={c.n}), {m.num_params():,} parameters -> {args.out}")
    return 0


def cmd_merge_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import check_output_dir
    from .merge import merge_experiment, merge_table

    for flag, v, lo in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                        ("--block-size", args.block_size, 2), ("--eval-tokens", args.eval_tokens, 2)):
        if v < lo:
            raise ValueError(f"{flag} {v}: expected an integer >= {lo}")
    if not 0 < args.lr < float("inf"):
        raise ValueError(f"--lr {args.lr}: expected a positive finite learning rate")
    if not Path(args.base).is_dir():
        raise FileNotFoundError(f"--base {args.base!r}: model directory does not exist")
    # before anything runs: OUT is not the base model, and no model in it is replaced without --overwrite
    check_output_dir(args.out, overwrite=True, inputs=(args.base,))
    for name in ("continued_A", "continued_B", "merged"):
        check_output_dir(Path(args.out) / name, overwrite=args.overwrite, inputs=(args.base,))
    apply_run_options(args)  # --threads
    rep = merge_experiment(
        args.base, args.a, args.b, args.out,
        steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
        eval_tokens=args.eval_tokens, seed=args.seed,
        log=None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True)),
    )
    print(merge_table(rep), end="")
    print(f"({rep['elapsed_s']:.0f} s) table: {args.out}/merge_experiment.md, numbers: {args.out}/merge_experiment.json")
    return 0


def register(sub) -> None:
    from .report import SECTIONS

    a = sub.add_parser("analyze", help="interpretability report of a model: sparsity, neuron graph, synapses (HTML, JSON, PNG)")
    a.add_argument("--model", required=True, help="model directory (save_pretrained / bdh train --out)")
    a.add_argument("--out", required=True, help="report directory (created)")
    a.add_argument("--corpus", default=None,
                   help="corpus spec for activity and sigma (default: the model's training corpus, else pydoc); validation split")
    a.add_argument("--max-tokens", type=int_at_least(2), default=16384, help="corpus tokens for the sparsity statistics")
    a.add_argument("--block", type=positive_int, default=256, help="tokens per sequence when measuring sparsity")
    a.add_argument("--concept", default=None, help="file of concept sentences, one per line (default: built-in currency set)")
    a.add_argument("--contrast", default=None, help="file of contrast sentences (default: built-in EU-politics set)")
    a.add_argument("--synapse-layers", type=positive_int, nargs="+", default=None, help="layers (>= 1) searched for concept synapses")
    a.add_argument("--sigma-u", choices=("rope", "identity"), default="rope", help="U in sigma (eq. 16): RoPE or identity")
    a.add_argument("--sigma-tokens", type=int_at_least(2), default=1024, help="tokens of the text for sigma's degree distribution")
    a.add_argument("--graph-runs", type=positive_int, default=5, help="community searches per modularity estimate (best kept)")
    a.add_argument("--fact-periods", type=positive_int, default=8, help="periods of the repeated-fact stream (§6.4)")
    a.add_argument("--skip", nargs="+", choices=SECTIONS, default=None, help="sections to leave out")
    a.add_argument("--seed", type=seed_value, default=0)
    add_run_options(a)
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_analyze)
    m = sub.add_parser("merge", help="merge two models by concatenating their neurons (paper §7.1)")
    m.add_argument("model_a")
    m.add_argument("model_b")
    m.add_argument("-o", "--out", required=True, help="output model directory")
    m.add_argument("--alpha", type=fraction, default=0.5, help="weight of model A in the averaged embed / lm_head, in [0, 1]")
    m.add_argument("--overwrite", action="store_true", help="replace a model already in the output directory")
    m.set_defaults(func=cmd_merge)
    e = sub.add_parser("merge-experiment",
                       help="paper §7.1 / Table 2 at small scale: continue a model on two corpora, merge, evaluate on both")
    e.add_argument("--base", required=True, help="trained base model directory (save_pretrained / bdh train --out)")
    e.add_argument("--a", required=True, help="corpus spec of continuation A (e.g. gettext:fr, pydoc, a path)")
    e.add_argument("--b", required=True, help="corpus spec of continuation B (e.g. gettext:de)")
    e.add_argument("--out", required=True, help="output directory: the three models, merge_experiment.json and .md")
    e.add_argument("--overwrite", action="store_true", help="replace models already in the output directory")
    e.add_argument("--steps", type=int, default=500, help="AdamW steps of each continuation")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--block-size", type=int, default=128, help="tokens per training and evaluation window")
    e.add_argument("--lr", type=float, default=1e-3, help="constant learning rate of the continuations")
    e.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens per model and corpus")
    e.add_argument("--seed", type=int_at_least(0, SEED_MAX - 1), default=0,
                   help="seed of continuation A (B uses seed + 1)")
    add_run_options(e, device=False)  # merge_experiment trains on the CPU
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    e.set_defaults(func=cmd_merge_experiment)
