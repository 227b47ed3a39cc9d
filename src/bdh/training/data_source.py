"""What a run trains on: the data-source interface the trainer talks to (the registry of kinds: `.sources`).

A `DataSource` is the run's training batch stream with its resumable state (as torchdata's `StatefulDataLoader`),
its validation and metrics, and the few words the trainer prints about it (as LitGPT's `DataModule`: the trainer
knows nothing of what it trains on). Two kinds ship:

    CorpusSource   (bdh.training.corpus)   a text corpus as tokens: random crops or TBPTT streams, nats and bits/byte
    TaskSource     (bdh.tasks.source)      data.corpus = "task:REF": generated task examples, masked loss, accuracy

The kind of a run is chosen by the prefix of `data.corpus` (`bdh.training.sources.register_data_source`); a
corpus without a registered prefix is a `CorpusSource`. `bdh.tasks` registers "task:" when it is imported, and
`import bdh` imports it (as it imports `bdh.baselines.gpt` to register the "gpt" model type), so training never
imports the tasks (tests/test_imports.py holds it to that).

The life of a source in `Trainer`:

    cls.check(run)                      at RunConfig.validate: what can be checked before anything is written
    src = cls(run); src.setup(...)      the tokenizer (`src.tokenizer`) and the data, resumed runs checked first
    src.start(rank, world)              the batch stream of this process (after the model is built and seeded)
    src.next(micro) / src.end_step()    (x, y, reset) per micro-step; the end of an optimizer step
    src.state_dict() / load_state_dict  the stream's position: (JSON meta, tensors) in every checkpoint
    src.evaluate(model, ...)            a dict with "loss" (lower is better) and "tokens"; `eval_text` words it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch


class DataSource:
    """The interface (subclass it). `tokenizer`, `sha256` and the attributes below are set by `setup`."""

    samples_text: ClassVar[bool] = True  # a text sample from train.sample_prompt means something for this data
    carries_state: bool = False  # micro-step m of a step continues micro-step m of the last: the model's state carries
    tokenizer: Any = None
    sha256: dict  # {split: SHA-256 of its source}, recorded in checkpoints and checked on resume ({}: none)

    def __init__(self, run) -> None:
        self.run, self.sha256, self.stream = run, {}, None

    @classmethod
    def check(cls, run) -> None:
        """Raise ValueError naming the bad value for data this run cannot use (called by `RunConfig.validate`)."""

    def setup(self, out: Path, dist, *, resume: Path | None = None, saved_meta: dict | None = None) -> None:
        """Set `self.tokenizer` and prepare the data. `resume`: the checkpoint resumed from, `saved_meta` its trainer
        meta (the data must be the data the run started with). May write under `out` (the run directory)."""
        raise NotImplementedError

    def start(self, rank: int, world: int) -> None:
        """Build this process's batch stream (`self.stream`: next, end_step, state_dict, load_state_dict)."""
        raise NotImplementedError

    # the batch stream, with its state for exact resume
    def next(self, micro: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(x, y, reset) of micro-step `micro`, this process's rows; reset: start the carried state afresh."""
        return self.stream.next(micro)

    def end_step(self) -> None:
        self.stream.end_step()

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able meta, this process's tensors) of the stream's position."""
        return self.stream.state_dict()

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.stream.load_state_dict(meta, tensors)

    def tokens_per_step(self) -> int:
        """Tokens of the global batch in the last optimizer step (before the first: the expected number)."""
        raise NotImplementedError

    # validation and what is said about it
    def evaluate(self, model, max_tokens: int, *, autocast, rank: int = 0, world: int = 1) -> dict:
        """Validation metrics: "loss" (lower is better, decides checkpoints/best) and "tokens", and more."""
        raise NotImplementedError

    def eval_text(self, res: dict, *, final: bool = False) -> str:
        """The metrics of `evaluate` in words, for the periodic line and (`final`) the final one."""
        raise NotImplementedError

    def describe(self) -> str:
        """The data part of the run's opening line."""
        raise NotImplementedError

    def summary(self, final: dict) -> dict:
        """Fields of summary.json after the common ones (val_loss, val_bpb, val_tokens, val_bytes, ...)."""
        return {}
