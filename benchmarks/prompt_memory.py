"""Peak memory of `bdh generate` against the prompt length: flat, because prompts are prefilled in pieces.

    python -m benchmarks.prompt_memory                  # prompts of 1k, 10k, 100k characters (~2-4 min on 2 cores)
    python -m benchmarks.prompt_memory --quick          # 1k and 10k characters, no one-shot column (< 1 min)
    python -m benchmarks.prompt_memory --model runs/default --sizes 1000 20000

A small model (the shipped `default` config's model, random weights, unless `--model` names a saved one) is saved
to a temporary folder; every measurement is a fresh `python -m bdh.cli generate --threads 1 --temperature 0`
subprocess whose peak RSS is read with `os.wait4` (the child's own `ru_maxrss`). The prompt is ASCII English
text repeated to the length (one byte token per character). Column "pieces" is `bdh generate` as shipped
(`bdh.generation.PREFILL_PIECE` tokens per prefill call, the state carried); column "one-shot" sets the piece
to the whole prompt (the behaviour before pieces), and the two outputs are compared (they must be identical).
A 1-character prompt gives the fixed cost (Python, torch, the model). Saves JSON with machine info.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from .common import format_machine, human_bytes, machine_info, write_json

FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prompt_memory.json"
QUICK_OUT = Path(__file__).resolve().parent / "results" / "prompt_memory_quick.json"
NEW_TOKENS = 16

# `bdh generate` in a fresh interpreter; argv[1] = the prefill piece ("" = as shipped), the rest = CLI arguments
RUNNER = (
    "import sys\n"
    "import bdh.generation as G\n"
    "if sys.argv[1]:\n"
    "    G.PREFILL_PIECE = int(sys.argv[1])\n"
    "from bdh.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def prompt_text(n: int) -> str:
    """`n` characters of ASCII English (pydoc's topics, repeated)."""
    import pydoc_data.topics

    base = "".join(pydoc_data.topics.topics.values()).encode("ascii", "ignore").decode()
    return (base * (n // len(base) + 1))[:n]


def run_generate(model_dir: Path, prompt: str, piece: int | None) -> dict:
    """One `bdh generate` subprocess: peak RSS (bytes), wall seconds, exit status, stdout."""
    args = [sys.executable, "-c", RUNNER, "" if piece is None else str(piece), "generate", "--model", str(model_dir),
            "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS), "--temperature", "0", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    if proc.returncode != 0:
        raise RuntimeError(f"bdh generate failed (exit {proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    return {"peak_rss_bytes": rss, "wall_s": round(wall, 2), "stdout": stdout}


def make_model(folder: Path) -> Path:
    """The shipped `default` config's model (random weights), saved to `folder`."""
    import torch

    from bdh import build_model
    from bdh.training import load_run_config

    torch.manual_seed(0)
    build_model(load_run_config("default").model_config(256)).eval().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="prompts of 1k and 10k characters, no one-shot column")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="prompt lengths in characters")
    ap.add_argument("--model", default=None, help="a saved model directory (default: the default config, random)")
    ap.add_argument("--no-one-shot", action="store_true", help="skip the one-shot prefill column")
    ap.add_argument("--out", default=None, help="JSON path (default results/prompt_memory[_quick].json)")
    args = ap.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    one_shot = not (args.no_one_shot or args.quick)
    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    info = machine_info()
    print(format_machine(info))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else make_model(Path(tmp) / "model")
        from bdh import load_model
        from bdh.generation import prefill_piece

        m = load_model(model_dir)
        piece = prefill_piece(m)
        config = m.config.to_dict()
        del m
        base = run_generate(model_dir, "x", None)
        print(f"model: {config}\nprefill piece: {piece} tokens; {NEW_TOKENS} new tokens, greedy, 1 thread")
        print(f"fixed cost (1-character prompt): peak RSS {human_bytes(base['peak_rss_bytes'])}")
        head = f"{'prompt chars':>12} | {'pieces: peak RSS':>17} | {'wall s':>6}"
        if one_shot:
            head += f" | {'one-shot: peak RSS':>18} | {'wall s':>6} | same output"
        print(head)
        print("-" * len(head))
        rows = []
        for n in sizes:
            text = prompt_text(n)
            a = run_generate(model_dir, text, None)
            row = {"prompt_chars": n, "prompt_tokens": len(text.encode()),
                   "pieces": {k: a[k] for k in ("peak_rss_bytes", "wall_s")}}
            line = f"{n:>12,} | {human_bytes(a['peak_rss_bytes']):>17} | {a['wall_s']:>6.1f}"
            if one_shot:
                b = run_generate(model_dir, text, 1 << 40)
                row["one_shot"] = {k: b[k] for k in ("peak_rss_bytes", "wall_s")}
                row["same_output"] = a["stdout"] == b["stdout"]
                line += f" | {human_bytes(b['peak_rss_bytes']):>18} | {b['wall_s']:>6.1f} | {row['same_output']}"
            print(line, flush=True)
            rows.append(row)
    peaks = [r["pieces"]["peak_rss_bytes"] for r in rows]
    growth = (peaks[-1] - peaks[0]) / peaks[0] if peaks else None
    print(f"peak RSS growth from {sizes[0]:,} to {sizes[-1]:,} characters (pieces): "
          f"{human_bytes(peaks[-1] - peaks[0])} ({100 * growth:.1f}%)")
    write_json(out, {"benchmark": "prompt_memory", "machine": info, "model": config, "prefill_piece": piece,
                     "new_tokens": NEW_TOKENS, "fixed_cost_peak_rss_bytes": base["peak_rss_bytes"], "rows": rows,
                     "pieces_growth_fraction": growth})
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
