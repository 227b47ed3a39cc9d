"""Model merging by neuron concatenation (paper §7.1, Table 2).

`merge_models(A, B)` builds a model with N_A + N_B neurons per head: in every head the neurons of A come first,
then those of B, each keeping its own D_x column (`encoder`), D_y column (`encoder_v`), E row (`decoder`) and RoPE
frequency (`freqs`, never recomputed from the new N). The tensors without a neuron axis (`embed.weight`,
`lm_head`) are averaged (weights `alpha`, 1 - alpha). Because a head's attention sums over its neurons,
the merged layer's scores are the sum of the two models' scores for the same layer input, and its E y is the
sum of the two E y (the merge is not an ensemble).

The merged config must give N_A + N_B neurons per head through N = mlp_internal_dim_multiplier * d / h, so
(N_A + N_B) * h must be a multiple of d; otherwise the merge is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..config import BDHConfig


class MergeError(ValueError):
    """Two models that cannot be merged (different d, heads, vocabulary, layers, damping or tokenizer)."""


def _tokenizer_fingerprint(model) -> str | None:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return None
    try:
        return tok.fingerprint()
    except Exception:  # noqa: BLE001 - a tokenizer without a fingerprint cannot be compared
        return None


def check_mergeable(a, b) -> None:
    """MergeError naming the first mismatch that makes `a` and `b` unmergeable."""
    ca, cb = a.config, b.config
    for f, why in (("n_embd", "low-rank dimension d"), ("n_head", "number of heads"),
                   ("vocab_size", "vocabulary size"), ("n_layer", "number of layers")):
        if getattr(ca, f) != getattr(cb, f):
            raise MergeError(f"cannot merge: {f} differs ({getattr(ca, f)} vs {getattr(cb, f)}); both models need the "
                             f"same {why}")
    if ca.learned_damping or cb.learned_damping:
        raise MergeError(f"cannot merge: a learned damping ({ca.damping!r} vs {cb.damping!r}) has trained values per "
                         "model; merge models with damping None, 'alibi' or a list")
    if ca.decay() != cb.decay():
        raise MergeError(f"cannot merge: damping differs ({ca.damping!r} vs {cb.damping!r})")
    fa, fb = _tokenizer_fingerprint(a), _tokenizer_fingerprint(b)
    if fa is not None and fb is not None and fa != fb:
        raise MergeError(f"cannot merge: the tokenizers differ ({a.tokenizer.name} vs {b.tokenizer.name}, different "
                         "encodings)")
    for m, name in ((a, "first"), (b, "second")):
        if m.freqs.shape != (m.config.N,):
            raise MergeError(f"cannot merge: the {name} model's freqs has shape {tuple(m.freqs.shape)}, expected ({m.config.N},)")


def merged_config(ca: BDHConfig, cb: BDHConfig) -> BDHConfig:
    """The config with N_A + N_B neurons per head (other fields from A)."""
    N = ca.N + cb.N
    d, h = ca.n_embd, ca.n_head
    if (N * h) % d:  # cannot happen for two valid configs (N = mult * d / h), kept as a guard
        raise MergeError(
            f"cannot merge: N_A + N_B = {ca.N} + {cb.N} = {N} neurons per head is not representable as "
            f"mlp_internal_dim_multiplier * n_embd / n_head = mult * {d} / {h} (needs {N} * {h} divisible by {d})"
        )
    cfg = BDHConfig(**{**dataclasses.asdict(ca), "mlp_internal_dim_multiplier": N * h // d})
    if cfg.N != N:  # pragma: no cover - guarded by the divisibility check
        raise MergeError(f"cannot merge: the merged config has N={cfg.N}, expected {N}")
    return cfg


def merge_models(a, b, *, alpha: float = 0.5):
    """A BDH whose neurons are those of `a` then `b` per head; embed and lm_head averaged (alpha * A + (1-alpha) * B)."""
    from ..model import BDH

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a weight in [0, 1]")
    check_mergeable(a, b)
    cfg = merged_config(a.config, b.config)
    h, d = cfg.n_head, cfg.n_embd
    Na, Nb = a.config.N, b.config.N
    with torch.no_grad():
        dt = a.dtype
        sd = {
            "encoder": torch.cat([a.encoder, b.encoder.to(dt)], dim=2),  # (h, d, Na + Nb)
            "encoder_v": torch.cat([a.encoder_v, b.encoder_v.to(dt)], dim=2),
            "decoder": torch.cat([a.decoder.view(h, Na, d), b.decoder.to(dt).view(h, Nb, d)], dim=1).reshape(h * (Na + Nb), d),
            "freqs": torch.cat([a.freqs.to(torch.float64), b.freqs.to(torch.float64).to(a.freqs.device)]),
            "embed.weight": alpha * a.embed.weight + (1 - alpha) * b.embed.weight.to(dt),
            "lm_head": alpha * a.lm_head + (1 - alpha) * b.lm_head.to(dt),
        }
        with torch.device("meta"):
            merged = BDH(cfg)
        merged = merged.to_empty(device=a.device)
        merged.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)
        if cfg.damping is not None:
            merged.log_gamma = torch.log(torch.tensor(cfg.decay(), dtype=torch.float64, device=a.device))
    merged = merged.to(dtype=dt).eval()
    tok = getattr(a, "tokenizer", None) or getattr(b, "tokenizer", None)
    if tok is not None:
        merged.tokenizer = tok
    return merged


def merge_pretrained(dir_a: str | os.PathLike, dir_b: str | os.PathLike, out: str | os.PathLike, *, alpha: float = 0.5):
    """Load two `save_pretrained` directories, merge them, save the result (with A's tokenizer) to `out`."""
    from ..model import BDH

    a, b = BDH.from_pretrained(dir_a), BDH.from_pretrained(dir_b)
    merged = merge_models(a, b, alpha=alpha)
    merged.save_pretrained(out, tokenizer=getattr(merged, "tokenizer", None))
    return merged


# ----------------------------------------------------------------------------- the §7.1 experiment
def _corpus_tokens(model, spec: str):
    """(train ids, validation ids) of a corpus spec with the model's tokenizer."""
    import numpy as np

    from ..data.corpora import resolve_corpus

    c = resolve_corpus(spec)
    return tuple(np.asarray(model.tokenizer.encode(t), dtype=np.int64) for t in (c.train, c.val))


def continuation_run(base_dir: str | os.PathLike, corpus: str, *, steps: int, batch_size: int = 16,
                     block_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0):
    """The `bdh.training` run config of one continuation: the saved model at `base_dir` (`train.init_from`)
    trained `steps` AdamW steps at a constant `lr` on random crops of `corpus`, no clipping, no periodic
    evaluation, samples or checkpoints."""
    from ..checkpoint import load_model
    from ..training import DataConfig, RunConfig, TrainConfig

    base = load_model(base_dir)
    model = {"model_type": type(base.config).MODEL_TYPE,
             **{k: v for k, v in base.config.to_dict().items() if k != "vocab_size"}}
    data = DataConfig(corpus=corpus, tokenizer=base.tokenizer.name, block_size=block_size, batching="random")
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=0, decay="constant", weight_decay=weight_decay,
                        grad_clip=0.0, seed=seed, data_seed=seed, init_from=str(base_dir), log_every=0, eval_every=0,
                        eval_tokens=0, final_eval_tokens=2 * block_size, eval_batch_size=1, sample_tokens=0,
                        checkpoint_every=0, keep_last=1, processes=1)
    run = RunConfig(model=model, data=data, train=train, name=f"continue-{Path(base_dir).name}")
    run.validate()
    return run


