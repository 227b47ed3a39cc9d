"""Loading a task by reference (`load_task`) and checking a task run's `[data]` (`task_for_run`)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
from pathlib import Path

from .base import TASKS, Task, TaskError


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



def task_for_run(data_cfg) -> tuple[Task, int, int]:
    """(task, smallest, largest training size) of a task run's `[data]`, with a few examples generated and checked
    at both sizes: TaskError (one line) for an unknown task, a bad size or malformed examples."""
    task = load_task(data_cfg.task_ref)
    lo, hi = data_cfg.task_sizes(task)
    for size in sorted({lo, hi}):
        rng = random.Random(0)
        for _ in range(2):
            try:
                task.checked_example(rng, size)
            except TaskError:
                raise
            except Exception as e:  # noqa: BLE001 (a user's example(): its error in one line)
                msg = str(e).splitlines()[0] if str(e) else ""
                raise TaskError(f"task {task.name!r} ({task.size_name}={size}): example() failed: "
                                f"{type(e).__name__}: {msg}") from None
    return task, lo, hi
