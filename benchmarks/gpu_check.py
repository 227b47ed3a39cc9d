#!/usr/bin/env python
"""GPU check: everything a first GPU session should measure, in one run of <= ~8 minutes on one H100-class GPU.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check     # on a CUDA machine
    python -m benchmarks.gpu_check --dry-run --out /tmp/gpu_check          # the same items at toy sizes on the CPU

Items (each independent: a failure is recorded with its error and the next item runs; each has a time budget):

| item | what | real size (CUDA) | dry run (CPU) |
|---|---|---|---|
| exactness | logits of the parallel/chunked/recurrent forms and gradients on the device vs a CPU fp64 reference (fp64 and fp32 on the device, TF32 off) | L=2, d=128, h=4, n=4096, C=64, B=2, T=256, no damping and ALiBi | L=2, d=32, h=2, n=128, C=8, B=2, T=20 |
| bf16_policy | a short run from one init on the same batches, fp32 vs bf16 autocast (the precision policy); no NaN | reference-25m, B=32, T=512, 40 steps | tiny, B=4, T=32, 6 steps |
| train_throughput | training tok/s and MFU, BDH reference-25m and its param-matched GPT, eager vs torch.compile, bf16 autocast | B=32, T=512 (the paper's), 3 warm-up + 10 timed steps | tiny, B=2, T=32, 1 + 2 steps, compile backend "eager" |
| decode | decode tok/s, `step(..., inplace=True)`, BDH dense vs sparse and GPT KV cache | reference-25m pair, batch 1 and 64, ctx 1024 and 16384, 32 tokens x 3 | tiny pair, batch 1 and 4, ctx 16 and 64, 4 tokens x 2 |
| torchrun_train_resume | `torchrun --nproc_per_node 1 -m bdh.cli train` on the device, then `--resume` with more steps; a NCCL (gloo) all-reduce | reference-25m, 20 + 10 steps | tiny, 6 + 4 steps |
| serve | `bdh serve --device DEV` in a subprocess on loopback, one /v1/completions request | reference-25m (random weights), 16 tokens | tiny, 8 tokens |

Every item records torch.cuda.max_memory_allocated (reset before it; peak RSS on the CPU). The JSON is rewritten
after every item (a killed run keeps what it measured); the markdown summary is written alongside.
MFU = achieved training FLOP/s (tok/s x `bdh.interface.token_flops(config, T).training`, 3 x forward matmul
FLOPs) / the device's dense bf16 peak from `PEAK_BF16` (matched on the device name; stated in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .common import REPO_ROOT, child_env, machine_info, peak_rss_bytes, reset_peak_rss, write_json

# Dense bf16 tensor-core peak FLOP/s (no sparsity), from the vendors' data sheets; first match on the device name.
PEAK_BF16 = (
    ("GH200", 989.4e12), ("H200", 989.4e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989.4e12),
    ("H800", 989.4e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
)

# Per-item time budgets in seconds (real run; ~7.5 min in all plus start-up). The dry run uses the same caps.
BUDGET = {"exactness": 30, "bf16_policy": 45, "train_throughput": 190, "decode": 85, "torchrun_train_resume": 75,
          "serve": 40}
TOTAL_BUDGET = 460  # s: an item gets min(its budget, what is left of this), so the whole run stays under ~8 min
ITEMS = tuple(BUDGET)

# Tolerances (stated in the JSON): device fp64 vs CPU fp64, and device fp32 (TF32 off) vs CPU fp64; max |diff|
# divided by max |reference| of that tensor (logits: over all logits; gradients: per parameter, the worst).
TOL = {"fp64": {"logits": 1e-10, "grad": 1e-9}, "fp32": {"logits": 1e-4, "grad": 2e-3}}
BF16_MAX_REL_LOSS_GAP = 0.03  # |loss_bf16 - loss_fp32| / loss_fp32 at the end of the short run


class OutOfTime(RuntimeError):
    pass


def peak_flops(name: str) -> tuple[float | None, str | None]:
    for key, v in PEAK_BF16:
        if key.lower() in name.lower():
            return v, key
    return None, None


class Ctx:
    """What an item gets: the device, the mode, its deadline, scratch space, and a progress printer."""

    def __init__(self, device, dry: bool, budget: float, tmp: Path):
        self.device, self.dry, self.tmp = device, dry, tmp
        self.t0 = time.perf_counter()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def check(self, what: str = "") -> None:
        if self.left() <= 0:
            raise OutOfTime(f"item budget of {self.budget:.0f} s spent{' before ' + what if what else ''}")

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def say(self, msg: str) -> None:
        print(f"   {msg}", flush=True)


# ----------------------------------------------------------------------------- configs
def bdh_config(dry: bool, **over):
    from bdh.config import BDHConfig
    from bdh.training import load_run_config

    if dry:
        cfg = dict(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0, chunk_size=8)
        cfg.update(over)
        return BDHConfig(**cfg, vocab_size=256)
    c = load_run_config("reference-25m").model_config(256)
    c = copy.deepcopy(c)
    c.dropout = 0.0  # deterministic comparisons and timings
    for k, v in over.items():
        setattr(c, k, v)
    return c


def gpt_config(bcfg, dry: bool):
    """The parameter-matched GPT: the GPU ladder's 25M rung (the paper's GPTXL table: L=9, d=480, h=5; dropout 0
    here), or in the dry run the nearest-parameter GPT of `benchmarks.train_speed.gpt_at_params`."""
    if dry:
        from .train_speed import gpt_at_params

        return gpt_at_params(bcfg.num_params(), bcfg.vocab_size)
    from bdh.baselines.ladders import GPU_LADDER

    g = copy.deepcopy(next(r for r in GPU_LADDER if r.name == "25M").configs(bcfg.vocab_size)[1])
    g.dropout = 0.0
    return g


def text_bytes(n: int) -> "Any":
    """n bytes of real text (this repository's README and sources), repeated when short: no download needed."""
    import torch

    parts = [(REPO_ROOT / "README.md").read_bytes()] + [p.read_bytes() for p in sorted((REPO_ROOT / "src" / "bdh").rglob("*.py"))]
    data = b"".join(parts)
    data = (data * (n // len(data) + 1))[:n]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


# ----------------------------------------------------------------------------- items
def item_exactness(ctx: Ctx) -> dict:
    import torch
    import torch.nn.functional as F

    from bdh import BDH

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    B, T = (2, 20) if ctx.dry else (2, 256)
    over = dict(chunk_size=8) if ctx.dry else dict(n_layer=2, n_embd=128, n_head=4, mlp_internal_dim_multiplier=32, chunk_size=64)
    out = {"sizes": {"B": B, "T": T, **over}, "tolerances": TOL, "tf32": False, "cases": []}
    ok = True
    for damping in (None, "alibi"):
        cfg = bdh_config(ctx.dry, damping=damping, **over)
        torch.manual_seed(0)
        ref = BDH(cfg).double().eval()
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, 256, (B, T), generator=g)
        tgt = torch.randint(0, 256, (B, T), generator=g)
        logits_ref, _ = ref(idx, form="parallel")
        F.cross_entropy(logits_ref.flatten(0, 1), tgt.flatten()).backward()
        grads_ref = {k: p.grad.clone() for k, p in ref.named_parameters() if p.grad is not None}
        scale = logits_ref.abs().max().item()
        for dt_name, dt in (("fp64", torch.float64), ("fp32", torch.float32)):
            ctx.check(f"{damping}/{dt_name}")
            m = copy.deepcopy(ref).to(device=ctx.device, dtype=dt)
            m.zero_grad(set_to_none=True)
            x, y = idx.to(ctx.device), tgt.to(ctx.device)
            case = {"damping": damping, "dtype": dt_name, "logits_rel_err": {}, "grad_rel_err": {}}
            with torch.no_grad():
                for form in ("parallel", "chunked", "recurrent"):
                    lg, _ = m(x, form=form)
                    case["logits_rel_err"][form] = (lg.double().cpu() - logits_ref.detach()).abs().max().item() / scale
            for form in ("parallel", "chunked"):
                m.zero_grad(set_to_none=True)
                lg, _ = m(x, form=form)
                F.cross_entropy(lg.flatten(0, 1), y.flatten()).backward()
                worst = 0.0
                for k, p in m.named_parameters():
                    if k in grads_ref:
                        r = grads_ref[k]
                        worst = max(worst, (p.grad.double().cpu() - r).abs().max().item() / max(r.abs().max().item(), 1e-30))
                case["grad_rel_err"][form] = worst
            ctx.sync()
            case["ok"] = (max(case["logits_rel_err"].values()) <= TOL[dt_name]["logits"]
                          and max(case["grad_rel_err"].values()) <= TOL[dt_name]["grad"])
            ok &= case["ok"]
            out["cases"].append(case)
            ctx.say(f"{'alibi' if damping else 'no damping'} {dt_name}: logits {max(case['logits_rel_err'].values()):.1e}, "
                    f"grads {max(case['grad_rel_err'].values()):.1e} {'ok' if case['ok'] else 'OUT OF TOLERANCE'}")
            del m
    out["ok"] = ok
    if not ok:
        raise AssertionError("exactness out of tolerance: " + json.dumps(out["cases"]))
    return out


def _train_run(model, batches, device, bf16: bool, lr=1e-3) -> list[float]:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def item_bf16_policy(ctx: Ctx) -> dict:
    import torch

    from bdh import BDH

    B, T, steps = (4, 32, 6) if ctx.dry else (8, 512, 40)  # fp32 at B=32 would need ~60 GB of activations
    cfg = bdh_config(ctx.dry)
    data = text_bytes(200_000 if ctx.dry else 2_000_000)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        i = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        w = torch.stack([data[j:j + T + 1] for j in i.tolist()]).to(ctx.device)
        batches.append((w[:, :-1], w[:, 1:]))
    torch.manual_seed(0)
    init = BDH(cfg).to(ctx.device).train()
    res = {"sizes": {"B": B, "T": T, "steps": steps, "config": "tiny" if ctx.dry else "reference-25m"},
           "data": "this repository's README and sources as bytes (random crops, same batches both ways)"}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        ctx.check(name)
        t0 = time.perf_counter()
        losses = _train_run(copy.deepcopy(init), batches, ctx.device, bf16)
        ctx.sync()
        res[name] = {"losses": losses, "final_loss": sum(losses[-3:]) / 3, "wall_s": time.perf_counter() - t0}
        ctx.say(f"{name}: loss {losses[0]:.4f} -> {res[name]['final_loss']:.4f} ({res[name]['wall_s']:.1f} s)")
    gap = abs(res["bf16"]["final_loss"] - res["fp32"]["final_loss"]) / res["fp32"]["final_loss"]
    res["rel_loss_gap"] = gap
    res["max_rel_loss_gap"] = BF16_MAX_REL_LOSS_GAP
    res["nan"] = any(not math.isfinite(x) for k in ("fp32", "bf16") for x in res[k]["losses"])
    if res["nan"] or gap > BF16_MAX_REL_LOSS_GAP:
        raise AssertionError(f"bf16 vs fp32: relative final-loss gap {gap:.4f} (max {BF16_MAX_REL_LOSS_GAP}), nan={res['nan']}")
    return res


def _time_training(ctx: Ctx, key_: str, cls, cfg, mode: str, data, T: int, warm: int, timed: int, flops, peak) -> dict:
    """Warm-up (compilation included) then timed bf16-autocast training steps of one model; one result row."""
    import torch

    B = data.shape[0]
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    ctx.check(key_)
    torch.manual_seed(0)
    model = cls(cfg).to(ctx.device).train()
    fwd = model
    if mode == "compiled":
        fwd = torch.compile(model, backend="eager") if ctx.dry else torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)

    def step():
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            _, loss = fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(warm):
        step()
    ctx.sync()
    warm_s = time.perf_counter() - t0
    ctx.check(f"{key_} timing")
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        loss = step()
        ctx.sync()
        times.append(time.perf_counter() - t0)
        if ctx.left() <= 0:
            break
    times.sort()
    med = times[len(times) // 2]
    tok_s = B * T / med
    r = {"status": "ok", "tok_s": tok_s, "step_s_median": med, "steps_timed": len(times),
         "warmup_s": warm_s, "loss": float(loss.detach()), "training_flops_per_token": flops.training,
         "achieved_flop_s": tok_s * flops.training, "mfu": None if peak is None else tok_s * flops.training / peak,
         "params": model.num_params()}
    if ctx.device.type == "cuda":
        r["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
    ctx.say(f"{key_}: batch {B}, {tok_s:,.0f} tok/s" + (f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "")
            + f" (warm-up {warm_s:.1f} s)")
    return r


def item_train_throughput(ctx: Ctx) -> dict:
    import torch

    from bdh import BDH
    from bdh.baselines.gpt import GPT
    from bdh.interface import token_flops

    B, T, warm, timed = (2, 32, 1, 2) if ctx.dry else (32, 512, 3, 10)
    bcfg = bdh_config(ctx.dry)
    gcfg = gpt_config(bcfg, ctx.dry)
    name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
    peak, key = peak_flops(name) if ctx.device.type == "cuda" else (None, None)
    res = {"sizes": {"B": B, "T": T, "warmup_steps": warm, "timed_steps": timed}, "precision": "bf16 autocast",
           "device_name": name, "peak_bf16_flop_s": peak, "peak_table_key": key,
           "compile": "torch.compile (inductor)" if not ctx.dry else "torch.compile(backend='eager') in the dry run (tracing only)",
           "bdh_config": bcfg.to_dict(), "gpt_config": gcfg.to_dict(), "runs": {}}
    # a sanity figure beside the table's peak: one square bf16 GEMM
    n = 256 if ctx.dry else 8192
    a = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    a @ a
    ctx.sync()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    ctx.sync()
    res["measured_gemm_bf16_flop_s"] = 5 * 2 * n ** 3 / (time.perf_counter() - t0)
    del a
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (B, T + 1), generator=g).to(ctx.device)
    for mname, cls, cfg in (("bdh", BDH, bcfg), ("gpt", GPT, gcfg)):
        flops = token_flops(cfg, T)
        for mode in ("eager", "compiled"):
            key_ = f"{mname}_{mode}"
            try:
                r = None
                for Bu in (B, B // 2, B // 4):  # the paper's batch; halved only when it does not fit the GPU
                    try:
                        r = _time_training(ctx, key_, cls, cfg, mode, data[:Bu], T, warm, timed, flops, peak)
                        break
                    except torch.cuda.OutOfMemoryError as e:
                        ctx.say(f"{key_}: out of memory at batch {Bu}: {str(e)[:120]}")
                        res.setdefault("oom", []).append({"run": key_, "batch": Bu})
                        if ctx.device.type == "cuda":
                            torch.cuda.empty_cache()
                if r is None:
                    raise RuntimeError(f"out of memory down to batch {B // 4}")
                r["batch"] = Bu
            except OutOfTime as e:
                r = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # one configuration failing (e.g. compile) leaves the others
                r = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
                ctx.say(f"{key_}: failed: {r['error'][:200]}")
            res["runs"][key_] = r
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    bad = {k: v["status"] for k, v in res["runs"].items() if v["status"] != "ok"}
    if bad:
        raise AssertionError(f"not every configuration ran: {bad}")
    return res


def _expand_gpt_state(s, B: int, cap: int):
    """A batch-B copy of a batch-1 GPT cache with capacity `cap` (no reallocation while decoding)."""
    from bdh.baselines.gpt import GPTState

    S = s.length

    def grow(b):
        out = b.new_zeros(B, b.shape[1], cap, b.shape[3])
        out[:, :, :S] = b[:1, :, :S]
        return out

    return GPTState([grow(b) for b in s.k_buf], [grow(b) for b in s.v_buf], S, s.pos[:1].repeat(B))


def item_decode(ctx: Ctx) -> dict:
    import torch

    from bdh import BDH
    from bdh.baselines.gpt import GPT

    batches, ctxs, K, reps = ((1, 4), (16, 64), 4, 2) if ctx.dry else ((1, 64), (1024, 16384), 32, 3)
    piece = 16 if ctx.dry else 2048
    bcfg = bdh_config(ctx.dry)
    gcfg = gpt_config(bcfg, ctx.dry)
    torch.manual_seed(0)
    models = {"bdh": BDH(bcfg).to(ctx.device).eval(), "gpt": GPT(gcfg).to(ctx.device).eval()}
    res = {"sizes": {"batches": batches, "contexts": ctxs, "tokens_per_repeat": K, "repeats": reps, "warmup_tokens": 2},
           "precision": "fp32", "weights": "random (untrained): sparse decode activity is that of a random model",
           "rows": []}
    data = text_bytes(max(ctxs) + K * (reps + 2) + 8).to(ctx.device)
    failed = []
    with torch.no_grad():
        for c in ctxs:
            prompt = data[None, :c]
            states1 = {}
            for mname, m in models.items():  # batch-1 prefill in pieces, then replicated to each batch size
                st = None
                for a in range(0, c, piece):
                    _, st = m.prefill(prompt[:, a:a + piece], st)
                states1[mname] = st
            for B in batches:
                for mname, mode in (("bdh", "dense"), ("bdh", "sparse"), ("gpt", "kv_cache")):
                    row = {"model": mname, "mode": mode, "batch": B, "ctx": c}
                    try:
                        ctx.check(f"{mname} {mode} B={B} ctx={c}")
                        m = models[mname]
                        if ctx.device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(ctx.device)
                        n_tok = 2 + K * reps
                        st = (_expand_gpt_state(states1[mname], B, c + n_tok + 1) if mname == "gpt"
                              else states1[mname].select([0] * B))
                        kw = {} if mname == "gpt" else {"sparse": mode == "sparse"}
                        toks = data[c:c + n_tok + 1]
                        for i in range(2):
                            _, st = m.step(toks[i].expand(B).contiguous(), st, inplace=True, **kw)
                        ctx.sync()
                        times = []
                        for r in range(reps):
                            t0 = time.perf_counter()
                            for i in range(K):
                                _, st = m.step(toks[2 + r * K + i].expand(B).contiguous(), st, inplace=True,
                                               check_ids=False, **kw)
                            ctx.sync()
                            times.append(time.perf_counter() - t0)
                        med = sorted(times)[len(times) // 2]
                        row.update(status="ok", tok_s=B * K / med, steps_s=K / med, ms_per_step=1e3 * med / K,
                                   state_bytes=st.nbytes())
                        if ctx.device.type == "cuda":
                            row["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
                        ctx.say(f"{mname} {mode} batch {B} ctx {c}: {row['tok_s']:,.0f} tok/s ({row['ms_per_step']:.2f} ms/step)")
                        del st
                    except OutOfTime as e:
                        row.update(status="skipped", reason=str(e))
                    except Exception as e:
                        row.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
                        failed.append(row)
                        ctx.say(f"{mname} {mode} batch {B} ctx {c}: failed: {row['error'][:200]}")
                    res["rows"].append(row)
                    if ctx.device.type == "cuda":
                        torch.cuda.empty_cache()
            del states1
    bad = [f"{r['model']}/{r['mode']}/B{r['batch']}/ctx{r['ctx']}: {r['status']}" for r in res["rows"] if r["status"] != "ok"]
    if bad:
        raise AssertionError(f"not every decode measurement ran: {bad}")
    return res


def _run(cmd: list[str], timeout: float, cwd=None) -> subprocess.CompletedProcess:
    env = child_env({**os.environ, "PYTHONUNBUFFERED": "1"})
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = "1"
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the launcher and the workers it started
        out, err = p.communicate()
        raise OutOfTime(f"{' '.join(cmd[1:4])}... timed out after {timeout:.0f} s; stderr tail: {err[-800:]}") from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _train_losses(run: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in recs if r.get("split") == "train"}


def item_torchrun_train_resume(ctx: Ctx) -> dict:
    import torch
    import torch.distributed as dist

    backend = "gloo" if ctx.dry else "nccl"
    res = {"backend": backend}
    # 1. the collective itself: with one process `bdh train` opens no process group (WORLD_SIZE=1), so a
    # one-rank group of this backend does an all-reduce here
    store = torch.distributed.FileStore(str(ctx.tmp / "pg_store"), 1)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        t = torch.ones(4, device=ctx.device)
        dist.all_reduce(t)
        ctx.sync()
        res["all_reduce"] = {"ok": bool(torch.equal(t.cpu(), torch.ones(4))), "world_size": 1}
    finally:
        dist.destroy_process_group()
    # 2. torchrun -> bdh train on the device, then --resume with more steps
    run = ctx.tmp / "torchrun_run"
    corpus = ctx.tmp / "corpus.txt"
    corpus.write_bytes(bytes(text_bytes(300_000 if ctx.dry else 3_000_000).to(torch.uint8).tolist()))
    n1, n2 = (6, 10) if ctx.dry else (20, 30)
    common = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "bdh.cli",
              "train", "--config", "tiny" if ctx.dry else "reference-25m", "--data", str(corpus), "--out", str(run),
              "--no-progress", "--set", f"train.device={'cpu' if ctx.dry else 'cuda'}",
              "--set", f"train.checkpoint_every={n1 // 2}", "--set", "train.eval_every=0", "--set", "train.sample_tokens=0",
              "--set", "train.final_eval_tokens=0", "--set", "train.log_every=1"]
    if ctx.dry:
        common += ["--threads", "1"]
    res["command"] = " ".join(common[1:])
    t0 = time.perf_counter()
    p = _run(common + ["--set", f"train.steps={n1}"], ctx.left() * 0.6)
    res["first_wall_s"] = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"first run exited {p.returncode}: {p.stderr[-2000:]}")
    first = _train_losses(run)
    ctx.say(f"first run: {n1} steps in {res['first_wall_s']:.1f} s, loss {first[1]:.4f} -> {first[n1]:.4f}")
    t0 = time.perf_counter()
    p = _run(common + ["--set", f"train.steps={n2}", "--resume"], ctx.left())
    res["resume_wall_s"] = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"resumed run exited {p.returncode}: {p.stderr[-2000:]}")
    allr = _train_losses(run)
    resumed = {s: v for s, v in allr.items() if s > n1}
    res.update(steps_first=n1, steps_total=n2, losses_first=first, losses_resumed=resumed,
               resumed_message="resumed from" in p.stderr, stderr_tail=p.stderr[-600:])
    cont = (sorted(resumed) == list(range(n1 + 1, n2 + 1)) and res["resumed_message"]
            and all(math.isfinite(v) for v in resumed.values()) and resumed[n1 + 1] < first[1])
    res["continues"] = cont
    ctx.say(f"resumed: steps {min(resumed, default=None)}..{max(resumed, default=None)}, "
            f"loss {resumed.get(n1 + 1, float('nan')):.4f} -> {resumed.get(n2, float('nan')):.4f} "
            f"({res['resume_wall_s']:.1f} s)")
    if not (cont and res["all_reduce"]["ok"]):
        raise AssertionError(f"the resumed run does not continue the first (steps {sorted(resumed)}, "
                             f"first loss {first.get(1)}, resumed loss {resumed.get(n1 + 1)}) or all_reduce failed")
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def item_serve(ctx: Ctx) -> dict:
    import torch

    from bdh import BDH
    from bdh.tokenization import ByteTokenizer

    d = ctx.tmp / "serve_model"
    torch.manual_seed(0)
    BDH(bdh_config(ctx.dry)).save_pretrained(d, ByteTokenizer())
    port, key = _free_port(), "gpu-check"
    url = f"http://127.0.0.1:{port}"
    n_tok = 8 if ctx.dry else 16
    cmd = [sys.executable, "-m", "bdh", "serve", "--model", f"bdh={d}", "--host", "127.0.0.1", "--port", str(port),
           "--device", ctx.device.type, "--api-key", key, "--sessions-dir", str(ctx.tmp / "sessions"), "--threads", "1"]
    env = child_env({**os.environ, "OMP_NUM_THREADS": "1"})
    log = open(ctx.tmp / "serve.log", "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    res = {"command": " ".join(cmd[1:]), "max_tokens": n_tok}
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"bdh serve exited {proc.returncode}: {log.read()[-2000:]}")
            ctx.check("the server answered /health")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        res["start_s"] = time.perf_counter() - t0
        body = json.dumps({"model": "bdh", "prompt": "To be or ", "max_tokens": n_tok, "temperature": 0}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=max(5.0, ctx.left())) as r:
            ans = json.loads(r.read())
        res["request_s"] = time.perf_counter() - t0
        res["usage"] = ans.get("usage")
        res["text"] = ans["choices"][0]["text"]
        ctx.say(f"serve: up in {res['start_s']:.1f} s, {n_tok} tokens in {res['request_s']:.2f} s: {res['text']!r}")
        if (ans.get("usage") or {}).get("completion_tokens") != n_tok:
            raise AssertionError(f"expected {n_tok} completion tokens: {ans}")
        return res
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


FUNCS: dict[str, Callable[[Ctx], dict]] = {
    "exactness": item_exactness, "bf16_policy": item_bf16_policy, "train_throughput": item_train_throughput,
    "decode": item_decode, "torchrun_train_resume": item_torchrun_train_resume, "serve": item_serve,
}


# ----------------------------------------------------------------------------- report
def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def markdown(js: dict) -> str:
    md = [f"# GPU check ({'dry run, CPU' if js['dry_run'] else js['device_name']})", "",
          f"{js['machine']['time_utc']}, torch {js['machine']['torch']}, git {(js['machine']['git'].get('commit') or '?')[:12]}"
          f"; peak bf16 {js['peak_bf16_flop_s'] and format(js['peak_bf16_flop_s'] / 1e12, '.1f') + ' TFLOP/s'} "
          f"({js['peak_table_key'] or 'not in the table'}).", "",
          "| item | status | wall s | budget s | peak memory | note |", "|---|---|---|---|---|---|"]
    for name in ITEMS:
        r = js["items"].get(name)
        if r is None:
            md.append(f"| {name} | not run | | {BUDGET[name]} | | |")
            continue
        note = r.get("error", "")[:160].replace("|", "/").replace("\n", " ")
        md.append(f"| {name} | {r['status']} | {r['wall_s']:.1f} | {r['budget_s']:.0f} | {fmt_bytes(r.get('peak_memory_bytes'))} | {note} |")
    md.append("")
    ex = js["items"].get("exactness", {}).get("result")
    if ex:
        md += ["## Exactness vs CPU fp64 (max |diff| / max |ref|)", "", "| damping | dtype | logits P / C / R | grads P / C | ok |",
               "|---|---|---|---|---|"]
        for c in ex["cases"]:
            lg, gr = c["logits_rel_err"], c["grad_rel_err"]
            md.append(f"| {c['damping']} | {c['dtype']} | {lg['parallel']:.1e} / {lg['chunked']:.1e} / {lg['recurrent']:.1e} | "
                      f"{gr['parallel']:.1e} / {gr['chunked']:.1e} | {c['ok']} |")
        md += ["", f"Tolerances: {json.dumps(ex['tolerances'])}.", ""]
    bf = js["items"].get("bf16_policy", {}).get("result")
    if bf:
        md += ["## bf16 autocast vs fp32", "", f"{bf['sizes']}: final loss fp32 {bf['fp32']['final_loss']:.4f}, bf16 "
               f"{bf['bf16']['final_loss']:.4f} (relative gap {bf['rel_loss_gap']:.4f}, max {bf['max_rel_loss_gap']}); NaN: {bf['nan']}.", ""]
    tt = js["items"].get("train_throughput", {}).get("result")
    if tt:
        md += ["## Training throughput (bf16 autocast)", "", f"B={tt['sizes']['B']}, T={tt['sizes']['T']}; measured bf16 GEMM "
               f"{tt['measured_gemm_bf16_flop_s'] / 1e12:.1f} TFLOP/s.", "", "| run | tok/s | MFU | warm-up s | peak memory |", "|---|---|---|---|---|"]
        for k, r in tt["runs"].items():
            if r.get("status") == "ok":
                mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
                md.append(f"| {k} | {r['tok_s']:,.0f} | {mfu} | {r['warmup_s']:.1f} | {fmt_bytes(r.get('cuda_peak_bytes'))} |")
            else:
                md.append(f"| {k} | {r.get('status')}: {r.get('reason', r.get('error', ''))[:100]} | | | |")
        md.append("")
    dc = js["items"].get("decode", {}).get("result")
    if dc:
        md += ["## Decode (step, inplace=True)", "", "| model | mode | batch | ctx | tok/s | ms/step | state | peak memory |",
               "|---|---|---|---|---|---|---|---|"]
        for r in dc["rows"]:
            if r["status"] == "ok":
                md.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['ctx']} | {r['tok_s']:,.0f} | {r['ms_per_step']:.2f} | "
                          f"{fmt_bytes(r['state_bytes'])} | {fmt_bytes(r.get('cuda_peak_bytes'))} |")
            else:
                md.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['ctx']} | {r['status']} | | | |")
        md.append("")
    tr = js["items"].get("torchrun_train_resume", {}).get("result")
    if tr:
        md += ["## torchrun train + resume", "", f"{tr['backend']} all-reduce ok: {tr['all_reduce']['ok']}; {tr['steps_first']} steps "
               f"({tr['first_wall_s']:.1f} s), resumed to {tr['steps_total']} ({tr['resume_wall_s']:.1f} s); continues: {tr['continues']}.", ""]
    sv = js["items"].get("serve", {}).get("result")
    if sv:
        md += ["## bdh serve", "", f"up in {sv['start_s']:.1f} s; {sv['max_tokens']} tokens in {sv['request_s']:.2f} s.", ""]
    return "\n".join(md) + "\n"