def continue_training(base_dir: str | os.PathLike, corpus: str, work_dir: str | os.PathLike, **settings):
    """A copy of the saved model at `base_dir` trained on `corpus` by `bdh.training.train` (the one training loop)
    in the run directory `work_dir`; `settings` as `continuation_run`. Returns the model in eval mode."""
    from ..training import train

    result = train(continuation_run(base_dir, corpus, **settings), work_dir, progress=False, echo=lambda s: None)
    m = result.model.eval()
    m.tokenizer = result.tokenizer
    return m


def _check_experiment_args(*, steps, batch_size, block_size, lr, eval_tokens) -> None:
    """ValueError naming the first bad experiment setting."""
    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("block_size", block_size, 2),
                        ("eval_tokens", eval_tokens, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r}: expected an integer >= {lo}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < float("inf")):
        raise ValueError(f"lr={lr!r}: expected a positive finite learning rate")


MODEL_ROWS = ("base", "+A", "+B", "merged")


def merge_table(report: dict) -> str:
    """Markdown table of a `merge_experiment` report, laid out like the paper's Table 2.

    Rows: base, +A, +B, merged; columns: neurons n, parameters, then validation loss (nats/token) and bits/byte
    on corpus A and on corpus B.
    """
    a, b = report["corpus_A"], report["corpus_B"]
    val, sizes = report["validation"], report.get("models", {})
    label = {"base": "base", "+A": f"+A ({a})", "+B": f"+B ({b})", "merged": "merged (+A, +B)"}
    head = (f"| model | neurons n | parameters | {a} loss | {a} bits/byte | {b} loss | {b} bits/byte |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for name in MODEL_ROWS:
        r, z = val[name], sizes.get(name, {})
        n = f"{z['n']:,}" if "n" in z else "?"
        params = f"{z['params']:,}" if "params" in z else "?"
        rows.append(f"| {label[name]} | {n} | {params} | {r['A']['loss']:.3f} | {r['A']['bpb']:.3f} | "
                    f"{r['B']['loss']:.3f} | {r['B']['bpb']:.3f} |")
    return head + "\n".join(rows) + "\n"


def merge_experiment(base_dir: str | os.PathLike, corpus_a: str, corpus_b: str, out_dir: str | os.PathLike, *,
                     steps: int = 500, batch_size: int = 16, block_size: int = 128, lr: float = 1e-3,
                     eval_tokens: int = 65536, seed: int = 0, log=None) -> dict:
    """§7.1 at small scale: continue a trained base model on corpus A and on corpus B (each a `bdh.training.train`
    run, `continue_training`), merge the two, evaluate.

    Corpora are `bdh.data.corpora.resolve_corpus` specs (e.g. "gettext:fr", "gettext:de"). Every model (base, +A,
    +B, merged; the merged one with no further training) is evaluated on the validation split of both corpora
    with `bdh.training.evaluate` (nats/token and bits/byte, independent windows of `block_size`, the same
    `eval_tokens` tokens for every model). Writes the models (`continued_A`, `continued_B`, `merged`),
    `merge_experiment.json` and `merge_experiment.md` (the table of `merge_table`) into `out_dir`.

    All settings, the base model and both corpora are checked before anything is written, so bad input leaves
    `out_dir` untouched. `log` (optional) receives progress lines.
    """
    import tempfile
    import time

    from ..io import atomic_write_json, atomic_write_text
    from ..model import BDH
    from ..training import evaluate, token_byte_lengths

    _check_experiment_args(steps=steps, batch_size=batch_size, block_size=block_size, lr=lr, eval_tokens=eval_tokens)
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    base = BDH.from_pretrained(base_dir)
    tok = base.tokenizer
    data = {}
    for name, spec in (("A", corpus_a), ("B", corpus_b)):
        train, val = _corpus_tokens(base, spec)
        if len(train) < block_size + 2:
            raise ValueError(f"corpus {spec!r}: {len(train)} training tokens, fewer than block_size + 2 = {block_size + 2}")
        if len(val) < 2:
            raise ValueError(f"corpus {spec!r}: {len(val)} validation tokens, at least 2 are needed")
        data[name] = (train, val)
        say(f"corpus {name} = {spec}: {len(train):,} training / {len(val):,} validation tokens")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {str(out)!r} exists and is not a directory")
    models = {"base": base}
    with tempfile.TemporaryDirectory(prefix="bdh-merge-") as work:
        for i, (name, spec) in enumerate((("A", corpus_a), ("B", corpus_b))):
            t = time.perf_counter()
            models["+" + name] = continue_training(base_dir, spec, Path(work) / name, steps=steps,
                                                   batch_size=batch_size, block_size=block_size, lr=lr, seed=seed + i)
            say(f"+{name}: {steps} steps on {spec} in {time.perf_counter() - t:.0f} s")
    models["merged"] = merge_models(models["+A"], models["+B"])
    bl = token_byte_lengths(tok)
    results, sizes = {}, {}
    for name in MODEL_ROWS:
        m = models[name]
        sizes[name] = {"N": m.config.N, "n": m.config.n, "params": m.num_params()}
        results[name] = {}
        for cname in ("A", "B"):
            r = evaluate(m, data[cname][1], bl, block_size, batch_size=8, max_tokens=eval_tokens)
            results[name][cname] = {"loss": r["loss"], "bpb": r["bpb"], "tokens": r["tokens"]}
        say(f"{name}: loss A {results[name]['A']['loss']:.3f}, loss B {results[name]['B']['loss']:.3f} nats/token")
    out.mkdir(parents=True, exist_ok=True)
    for name, key in (("continued_A", "+A"), ("continued_B", "+B"), ("merged", "merged")):
        models[key].save_pretrained(out / name, tokenizer=tok)
    report = {"base": str(base_dir), "corpus_A": corpus_a, "corpus_B": corpus_b, "steps": steps, "lr": lr,
              "block_size": block_size, "batch_size": batch_size, "eval_tokens": eval_tokens, "seed": seed,
              "threads": torch.get_num_threads(), "tokenizer": getattr(tok, "name", None),
              "N_base": base.config.N, "N_merged": models["merged"].config.N, "models": sizes,
              "validation": results, "elapsed_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "merge_experiment.json", report)
    atomic_write_text(out / "merge_experiment.md", merge_table(report))
    return report
