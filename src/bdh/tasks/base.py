"""The task API: a task is a seeded generator of (inputs, targets, mask) examples over a small vocabulary.

    class Parity(Task):
        name = "parity"
        vocab = ("<pad>", "0", "1")           # id 0 is padding in every task (never an answer)
        size_name, train_size = "length", 16  # the size knob; train on sizes <= train_size

        def example(self, rng, size):
            bits = [rng.randrange(2) for _ in range(size)]
            parity = list(itertools.accumulate(bits, operator.xor))
            return Example(inputs=[1 + b for b in bits], targets=[1 + p for p in parity], mask=[True] * size)

An `Example` has `inputs` (what the model reads), `targets` (what it must predict at each position) and `mask`
(the answer positions: the loss and the score use these only). For next-token tasks targets are the inputs
shifted by one (`Example.next_token(seq, answer)`). An example is solved when the greedy prediction is right at
every answer position (exact match). Examples are checked where they enter (`Task.checked_example`): wrong
lengths, ids outside the vocabulary or a mask with no answer position raise `TaskError` naming the task, the
size and what is wrong.

A user task is a `Task` subclass (or instance) in any file or module, run by reference:
`bdh tasks train --task path/to/file.py:NAME` or `--task package.module:NAME` (`load_task`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar, Sequence

import torch

PAD = 0  # id 0 of every task vocabulary: padding, never an answer


class TaskError(ValueError):
    """A task or task request that cannot be served: unknown name, impossible size, malformed examples."""


@dataclasses.dataclass(frozen=True)
class Example:
    inputs: list[int]  # (T,) token ids the model reads
    targets: list[int]  # (T,) the id to predict at each position (ignored where mask is False)
    mask: list[bool]  # (T,) answer positions

    @classmethod
    def next_token(cls, seq: Sequence[int], answer: Sequence[bool]) -> "Example":
        """Next-token form of a sequence: predict seq[t + 1] at position t, scored where answer[t + 1]."""
        return cls(list(seq[:-1]), list(seq[1:]), [bool(a) for a in answer[1:]])


class Task:
    """Base class of tasks. Subclasses set `name`, `vocab` (token strings; vocab[0] is padding), `size_name`,
    `train_size`, optionally `min_size` / `max_size`, and implement `example(rng, size)`."""

    name: ClassVar[str] = "task"
    vocab: ClassVar[tuple[str, ...]] = ("<pad>",)
    size_name: ClassVar[str] = "size"
    train_size: ClassVar[int] = 8
    min_size: ClassVar[int] = 1
    max_size: ClassVar[int | None] = None  # None: no bound beyond memory

    def example(self, rng: random.Random, size: int) -> Example:
        raise NotImplementedError

    # ------------------------------------------------------------------ derived
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """Token strings -> ids (TaskError for a token outside the vocabulary)."""
        table = self._table()
        try:
            return [table[t] for t in tokens]
        except KeyError as e:
            raise TaskError(f"task {self.name!r}: token {e.args[0]!r} is not in its vocabulary {list(self.vocab)}") from None

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def _table(self) -> dict[str, int]:
        t = self.__dict__.get("_vocab_table")
        if t is None:
            t = self.__dict__["_vocab_table"] = {s: i for i, s in enumerate(self.vocab)}
        return t

    def check_size(self, size: int) -> int:
        """`size` if this task can generate it, else TaskError naming the knob and the allowed range."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TaskError(f"task {self.name!r}: {self.size_name}={size!r}: expected an integer")
        hi = "" if self.max_size is None else f" and <= {self.max_size}"
        if size < self.min_size or (self.max_size is not None and size > self.max_size):
            raise TaskError(f"task {self.name!r}: {self.size_name}={size}: expected >= {self.min_size}{hi}")
        return size

    def checked_example(self, rng: random.Random, size: int) -> Example:
        """`example(rng, size)`, validated: a size the task can generate (`check_size`), equal lengths, ids in the
        vocabulary, at least one answer position."""
        self.check_size(size)
        ex = self.example(rng, size)
        where = f"task {self.name!r} ({self.size_name}={size})"
        if not isinstance(ex, Example):
            raise TaskError(f"{where}: example() returned {type(ex).__name__}, expected a bdh.tasks.Example")
        n = len(ex.inputs)
        if n == 0 or len(ex.targets) != n or len(ex.mask) != n:
            raise TaskError(f"{where}: inputs, targets and mask have lengths {n}, {len(ex.targets)}, "
                            f"{len(ex.mask)}: expected equal, non-zero lengths")
        V = self.vocab_size
        for what, seq in (("inputs", ex.inputs), ("targets", ex.targets)):
            bad = [i for i in seq if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < V]
            if bad:
                raise TaskError(f"{where}: {what} contain id {bad[0]!r}, outside the vocabulary [0, {V})")
        if not any(ex.mask):
            raise TaskError(f"{where}: the mask has no answer position: expected at least one True")
        if any(t == PAD for t, m in zip(ex.targets, ex.mask) if m):
            raise TaskError(f"{where}: an answer target is the padding id {PAD}: expected a real token")
        return ex

    def batch(self, rng: random.Random, size: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n examples of `size`, right-padded: inputs (n, T) int64, targets (n, T) int64, mask (n, T) bool."""
        self.check_size(size)
        exs = [self.checked_example(rng, size) for _ in range(n)]
        T = max(len(e.inputs) for e in exs)
        x = torch.full((n, T), PAD, dtype=torch.long)
        y = torch.full((n, T), PAD, dtype=torch.long)
        m = torch.zeros((n, T), dtype=torch.bool)
        for i, e in enumerate(exs):
            k = len(e.inputs)
            x[i, :k] = torch.tensor(e.inputs)
            y[i, :k] = torch.tensor(e.targets)
            m[i, :k] = torch.tensor(e.mask)
        return x, y, m

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab={self.vocab_size}, {self.size_name}<={self.train_size})"


TASKS: dict[str, type["Task"]] = {}  # name -> class: the built-ins (bdh.tasks.builtin) and any registered


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a Task subclass available by its `name` (built-ins, or a user's own)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task: expected a bdh.tasks.Task subclass, got {cls!r}")
    TASKS[cls.name] = cls
    return cls


def exact_match(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per example: 1.0 when the argmax is right at every answer position. logits (B, T, V) -> (B,)."""
    wrong = (logits.argmax(-1) != targets) & mask  # (B, T)
    return (~wrong.any(-1)).float()


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer positions. logits (B, T, V), targets (B, T), mask (B, T) bool."""
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    m = mask.flatten().to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1)
