"""CPU training step time in fp32 vs bf16 autocast (the trainer's `train.precision`), same weights, same process.

    python -m benchmarks.precision_speed                       # default config and the L=4 d=128 n=4096 shape
    python -m benchmarks.precision_speed --configs default --repeats 11

For each shape two copies of one initial model take interleaved training steps (`common.train_step_fn`: forward
+ cross-entropy, backward, clip, AdamW; with `bf16` the forward under `torch.autocast("cpu", torch.bfloat16)`),
alternating which goes first; the ratio of medians bf16 / fp32 is the figure (below 1: bf16 is faster). Worth
running only where the CPU computes bf16 natively (`avx512_bf16` / `amx_bf16` in /proc/cpuinfo, printed with the
machine info); elsewhere bf16 is emulated and several times slower, and the script says so. The allocator is tuned
as `bdh train` tunes it. Writes results/precision_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path


import torch

from .common import apply_malloc, format_machine, interleaved_times, machine_info, train_step_fn, write_json
from .train_ab import shapes

RESULTS = Path(__file__).resolve().parent / "results"


def all_shapes() -> dict[str, tuple[dict, int, int, bool]]:
    """train_ab's shapes and a wider one (L=4, d=128, h=4, n=4096 at 8 x 256 tokens)."""
    out = shapes()
    out["L4-d128-n4096"] = (dict(n_layer=4, n_embd=128, n_head=4, mlp_internal_dim_multiplier=32, dropout=0.0), 8, 256,
                            False)
    return out


def main(argv=None) -> int:
    from bdh import BDH, BDHConfig
    from bdh.attention import cpu_bf16_supported

    known = all_shapes()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="default,L4-d128-n4096", help=f"comma-separated, of: {', '.join(known)}")
    p.add_argument("--repeats", type=int, default=9, help="timed steps per precision and config (after 2 warm-ups)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "precision_speed.json"))
    a = p.parse_args(argv)
    want = [c.strip() for c in a.configs.split(",")]
    if any(c not in known for c in want) or a.repeats < 1:
        p.error(f"--configs {a.configs!r} / --repeats {a.repeats}: expected some of {', '.join(known)}, repeats >= 1")
    torch.set_num_threads(a.threads)
    malloc = apply_malloc("tuned")  # as bdh train tunes it
    info = machine_info()
    native = cpu_bf16_supported()
    print(f"fp32 vs bf16 autocast training step; {format_machine(info)}; {a.threads} thread(s); native bf16: "
          f"{native}{'' if native else ' (bf16 is emulated here: expect it to be several times slower)'}", flush=True)
    rows = []
    for name in want:
        kw, B, T, carry = known[name]
        torch.manual_seed(0)
        model = BDH(BDHConfig(**kw, vocab_size=256))
        steps = {"fp32": train_step_fn(model, B, T, carry), "bf16": train_step_fn(copy.deepcopy(model), B, T, carry,
                                                                                  bf16=True)}
        first, times = interleaved_times(steps, a.repeats)  # first: the first step's loss (same weights and batch)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"config": name, "B": B, "T": T, "params": sum(q.numel() for q in model.parameters()),
               "fp32_ms": 1e3 * med["fp32"], "bf16_ms": 1e3 * med["bf16"], "bf16_over_fp32": med["bf16"] / med["fp32"],
               "fp32_tok_s": B * T / med["fp32"], "bf16_tok_s": B * T / med["bf16"],
               "first_loss": first, "times_s": times}
        rows.append(row)
        print(f"{name:>14}: fp32 {row['fp32_ms']:8.1f} ms  bf16 {row['bf16_ms']:8.1f} ms  bf16/fp32 "
              f"{row['bf16_over_fp32']:.2f}x  (first loss {first['fp32']:.4f} vs {first['bf16']:.4f})", flush=True)
    path = write_json(a.out, {"machine": info, "native_bf16": native, "threads": a.threads, "repeats": a.repeats, **malloc,
                              "rows": rows})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
