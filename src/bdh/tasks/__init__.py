"""Reasoning-over-time tasks (spec §6c): exact, seeded generators with a size knob, scored by exact match.

    from bdh.tasks import get_task
    task = get_task("parity")                       # a built-in, or "path/to/file.py:NAME", or "module:NAME"
    x, y, mask = task.batch(random.Random(0), size=16, n=32)   # (n, T) inputs, targets, answer mask

Built-in tasks (`TASKS`): streaming parity, multi-query associative recall, copy, reverse, multi-hop variable
tracking, elementary cellular automaton rollout, multi-digit addition with carries, 4x4 and 9x9 Sudoku.
The task API (`Task`, `Example`) is in `bdh.tasks.base`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .base import PAD, TASKS, Example, Task, TaskError, exact_match, masked_loss, register_task

def _as_task(obj, ref: str) -> Task:
    if isinstance(obj, type) and issubclass(obj, Task):
        try:
            obj = obj()
        except TypeError as e:  # a constructor with required arguments: name it in one line
            raise TaskError(f"--task {ref!r}: {obj.__name__}() cannot be built without arguments ({e}); "
                            f"expected defaults for every constructor argument, or a Task instance") from None
    if not isinstance(obj, Task):
        raise TaskError(f"--task {ref!r}: names a {type(obj).__name__}, expected a bdh.tasks.Task subclass or instance")
    return obj


def load_task(ref: str) -> Task:
    """A task by reference: a built-in name, `path/to/file.py:NAME` or `package.module:NAME`."""
    from . import builtin  # noqa: F401  (registers the built-in tasks)

    if not isinstance(ref, str) or not ref:
        raise TaskError(f"task {ref!r}: expected a task name ({', '.join(TASKS)}), FILE.py:NAME or module:NAME")
    if ref in TASKS:
        return TASKS[ref]()
    if ":" not in ref:
        raise TaskError(f"unknown task {ref!r}: expected one of {', '.join(TASKS)}, or FILE.py:NAME / module:NAME")
    where, _, name = ref.rpartition(":")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise TaskError(f"--task {ref!r}: file {str(path)!r} does not exist")
        mod_name = f"bdh_user_task_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 (a user's file: report its error in one line)
            sys.modules.pop(mod_name, None)
            raise TaskError(f"--task {ref!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise TaskError(f"--task {ref!r}: cannot import module {where!r} ({e})") from None
    if not hasattr(module, name):
        raise TaskError(f"--task {ref!r}: {where!r} has no attribute {name!r}")
    return _as_task(getattr(module, name), ref)


get_task = load_task

__all__ = ["PAD", "TASKS", "Example", "Task", "TaskError", "exact_match", "get_task", "load_task", "masked_loss",
           "register_task"]
