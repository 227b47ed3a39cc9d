"""DistributedDataParallel on CPU (gloo): 2 processes keep identical parameters, log the losses of a
one-process run with the same global batch, and resume exactly from their checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bdh.training import load_run_config, train

OVERRIDES = ["train.steps=6", "train.batch_size=4", "train.eval_every=3", "train.sample_tokens=0",
             "train.checkpoint_every=3", "train.threads=1"]
# runs trained by 2 processes and by 1: both batchings, and Muon
VARIANTS = {"random": ["data.batching=random"], "tbptt": ["data.batching=tbptt"],
            "muon": ["data.batching=tbptt", "train.optimizer=muon"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    from safetensors.torch import save_file

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")  # one group for both runs (train() then leaves it open)
    try:
        for variant, extra in VARIANTS.items():
            result = train(load_run_config("tiny", OVERRIDES + extra), f"{tmp}/{variant}/ddp", progress=False,
                           echo=lambda s: None)
            state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
            save_file(state, f"{tmp}/{variant}/rank{rank}.safetensors")
            with open(f"{tmp}/{variant}/rank{rank}.json", "w") as f:
                json.dump(result.summary, f)
        run = load_run_config("tiny", OVERRIDES + VARIANTS["tbptt"])
        # exact resume with 2 processes: continue the TBPTT run from its step-3 checkpoint (per-process states)
        if rank == 0:
            shutil.copytree(f"{tmp}/tbptt/ddp/checkpoints/step-00000003", f"{tmp}/resumed/checkpoints/step-00000003")
        torch.distributed.barrier()
        train(run, f"{tmp}/resumed", resume="latest", progress=False, echo=lambda s: None)
    finally:
        torch.distributed.destroy_process_group()


def _train_losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r.get("split") == "train"}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Every variant trained by 2 spawned gloo processes on 127.0.0.1 (one launch)."""
    tmp = tmp_path_factory.mktemp("ddp")
    for v in VARIANTS:
        (tmp / v).mkdir()
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, start_method="spawn", join=True)
    return tmp


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_gloo_processes_match_one_process(ddp_runs, tmp_path, variant):
    from safetensors.torch import load_file

    overrides = OVERRIDES + VARIANTS[variant]
    results = ddp_runs / variant
    r0, r1 = load_file(str(results / "rank0.safetensors")), load_file(str(results / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"parameter {k} differs between the processes"
    s0, s1 = (json.loads((results / f"rank{r}.json").read_text()) for r in range(2))
    assert s0["val_loss"] == s1["val_loss"]  # validation is sharded and all-reduced

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(load_run_config("tiny", overrides), tmp_path / "single", progress=False, echo=lambda s: None)
    finally:
        torch.set_num_threads(n)
    ld, ls = _train_losses(results / "ddp"), _train_losses(tmp_path / "single")
    assert sorted(ld) == sorted(ls) == list(range(1, 7))
    for s in ls:
        assert ld[s] == pytest.approx(ls[s], abs=1e-5)
    assert s0["val_loss"] == pytest.approx(single.summary["val_loss"], abs=1e-5)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0[k], v, atol=1e-5, rtol=1e-4)
    ck = results / "ddp" / "checkpoints" / "step-00000006"
    assert json.loads((ck / "trainer.json").read_text())["world_size"] == 2
    assert (ck / "rank0.safetensors").is_file() and (ck / "rank1.safetensors").is_file()


def test_bdh_train_spawns_local_processes(tmp_path, capfd):
    """train.processes = 2: `bdh train` launches the DDP processes itself; errors in them are one-line errors."""
    from bdh.cli import main

    out = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--out", str(out), "--no-progress", "--set", "train.processes=2",
            "--set", "train.threads=1", "--set", "train.steps=4", "--set", "train.sample_tokens=0"]
    assert main(argv) == 0
    printed = capfd.readouterr()
    assert printed.out.count("val loss") == 1 and "x 2 processes" in printed.err
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    short = tmp_path / "short.txt"
    short.write_text("too short\n")
    assert main(argv[:4] + [str(tmp_path / "other"), "--data", str(short)] + argv[5:]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bdh train: error:") and "block_size" in err[-1]


def test_two_processes_resume_exactly(ddp_runs):
    full, resumed = _train_losses(ddp_runs / "tbptt" / "ddp"), _train_losses(ddp_runs / "resumed")
    assert sorted(resumed) == [4, 5, 6]  # the resumed run logs only the steps after its checkpoint
    assert all(resumed[s] == full[s] for s in resumed)


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc_per_node=2 -m bdh.cli train` end to end (a second launcher: slower, so marked slow)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bdh.cli",
           "train", "--config", "tiny", "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.steps=4"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "x 2 processes" in p.stderr and "val loss" in p.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc; zombies excluded)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killing_bdh_train_stops_its_processes(tmp_path, sig):
    """`kill` (or kill -9) of the launching `bdh train` ends the training processes it spawned: none trains on.

    Started as a shell starts a background job (`bdh train ... &`, nohup): SIGINT ignored, which disarms the
    SIGINT that torch.multiprocessing asks the kernel to send the workers when their parent dies."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bdh", "train", "--config", "tiny", "--out", str(out), "--no-progress",
           "--set", "train.processes=2", "--set", "train.threads=1", "--set", "train.steps=100000",
           "--set", "train.log_every=1", "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count('"train"') >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 2  # the two training processes (and multiprocessing's resource tracker)
        proc.send_signal(getattr(signal, sig))
        proc.wait(10)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "training processes outlived the killed bdh train"
    finally:
        if proc.poll() is None:
            workers += _children(proc.pid)
            proc.kill()
        for w in workers:  # never leave an orphan behind, whatever failed
            if _alive(w):
                os.kill(w, signal.SIGKILL)
