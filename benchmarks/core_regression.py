"""The core against an earlier commit, in one run: decode, training and sparse-decode speed, and hook overhead.

    git worktree add /tmp/bdh-base <commit>          # the baseline's source tree
    python -m benchmarks.core_regression --baseline /tmp/bdh-base/src --rounds 3 --threads 1

Each round runs one fresh subprocess per side (baseline, current), alternating, so both see the same machine
load; figures are medians over rounds, and each round's figures are in the JSON. Measured per side:
- decode tok/s, `step(inplace=True)` at batch 1 and 8 (L=4, d=128, h=4, n=4096, ALiBi damping);
- training tok/s, fwd + bwd + AdamW, 4096 tokens per step, T = 256 and 2048 (the default config);
- sparse decode: sparse / dense tok/s at batch 1 on a random n = 32768 model with 10% of RoPE pairs alive;
- current side only: the same decode and T = 256 training with a no-op hook attached to every hook point
  (the cost of hooks when used; "nothing attached" is the plain figure).
Both sides' workers set the CPU allocator as `bdh train` does (`--malloc tuned`, `common.apply_malloc`, from this
tree's bdh/allocator.py when the baseline has none); `--malloc default` leaves glibc's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "core_regression.json"


# ----------------------------------------------------------------------------------------------- worker
def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def worker(quick: bool, malloc: str = "tuned") -> dict:
    """Runs inside the subprocess, against whichever `bdh` is on sys.path."""
    import torch
    from .common import apply_malloc  # the trainer's CPU allocator setting, the same on both sides

    import bdh
    from bdh import BDH, BDHConfig

    reps = 2 if quick else 5
    out: dict = {"bdh_file": bdh.__file__, "malloc": apply_malloc(malloc)}

    def decode_model():
        torch.manual_seed(0)
        return BDH(BDHConfig(n_layer=4, n_embd=128, n_head=4, mlp_internal_dim_multiplier=32, vocab_size=256,
                             dropout=0.0, damping="alibi")).eval()

    def decode_rate(m, B, steps, sparse=False):
        toks = torch.randint(0, 256, (steps, B), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            _, s0 = m.prefill(torch.randint(0, 256, (B, 64), generator=torch.Generator().manual_seed(2)))

            def run():
                s = s0.clone()
                for t in toks:
                    _, s = m.step(t, s, inplace=True, sparse=sparse)

            return B * steps / _median_time(run, reps)

    m = decode_model()
    steps = 16 if quick else 64
    for B in (1, 8):
        out[f"decode_b{B}_tok_s"] = decode_rate(m, B, steps)

    def train_rate(T):
        torch.manual_seed(0)
        cfg = BDHConfig(n_layer=2, n_embd=64, n_head=8, mlp_internal_dim_multiplier=16, vocab_size=256,
                        dropout=0.0, damping="alibi", chunk_size=128)
        model = BDH(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        B = 4096 // T
        x = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(3))

        def step():
            _, loss = model(x[:, :-1], x[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return model, B * T / _median_time(step, reps)

    for T in (256, 2048):
        _, out[f"train_T{T}_tok_s"] = train_rate(T)

    # sparse decode on a random n = 32768 model with 10% of RoPE pairs alive
    torch.manual_seed(5)
    cfg = BDHConfig(n_layer=2, n_embd=64, n_head=8, mlp_internal_dim_multiplier=512, vocab_size=256, dropout=0.0,
                    damping="alibi")
    big = BDH(cfg).eval()
    g = torch.Generator().manual_seed(6)
    nh, N = cfg.n_head, cfg.N
    alive = (torch.rand(nh, 1, N // 2, 1, generator=g) < 0.1).expand(nh, 1, N // 2, 2).reshape(nh, 1, N)
    with torch.no_grad():
        big.encoder.mul_(alive.to(big.encoder.dtype))
    sp_steps = 8 if quick else 32
    dense = decode_rate(big, 1, sp_steps, sparse=False)
    sparse = decode_rate(big, 1, sp_steps, sparse=True)
    out.update(sparse_dense_tok_s=dense, sparse_sparse_tok_s=sparse, sparse_ratio=sparse / dense)

    if hasattr(BDH, "add_hook"):  # the current side: the cost of hooks when attached
        from bdh.model import HOOK_KINDS, hook_name

        def noop(name, t, pos):
            return None

        names = lambda L: [hook_name(l, k) for l in range(L) for k in HOOK_KINDS] + ["logits"]  # noqa: E731
        with m.hooks({n: noop for n in names(m.config.n_layer)}):
            for B in (1, 8):
                out[f"decode_b{B}_hooked_tok_s"] = decode_rate(m, B, steps)
        model, _ = train_rate(256)
        with model.hooks({n: noop for n in names(model.config.n_layer)}):
            _, out["train_T256_hooked_tok_s"] = train_rate(256)
    return out


# ----------------------------------------------------------------------------------------------- driver
def run_side(src: str, threads: int, quick: bool, malloc: str = "tuned") -> dict:
    # that side's bdh first on the path, then this repository (for `benchmarks`, which has no bdh of its own)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(REPO_ROOT)]), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    code = (f"import json, torch; torch.set_num_threads({threads}); import benchmarks.core_regression as c; "
            f"print('RESULT ' + json.dumps(c.worker({quick}, {malloc!r})))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"worker for {src} failed:\n{r.stderr[-3000:]}")
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="the baseline commit's src/ directory (a git worktree)")
    p.add_argument("--current", default=str(HERE.parent / "src"), help="this tree's src/ (default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    from .common import add_malloc_arg, format_machine, machine_info, write_json

    add_malloc_arg(p)
    a = p.parse_args(argv)
    for name in ("baseline", "current"):
        if not Path(getattr(a, name), "bdh", "__init__.py").is_file():
            p.error(f"--{name} {getattr(a, name)!r}: expected a src/ directory holding bdh/__init__.py")
    if a.rounds < 1 or a.threads < 1:
        p.error("--rounds and --threads must be positive integers")
    info = machine_info()
    print(format_machine(info))
    rounds = []
    for r in range(a.rounds):
        base = run_side(a.baseline, a.threads, a.quick, a.malloc)
        cur = run_side(a.current, a.threads, a.quick, a.malloc)
        rounds.append({"baseline": base, "current": cur})
        print(f"round {r + 1}/{a.rounds}: decode b1 {base['decode_b1_tok_s']:.0f} -> {cur['decode_b1_tok_s']:.0f} tok/s, "
              f"train T256 {base['train_T256_tok_s']:.0f} -> {cur['train_T256_tok_s']:.0f} tok/s", flush=True)
    keys = sorted({k for rd in rounds for k in rd["current"] if k not in ("bdh_file", "malloc")})
    med = {side: {k: statistics.median(rd[side][k] for rd in rounds) for k in keys if k in rounds[0][side]}
           for side in ("baseline", "current")}
    print(f"\n| figure (median of {a.rounds} rounds) | baseline | current | current / baseline |")
    print("|---|---|---|---|")
    for k in keys:
        b, c = med["baseline"].get(k), med["current"][k]
        ratio = f"{c / b:.3f}" if b else "–"
        print(f"| {k} | {'–' if b is None else f'{b:,.2f}'} | {c:,.2f} | {ratio} |")
    for B in (1, 8):
        print(f"hooks attached, decode b{B}: {med['current'][f'decode_b{B}_hooked_tok_s'] / med['current'][f'decode_b{B}_tok_s']:.3f}x "
              "of nothing attached")
    print(f"hooks attached, train T256: {med['current']['train_T256_hooked_tok_s'] / med['current']['train_T256_tok_s']:.3f}x")
    write_json(a.out, {"machine": info, "args": vars(a), "median": med, "rounds": rounds})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
