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
(the answer positions: the loss and the score use these only). The built-ins start every example with the start
token `BOS` (`<bos>`, id `BOS_ID` = 1 of their vocabularies). For next-token tasks targets are the inputs
shifted by one (`Example.next_token(seq, answer)`). An example is solved when the greedy prediction is right at
every answer position (exact match). Examples are checked where they enter (`Task.checked_example`): wrong
lengths, ids outside the vocabulary, a mask with no answer position, or an `example()` that raises give one
`TaskError` line naming the task, the size and what is wrong. A task's declared attributes are checked when it is
loaded (`check_task`).

Bounds, checked before anything is allocated (TaskError naming the value and the bound):

* `MAX_EXAMPLE_TOKENS` = 65,536 tokens per example (the built-ins' longest: `passkey` at its max_size, 16,384);
* `MAX_SIZE` = 65,536: the largest size of every task, also of one that declares no `max_size` (each unit of size
  adds at least one token in the built-ins, so a larger size cannot fit `MAX_EXAMPLE_TOKENS`);
* `MAX_BATCH_TOKENS` = 2**25 (33.5M) tokens in one batch, n x the longest example (about 1.4 GB while it is
  built; the GPU comparison's largest evaluation batch is 6.8M);
* `MAX_VOCAB` = 65,536 tokens (above GPT-2's 50,257; the built-ins use at most 144): the embedding and output
  head grow with it, and the logits of one batch too (64 examples of 128 tokens: 2 GiB in fp32 at this bound).

A user task is a `Task` subclass (or instance) in any file or module, run by reference:
`bdh tasks train --task path/to/file.py:NAME` or `--task package.module:NAME` (`load_task`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar, Sequence

import torch

PAD = 0  # id 0 of every task vocabulary: padding, never an answer
BOS = "<bos>"  # the start token: the first input of every built-in task's examples (spec §6d, standard formats)
BOS_ID = 1  # its id in every built-in vocabulary (a user task may have none, or put it anywhere)
MAX_EXAMPLE_TOKENS = 2**16  # tokens of one example
MAX_SIZE = MAX_EXAMPLE_TOKENS  # the largest size of any task (a declared max_size above it is capped)
MAX_BATCH_TOKENS = 2**25  # examples x the longest example's tokens in one `Task.batch`
MAX_VOCAB = 2**16  # tokens of a task's vocabulary


class TaskError(ValueError):
    """A task or task request that cannot be served: unknown name, impossible size, malformed examples."""


def user_error(where: str, call: str, e: Exception) -> TaskError:
    """The TaskError of user task code that raised `e`: one line (the first of its message)."""
    msg = str(e).splitlines()[0] if str(e) else ""
    return TaskError(f"{where}: {call} raised {type(e).__name__}" + (f": {msg}" if msg else ""))


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
    max_size: ClassVar[int | None] = None  # None: no bound but MAX_SIZE

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

    @property
    def largest_size(self) -> int:
        """The largest size this task generates: `max_size`, at most `MAX_SIZE` (also when it declares none)."""
        return MAX_SIZE if self.max_size is None else min(self.max_size, MAX_SIZE)

    def check_size(self, size: int) -> int:
        """`size` if this task can generate it, else TaskError naming the knob and the allowed range."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TaskError(f"task {self.name!r}: {self.size_name}={size!r}: expected an integer")
        hi = self.largest_size
        if not self.min_size <= size <= hi:
            why = " (bdh.tasks.MAX_SIZE, the bound of every task)" if hi == MAX_SIZE != self.max_size else ""
            raise TaskError(f"task {self.name!r}: {self.size_name}={size}: expected >= {self.min_size} and "
                            f"<= {hi}{why}")
        return size

    def checked_example(self, rng: random.Random, size: int) -> Example:
        """`example(rng, size)`, validated: a size the task can generate (`check_size`), no error from example()
        (TaskError naming it), equal lengths of at most `MAX_EXAMPLE_TOKENS`, ids in the vocabulary, at least one
        answer position."""
        self.check_size(size)
        where = f"task {self.name!r} ({self.size_name}={size})"
        try:
            ex = self.example(rng, size)
        except Exception as e:  # noqa: BLE001 (a user's example(): its error in one line)
            raise user_error(where, "example()", e) from None
        if not isinstance(ex, Example):
            raise TaskError(f"{where}: example() returned {type(ex).__name__}, expected a bdh.tasks.Example")
        n = len(ex.inputs)
        if n == 0 or len(ex.targets) != n or len(ex.mask) != n:
            raise TaskError(f"{where}: inputs, targets and mask have lengths {n}, {len(ex.targets)}, "
                            f"{len(ex.mask)}: expected equal, non-zero lengths")
        if n > MAX_EXAMPLE_TOKENS:
            raise TaskError(f"{where}: an example of {n} tokens: expected at most {MAX_EXAMPLE_TOKENS} "
                            "(bdh.tasks.MAX_EXAMPLE_TOKENS)")
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
        """n examples of `size`, right-padded: inputs (n, T) int64, targets (n, T) int64, mask (n, T) bool.
        TaskError as soon as n x the longest example so far exceeds `MAX_BATCH_TOKENS`."""
        self.check_size(size)
        return self._padded(rng, [size] * n, f"{self.size_name}={size}")

    def mixed_batch(self, rng: random.Random, sizes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One example of each of `sizes` (in order, from `rng`), right-padded to the longest, as `batch`: a batch
        that mixes sizes (data.task_curriculum = "mixed")."""
        sizes = list(sizes)
        if not sizes:
            raise TaskError(f"task {self.name!r}: mixed_batch with no sizes: expected at least one {self.size_name}")
        for s in dict.fromkeys(sizes):
            self.check_size(s)
        return self._padded(rng, sizes, f"{self.size_name}={min(sizes)}..{max(sizes)}")

    def _padded(self, rng: random.Random, sizes: list[int], what: str):
        """Examples of `sizes` drawn in order, right-padded (PAD, mask False); `what` names them in errors."""
        n, exs, T = len(sizes), [], 0
        for size in sizes:
            exs.append(self.checked_example(rng, size))
            T = max(T, len(exs[-1].inputs))
            if n * T > MAX_BATCH_TOKENS:
                raise TaskError(f"task {self.name!r} ({what}): {n} examples of {T} tokens "
                                f"({n * T} tokens): expected at most {MAX_BATCH_TOKENS} in one batch "
                                f"(bdh.tasks.MAX_BATCH_TOKENS); fewer examples or a smaller {self.size_name}")
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


def check_task(task: Task) -> Task:
    """`task`, its declared attributes checked (name, vocab of 2 to `MAX_VOCAB` strings, size_name, min_size,
    max_size, train_size): TaskError naming the attribute, its value and what was expected, or the error that
    reading one raised."""
    label = type(task).__name__
    values = {}
    for attr in ("name", "vocab", "size_name", "min_size", "max_size", "train_size"):
        try:
            values[attr] = getattr(task, attr)
        except Exception as e:  # noqa: BLE001 (a user's property: its error in one line)
            raise user_error(f"task {label}", f"reading {attr}", e) from None
    for attr in ("name", "size_name"):
        if not isinstance(values[attr], str) or not values[attr]:
            raise TaskError(f"task {label}: {attr}={values[attr]!r}: expected a non-empty string")
    where, vocab = f"task {values['name']!r}", values["vocab"]
    if not isinstance(vocab, (tuple, list)):
        raise TaskError(f"{where}: vocab={vocab!r:.80}: expected a tuple or list of token strings")
    if not 2 <= len(vocab) <= MAX_VOCAB:
        raise TaskError(f"{where}: a vocabulary of {len(vocab)} tokens: expected 2 to {MAX_VOCAB} (padding and at "
                        "least one answer token; bdh.tasks.MAX_VOCAB)")
    bad = next((i for i, t in enumerate(vocab) if not isinstance(t, str)), None)
    if bad is not None:
        raise TaskError(f"{where}: vocab[{bad}]={vocab[bad]!r}: expected a string")
    lo, hi = values["min_size"], values["max_size"]
    if isinstance(lo, bool) or not isinstance(lo, int) or lo < 0:
        raise TaskError(f"{where}: min_size={lo!r}: expected a non-negative integer")
    if hi is not None and (isinstance(hi, bool) or not isinstance(hi, int) or hi < lo):
        raise TaskError(f"{where}: max_size={hi!r}: expected None or an integer >= min_size {lo}")
    try:
        task.check_size(values["train_size"])
    except TaskError as e:
        raise TaskError(f"{e} (its train_size)") from None
    return task


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
