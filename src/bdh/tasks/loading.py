"""Loading a task by reference (`load_task`, the task checked: `check_task`)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from .base import TASKS, Task, TaskError, check_task, user_error


def _as_task(obj, ref: str) -> Task:
    if isinstance(obj, type) and issubclass(obj, Task):
        try:
            obj = obj()
        except TypeError as e:  # a constructor with required arguments: name it in one line
            raise TaskError(f"--task {ref!r}: {obj.__name__}() cannot be built without arguments ({e}); "
                            f"expected defaults for every constructor argument, or a Task instance") from None
        except Exception as e:  # noqa: BLE001 (a user's constructor: its error in one line)
            raise user_error(f"--task {ref!r}", f"{obj.__name__}()", e) from None
    if not isinstance(obj, Task):
        raise TaskError(f"--task {ref!r}: names a {type(obj).__name__}, expected a bdh.tasks.Task subclass or instance")
    return check_task(obj)


def with_train_size(task: Task, size: int, ref: str | None = None) -> Task:
    """A copy of `task` trained at `size` (its `train_size`; the length multiples of an evaluation are of it) and
    named NAME@SIZE; TaskError naming `ref` where the task cannot generate that size."""
    try:
        task.check_size(size)
    except TaskError as e:
        raise TaskError(f"--task {ref or task.name!r}: {e} (the training size after '@')") from None
    out = copy.copy(task)
    out.train_size = size
    out.name = f"{task.name}@{size}"
    return check_task(out)


def load_task(ref: str) -> Task:
    """A task by reference: a built-in name, `path/to/file.py:NAME` or `package.module:NAME`; checked
    (`check_task`). A file is imported without writing bytecode beside it. `REF@SIZE` is the task of REF trained
    at SIZE instead of its `train_size` (`with_train_size`: e.g. `s5@4`, S5 trained on up to 4 permutations)."""
    from . import builtin, standard  # noqa: F401  (register the built-in tasks and those from the literature)

    if not isinstance(ref, str) or not ref:
        raise TaskError(f"task {ref!r}: expected a task name ({', '.join(TASKS)}), FILE.py:NAME or module:NAME")
    sized = re.fullmatch(r"(.+)@([^@:/\\]*)", ref)
    if sized:
        if not re.fullmatch(r"[1-9][0-9]*", sized.group(2)):
            raise TaskError(f"--task {ref!r}: expected a positive integer training size after '@', e.g. s5@4")
        return with_train_size(load_task(sized.group(1)), int(sized.group(2)), ref)
    if ref in TASKS:
        return check_task(TASKS[ref]())
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
        no_pyc, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 (a user's file: report its error in one line)
            sys.modules.pop(mod_name, None)
            raise user_error(f"--task {ref!r}", f"importing {str(path)!r}", e) from None
        finally:
            sys.dont_write_bytecode = no_pyc
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise TaskError(f"--task {ref!r}: cannot import module {where!r} ({e})") from None
    if not hasattr(module, name):
        raise TaskError(f"--task {ref!r}: {where!r} has no attribute {name!r}")
    return _as_task(getattr(module, name), ref)

