"""Checks and pieces of resuming and fine-tuning: the model config against a checkpoint's or a saved model's,
the checkpoint's data settings against the run's, the carried TBPTT states as tensors, and the choice of the
checkpoint to resume from (falling back past damaged ones; all processes agreeing)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..interface import load_config
from . import checkpointing as ckpt


def config_diff(saved, model_cfg, where: str) -> list[str]:
    """'key=<saved value> <where>, <run value> now' for every model config field that differs (bdh_version aside)."""
    a, b = saved.to_dict(), model_cfg.to_dict()
    return [f"{k}={a.get(k)!r} {where}, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k != "bdh_version" and a.get(k) != b.get(k)]


def init_from_config(path: str, model_cfg=None):
    """`train.init_from`: the model config saved in `path`; when `model_cfg` is given, checked equal to it.
    Raises ValueError for a directory without a saved model, or naming the fields that differ."""
    cfg_file = Path(path, "config.json")
    if not cfg_file.is_file():
        raise ValueError(f"train.init_from = {path!r}: expected a model directory with config.json and "
                         "model.safetensors (save_pretrained or a finished run's OUT)")
    saved = load_config(cfg_file)
    if model_cfg is not None and (diff := config_diff(saved, model_cfg, "saved")):
        raise ValueError(f"train.init_from = {path!r}: the saved model is another config: " + "; ".join(diff))
    return saved


def states_to_tensors(model, states: list) -> dict[str, torch.Tensor]:
    """The carried TBPTT states of this process (one per micro-step, None where empty) as named tensors
    `stream.<m>.*` (`model.state_to_tensors`)."""
    out = {}
    for m, st in enumerate(states):
        if st is not None:
            out.update(model.state_to_tensors(st, f"stream.{m}."))
    return out


def states_from_tensors(model, tensors: dict[str, torch.Tensor], n: int, device) -> list:
    """The inverse of `states_to_tensors`: n states (None for a stream without tensors)."""
    states = []
    for m in range(n):
        prefix = f"stream.{m}."
        mine = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        states.append(model.state_from_tensors(mine, prefix, device=device) if mine else None)
    return states


def check_resume(run, saved: dict, model_cfg, path: Path) -> None:
    """CheckpointError unless checkpoint `path` (trainer meta `saved`) is of `model_cfg` and the run's data settings."""
    saved_cfg = load_config(path / "config.json")
    if type(saved_cfg) is not type(model_cfg):
        raise CheckpointError(f"--resume {path}: the checkpoint holds a {type(saved_cfg).__name__} model, "
                              f"the config a {type(model_cfg).__name__}")
    diff = config_diff(saved_cfg, model_cfg, "in the checkpoint")
    if diff:
        raise CheckpointError(f"--resume {path}: the checkpoint is for another model config: " + "; ".join(diff))
    sd = saved["run_config"]["data"]
    older = {"task_size": 0, "task_min_size": 0, "task_curriculum": "uniform", "task_curriculum_steps": 0}  # absent
    for key in ("corpus", "tokenizer", "block_size", "batching", *older):  # from checkpoints older than the key
        if sd.get(key, older.get(key)) != getattr(run.data, key):
            raise CheckpointError(
                f"--resume {path}: data.{key} = {sd.get(key)!r} in the checkpoint, {getattr(run.data, key)!r} now"
            )


def read_resume_checkpoint(spec, dist, device, echo) -> tuple[Path, dict]:
    """(path, contents) of the checkpoint to resume from: `spec` itself, or the newest readable checkpoint of the
    run directory `spec`, falling back past damaged ones (saying so with `echo`). Processes agree on one."""
    candidates, error, read_at, saved = ckpt.resume_candidates(spec), None, None, None
    i, agreed = 0, None
    while True:
        while i < len(candidates) and read_at != i:  # the first checkpoint from i on that this process reads
            try:
                saved, read_at = ckpt.read_checkpoint(candidates[i], dist.rank), i
            except CheckpointError as e:
                error, i = e, i + 1
                if i < len(candidates):
                    echo(f"warning: checkpoint {candidates[i - 1]} is damaged ({str(e).splitlines()[0]}); "
                         f"falling back to the previous one, {candidates[i]}")
        if dist.world == 1:
            prev, agreed = i, i
        else:  # one all_reduce per round on every process: the oldest checkpoint any process needs
            t = torch.tensor([i], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            prev, agreed = agreed, int(t)
        if agreed == len(candidates):
            raise error or CheckpointError(f"--resume {spec}: no checkpoint that every process can read")
        if prev == agreed:
            return candidates[agreed], saved
        i = agreed
