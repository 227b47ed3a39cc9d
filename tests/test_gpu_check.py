"""benchmarks/gpu_check.py: the GPU session's one script. Its --dry-run runs every item at toy sizes on the CPU
(gloo, torch.compile's eager backend) so the script cannot rot while no GPU is at hand; without CUDA and without
--dry-run it refuses in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def test_dry_run_runs_every_item(tmp_path):
    out = tmp_path / "gc"
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    js = json.loads((out / "gpu_check.json").read_text())
    assert js["dry_run"] is True and js["dry_run_differences"]
    assert list(js["items"]) == list(gpu_check.ITEMS)
    for name, r in js["items"].items():
        assert r["status"] == "ok", (name, r.get("error"), r.get("traceback"))
        assert r["wall_s"] >= 0 and r["budget_s"] > 0 and r["peak_memory_bytes"] > 0
        assert f"== {name}: ok" in p.stdout
    it = {k: v["result"] for k, v in js["items"].items()}
    assert {(c["damping"], c["dtype"]) for c in it["exactness"]["cases"]} == {
        (d, t) for d in (None, "alibi") for t in ("fp64", "fp32")}
    for c in it["exactness"]["cases"]:
        assert set(c["logits_rel_err"]) == {"parallel", "chunked", "recurrent"} and set(c["grad_rel_err"]) == {"parallel", "chunked"}
    assert it["exactness"]["tolerances"] == gpu_check.TOL
    assert not it["bf16_policy"]["nan"] and it["bf16_policy"]["rel_loss_gap"] <= gpu_check.BF16_MAX_REL_LOSS_GAP
    runs = it["train_throughput"]["runs"]
    assert set(runs) == {"bdh_eager", "bdh_compiled", "gpt_eager", "gpt_compiled"}
    assert all(r["tok_s"] > 0 and r["training_flops_per_token"] > 0 and "mfu" in r for r in runs.values())
    rows = it["decode"]["rows"]
    assert {(r["model"], r["mode"], r["batch"], r["ctx"]) for r in rows} == {
        (m, mode, b, c) for m, mode in (("bdh", "dense"), ("bdh", "sparse"), ("gpt", "kv_cache"))
        for b in (1, 4) for c in (16, 64)}
    assert all(r["tok_s"] > 0 for r in rows)
    tr = it["torchrun_train_resume"]
    assert tr["backend"] == "gloo" and tr["all_reduce"]["ok"] and tr["continues"] and tr["resumed_message"]
    assert it["serve"]["usage"]["completion_tokens"] == it["serve"]["max_tokens"]
    md = (out / "gpu_check.md").read_text()
    for heading in ("| item | status |", "## Exactness", "## bf16 autocast", "## Training throughput", "## Decode",
                    "## torchrun", "## bdh serve"):
        assert heading in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_refuses_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "x")], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "no CUDA device" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "gpu_check.json").exists()


def test_peak_table_matches_device_names():
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == (989.4e12, "H100")
    assert gpu_check.peak_flops("NVIDIA H100 PCIe")[1] == "H100 PCIe"
    assert gpu_check.peak_flops("NVIDIA H200")[1] == "H200"
    assert gpu_check.peak_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert gpu_check.peak_flops("NVIDIA L4")[1] == "L4" and gpu_check.peak_flops("NVIDIA L40S")[1] == "L40S"
    assert gpu_check.peak_flops("Some Future GPU") == (None, None)
