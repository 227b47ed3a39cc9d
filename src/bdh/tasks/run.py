"""Task runs through the ordinary trainer: `data.corpus = "task:REF"` (see `bdh.training.config.DataConfig`).

    from bdh.tasks import task_run_config
    from bdh.training import train
    run = task_run_config("parity", model_type="gpt", steps=300, seed=1)   # task-tiny.toml, GPT-sized fields
    result = train(run, "runs/parity-gpt", progress=False)

The tokenizer is the task's vocabulary (`WordTokenizer(task.vocab)`, saved with the model); the training sampler
is `bdh.training.batching.TaskSampler` (targets -100 outside the answers); validation is a fixed set of examples
(`VAL_SEED`, independent of the run's seeds) at sizes min..task_size, reporting masked loss and exact-match accuracy.
"""

from __future__ import annotations

import torch

from .base import Task
from .loading import task_for_run  # noqa: F401  (re-exported)
from .evaluate import score_batch, size_rng

VAL_SEED = 777  # the validation examples of task runs: the same for every run, seed and model
VAL_SIZES = 8  # at most this many sizes, evenly spaced over [task_min_size, task_size], in the validation set

# `task_run_config(model_type="gpt")`: a GPT of about the size of task-tiny's BDH (ALiBi positions extrapolate)
GPT_TINY = {"model_type": "gpt", "n_layer": 3, "n_embd": 64, "n_head": 4, "dropout": 0.0, "positions": "alibi"}


def val_sizes(lo: int, hi: int, k: int = VAL_SIZES) -> list[int]:
    """At most k sizes evenly spaced over [lo, hi], both ends included."""
    if hi - lo + 1 <= k:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (k - 1)) for i in range(k)})


def validation_set(task: Task, lo: int, hi: int, per_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The fixed validation batches of a task run: `per_size` examples at each of `val_sizes(lo, hi)`."""
    return [task.batch(size_rng(VAL_SEED, s), s, per_size) for s in val_sizes(lo, hi)]


def evaluate_validation(model, batches, *, batch_size: int = 64, form: str = "auto", autocast=None) -> dict:
    """{"loss": masked nats per answer, "accuracy": exact match, "tokens": answer positions, "examples": n}."""
    import contextlib

    correct = nll = 0.0
    answers = n = 0
    for x, y, m in batches:
        c, l, a, k, _ = score_batch(model, x, y, m, batch_size=batch_size, form=form,
                                    autocast=autocast or contextlib.nullcontext)
        correct, nll, answers, n = correct + c, nll + l, answers + a, n + k
    from ..training.evaluation import check_finite_loss

    loss = nll / max(answers, 1)
    check_finite_loss(loss)
    return {"loss": loss, "accuracy": correct / max(n, 1), "tokens": answers, "examples": n}


def task_run_config(task_ref: str, *, model_type: str = "bdh", model: dict | None = None, steps: int | None = None,
                    seed: int = 0, overrides=(), config: str | None = None):
    """The RunConfig of a task run: `config` (default the shipped `task-tiny`) with data.corpus = "task:REF";
    model_type "gpt" replaces task-tiny's BDH fields by `GPT_TINY`; `model` (fields) overrides the model section;
    `steps` sets train.steps; `seed` sets train.seed and train.data_seed; `overrides` are `section.key=value`
    strings applied last. Validated (ValueError / TaskError naming the value)."""
    import json

    from ..training.config import TASK_PREFIX, _set, apply_override, load_run_config

    run = load_run_config(config or "task-tiny", [f"data.corpus={json.dumps(TASK_PREFIX + task_ref)}"]
                          if isinstance(task_ref, str) and task_ref else [])
    if model_type is not None and model_type != run.model_type:
        run.model = dict(GPT_TINY) if model_type == "gpt" else {"model_type": model_type}
    for k, v in (model or {}).items():
        _set(run, "model", k, v, "model")
    run.data.corpus = TASK_PREFIX + str(task_ref)
    if steps is not None:
        run.train.steps = steps
    run.train.seed = run.train.data_seed = seed
    for item in overrides:
        apply_override(run, item)
    run.validate()
    return run
