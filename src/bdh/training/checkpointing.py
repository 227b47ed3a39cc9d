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
the model with the best periodic validation loss. `read_checkpoint` checks every file (a damaged or hand-edited one
is a CheckpointError naming it); resuming a run directory falls back past a damaged newest checkpoint
(`resume_candidates`).
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

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, check_tensors, save_tensors
from ..interface import load_config
from ..io import atomic_dir, atomic_write_json

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


def resume_candidates(spec: str | os.PathLike) -> list[Path]:
    """[the checkpoint directory `spec`], or the complete checkpoints of the run directory `spec` (`OUT` or
    `OUT/checkpoints`), newest first: the ones to fall back on when the newest is damaged."""
    p = Path(spec)
    if (p / TRAINER_FILE).is_file():
        return [p]
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return found[::-1]
    raise ValueError(f"--resume: no complete checkpoint under {str(p)!r} (expected {p}/checkpoints/step-*/)")


def find_checkpoint(spec: str | os.PathLike) -> Path:
    """A checkpoint directory, or the latest checkpoint of a run directory (`OUT` or `OUT/checkpoints`)."""
    return resume_candidates(spec)[0]


# ----------------------------------------------------------------------------------------------- writing
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_tensors(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()})


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
    """The inverse of `optimizer_state`; ValueError when a state tensor does not fit its parameter."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: tensors[f"state.{pid}.{k}"] if v == "<tensor>" else v for k, v in entry.items()}
        for k, v in state[int(pid)].items():
            if torch.is_tensor(v) and v.dim() and tuple(v.shape) != tuple(params[int(pid)].shape):
                raise ValueError(f"optimizer tensor state.{pid}.{k} has shape {tuple(v.shape)}, its parameter "
                                 f"{tuple(params[int(pid)].shape)}")
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


def _rng_states(meta: dict) -> tuple[tuple, tuple]:
    """The Python and NumPy RNG states in `meta` (rank<r>.json), checked by loading them into fresh generators."""
    v, state, gauss = meta["python"]
    py = (v, tuple(state), gauss)
    random.Random().setstate(py)
    k, s, pos, g, c = meta["numpy"]
    npst = (k, np.asarray(s, dtype=np.uint32), pos, g, c)
    np.random.RandomState().set_state(npst)
    return py, npst


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    py, npst = _rng_states(meta)
    random.setstate(py)
    np.random.set_state(npst)
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
    with atomic_dir(Path(root) / "best") as best:  # weights and best.json replaced together
        model.save_pretrained(best, tokenizer=tokenizer)
        _write_json(best / "best.json", {"step": step, **val})


# ----------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: Path, rank: int = 0) -> dict:
    """Everything in checkpoint `path` that process `rank` needs (tensors loaded on CPU); a CheckpointError naming
    the file that is missing, truncated, hand-edited out of shape or does not fit the checkpoint's config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)

    def read(name: str, load):
        try:
            return load(path / name)
        except (OSError, ValueError, SafetensorError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path / name}: unreadable or incomplete checkpoint file ({msg})") from None

    meta = read(TRAINER_FILE, lambda p: json.loads(p.read_text(encoding="utf-8")))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path / TRAINER_FILE}: not a {FORMAT} v{VERSION} checkpoint")
    if not (path / f"rank{rank}.safetensors").is_file():
        raise CheckpointError(
            f"{path}: no state for process {rank} (the checkpoint was written by {meta.get('world_size')} "
            "process(es); resume with the same number)"
        )
    rc = meta.get("run_config")
    if (not isinstance(meta.get("step"), int) or not isinstance(meta.get("optimizer"), dict)
            or not isinstance(rc, dict) or not all(isinstance(rc.get(k), dict) for k in ("data", "train"))):
        raise CheckpointError(f"{path / TRAINER_FILE}: expected an integer step, optimizer state and run_config")
    saved = {
        "meta": meta,
        "rank_meta": read(f"rank{rank}.json", lambda p: json.loads(p.read_text(encoding="utf-8"))),
        "rank_tensors": read(f"rank{rank}.safetensors", lambda p: load_file(str(p))),
        "optimizer_tensors": read(OPTIMIZER_FILE, lambda p: load_file(str(p))),
        "model_tensors": read(WEIGHTS_NAME, lambda p: load_file(str(p))),
    }
    checks = ((f"rank{rank}.json", lambda: _rng_states(saved["rank_meta"])),
              (f"rank{rank}.safetensors", lambda: torch.Generator().set_state(saved["rank_tensors"]["rng.torch"])))
    for name, check in checks:
        try:  # hand-edited files: a clear error naming the file, not a traceback on restore
            check()
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{path / name}: not a valid RNG state ({type(e).__name__}: {msg})") from None
    try:
        config = load_config(path / CONFIG_NAME)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: invalid config: {e}") from None
    check_tensors(saved["model_tensors"], config, str(path / WEIGHTS_NAME))  # names and shapes
    return saved
