"""The fixed validation set of a task run (`VAL_SEED`, sizes spread over the training range) and the check of a
task run's `[data]` before anything is written (`task_for_run`)."""

from __future__ import annotations

import torch

from .base import Task
from .evaluate import size_rng
from .loading import load_task

VAL_SEED = 777  # the validation examples of task runs: the same for every run, seed and model
VAL_SIZES = 8  # at most this many sizes, evenly spaced over [task_min_size, task_size], in the validation set


def val_sizes(lo: int, hi: int, k: int = VAL_SIZES) -> list[int]:
    """At most k sizes evenly spaced over [lo, hi], both ends included."""
    if hi - lo + 1 <= k:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (k - 1)) for i in range(k)})


def task_for_run(data_cfg) -> tuple[Task, int, int]:
    """(task, smallest, largest training size) of a task run's `[data]`, with the first examples of the validation
    set generated and checked at each of its sizes (every size when there are at most `VAL_SIZES`): TaskError (one
    line) for an unknown task, a bad size, malformed examples or an example() that raises."""
    task = load_task(data_cfg.task_ref)
    lo, hi = data_cfg.task_sizes(task)
    for size in val_sizes(lo, hi):
        rng = size_rng(VAL_SEED, size)
        for _ in range(2):
            task.checked_example(rng, size)
    return task, lo, hi


def validation_set(task: Task, lo: int, hi: int, per_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The fixed validation batches of a task run: `per_size` examples at each of `val_sizes(lo, hi)`."""
    return [task.batch(size_rng(VAL_SEED, s), s, per_size) for s in val_sizes(lo, hi)]