def save(js: dict, out: Path) -> None:
    write_json(out / "gpu_check.json", js)
    (out / "gpu_check.md").write_text(markdown(js), encoding="utf-8")


def run_item(name: str, js: dict, device, dry: bool, tmp: Path, left: float = float("inf")) -> None:
    import torch

    cuda = device.type == "cuda"
    budget = max(5.0, min(BUDGET[name], left))
    print(f"== {name} (budget {budget} s)", flush=True)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    ctx = Ctx(device, dry, budget, tmp / name)
    ctx.tmp.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"budget_s": budget}
    try:
        rec["result"] = FUNCS[name](ctx)
        rec["status"] = "ok"
    except OutOfTime as e:
        rec.update(status="timeout", error=str(e))
    except Exception as e:
        rec.update(status="failed", error=f"{type(e).__name__}: {e}"[:4000], traceback=traceback.format_exc()[-4000:])
    rec["wall_s"] = time.perf_counter() - ctx.t0
    if cuda:
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        rec["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        rec["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        rec["peak_memory_bytes"] = peak_rss_bytes()
        rec["peak_memory_kind"] = "peak RSS of this process (CPU dry run; subprocesses not counted)"
    js["items"][name] = rec
    print(f"== {name}: {rec['status']} in {rec['wall_s']:.1f} s, peak {fmt_bytes(rec['peak_memory_bytes'])}"
          + (f": {rec['error'][:300]}" if "error" in rec else ""), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="every item at toy sizes on the CPU (gloo, no real compile)")
    p.add_argument("--only", nargs="+", choices=ITEMS, default=None, help="run only these items")
    p.add_argument("--device", default="cuda", help="the CUDA device (default cuda)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run to run it on the CPU",
              file=sys.stderr)
        return 2
    device = torch.device("cpu") if a.dry_run else torch.device(a.device)
    if a.dry_run:
        torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, key = peak_flops(name) if device.type == "cuda" else (None, None)
    js = {"dry_run": a.dry_run, "device": str(device), "device_name": name, "peak_bf16_flop_s": peak,
          "peak_table_key": key, "peak_table": dict(PEAK_BF16), "budgets_s": BUDGET, "total_budget_s": TOTAL_BUDGET, "machine": machine_info(),
          "dry_run_differences": ("toy sizes; torch.compile(backend='eager') instead of inductor; gloo instead of NCCL; "
                                  "--device cpu; peak memory is peak RSS") if a.dry_run else None,
          "items": {}}
    if device.type == "cuda":
        js["cuda"] = {"capability": list(torch.cuda.get_device_capability(device)), "torch_cuda": torch.version.cuda,
                      "total_memory_bytes": torch.cuda.get_device_properties(device).total_memory,
                      "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None}
    print(f"gpu_check: {name}{' (dry run)' if a.dry_run else ''}; peak bf16 "
          f"{'-' if peak is None else format(peak / 1e12, '.1f') + ' TFLOP/s'}; writing {out}", flush=True)
    t0 = time.perf_counter()
    save(js, out)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for item in ITEMS:
            if a.only and item not in a.only:
                continue
            run_item(item, js, device, a.dry_run, Path(tmp), TOTAL_BUDGET - (time.perf_counter() - t0))
            js["wall_s"] = time.perf_counter() - t0
            save(js, out)
    bad = [k for k, v in js["items"].items() if v["status"] != "ok"]
    print(f"gpu_check: {len(js['items']) - len(bad)}/{len(js['items'])} items ok in {js['wall_s']:.0f} s"
          + (f"; not ok: {', '.join(bad)}" if bad else "") + f"; wrote {out / 'gpu_check.json'} and gpu_check.md", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
