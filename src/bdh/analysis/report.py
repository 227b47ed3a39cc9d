"""`analyze`: every analysis on one model -> PNG plots, `report.json` (every number) and a self-contained
`report.html` (images embedded as base64; no external resources, works offline).

Sections: model; sparsity over a corpus (per layer, head, RoPE band); the repeated-fact experiment (§6.4);
the neuron graphs G_x = D_x E and G_y = D_y E per head block (tail, threshold, modularity vs random baselines,
degree power-law fits, GraphML/CSV export); sigma's degree distribution and top entries (Fig. 11); the
concept-synapse search (§6.3) on built-in currency vs EU-politics sentences (or user files) and on questions vs
length-matched statements of the corpus, each with a held-out Mann-Whitney test and a trace plot.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..io import atomic_write_json, atomic_write_text
from ..tokenization import model_tokenizer
from .plotting import jsonable

SECTIONS = ("sparsity", "repeated_fact", "graph", "sigma", "synapses", "questions")
MAX_SEARCH_NEURONS = 4096  # above this n, the synapse searches cover head 0 (y and x neurons) only


def default_corpus(model_dir: str | os.PathLike | None) -> str:
    """The training corpus of a `bdh train` run directory (run.json / trainer.json), else "pydoc"."""
    if model_dir is not None:
        for name, key in (("run.json", "config"), ("trainer.json", "run_config")):
            try:
                spec = json.loads((Path(model_dir) / name).read_text(encoding="utf-8"))[key]["data"]["corpus"]
                if isinstance(spec, str) and spec:
                    return spec
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return "pydoc"


def corpus_tokens(model, spec: str, max_tokens: int) -> np.ndarray:
    """Validation ids of a corpus spec (`bdh.data.corpora.resolve_corpus`) with the model's tokenizer."""
    from ..data.corpora import resolve_corpus

    text = resolve_corpus(spec).val
    tok = model.tokenizer
    ids = tok.encode(text[: max(4 * max_tokens, 4096)])[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"corpus {spec!r}: the validation split gives only {len(ids)} tokens")
    return np.asarray(ids, dtype=np.int64)


