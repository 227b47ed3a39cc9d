"""Task runs through the ordinary trainer: `data.corpus = "task:REF"` (see `bdh.training.config.DataConfig`).

    from bdh.tasks import task_run_config
    from bdh.training import train
    run = task_run_config("parity", model_type="gpt", steps=300, seed=1)   # task-tiny.toml, GPT-sized fields
    result = train(run, "runs/parity-gpt", progress=False)

The tokenizer is the task's vocabulary (`WordTokenizer(task.vocab)`, saved with the model); the training sampler
is `bdh.training.batching.TaskSampler` (targets -100 outside the answers); validation is a fixed set of examples
(`VAL_SEED`, independent of the run's seeds) at sizes min..task_size, reporting masked loss and exact-match accuracy.
"""

from __future__ import annotations

from .evaluate import score_batch
from .validation import VAL_SEED, VAL_SIZES, task_for_run, val_sizes, validation_set  # noqa: F401  (re-exported)


def evaluate_validation(model, batches, *, batch_size: int = 64, form: str = "auto", autocast=None) -> dict:
    """{"loss": masked nats per answer, "accuracy": exact match, "tokens": answer positions, "examples": n}."""
    import contextlib

    correct = nll = 0.0
    answers = n = 0
    for x, y, m in batches:
        c, l, a, k, _ = score_batch(model, x, y, m, batch_size=batch_size, form=form,
                                    autocast=autocast or contextlib.nullcontext)
        correct, nll, answers, n = correct + c, nll + l, answers + a, n + k
    from ..training.evaluation import check_finite_loss

    loss = nll / max(answers, 1)
    check_finite_loss(loss)
    return {"loss": loss, "accuracy": correct / max(n, 1), "tokens": answers, "examples": n}


def task_run_config(task_ref: str, *, model_type: str = "bdh", model: dict | None = None, steps: int | None = None,
                    seed: int = 0, overrides=(), config: str | None = None):
    """The RunConfig of a task run: `config` (default the shipped `task-tiny`) with data.corpus = "task:REF";
    another `model_type` replaces the config's model fields by that type's declared `tiny_task_model`
    (`bdh.interface.tiny_task_model`; e.g. a GPT of about task-tiny's BDH size); `model` (fields) overrides the model section;
    `steps` sets train.steps; `seed` sets train.seed and train.data_seed; `overrides` are `section.key=value`
    strings applied last. Validated (ValueError / TaskError naming the value)."""
    import json

    from ..interface import tiny_task_model
    from ..training.config import TASK_PREFIX, _set, apply_override, load_run_config

    run = load_run_config(config or "task-tiny", [f"data.corpus={json.dumps(TASK_PREFIX + task_ref)}"]
                          if isinstance(task_ref, str) and task_ref else [])
    if model_type is not None and model_type != run.model_type:
        run.model = tiny_task_model(model_type)  # ValueError naming the registered types
    for k, v in (model or {}).items():
        _set(run, "model", k, v, "model")
    run.data.corpus = TASK_PREFIX + str(task_ref)
    if steps is not None:
        run.train.steps = steps
    run.train.seed = run.train.data_seed = seed
    for item in overrides:
        apply_override(run, item)
    run.validate()
    return run
