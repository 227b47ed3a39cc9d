"""Training checkpoints: everything needed to continue a run exactly, without pickle.

`OUT/checkpoints/step-00000500/` holds

| file                      | content                                                                   |
|---------------------------|---------------------------------------------------------------------------|
| `config.json`, `model.safetensors`, tokenizer files | the model (`bdh.load_model` loads the directory) |
| `optimizer.safetensors`   | AdamW state tensors `state.<param>.<name>`                                 |
| `rank<r>.safetensors`     | torch (and CUDA) RNG state and carried TBPTT attention states of process r |
| `rank<r>.json`            | Python and NumPy RNG states of process r                                   |
| `trainer.json`            | step, optimizer param groups, scheduler, sampler, run config (written last) |

Every file is written with `bdh.io.atomic_path` into a hidden staging directory that is renamed into place once
complete, so a kill or a full disk never damages an existing checkpoint and a checkpoint directory without
`trainer.json` is never used. Only the last `keep_last` step checkpoints are kept; `checkpoints/best/` holds
the model with the best periodic validation loss.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..io import atomic_path, atomic_write_json

FORMAT = "bdh-train-checkpoint"
VERSION = 1
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete step checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(spec: str | os.PathLike) -> Path:
    """A checkpoint directory, or the latest checkpoint of a run directory (`OUT` or `OUT/checkpoints`)."""
    p = Path(spec)
    if (p / TRAINER_FILE).is_file():
        return p
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise ValueError(f"--resume: no complete checkpoint under {str(p)!r} (expected {p}/checkpoints/step-*/)")


# ----------------------------------------------------------------------------------------------- writing
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """The optimizer state_dict split into JSON and tensors."""
    sd = optimizer.state_dict()
    tensors, state = {}, {}
    for pid, entry in sd["state"].items():
        state[str(pid)] = {}
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v
                state[str(pid)][k] = "<tensor>"
            else:
                state[str(pid)][k] = v
    return {"param_groups": sd["param_groups"], "state": state}, tensors


def load_optimizer_state(optimizer: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: tensors[f"state.{pid}.{k}"] if v == "<tensor>" else v for k, v in entry.items()}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's Python, NumPy, torch and CUDA RNG states (JSON part, tensor part)."""
    py = random.getstate()
    npk, npstate, nppos, npg, npc = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy": [npk, npstate.tolist(), nppos, npg, npc]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    k, s, pos, g, c = meta["numpy"]
    np.random.set_state((k, np.asarray(s, dtype=np.uint32), pos, g, c))
    torch.set_rng_state(tensors["rng.torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.split(".")[-1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    trainer_meta: dict,
    rank_tensors: dict[str, torch.Tensor],
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` under `root` (all processes call this; process 0 writes the shared files)."""
    final = step_dir(root, step)
    staging = Path(root) / f".staging-{final.name}"
    if rank == 0:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    barrier()
    try:
        meta, tensors = rng_state()
        _write_tensors(staging / f"rank{rank}.safetensors", {**tensors, **rank_tensors})
        _write_json(staging / f"rank{rank}.json", meta)
        barrier()
        if rank == 0:
            model.save_pretrained(staging, tokenizer=tokenizer)
            opt_meta, opt_tensors = optimizer_state(optimizer)
            _write_tensors(staging / OPTIMIZER_FILE, opt_tensors)
            _write_json(
                staging / TRAINER_FILE,
                {"format": FORMAT, "version": VERSION, "step": step, "world_size": world, "optimizer": opt_meta,
                 **trainer_meta},
            )
            old = None
            if final.exists():
                old = final.with_name(f".old-{final.name}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(staging, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            for stale in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(stale, ignore_errors=True)
    except OSError as e:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        done = list_checkpoints(root)
        last = f"the last complete checkpoint {done[-1]} is intact" if done else "no earlier checkpoint exists"
        raise OSError(e.errno, f"could not write checkpoint {final} ({e.strerror or e}); {last}") from e
    barrier()
    return final


def save_best(root: Path, step: int, val: dict, model, tokenizer) -> None:
    """Write the best-by-validation model into `root/best` (config, weights, tokenizer, best.json)."""
    best = Path(root) / "best"
    model.save_pretrained(best, tokenizer=tokenizer)
    _write_json(best / "best.json", {"step": step, **val})


# ----------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: Path, rank: int = 0) -> dict:
    """Everything in checkpoint `path` that process `rank` needs (tensors loaded on CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise CheckpointError(f"{path}: not a {FORMAT} v{VERSION} checkpoint")
        rank_file = path / f"rank{rank}.safetensors"
        if not rank_file.is_file():
            raise CheckpointError(
                f"{path}: no state for process {rank} (the checkpoint was written by {meta.get('world_size')} "
                "process(es); resume with the same number)"
            )
        return {
            "meta": meta,
            "rank_meta": json.loads((path / f"rank{rank}.json").read_text(encoding="utf-8")),
            "rank_tensors": load_file(str(rank_file)),
            "optimizer_tensors": load_file(str(path / OPTIMIZER_FILE)),
            "model_tensors": load_file(str(path / "model.safetensors")),
        }
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: unreadable or incomplete checkpoint ({e})") from e