def analyze(
    model,
    out_dir: str | os.PathLike,
    *,
    corpus: str = "pydoc",
    max_tokens: int = 16384,
    block: int = 256,
    batch_size: int = 8,
    concept: Sequence[str] | None = None,
    contrast: Sequence[str] | None = None,
    synapse_layers: Sequence[int] | None = None,
    synapse_U: str = "rope",
    sigma_tokens: int = 1024,
    graph_runs: int = 5,
    repeated_fact_periods: int = 8,
    sections: Sequence[str] = SECTIONS,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run the analyses in `sections` on `model` (with `model.tokenizer`); write plots, report.json, report.html.

    A section that cannot run on this model (ValueError: e.g. a tokenizer without one token per letter, too
    few layers for sigma) is recorded under "skipped" with its reason; other errors propagate.
    """
    bad = [x for x in sections if x not in SECTIONS]
    if bad:
        raise ValueError(f"sections: unknown {bad}; expected some of {SECTIONS}")
    if synapse_U not in ("rope", "identity"):
        raise ValueError(f"synapse_U={synapse_U!r}: expected 'rope' or 'identity'")
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    c = model.config
    model = model.eval()
    model.tokenizer = model_tokenizer(model)
    rep: dict = {"model": {"config": c.to_dict(), "N": c.N, "n": c.n, "params": model.num_params()},
                 "settings": {"corpus": corpus, "max_tokens": max_tokens, "block": block, "seed": seed,
                              "synapse_U": synapse_U, "sigma_tokens": sigma_tokens, "graph_runs": graph_runs,
                              "sections": list(sections)},
                 "machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "threads": torch.get_num_threads()},
                 "timings_s": {}, "skipped": {}}
    ctx = _Ctx(model, out, rep, {}, seed, log)
    torch.manual_seed(seed)
    ids_cache: dict[int, np.ndarray] = {}

    def ids(n: int) -> np.ndarray:
        if n not in ids_cache:
            ids_cache[n] = corpus_tokens(model, corpus, n)
        return ids_cache[n]

    steps = {
        "sparsity": lambda: _sparsity(ctx, ids(max_tokens), block, batch_size),
        "repeated_fact": lambda: _repeated_fact(ctx, repeated_fact_periods),
        "graph": lambda: [_graph(ctx, which, graph_runs) for which in ("x", "y")],
        "sigma": lambda: _sigma(ctx, ids(sigma_tokens)),
        "synapses": lambda: _synapses(ctx, concept, contrast, synapse_layers, synapse_U),
        "questions": lambda: _questions(ctx, corpus, synapse_layers, synapse_U),
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        log(f"analyze: {name} ...")
        t0 = time.time()
        try:
            steps[name]()
        except ValueError as e:
            rep["skipped"][name] = str(e)
            log(f"analyze: {name} skipped: {e}")
        rep["timings_s"][name] = round(time.time() - t0, 2)

    rep["findings"] = findings(rep)
    atomic_write_json(out / "report.json", jsonable(rep), indent=1)
    write_html(rep, ctx.images, out / "report.html")
    log(f"analyze: wrote {out / 'report.html'} and {out / 'report.json'}")
    return rep


@dataclasses.dataclass
class _Ctx:
    model: object
    out: Path
    rep: dict
    images: dict
    seed: int
    log: Callable[[str], None]

    def image(self, key: str, name: str) -> Path:
        p = self.out / "plots" / name
        self.images[key] = p
        return p


def _sparsity(ctx: _Ctx, ids: np.ndarray, block: int, batch_size: int) -> None:
    from . import sparsity as S

    stats = S.measure_activity(ctx.model, S.corpus_batches(ids, min(block, len(ids)), batch_size, len(ids)))
    ctx.rep["sparsity"] = stats.to_dict()
    S.plot_activity(stats, ctx.image("sparsity", "sparsity.png"))


def _repeated_fact(ctx: _Ctx, periods: int) -> None:
    from . import sparsity as S

    rf = S.repeated_fact_experiment(ctx.model, n_periods=periods, seed=ctx.seed)
    ctx.rep["repeated_fact"] = rf
    S.plot_repeated_fact(rf, ctx.image("repeated_fact", "repeated_fact.png"))


def _graph(ctx: _Ctx, which: str, runs: int) -> None:
    from . import graph as G

    m, c = ctx.model, ctx.model.config
    res, all_edges, all_w = {}, [], []
    for a in range(c.n_head):
        for b in range(c.n_head):
            Gb = G.graph_block(m, a, b, which)
            r = G.analyze_block(Gb, c.D, runs=runs, seed=ctx.seed, sweep_k=(2.5, 3.0, 4.0, 5.0, 6.0) if a == b else ())
            if a == b:
                G.plot_modularity_sweep(r, ctx.image(f"G{which}_modularity_{a}", f"G{which}_modularity_{a}.png"),
                                        f"G_{which} block {a}→{a}: modularity vs edges")
            if a == b == 0:
                G.plot_degrees(r, ctx.image(f"G{which}_degrees", f"G{which}_degrees_0.png"), f"G_{which} block 0→0 degrees")
            e = r.pop("_edges")
            r.pop("_membership")
            all_w.append(G.block_edge_weights(Gb, e))
            all_edges.append(e + np.array([a * c.N, b * c.N]))
            res[f"{a}->{b}"] = r
    G.plot_block_histograms(m, ctx.image(f"G{which}_histograms", f"G{which}_histograms.png"), which, res)
    edges, weights = np.concatenate(all_edges), np.concatenate(all_w)
    G.export_graph(ctx.out / "graph" / f"G_{which}.graphml", c.n, edges, weights)
    G.export_graph(ctx.out / "graph" / f"G_{which}_edges.csv", c.n, edges, weights)
    whole = G.modularity(c.n, edges, runs=runs, seed=ctx.seed)
    ctx.rep[f"G{which}"] = {
        "blocks": res, "blocks_with_heavy_right_tail": int(sum(r["tail"]["heavy_right_tail"] for r in res.values())),
        "n_blocks": len(res),
        "whole_graph": {"edges": int(len(edges)), "Q": whole["Q"], "communities": whole["communities"],
                        "note": "all head blocks, each thresholded at its own beta; global ids head*N + k"},
        "exports": [f"graph/G_{which}.graphml", f"graph/G_{which}_edges.csv"],
    }


def _sigma(ctx: _Ctx, ids: np.ndarray) -> None:
    from . import graph as G
    from . import synapses as Y

    c = ctx.model.config
    if c.n_layer < 2:
        raise ValueError("sigma needs at least 2 layers (y of layer l-1, x of layer l)")
    layer = c.n_layer - 1
    seq = torch.from_numpy(ids.copy()).view(1, -1)
    inp = Y.synapse_activations(ctx.model, seq, layer)
    spec = Y.SigmaSpec.from_model(ctx.model, "rope")
    sd = Y.sigma_degrees(inp, spec, head=0)
    v, i, j = Y.sigma_topk(inp, spec, k=10, rows=spec.head_neurons(0), cols=spec.head_neurons(0))
    sd["top_entries_head0"] = [{"i": int(a), "j": int(b), "sigma": float(x)} for x, a, b in zip(v, i, j)]
    sd["out_fit"] = G.degree_fit(sd["out_degree"])
    sd["in_fit"] = G.degree_fit(sd["in_degree"])
    if sd["edges"]:
        G.plot_degrees({"n": c.N, "_edges": _edges_from_degrees(sd)}, ctx.image("sigma_degrees", "sigma_degrees.png"),
                       f"σ layer {layer}, head 0, {seq.shape[1]} tokens")
    ctx.rep["sigma_degrees"] = {k: v for k, v in sd.items() if k not in ("out_degree", "in_degree")}
    ctx.rep["sigma_degrees"]["tokens"] = int(seq.shape[1])


def _synapses(ctx: _Ctx, concept, contrast, layers, U: str, key: str = "concept_synapses", sets: str = "") -> None:
    from . import synapses as Y
    from .concepts import CURRENCY, POLITICS

    c = ctx.model.config
    if c.n_layer < 2:
        raise ValueError("sigma needs at least 2 layers (y of layer l-1, x of layer l)")
    conc = list(concept) if concept else CURRENCY
    cont = list(contrast) if contrast else POLITICS
    sets = sets or ("built-in currency vs EU-politics sentences" if not concept else "user sentence files")
    layers = list(layers) if layers else list(range(1, c.n_layer))
    heads = None if c.n <= MAX_SEARCH_NEURONS else [0]  # n^2 pairs per sentence: large models search head 0 only
    results = {l: Y.concept_synapse_search(ctx.model, conc, cont, l, U=U, seed=ctx.seed, top=5, x_heads=heads,
                                           y_heads=heads) for l in layers}
    best_l = min(results, key=lambda l: (results[l].candidates[0]["test"]["p_value"],
                                         -results[l].candidates[0]["test"]["rank_biserial"]))
    best = results[best_l]
    b = best.candidates[0]
    Y.plot_concept_values(best, ctx.image(f"{key}_test", f"{key}_test.png"))
    tr = Y.plot_synapse_trace(ctx.model, conc[0], best_l, [[b["i"], b["j"]]], ctx.image(f"{key}_trace", f"{key}_trace.png"), U=U)
    ctx.rep[key] = {
        "concept_sentences": len(conc), "contrast_sentences": len(cont), "sets": sets,
        "by_layer": {str(l): r.to_dict() for l, r in results.items()},
        "best": {"layer": best_l, **b}, "trace_example": conc[0], "trace": tr,
        "searched_heads": "all" if heads is None else heads,
        "note": "p-values are per layer; with several layers searched, compare against alpha / layers",
    }


def _questions(ctx: _Ctx, corpus: str, layers, U: str) -> None:
    """The concept search on questions vs length-matched statements of the corpus's validation split."""
    from ..data.corpora import resolve_corpus
    from .concepts import question_sentences

    q, s = question_sentences(resolve_corpus(corpus).val, 40, seed=ctx.seed)
    _synapses(ctx, q, s, layers, U, key="question_synapses",
              sets=f"questions vs length-matched statements from the {corpus} validation split")


def _edges_from_degrees(sd: dict) -> np.ndarray:
    """A directed edge list with the recorded degree sequences (for the degree plot only)."""
    out_d = np.asarray(sd["out_degree"])
    in_d = np.asarray(sd["in_degree"])
    src = np.repeat(np.arange(len(out_d)), out_d)
    dst = np.repeat(np.arange(len(in_d)), in_d)
    return np.stack([src, dst], 1)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def findings(rep: dict) -> list[str]:
    """One-line statements of the main numbers, compared with the paper where it gives one."""
    out = []
    s = rep.get("sparsity")
    if s:
        xy = s["xy"]["by_layer"]
        out.append(f"Gated y = x*y is {_pct(s['xy']['mean'])} non-zero on average over {s['n_tokens']} tokens "
                   f"(per layer: {', '.join(_pct(v) for v in xy)}); x_sparse {_pct(s['x_sparse']['mean'])}, "
                   f"y_sparse {_pct(s['y_sparse']['mean'])} (paper: y about 5%).")
    rf = rep.get("repeated_fact")
    if rf:
        mem, repv = rf["by_layer"]["memorising"], rf["by_layer"]["repeating"]
        out.append("Repeated fact: non-zero gated y memorising vs repeating per layer: "
                   + "; ".join(f"L{l} {_pct(m)} vs {_pct(r)}" for l, (m, r) in enumerate(zip(mem, repv)))
                   + f". Loss {rf['loss_nats']['memorising']:.2f} vs {rf['loss_nats']['repeating']:.2f} nats "
                     "(paper, layer 2: 4.0-7.5% vs ~2.5%).")
    for which in ("x", "y"):
        g = rep.get(f"G{which}")
        if g:
            diag = [g["blocks"][k] for k in g["blocks"] if k.split("->")[0] == k.split("->")[1]]
            qs = ", ".join(f"{d['modularity']['Q']:.2f} (G(n,m) {d['baselines']['gnm_Q']:.2f}, low-rank "
                           f"{d['baselines']['lowrank_Q']:.2f}, rewired {_num(d['baselines']['degree_preserving_Q'])}; "
                           f"m={d['edges']})" for d in diag)
            out.append(f"G_{which} = D_{which} E: {g['blocks_with_heavy_right_tail']} of {g['n_blocks']} head blocks have a "
                       f"heavy right tail (paper: 12 of 16). Modularity of the diagonal blocks at beta: {qs}.")
    sd = rep.get("sigma_degrees")
    if sd and sd.get("out_fit", {}).get("fit"):
        f_o, f_i = sd["out_fit"]["fit"], (sd["in_fit"].get("fit") or {})
        out.append(f"sigma (layer {sd['layer']}, head 0): {sd['edges']} edges above the {sd['quantile']:.2f} quantile of "
                   f"positive entries; out-degree power law alpha={f_o['alpha']:.2f} (vs lognormal R={f_o['R_powerlaw_vs_lognormal']:.2f}, "
                   f"p={f_o['p']:.2g}: {f_o['preferred']})"
                   + (f"; in-degree alpha={f_i['alpha']:.2f} ({f_i['preferred']})." if f_i else "."))
    for key, what in (("concept_synapses", "Concept"), ("question_synapses", "Question")):
        cs = rep.get(key)
        if not cs:
            continue
        b = cs["best"]
        t = b["test"]
        out.append(f"{what} synapse ({cs['sets']}): sigma(y{b['i']} -> x{b['j']}) of layer {b['layer']} separates held-out "
                   f"concept from contrast sentences with one-sided Mann-Whitney U={t['U']:.0f}/{t['U_max']}, p={t['p_value']:.2g}, "
                   f"rank-biserial {t['rank_biserial']:.2f} (paper: U=2368/2500, p<1e-14, r=0.86); Spearman with "
                   f"sentence length {'n/a' if b['length_spearman'] is None else format(b['length_spearman'], '.2f')}.")
    for k, v in rep.get("skipped", {}).items():
        out.append(f"Skipped {k}: {v}")
    return out


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.75em;max-height:30em}li{margin:.3em 0}
.small{color:#666;font-size:.85em}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def write_html(rep: dict, images: dict[str, Path], path: str | os.PathLike) -> Path:
    """One self-contained HTML page: findings, tables, embedded PNGs and the full JSON."""
    m = rep["model"]
    cfg = m["config"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>BDH analysis</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>BDH-GPU analysis report</h1>",
             f"<p class='small'>L={cfg['n_layer']}, d={cfg['n_embd']}, h={cfg['n_head']}, N={m['N']} neurons per head, "
             f"n={m['n']}, vocabulary {cfg['vocab_size']}, {m['params']:,} parameters. Corpus "
             f"{html.escape(str(rep['settings']['corpus']))}. Timings (s): "
             f"{html.escape(json.dumps(rep['timings_s']))}.</p>",
             "<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in rep["findings"]) + "</ul>"]
    s = rep.get("sparsity")
    if s:
        parts.append("<h2>Sparsity (§4.1, Fig. 14)</h2><p>Fraction of non-zero activations per layer and head "
                     "(gated y = x*y), and per RoPE band (f0 fastest).</p>")
        lh = s["xy"]["by_layer_head"]
        parts.append(_table(["layer"] + [f"head {b}" for b in range(len(lh[0]))] + ["x_sparse", "y_sparse", "xy"],
                            [[l] + [_pct(v) for v in row] + [_pct(s["x_sparse"]["by_layer"][l]),
                             _pct(s["y_sparse"]["by_layer"][l]), _pct(s["xy"]["by_layer"][l])] for l, row in enumerate(lh)]))
        if "sparsity" in images:
            parts.append(_img(images["sparsity"]))
    rf = rep.get("repeated_fact")
    if rf:
        parts.append("<h2>Repeated fact (§6.4)</h2><p>Stream: a fixed warm-up then repeats of a random fact "
                     f"(period {rf['stream']['period']}, example <code>{html.escape(rf['stream']['example'])}</code>); "
                     "the first period is excluded.</p>")
        bl = rf["by_layer"]
        parts.append(_table(["layer", "warm-up", "memorising", "repeating"],
                            [[l, _pct(bl["warmup"][l]), _pct(bl["memorising"][l]), _pct(bl["repeating"][l])]
                             for l in range(len(bl["warmup"]))]))
        if "repeated_fact" in images:
            parts.append(_img(images["repeated_fact"]))
    for which in ("x", "y"):
        g = rep.get(f"G{which}")
        if not g:
            continue
        parts.append(f"<h2>Neuron graph G_{which} = D_{which} E (§5.5, Figs. 9-10)</h2>"
                     "<p>Per head block (source head → target head): tail of the entries against Gaussian noise fitted "
                     "to the bulk, threshold β, edges, best-of-runs modularity of the thresholded graph vs G(n,m) and a "
                     "random low-rank product with the same edge count, degree power-law exponents.</p>")
        rows = []
        for k, r in g["blocks"].items():
            fo, fi = r["out_degree"].get("fit") or {}, r["in_degree"].get("fit") or {}
            rows.append([k, r["tail"]["tail_ratio"]["4"], r["tail"]["skew_mass"], "yes" if r["tail"]["heavy_right_tail"] else "no",
                         r["beta"], r["edges"], r["modularity"]["Q"], r["baselines"]["gnm_Q"], r["baselines"]["lowrank_Q"],
                         _num(r["baselines"]["degree_preserving_Q"]), fo.get("alpha", "-"), fi.get("alpha", "-")])
        parts.append(_table(["block", "tail ratio at 4σ", "skew mass", "heavy tail", "β", "edges", "Q", "Q G(n,m)",
                             "Q low-rank", "Q rewired", "α out", "α in"], rows))
        for key in (f"G{which}_histograms", f"G{which}_degrees"):
            if key in images:
                parts.append(_img(images[key]))
        for key in sorted(k for k in images if k.startswith(f"G{which}_modularity_")):
            parts.append(_img(images[key]))
        parts.append(f"<p class='small'>Exports: {', '.join(html.escape(e) for e in g['exports'])}.</p>")
    sd = rep.get("sigma_degrees")
    if sd:
        parts.append("<h2>σ degree distribution (Fig. 11)</h2>"
                     f"<p>σ of layer {sd['layer']}, head 0, after {sd['tokens']} tokens (U = RoPE), negative entries dropped, "
                     f"threshold {sd['threshold']} (quantile {sd['quantile']} of positive entries), {sd['edges']} edges.</p>")
        if "sigma_degrees" in images:
            parts.append(_img(images["sigma_degrees"]))
    for key, title in (("concept_synapses", "Concept synapses (§6.3, Figs. 12-13)"),
                       ("question_synapses", "Question synapses (corpus-driven concept)")):
        cs = rep.get(key)
        if not cs:
            continue
        parts.append(f"<h2>{title}</h2><p>{cs['concept_sentences']} concept vs {cs['contrast_sentences']} contrast "
                     f"sentences ({html.escape(cs['sets'])}); σ at the end of each sentence; search on one half, "
                     "one-sided Mann-Whitney U on the held-out half. The trace shows the best synapse over the first "
                     "concept sentence.</p>")
        rows = []
        for l, r in cs["by_layer"].items():
            for q in r["candidates"][:3]:
                t = q["test"]
                rows.append([l, f"y{q['i']} → x{q['j']}", q["search_rank_biserial"], t["U"], t["U_max"], t["p_value"],
                             t["rank_biserial"], "-" if q["length_spearman"] is None else q["length_spearman"]])
        parts.append(_table(["layer", "synapse", "search r", "U", "U max", "p", "test r", "ρ with length"], rows))
        for img in (f"{key}_test", f"{key}_trace"):
            if img in images:
                parts.append(_img(images[img]))
    parts.append("<h2>All numbers</h2><details><summary>report.json</summary><pre>"
                 + html.escape(json.dumps(jsonable(rep), indent=1)) + "</pre></details></body></html>")
    path = Path(path)
    atomic_write_text(path, "".join(parts))
    return path
