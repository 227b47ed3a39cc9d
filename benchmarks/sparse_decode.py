"""Sparse vs dense recurrent decode (`model.step(..., inplace=True, sparse=...)`), on trained models.

    python -m benchmarks.sparse_decode --model runs/default --model runs/sparse-large-ft3 --threads 1
    python -m benchmarks.sparse_decode --model runs/default --batch 1 --tokens 32 --repeats 3 --rounds 1  # quick
    python -m benchmarks.sparse_decode --synthetic 0.05 --synthetic 0.3 --threads 1   # speed vs activity probe

For every model (a `save_pretrained` directory, repeatable --model) and batch size (repeatable --batch):

1. the same English prompt (rows shifted so they differ) is prefilled (untimed), then `--tokens` tokens are
   sampled from the model once (dense, temperature 0.8, fixed seed): the decode workload, fixed in advance;
2. three modes decode those tokens from clones of the prefilled state with `model.step(tok, state,
   inplace=True, sparse=mode)`: dense (sparse=False), sparse (sparse=True, every layer), auto (sparse="auto",
   the default of `generate`); repeats run round-robin over the modes (a shared, noisy machine); tokens/s
   from the median wall time (and, in the JSON, from the median process CPU time). This is one round;
   `--rounds` rounds run one after another over all (model, batch) pairs, so that each pair is timed at
   several moments of the run, and the figures reported are medians over rounds (every round in the JSON);
3. the logits of the three modes are compared over all decoded tokens (max |delta| vs dense, fp32), and the
   dense and sparse fp32 logits against a dense float64 decode (the fp32 rounding floor);
4. the activity per layer over the decoded tokens is measured with an instrumented dense pass: the fraction
   of x_sparse > 0, of active state rows (qr != 0 or x > 0, i.e. active RoPE pairs: the rows the sparse
   path reads and writes), and of the gated product x*y > 0 (the decoder rows it gathers); and which layers
   `sparse="auto"` ran sparsely.

Results (and machine info) go to JSON (--out, default benchmarks/results/sparse_decode.json) and a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path


import torch

from .common import format_machine, machine_info, summarize, write_json

from bdh import BDH, BDHConfig
from bdh.sparse import SPARSE_MAX_ACTIVITY, SPARSE_MIN_STATE, active_rows

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sparse_decode.json"
MODES = {"dense": False, "sparse": True, "auto": "auto"}

PROMPT = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
    "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n"
    "That thou her maid art far more fair than she:\n\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
    "Deny thy father and refuse thy name;\nOr, if thou wilt not, be but sworn my love,\n"
    "And I'll no longer be a Capulet.\n\n"
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="model directory (repeatable)")
    p.add_argument("--synthetic", type=float, action="append", default=[],
                   help="also a random-init n=32768 model (L=2, d=64, h=8, ALiBi) with only this fraction of "
                        "RoPE pairs able to fire (the other pairs' encoder columns zeroed): speed vs activity")
    p.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 1 and 8)")
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per mode and round (round-robin)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timing rounds over all (model, batch) pairs; figures are medians over rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def encode(model: BDH, text: str) -> list[int]:
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "encode"):
        return list(tok.encode(text))
    return list(text.encode("utf-8"))


def make_prompt(model: BDH, B: int) -> torch.Tensor:
    ids = encode(model, PROMPT)
    T = len(ids) - 8 * (B - 1)
    return torch.tensor([ids[8 * b : 8 * b + T] for b in range(B)], dtype=torch.long)  # rows shifted by 8 tokens


@torch.inference_mode()
def sample_tokens(model: BDH, state, K: int, seed: int, first: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = state.clone()
    tok, out = first, []
    for _ in range(K):
        out.append(tok)
        logits, s = model.step(tok, s, inplace=True, sparse=False)
        tok = torch.multinomial(torch.softmax(logits / 0.8, -1), 1, generator=g).squeeze(1)
    return torch.stack(out)  # (K, B)


@torch.inference_mode()
def decode(model: BDH, state, toks: torch.Tensor, mode) -> torch.Tensor:
    s = state.clone()
    out = []
    for t in toks:
        logits, s = model.step(t, s, inplace=True, sparse=mode)
        out.append(logits)
    return torch.stack(out)


@torch.inference_mode()
def activity(model: BDH, state, toks: torch.Tensor) -> list[dict]:
    """Per layer, over the decoded tokens: fractions of x > 0, of active state rows, of x*y > 0; auto's choice.

    Read from the model's own hook points on a dense decode of a copy of the state.
    """
    c = model.config
    big = c.n * c.D >= SPARSE_MIN_STATE
    acc = [{"x": [], "rows": [], "xy": [], "auto_sparse": 0} for _ in range(c.n_layer)]
    xs = {}

    def on_x(name, x, pos):
        xs[int(name.split(".")[1])] = x

    def on_qr(name, qr, pos):
        l = int(name.split(".")[1])
        rows = active_rows(xs[l], qr).numel() / qr.numel()
        acc[l]["x"].append((xs[l] > 0).float().mean().item())
        acc[l]["rows"].append(rows)
        acc[l]["auto_sparse"] += int(big and rows <= SPARSE_MAX_ACTIVITY)

    def on_xy(name, xy, pos):
        acc[int(name.split(".")[1])]["xy"].append((xy > 0).float().mean().item())

    hooks = {}
    for l in range(c.n_layer):
        hooks.update({f"blocks.{l}.x_sparse": on_x, f"blocks.{l}.qr": on_qr, f"blocks.{l}.xy": on_xy})
    s = state.clone()
    with model.hooks(hooks):
        for t in toks:
            _, s = model.step(t, s, inplace=True, sparse=False)
    return [
        {
            "x_active": statistics.fmean(d["x"]),
            "rows_active": statistics.fmean(d["rows"]),
            "rows_active_max": max(d["rows"]),
            "xy_active": statistics.fmean(d["xy"]),
            "auto_sparse_fraction": d["auto_sparse"] / len(toks),
        }
        for d in acc
    ]


def synthetic_model(keep: float, seed: int) -> BDH:
    """Random weights, n = 32768; only a `keep` fraction of RoPE pairs can be active (a timing probe, not an LM)."""
    torch.manual_seed(seed)
    cfg = BDHConfig(n_layer=2, n_embd=64, n_head=8, mlp_internal_dim_multiplier=512, vocab_size=256, dropout=0.0,
                    damping="alibi")
    m = BDH(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    nh, N = cfg.n_head, cfg.N
    alive = (torch.rand(nh, 1, N // 2, 1, generator=g) < keep).expand(nh, 1, N // 2, 2).reshape(nh, 1, N)
    with torch.no_grad():
        m.encoder.mul_(alive.to(m.encoder.dtype))
    return m


def training_info(directory: str) -> dict:
    """From a run directory: the final validation bits/byte and train.activity_penalty (None when absent)."""
    info = {"val_bpb": None, "activity_penalty": None}
    summary, run = Path(directory, "summary.json"), Path(directory, "run.json")
    if summary.is_file():
        info["val_bpb"] = json.loads(summary.read_text()).get("val_bpb")
    if run.is_file():
        info["activity_penalty"] = json.loads(run.read_text())["config"]["train"].get("activity_penalty", 0.0)
    return info


def prepare(model: BDH, B: int, K: int, seed: int):
    """The prompt (B, T), its prefilled state and the K decoded tokens (K, B) of one (model, batch) workload."""
    prompt = make_prompt(model, B)
    with torch.inference_mode():
        _, state = model.prefill(prompt[:, :-1])
    return prompt, state, sample_tokens(model, state, K, seed, prompt[:, -1])


def time_modes(model: BDH, state, toks: torch.Tensor, repeats: int) -> dict:
    """One round: every mode decodes `toks` once (warm-up), then `repeats` timed times, round-robin."""
    K, B = toks.shape
    times = {m: [] for m in MODES}
    cpu = {m: [] for m in MODES}
    for m, mode in MODES.items():
        decode(model, state, toks, mode)
    for _ in range(repeats):
        for m, mode in MODES.items():
            c0, t0 = time.process_time(), time.perf_counter()
            decode(model, state, toks, mode)
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    stats = {m: summarize(times[m], cpu[m]) for m in MODES}
    tps = {m: B * K / stats[m]["median_s"] for m in MODES}
    return {"tok_per_s": tps,
            "tok_per_cpu_s": {m: B * K / statistics.median(cpu[m]) for m in MODES},
            "speedup_sparse": tps["sparse"] / tps["dense"], "speedup_auto": tps["auto"] / tps["dense"],
            "timing": stats, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def check(model: BDH, prompt: torch.Tensor, state, toks: torch.Tensor) -> dict:
    """Logit differences between the modes and against a float64 dense decode; activity per layer."""
    logits = {m: decode(model, state, toks, mode) for m, mode in MODES.items()}
    # the fp32 noise floor: dense and sparse fp32 logits against a dense float64 decode of the same tokens
    m64 = copy.deepcopy(model).double()
    with torch.inference_mode():
        _, state64 = m64.prefill(prompt[:, :-1])
    ref64 = decode(m64, state64, toks, False)
    del m64, state64
    return {
        "max_abs_diff_sparse": (logits["sparse"] - logits["dense"]).abs().max().item(),
        "max_abs_diff_auto": (logits["auto"] - logits["dense"]).abs().max().item(),
        "max_abs_diff_dense_vs_fp64": (logits["dense"].double() - ref64).abs().max().item(),
        "max_abs_diff_sparse_vs_fp64": (logits["sparse"].double() - ref64).abs().max().item(),
        "max_abs_logit": logits["dense"].abs().max().item(),
        "activity": activity(model, state, toks),
    }


def summarize_rounds(rounds: list[dict]) -> dict:
    """Medians over rounds of tokens/s per mode and of the per-round speedups."""
    med = statistics.median
    return {
        "tok_per_s": {m: med(r["tok_per_s"][m] for r in rounds) for m in MODES},
        "tok_per_cpu_s": {m: med(r["tok_per_cpu_s"][m] for r in rounds) for m in MODES},
        "speedup_sparse": med(r["speedup_sparse"] for r in rounds),
        "speedup_auto": med(r["speedup_auto"] for r in rounds),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batches = args.batch or [1, 8]
    info = machine_info()
    print(format_machine(info))
    print(f"threads={args.threads} tokens={args.tokens} repeats={args.repeats} "
          f"SPARSE_MIN_STATE={SPARSE_MIN_STATE} SPARSE_MAX_ACTIVITY={SPARSE_MAX_ACTIVITY}")
    results = []
    models = [(d, lambda d=d: BDH.from_pretrained(d).float().eval()) for d in args.model]
    models += [(f"synthetic-keep{k:g}", lambda k=k: synthetic_model(k, args.seed)) for k in args.synthetic]
    if not models:
        raise SystemExit("nothing to run: give --model DIR and/or --synthetic FRACTION")
    runs = []  # (model, prefilled state, decoded tokens, result) per (model, batch)
    for d, load in models:
        model = load()
        print(f"{d}: {model.extra_repr()}")
        for B in batches:
            prompt, state, toks = prepare(model, B, args.tokens, args.seed)
            c = model.config
            res = {"model": d, "config": {"n_layer": c.n_layer, "n_embd": c.D, "n_head": c.n_head, "N": c.N,
                                          "n": c.n, "damping": c.damping},
                   **training_info(d), "batch": B, "tokens": args.tokens, "prompt_tokens": int(prompt.shape[1]),
                   **check(model, prompt, state, toks), "rounds": []}
            runs.append((model, state, toks, res))
    for rnd in range(args.rounds):  # rounds spread over the whole run: slow drifts of a shared machine average out
        for model, state, toks, r in runs:
            one = time_modes(model, state, toks, args.repeats)
            r["rounds"].append(one)
            print(f"round {rnd + 1}/{args.rounds} {r['model']} B={r['batch']}: dense {one['tok_per_s']['dense']:.1f} "
                  f"tok/s, sparse {one['tok_per_s']['sparse']:.1f} ({one['speedup_sparse']:.2f}x), auto "
                  f"{one['tok_per_s']['auto']:.1f} ({one['speedup_auto']:.2f}x)", flush=True)
    for model, state, toks, r in runs:
        r.update(summarize_rounds(r["rounds"]))
        results.append(r)
        act = " ".join(f"L{l}:x={a['x_active']:.1%}/rows={a['rows_active']:.1%}/xy={a['xy_active']:.1%}"
                       for l, a in enumerate(r["activity"]))
        print(f"{r['model']} B={r['batch']}: max|dlogit| sparse {r['max_abs_diff_sparse']:.1e} auto "
              f"{r['max_abs_diff_auto']:.1e} (fp64 ref: dense {r['max_abs_diff_dense_vs_fp64']:.1e}, sparse "
              f"{r['max_abs_diff_sparse_vs_fp64']:.1e}) (|logit| <= {r['max_abs_logit']:.1f}) | {act}")
    print()
    print("| model | n | penalty | val bpb | batch | activity per layer: x>0 / active rows / x*y>0 | dense tok/s "
          "| sparse tok/s | auto tok/s | sparse/dense | auto/dense | sparse/dense per round | max abs diff (sparse) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        act = "; ".join(f"L{l}: {a['x_active']:.1%} / {a['rows_active']:.1%} / {a['xy_active']:.1%}"
                        for l, a in enumerate(r["activity"]))
        t = r["tok_per_s"]
        pen = "-" if r["activity_penalty"] is None else f"{r['activity_penalty']:g}"
        bpb = "-" if r["val_bpb"] is None else f"{r['val_bpb']:.3f}"
        per_round = ", ".join(f"{x['speedup_sparse']:.2f}" for x in r["rounds"])
        print(f"| {Path(r['model']).name} | {r['config']['n']} | {pen} | {bpb} | {r['batch']} | {act} | {t['dense']:.0f} | {t['sparse']:.0f} "
              f"| {t['auto']:.0f} | {r['speedup_sparse']:.2f}x | {r['speedup_auto']:.2f}x "
              f"| {per_round} | {r['max_abs_diff_sparse']:.1e} |")
    out = write_json(args.out, {"machine": info, "threads": args.threads, "tokens": args.tokens,
                                "repeats": args.repeats, "rounds": args.rounds, "sparse_min_state": SPARSE_MIN_STATE,
                                "sparse_max_activity": SPARSE_MAX_ACTIVITY, "results": results})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
