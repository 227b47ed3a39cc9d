"""Minibatches from a flat token array: random crops (the reference train.py) or TBPTT streams (paper B.1);
or, for a task run (data.corpus = "task:REF"), freshly generated task examples (`TaskSampler`).

Both samplers draw the *global* batch (`batch_size` rows per micro-step, all processes together) and hand
each process its slice of rows, so a run on P processes sees exactly the rows of a one-process run with the
same global batch. Their state is small and saved in checkpoints: the generator state of `RandomCrops`, the
chunk index of `Streams` (the carried attention states live in the trainer).
"""

from __future__ import annotations

import random

import numpy as np
import torch

IGNORE_INDEX = -100  # targets at non-answer and padding positions (PyTorch's and Hugging Face's ignore_index)


def windows(tokens: np.ndarray, starts, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and next-token targets y, (len(starts), T) int64, from windows tokens[s : s + T + 1]."""
    w = np.stack([np.asarray(tokens[s : s + T + 1], dtype=np.int64) for s in starts])
    w = torch.from_numpy(w)
    return w[:, :-1], w[:, 1:]


def _rank_rows(batch_size: int, rank: int, world: int) -> slice:
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the number of processes ({world})")
    b = batch_size // world
    return slice(rank * b, (rank + 1) * b)


class RandomCrops:
    """Each micro-step: `batch_size` windows of T+1 tokens at uniformly random offsets (seeded)."""

    kind = "random"

    def __init__(self, tokens: np.ndarray, T: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if len(tokens) < T + 1:
            raise ValueError(
                f"the training split has {len(tokens)} tokens, fewer than data.block_size + 1 = {T + 1}; "
                "use a longer corpus or a smaller data.block_size"
            )
        self.tokens, self.T, self.batch_size = tokens, T, batch_size
        self.rows = _rank_rows(batch_size, rank, world)
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, micro: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(x, y, reset) for this process; `reset` is always True (no state is carried)."""
        starts = torch.randint(len(self.tokens) - self.T, (self.batch_size,), generator=self.generator)
        x, y = windows(self.tokens, starts[self.rows].tolist(), self.T)
        return x, y, True

    def end_step(self) -> None:
        pass

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return {"kind": self.kind}, {"generator": self.generator.get_state()}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        _check_kind(self.kind, meta)
        self.generator.set_state(tensors["generator"])


class Streams:
    """TBPTT: `batch_size * grad_accum` contiguous streams, read T tokens at a time.

    Stream j starts at j * L (L = (len - 1) // streams); micro-step m of a step reads streams
    m * batch_size ... (m + 1) * batch_size - 1, so consecutive optimizer steps continue the same streams and
    the trainer carries each micro-step's attention state to the next step. After the last full chunk every
    stream wraps to its start and `reset` is True (the state starts empty again). The layout is fixed (it
    does not use `data_seed`).
    """

    kind = "tbptt"

    def __init__(self, tokens: np.ndarray, T: int, batch_size: int, grad_accum: int, rank: int = 0, world: int = 1):
        self.tokens, self.T, self.batch_size = tokens, T, batch_size
        self.n_streams = batch_size * grad_accum
        self.stream_len = (len(tokens) - 1) // self.n_streams
        self.chunks = self.stream_len // T
        if self.chunks < 1:
            raise ValueError(
                f"the training split has {len(tokens)} tokens: too short for {self.n_streams} TBPTT streams of at "
                f"least data.block_size = {T} tokens (needs {self.n_streams * T + 1}); use a longer corpus, a smaller "
                "block_size or fewer streams (train.batch_size * train.grad_accum)"
            )
        self.rows = _rank_rows(batch_size, rank, world)
        self.chunk = 0  # index of the chunk the next step reads
        self.epoch = 0

    def next(self, micro: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(x, y, reset) for micro-step `micro` of the current step, this process's rows."""
        first = micro * self.batch_size
        streams = range(first + self.rows.start, first + self.rows.stop)
        starts = [j * self.stream_len + self.chunk * self.T for j in streams]
        x, y = windows(self.tokens, starts, self.T)
        return x, y, self.chunk == 0

    def end_step(self) -> None:
        self.chunk += 1
        if self.chunk == self.chunks:
            self.chunk, self.epoch = 0, self.epoch + 1

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return {"kind": self.kind, "chunk": self.chunk, "epoch": self.epoch, "n_streams": self.n_streams}, {}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        _check_kind(self.kind, meta)
        if meta["n_streams"] != self.n_streams:
            raise ValueError(
                f"checkpoint has {meta['n_streams']} TBPTT streams, this run has {self.n_streams} "
                "(train.batch_size * train.grad_accum must not change on resume)"
            )
        self.chunk, self.epoch = int(meta["chunk"]), int(meta["epoch"])


def seeded_rng(*key) -> random.Random:
    """A `random.Random` that is a function of `key` alone (ints and strings; str seeding hashes with SHA-512, the
    same in every process and Python run): draws that depend on (seed, step, micro-step), not on history."""
    return random.Random(":".join(map(str, key)))


class TaskSampler:
    """Task runs (made by `bdh.tasks.source.TaskSource`; `task`: anything with `batch(rng, size, n)`, and
    `mixed_batch(rng, sizes)` for curriculum "mixed"): `batch_size` examples per micro-step (right-padded) from a
    `random.Random(seed)`; targets are the task's targets with IGNORE_INDEX (-100) at every non-answer and padding
    position, so the models' own cross-entropy is the masked loss. Every process draws the global batch and takes
    its rows. `step_tokens`: the global batch's tokens (padded) in the last step.

    The sizes (`curriculum`, data.task_curriculum): "uniform" draws one size per micro-step uniformly in [min_size,
    max_size] from the same generator as the examples; "grow" draws one size per micro-step uniformly in
    [min_size, `largest(step)`], the largest growing linearly from min_size at step 0 to max_size at step
    `grow_steps` - 1; "mixed" draws each example's size uniformly in [min_size, max_size]. The sizes of "grow" and
    "mixed" are a function of (seed, step, micro-step) (`sizes`), the examples come from the generator; both are in
    checkpoints (its state and the step), so resume is exact.
    """

    kind = "task"

    def __init__(self, task, min_size: int, max_size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 *, curriculum: str = "uniform", grow_steps: int = 1):
        self.task, self.min_size, self.max_size, self.batch_size = task, min_size, max_size, batch_size
        self.curriculum, self.grow_steps, self.seed = curriculum, grow_steps, seed
        self.rows = _rank_rows(batch_size, rank, world)
        self.rng = random.Random(seed)
        self.step = 0  # optimizer steps drawn so far
        self.step_tokens = self._tokens = 0

    def largest(self, step: int) -> int:
        """The largest size at optimizer step `step` (0-based): max_size, or for "grow" min_size + (max_size -
        min_size) * step / (grow_steps - 1), rounded half up, until max_size."""
        lo, hi, n = self.min_size, self.max_size, self.grow_steps
        if self.curriculum != "grow" or n <= 1 or step >= n - 1:
            return hi
        return lo + ((hi - lo) * step * 2 + n - 1) // (2 * (n - 1))

    def sizes(self, step: int, micro: int) -> list[int]:
        """The example sizes of micro-step `micro` of step `step` ("grow" and "mixed"; the global batch's rows)."""
        rng = seeded_rng("task_curriculum", self.seed, step, micro)
        hi = self.largest(step)
        if self.curriculum == "mixed":
            return [rng.randint(self.min_size, hi) for _ in range(self.batch_size)]
        return [rng.randint(self.min_size, hi)] * self.batch_size

    def next(self, micro: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(x, y, reset) for this process; `reset` is always True (examples are independent)."""
        if self.curriculum == "uniform":
            size = self.rng.randint(self.min_size, self.max_size)
            x, y, mask = self.task.batch(self.rng, size, self.batch_size)
        elif self.curriculum == "grow":
            x, y, mask = self.task.batch(self.rng, self.sizes(self.step, micro)[0], self.batch_size)
        else:
            x, y, mask = self.task.mixed_batch(self.rng, self.sizes(self.step, micro))
        self._tokens += x.numel()
        y = y.masked_fill(~mask, IGNORE_INDEX)
        return x[self.rows], y[self.rows], True

    def end_step(self) -> None:
        self.step_tokens, self._tokens = self._tokens, 0
        self.step += 1

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        version, internal, gauss = self.rng.getstate()
        return {"kind": self.kind, "rng": [version, list(internal), gauss], "step": self.step}, {}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        _check_kind(self.kind, meta)
        version, internal, gauss = meta["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.step = int(meta.get("step", 0))  # checkpoints before data.task_curriculum: "uniform", step unused


def _check_kind(kind: str, meta: dict) -> None:
    if meta.get("kind") != kind:
        raise ValueError(f"checkpoint was written with data.batching = {meta.get('kind')!r}, this run uses {kind!r}")


def make_sampler(tokens: np.ndarray, data_cfg, train_cfg, rank: int = 0, world: int = 1):
    """The sampler of a corpus run, by data.batching (a task run's `TaskSampler` is made by `bdh.tasks.source`)."""
    T, B = data_cfg.block_size, train_cfg.batch_size
    if data_cfg.batching == "tbptt":
        return Streams(tokens, T, B, train_cfg.grad_accum, rank, world)
    return RandomCrops(tokens, T, B, train_cfg.data_seed, rank, world)
