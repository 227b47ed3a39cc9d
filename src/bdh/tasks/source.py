"""The task source: `data.corpus = "task:REF"` as a `bdh.training.data_source.DataSource`, registered under "task:"
when `bdh.tasks` is imported (`import bdh` does).

The tokenizer is the task's vocabulary (`WordTokenizer(task.vocab)`); the batch stream is
`bdh.training.batching.TaskSampler` (fresh examples, targets -100 outside the answers, its `random.Random` state in
checkpoints); validation is the fixed set of `bdh.tasks.validation` (masked loss per answer, exact-match accuracy).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import CheckpointError
from ..training.batching import TaskSampler
from ..training.config import TASK_PREFIX
from ..training.data_source import DataSource
from ..training.sources import register_data_source
from .run import evaluate_validation
from .validation import task_for_run, validation_set


class TaskSource(DataSource):
    """A task run's data (`DataSource`): `task` (a `bdh.tasks.Task`), `sizes` (smallest, largest training size)."""

    samples_text = False  # task vocabularies are not text: no sample from train.sample_prompt

    @classmethod
    def check(cls, run) -> None:
        """The task loads, its sizes exist, its examples are well-formed (TaskError, one line)."""
        task_for_run(run.data)

    def setup(self, out: Path, dist, *, resume: Path | None = None, saved_meta: dict | None = None) -> None:
        """The task (checked), its vocabulary as the tokenizer, the fixed validation set; then OUT is made."""
        from ..tokenization import WordTokenizer, load_tokenizer

        self.task, lo, hi = task_for_run(self.run.data)  # before anything is written
        self.tokenizer = WordTokenizer(self.task.vocab)
        if resume is not None:
            saved = getattr(load_tokenizer(resume), "vocab", None)
            if saved is not None and list(saved) != list(self.task.vocab):
                raise CheckpointError(f"--resume {resume}: task {self.task.name!r} has another vocabulary now "
                                      f"({len(self.task.vocab)} tokens) than when the run started ({len(saved)})")
        self.val_batches = validation_set(self.task, lo, hi, self.run.train.eval_batch_size)  # user code: first
        self.sizes = (lo, hi)
        out.mkdir(parents=True, exist_ok=True)

    def start(self, rank: int, world: int) -> None:
        (lo, hi), t, d = self.sizes, self.run.train, self.run.data
        self.stream = TaskSampler(self.task, lo, hi, t.batch_size, t.data_seed, rank, world,
                                  curriculum=d.task_curriculum, grow_steps=d.task_curriculum_steps or t.steps)

    def tokens_per_step(self) -> int:
        """The last step's padded tokens; before the first, the batch at the largest validation size."""
        t = self.run.train
        return self.stream.step_tokens or t.batch_size * t.grad_accum * int(self.val_batches[-1][0].shape[1])

    def evaluate(self, model, max_tokens: int, *, autocast, rank: int = 0, world: int = 1) -> dict:
        """{"loss": masked nats per answer, "accuracy", "tokens", "examples"} on the whole validation set."""
        t = self.run.train
        return evaluate_validation(model, self.val_batches, batch_size=t.eval_batch_size, form=t.form,
                                   autocast=autocast)

    def eval_text(self, res: dict, *, final: bool = False) -> str:
        return f"loss {res['loss']:.4f} nats/answer, accuracy {res['accuracy']:.3f} ({res['examples']} examples)"

    def describe(self) -> str:
        (lo, hi), t, d, task = self.sizes, self.run.train, self.run.data, self.task
        how = {"uniform": "", "mixed": " (mixed in each batch)",
               "grow": f" (the largest growing over {d.task_curriculum_steps or t.steps} steps)"}[d.task_curriculum]
        return (f"task {task.name!r}: {task.size_name} {lo}..{hi}{how}, {task.vocab_size} tokens | "
                f"{t.steps} steps x {t.batch_size * t.grad_accum} examples")

    def summary(self, final: dict) -> dict:
        return {"val_accuracy": final["accuracy"], "task": self.task.name, "task_sizes": list(self.sizes)}


register_data_source(TASK_PREFIX, TaskSource)
