"""Reasoning-over-time tasks (spec §6c): exact, seeded generators with a size knob, scored by exact match.

    from bdh.tasks import get_task
    task = get_task("parity")                       # a built-in, or "path/to/file.py:NAME", or "module:NAME"
    x, y, mask = task.batch(random.Random(0), size=16, n=32)   # (n, T) inputs, targets, answer mask

Built-in tasks (`TASKS`, every example starting with `<bos>`): streaming parity, multi-query associative recall
(Zoology's format), copy and reverse (teacher-forced; `copy-blank` / `reverse-blank`: answers at blanks, index
counting), multi-hop variable tracking, elementary cellular automaton rollout, multi-digit addition with carries,
4x4 and 9x9 Sudoku (`bdh.tasks.builtin`); selective copying, induction heads, Dyck-k, passkey retrieval and S5
state tracking (`bdh.tasks.standard`).
The task API (`Task`, `Example`) is in `bdh.tasks.base`, with the bounds on sizes, examples, batches and
vocabularies (`MAX_SIZE`, `MAX_EXAMPLE_TOKENS`, `MAX_BATCH_TOKENS`, `MAX_VOCAB`); `MAX_PASSES` bounds layer passes.

Training and evaluation: a run with `data.corpus = "task:REF"` trains on a task through `bdh.training.train`
(`task_run_config(REF, model_type=..., steps=..., seed=...)` builds one from the shipped `task-tiny` config);
`evaluate_task(model, task, sizes, n_layer=None)` scores exact match, masked loss and state bytes per size, at the
model's depth, at k layer passes (`n_layer=k`) or at passes growing with the size (`n_layer=scaled_passes(k, train_size)`).
"""

from __future__ import annotations

from .base import (MAX_BATCH_TOKENS, MAX_EXAMPLE_TOKENS, MAX_SIZE, MAX_VOCAB, PAD, TASKS, Example, Task, TaskError,
                   check_task, exact_match, masked_loss, register_task)
from .evaluate import MAX_PASSES, evaluate_task, scaled_passes, with_layers
from .loading import load_task
from .run import task_run_config
from .source import TaskSource  # registers the data source of data.corpus = "task:REF"

get_task = load_task

__all__ = ["MAX_BATCH_TOKENS", "MAX_EXAMPLE_TOKENS", "MAX_PASSES", "MAX_SIZE", "MAX_VOCAB", "PAD", "TASKS", "Example",
           "Task", "TaskError", "TaskSource", "check_task", "evaluate_task", "exact_match", "get_task", "load_task",
           "masked_loss", "register_task", "scaled_passes", "task_run_config", "with_layers"]
