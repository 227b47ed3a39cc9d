"""`bdh analyze` and `bdh merge`: parse arguments, call `bdh.analysis`.

    bdh analyze --model runs/default --out report/            # plots, report.json, report.html
    bdh merge runs/en-fr runs/en-pt -o runs/merged            # neuron concatenation (paper §7.1)
"""

from __future__ import annotations

import argparse
import sys


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..model import BDH
    from .concepts import read_sentences
    from .report import SECTIONS, default_corpus, analyze

    if args.max_tokens < 2:
        raise ValueError(f"--max-tokens {args.max_tokens}: expected at least 2")
    if (args.concept is None) != (args.contrast is None):
        raise ValueError("--concept and --contrast go together (one sentence per line in each file)")
    skip = set(args.skip or ())
    sections = [s for s in SECTIONS if s not in skip]
    if not sections:
        raise ValueError(f"--skip leaves no section to run (sections: {', '.join(SECTIONS)})")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = BDH.from_pretrained(args.model)
    rep = analyze(
        model, args.out,
        corpus=args.corpus or default_corpus(args.model),
        max_tokens=args.max_tokens,
        block=args.block,
        concept=read_sentences(args.concept) if args.concept else None,
        contrast=read_sentences(args.contrast) if args.contrast else None,
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
    from .merge import merge_pretrained

    m = merge_pretrained(args.model_a, args.model_b, args.out, alpha=args.alpha)
    c = m.config
    print(f"merged model: N={c.N} neurons per head (n={c.n}), {m.num_params():,} parameters -> {args.out}")
    return 0


def register(sub) -> None:
    from .report import SECTIONS

    a = sub.add_parser("analyze", help="interpretability report of a model: sparsity, neuron graph, synapses (HTML, JSON, PNG)")
    a.add_argument("--model", required=True, help="model directory (save_pretrained / bdh train --out)")
    a.add_argument("--out", required=True, help="report directory (created)")
    a.add_argument("--corpus", default=None,
                   help="corpus spec for activity and sigma (default: the model's training corpus, else pydoc); validation split")
    a.add_argument("--max-tokens", type=int, default=16384, help="corpus tokens for the sparsity statistics")
    a.add_argument("--block", type=int, default=256, help="tokens per sequence when measuring sparsity")
    a.add_argument("--concept", default=None, help="file of concept sentences, one per line (default: built-in currency set)")
    a.add_argument("--contrast", default=None, help="file of contrast sentences (default: built-in EU-politics set)")
    a.add_argument("--synapse-layers", type=int, nargs="+", default=None, help="layers (>= 1) searched for concept synapses")
    a.add_argument("--sigma-u", choices=("rope", "identity"), default="rope", help="U in sigma (eq. 16): RoPE or identity")
    a.add_argument("--sigma-tokens", type=int, default=1024, help="tokens of the text for sigma's degree distribution")
    a.add_argument("--graph-runs", type=int, default=5, help="community searches per modularity estimate (best kept)")
    a.add_argument("--fact-periods", type=int, default=8, help="periods of the repeated-fact stream (§6.4)")
    a.add_argument("--skip", nargs="+", choices=SECTIONS, default=None, help="sections to leave out")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_analyze)
    m = sub.add_parser("merge", help="merge two models by concatenating their neurons (paper §7.1)")
    m.add_argument("model_a")
    m.add_argument("model_b")
    m.add_argument("-o", "--out", required=True, help="output model directory")
    m.add_argument("--alpha", type=float, default=0.5, help="weight of model A in the averaged embed / lm_head")
    m.set_defaults(func=cmd_merge)
