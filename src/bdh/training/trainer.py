"""The training loop, for any registered model type and any data source: AdamW or Muon, warmup + decay, grad
clipping and accumulation, periodic evaluation and samples, metrics, checkpoints with exact resume, DDP.

    from bdh.training import load_run_config, train
    result = train(load_run_config("tiny"), "runs/tiny")      # result.model, result.summary

`train` = `Trainer(run, out).run()`: `setup` (processes, data, model, optimizer, resume), then `loop` over
`train_step` (forward / backward / accumulate / clip / step) with `maybe_log`, `maybe_eval`, `maybe_sample` and
`maybe_checkpoint`, then `finish` (final evaluation and model). The model is used only through
`bdh.interface.LanguageModel`: its carried TBPTT states go into checkpoints as `model.state_to_tensors`. The data
is used only through `bdh.training.data_source.DataSource` (the batch stream and its state, validation, the words
about it): a text corpus (`bdh.training.corpus`) or a registered kind such as the tasks' "task:REF".

Run directory `OUT`:

    OUT/run.json, run.toml            resolved config (+ world size, versions); --config OUT/run.toml repeats it
    OUT/metrics.jsonl, metrics.csv    one record per log / eval / sample (TensorBoard in OUT/tb if installed)
    OUT/checkpoints/step-*/, best/    see `checkpointing`
    OUT/config.json, model.safetensors, tokenizer files, summary.json    the final model (bdh.load_model)

Multi-process: launch with `torchrun --nproc_per_node=P -m bdh.cli train ...`; each process reads
`RANK`/`WORLD_SIZE`/`LOCAL_RANK`, gradients are averaged by DistributedDataParallel (gloo on CPU, NCCL on
CUDA), `train.batch_size` is the global batch and every process takes its slice of the same rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..allocator import keep_freed_memory
from ..attention import cpu_bf16_supported
from .._version import __version__
from ..checkpoint import CheckpointError, check_output_dir
from ..interface import build_model, load_config
from ..io import atomic_write_json, atomic_write_text
from . import checkpointing as ckpt
from .config import RunConfig
from .processes import Dist, die_with_parent, pick_device
from .resume import (check_resume, init_from_config, read_resume_checkpoint, states_from_tensors,
                     states_to_tensors)
from .runfiles import Metrics, fmt_time, peak_rss_mib
from .schedule import make_scheduler
from .sources import data_source_kind
from .step import LossModule, draw_layer_passes, layer_passes, make_optimizer

__all__ = ["EMULATED_BF16_ENV", "LossModule", "Metrics", "Trainer", "TrainingDiverged", "TrainResult", "launch",
           "make_optimizer", "train"]  # LossModule, Metrics, make_optimizer: re-exported from their modules


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    model: nn.Module  # any registered model type (bdh.interface.LanguageModel)
    tokenizer: Any
    summary: dict


EMULATED_BF16_ENV = "BDH_ALLOW_EMULATED_BF16"  # "1": train.precision = "bf16" on a CPU without native bf16


# ----------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run: `Trainer(run, out).run()` sets up (processes, data, model, optimizer, resume), loops
    over `train_step` with `maybe_log` / `maybe_eval` / `maybe_sample` / `maybe_checkpoint`, then `finish`es.
    The data (`self.data`, a `bdh.training.data_source.DataSource`) gives batches, its state, validation and words.

    The host waits for the device only at log, eval, sample and checkpoint steps: losses and gradient norms stay
    tensors in between, and a NaN/Inf is reported there, naming the first step it appeared at
    (`check_finite`). A checkpoint is written only after that check, so the last checkpoint is always good.
    """

    def __init__(self, run: RunConfig, out_dir: str | os.PathLike, *, resume=None, progress: bool | None = None,
                 echo=None, overwrite: bool = False):
        self.run_cfg, self.t = run, run.train
        self.out, self.resume, self.progress, self.overwrite = Path(out_dir), resume, progress, overwrite
        self.root = self.out / "checkpoints"
        self.dist = Dist.from_env(run.train.device)
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.metrics, self.bar, self._threads = None, None, torch.get_num_threads()
        self.saved: dict | None = None  # the checkpoint resumed from (read once, in _resume_path)
        self.finished: TrainResult | None = None  # resuming a run that is already finished: nothing to do
        self._finished_at_ckpt = False  # OUT holds the finished run of the checkpoint resumed from
        self.step, self.best, self.elapsed, self.tokens_seen = 0, math.inf, 0.0, 0
        self.window_tokens, self.window_time = 0, 0.0
        self.data = data_source_kind(run.data.corpus)(run)  # what the run trains on (bdh.training.data_source)

    def say(self, msg: str) -> None:
        if self.dist.main:
            self.echo(msg)

    def note(self, msg: str) -> None:
        """A message that does not break the progress bar."""
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            self.say(msg)

    def log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Device and threads, data source and tokenizer, model, optimizer, schedule, batch stream, resume, DDP,
        run files."""
        self.run_cfg.validate()
        self._setup_device()
        resume_path = self._resume_path()
        if resume_path is not None and self._check_finished(resume_path):
            return
        self._setup_data(resume_path)
        self._setup_model()
        if resume_path is not None:
            self._restore(resume_path)
        elif self.t.init_from:
            self._init_weights()
        self._setup_step_fn()
        self._write_run_files(resume_path is not None)

    def _setup_device(self) -> None:
        t = self.t
        self.device = pick_device(t.device, self.dist)
        if t.threads:
            torch.set_num_threads(t.threads)  # restored in close()
        if self.device.type == "cpu":
            keep_freed_memory()  # reuse freed activation memory instead of page-faulting it in again (bdh.allocator)
        emulated = os.environ.get(EMULATED_BF16_ENV) == "1"  # to study bf16 numerics on any CPU, slowly
        cpu_bf16 = self.device.type == "cpu" and t.precision == "bf16" and (cpu_bf16_supported() or emulated)
        if t.precision == "bf16" and self.device.type != "cuda" and not cpu_bf16:
            raise ValueError("train.precision = 'bf16': bf16 autocast needs CUDA or a CPU with native bf16 "
                             "(AVX512-BF16 or AMX; this one has neither, bf16 would be emulated, ~7x slower); use "
                             f"auto or fp32 (or set {EMULATED_BF16_ENV}=1 to study bf16 numerics anyway)")
        if cpu_bf16 and not cpu_bf16_supported():
            self.note(f"bf16 autocast is emulated on this CPU ({EMULATED_BF16_ENV}=1): same numerics, ~7x slower")
        bf16 = cpu_bf16 or (self.device.type == "cuda" and t.precision in ("auto", "bf16"))
        dev = self.device.type
        self.autocast = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def _resume_path(self) -> Path | None:
        """The checkpoint to resume from (None: a new run); init_from and --out checked before anything is written."""
        t, out = self.t, self.out
        if self.resume is not None:
            path, self.saved = read_resume_checkpoint(out if str(self.resume) == "latest" else self.resume, self.dist,
                                                      self.device, self.echo)
            if not path.resolve().is_relative_to(out.resolve()):  # another run's checkpoint: OUT's model is not ours
                check_output_dir(out, overwrite=self.overwrite)
            return path
        if ckpt.list_checkpoints(self.root):
            raise ValueError(f"--out {str(out)!r} already holds checkpoints of a run: pass --resume to continue it, "
                             "or choose another --out")
        # a saved model in OUT is replaced only with --overwrite, and never when it is the run's own init_from
        check_output_dir(out, overwrite=self.overwrite, inputs=[t.init_from] if t.init_from else [])
        if t.init_from:  # the vocabulary is checked again once the tokenizer is known
            saved_cfg = init_from_config(t.init_from)
            init_from_config(t.init_from, self.run_cfg.model_config(saved_cfg.vocab_size))
        return None

    def _check_finished(self, path: Path) -> bool:
        """True (with `self.finished` set) when checkpoint `path` is the last step of a run that finished in OUT
        (its summary.json is of that step and its model is saved): resuming it changes nothing."""
        from ..checkpoint import load_model

        step = self.saved["meta"]["step"]
        try:
            summary = json.loads((self.out / "summary.json").read_text(encoding="utf-8"))
            self._finished_at_ckpt = (path.resolve().is_relative_to(self.out.resolve()) and summary["step"] == step
                                      and (self.out / "model.safetensors").is_file())
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not self._finished_at_ckpt or step < self.t.steps:
            return False
        saved_cfg = load_config(path / "config.json")  # the model config asked for now, at the run's vocabulary
        check_resume(self.run_cfg, self.saved["meta"], self.run_cfg.model_config(saved_cfg.vocab_size), path)
        self.say(f"the run in {self.out} is already finished (step {step}, train.steps = {self.t.steps}): nothing "
                 "to do; raise train.steps to train further")
        model = load_model(self.out)
        self.finished = TrainResult(model, model.tokenizer, summary)
        return True

    def _setup_data(self, resume_path: Path | None) -> None:
        """The data source's tokenizer (the checkpoint's on resume) and data; the tokenizer into OUT."""
        meta = None if resume_path is None else self.saved["meta"]
        self.data.setup(self.out, self.dist, resume=resume_path, saved_meta=meta)
        self.tokenizer = self.data.tokenizer
        self._save_tokenizer()

    def _save_tokenizer(self) -> None:
        """The tokenizer into OUT (process 0) as the final `save_pretrained` writes it, so a resume rewrites the
        same bytes."""
        from ..checkpoint import save_tokenizer

        if self.dist.main:
            save_tokenizer(self.tokenizer, self.out)

    def _setup_model(self) -> None:
        t, dist = self.t, self.dist
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.model_cfg = self.run_cfg.model_config(self.tokenizer.vocab_size)
        self.model = build_model(self.model_cfg).to(self.device)  # the registered type of [model] model_type
        torch.manual_seed(t.seed + dist.rank)  # dropout differs between processes
        self.optimizer = make_optimizer(self.model, t)
        self.scheduler = make_scheduler(self.optimizer, t)
        self.data.start(dist.rank, dist.world)  # the batch stream of this process
        self.carry = self.data.carries_state
        self.states: list = [None] * t.grad_accum  # the carried TBPTT state of each micro-step's streams
        self.tokens_per_step = self.data.tokens_per_step()  # updated every step (task lengths vary with the sizes)
        self._bad = torch.zeros(3, dtype=torch.float64, device=self.device)  # first non-finite (step, loss, norm)
        # train.layer_passes: the model's config at each number of passes (None: n_layer, the model as it is)
        lp = t.passes_range
        self.pass_configs = {k: dataclasses.replace(self.model_cfg, n_layer=k) for k in range(lp[0], lp[1] + 1)} \
            if lp else None
        self.passes: int | None = None  # the layer passes of the current step (train.layer_passes)
        self._lrs: dict[int, float] = {}  # lr of every step since the last check_finite

    def _init_weights(self) -> None:
        """`train.init_from`: start from a saved model's weights (fine-tuning)."""
        from ..checkpoint import load_model

        init_from_config(self.t.init_from, self.model_cfg)
        self.model.load_state_dict(load_model(self.t.init_from).state_dict(), strict=True)
        self.say(f"initialised the weights from {self.t.init_from}")

    def _restore(self, path: Path) -> None:
        """Weights, optimizer, schedule, sampler, RNG states and carried states of checkpoint `path`."""
        dist = self.dist
        saved = self.saved
        meta = saved["meta"]
        check_resume(self.run_cfg, meta, self.model_cfg, path)
        if meta["world_size"] != dist.world:
            raise CheckpointError(f"--resume {path}: written by {meta['world_size']} process(es), now {dist.world}; "
                                  "resume with the same number of processes")
        what = f"{path / 'model.safetensors'}"
        try:  # a hand-edited or foreign file: one line naming it, not a traceback
            self.model.load_state_dict(saved["model_tensors"], strict=True)
            what = f"{path / ckpt.OPTIMIZER_FILE} (with {ckpt.TRAINER_FILE})"
            ckpt.load_optimizer_state(self.optimizer, meta["optimizer"], saved["optimizer_tensors"])
            what = f"{path / ckpt.TRAINER_FILE} (scheduler, sampler)"
            if not isinstance(meta["scheduler"], dict):
                raise TypeError(f"scheduler state is {type(meta['scheduler']).__name__}, expected an object")
            self.scheduler.load_state_dict(meta["scheduler"])
            rt = saved["rank_tensors"]
            self.data.load_state_dict(meta["sampler"], {k[8:]: v for k, v in rt.items() if k.startswith("sampler.")})
            what = f"{path}/rank{dist.rank}.json, rank{dist.rank}.safetensors"
            ckpt.set_rng_state(saved["rank_meta"], rt)
            self.states = states_from_tensors(self.model, rt, self.t.grad_accum, self.device)
            what = f"{path / ckpt.TRAINER_FILE}"
            self.step, self.elapsed, self.tokens_seen = int(meta["step"]), float(meta["elapsed_s"]), int(meta["tokens"])
            self.best = math.inf if meta["best_val"] is None else float(meta["best_val"])
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(
                f"--resume {path}: {what} does not fit this run ({type(e).__name__}: {msg})") from None
        now = self.run_cfg.to_dict()["train"]
        changed = sorted(k for k, v in now.items() if meta["run_config"]["train"].get(k) != v)
        self.say(f"resumed from {path} at step {self.step}"
                 + (f" (train settings changed: {', '.join(changed)})" if changed else ""))

    def _setup_step_fn(self) -> None:
        """The loss module, compiled (train.compile) and wrapped in DDP (several processes)."""
        t = self.t
        self.loss_module = LossModule(self.model, t.form, t.no_bptt, self.carry, t.activity_penalty)
        self.step_fn = torch.compile(self.loss_module) if t.compile else self.loss_module
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_fn = DDP(self.step_fn, device_ids=ids, forward_sync_buffers=False)

    def _write_run_files(self, resumed: bool) -> None:
        """OUT/run.json, run.toml and the metrics files (process 0); the opening line; the progress bar."""
        run, t, dist, model = self.run_cfg, self.t, self.dist, self.model
        if dist.main:
            info = {"config": run.to_dict(), "model": self.model_cfg.to_dict(), "params": model.num_params(),
                    "world_size": dist.world, "device": str(self.device), "bdh": __version__,
                    "torch": torch.__version__}
            atomic_write_json(self.out / "run.json", info)
            atomic_write_text(self.out / "run.toml", run.to_toml())
            finish_step = None
            if resumed and not self._finished_at_ckpt:  # a run killed while finishing: it finishes again
                finish_step = self.saved["meta"]["run_config"].get("train", {}).get("steps")
            self.metrics = Metrics(self.out, self.step if resumed else None, finish_step)
        self.say(f"{type(model).__name__} {model.extra_repr()} | {self.data.describe()} | {self.device}"
                 + (f" x {dist.world} processes" if dist.world > 1 else ""))
        if t.layer_passes:
            lo, hi = t.passes_range
            self.say(f"layer passes: drawn in [{lo}, {hi}] each step (train.layer_passes); evaluation at n_layer = "
                     f"{self.model_cfg.n_layer}")
        if self.carry and getattr(self.model_cfg, "damping", 0) is None:
            self.say("note: data.batching = 'tbptt' with model.damping = none: the carried state sums every past token "
                     "of a stream (tens of thousands); long contexts need damping (--set model.damping=alibi)")
        if self.device.type == "cpu" and t.precision == "auto" and cpu_bf16_supported():
            # auto stays fp32 on every CPU (the same numbers on every machine); bf16 is the user's choice
            self.say("precision: fp32 (auto on CPU); this CPU computes bf16 natively: --set train.precision=bf16 "
                     "trains about 2x faster (README, Precision)")
        if dist.main and (sys.stderr.isatty() if self.progress is None else self.progress):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=t.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    # ------------------------------------------------------------------------------------------- the step
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, float]:
        """One optimizer step: `grad_accum` micro-steps (forward, backward, carried states), clip, AdamW, schedule.

        Returns (mean cross-entropy, mean Hoyer activity or None, gradient norm, lr): tensors, no host sync.
        """
        t = self.t
        if self.pass_configs is not None:
            self.passes = draw_layer_passes(t.seed, self.step, *t.passes_range)
        loss_sum = torch.zeros((), device=self.device)
        hoyer_sum = torch.zeros((), device=self.device)  # the activity penalty's measure (train.activity_penalty)
        for micro in range(t.grad_accum):
            objective, loss = self._micro_step(micro)
            loss_sum += loss.detach().float()
            if t.activity_penalty:
                hoyer_sum += (objective - loss).detach().float() / t.activity_penalty
        self.data.end_step()
        loss = self.dist.mean(loss_sum / t.grad_accum)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf)
        self._track_finite(loss, grad_norm, lr)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, (hoyer_sum if t.activity_penalty else None), grad_norm, lr

    def _micro_step(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of micro-step `micro` (gradients all-reduced on the last one under DDP)."""
        x, y, reset = self.data.next(micro)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        last = micro == self.t.grad_accum - 1
        sync = contextlib.nullcontext() if self.dist.world == 1 or last else self.step_fn.no_sync()
        passes = contextlib.nullcontext() if self.passes is None else layer_passes(self.model,
                                                                                     self.pass_configs[self.passes])
        with sync:
            with self.autocast(), passes:
                objective, loss, new_state = self.step_fn(x, y, None if reset else self.states[micro])
            (objective / self.t.grad_accum).backward()
        if self.carry:
            self.states[micro] = self.model.carry_state(new_state)  # detached (and trimmed where the model type needs)
        return objective, loss

    def _track_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        """Remember (on the device) the first step whose loss or gradient norm is NaN/Inf."""
        step = self.step + 1
        here = torch.stack([loss.new_full((), step, dtype=torch.float64), loss.double(), grad_norm.double()])
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm)) & (self._bad[0] == 0)
        self._bad = torch.where(bad, here, self._bad)
        self._lrs[step] = lr

    def check_finite(self) -> None:
        """Raise TrainingDiverged naming the first non-finite step since the last check (a host sync)."""
        bad_step, loss, grad_norm = self._bad.tolist()
        if not bad_step:
            self._lrs.clear()
            return
        bad_step = int(bad_step)
        done = ckpt.list_checkpoints(self.root)
        where = f"the last good checkpoint is {done[-1]}" if done else "no checkpoint had been written yet"
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        raise TrainingDiverged(
            f"training diverged: {what} at step {bad_step} (lr {self._lrs.get(bad_step, math.nan):.3g}); stopped at "
            f"step {self.step} without saving the model; {where} (lower train.lr and resume)"
        )

    # ------------------------------------------------------------------------------------------- the loop
    def loop(self) -> None:
        """Optimizer steps until `train.steps`; logs, evaluations, samples and checkpoints at their cadence."""
        self.model.train()
        while self.step < self.t.steps:
            t0 = time.perf_counter()
            loss, hoyer, grad_norm, lr = self.train_step()
            self.step += 1
            self.tokens_per_step = self.data.tokens_per_step()
            if self._sync_point():
                self.check_finite()  # waits for the device: the step's time includes its work
            dt = time.perf_counter() - t0
            self.elapsed += dt
            self.tokens_seen += self.tokens_per_step
            self.window_tokens += self.tokens_per_step
            self.window_time += dt
            if self.bar is not None:
                self.bar.update(1)
            self.maybe_log(loss, hoyer, grad_norm, lr)
            self.maybe_eval()
            self.maybe_sample()
            self.maybe_checkpoint()
        self.check_finite()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _every(self, n: int, *, last: bool) -> bool:
        return bool(n) and self.step % n == 0 or (last and self.step == self.t.steps)

    def _sync_point(self) -> bool:
        t = self.t
        return (self._every(max(t.log_every, 1), last=True) or self._every(t.eval_every, last=bool(t.eval_every))
                or self._every(t.sample_every, last=False) or self._every(t.checkpoint_every, last=True))

    def maybe_log(self, loss: torch.Tensor, hoyer: torch.Tensor | None, grad_norm: torch.Tensor, lr: float) -> None:
        """A train record (metrics files), the progress line or bar, every `log_every` steps and at the end."""
        t = self.t
        if not self._every(max(t.log_every, 1), last=True):
            return
        tps = self.window_tokens / max(self.window_time, 1e-9)
        record = {"step": self.step, "split": "train", "loss": float(loss), "lr": lr, "grad_norm": float(grad_norm),
                  "tokens": self.tokens_seen, "tok_per_s": tps, "elapsed_s": self.elapsed}
        if hoyer is not None:
            record["x_hoyer"] = float(self.dist.mean(hoyer / t.grad_accum))
        if self.passes is not None:
            record["layer_passes"] = self.passes  # of the last step (train.layer_passes)
        self.log(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
        elif t.log_every:
            eta = (t.steps - self.step) * self.tokens_per_step / tps
            self.say(f"step {self.step}/{t.steps} | loss {record['loss']:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
                     f"eta {fmt_time(eta)}")
        self.window_tokens, self.window_time = 0, 0.0

    def evaluate(self, max_tokens: int) -> dict:
        """The data source's validation metrics ("loss", ...), leaving the training RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            return self.data.evaluate(self.model, max_tokens, autocast=self.autocast, rank=self.dist.rank,
                                      world=self.dist.world)

    def maybe_eval(self) -> None:
        """Every `eval_every` steps and at the end: a val record; the best model so far into checkpoints/best."""
        if not self._every(self.t.eval_every, last=bool(self.t.eval_every)):
            return
        res = self.evaluate(self.t.eval_tokens)
        self.log({"step": self.step, "split": "val", **res, "elapsed_s": self.elapsed})
        self.note(f"step {self.step}: val {self.data.eval_text(res)}")
        if res["loss"] < self.best:
            self.best = res["loss"]
            if self.dist.main:
                ckpt.save_best(self.root, self.step, res, self.model, self.tokenizer)

    def sample(self) -> None:
        """A text sample from `train.sample_prompt` (process 0), printed and logged (where the data is text)."""
        t = self.t
        if not self.dist.main or not t.sample_tokens or not self.data.samples_text:
            return
        text = self.model.generate(t.sample_prompt, t.sample_tokens, tokenizer=self.tokenizer,
                                   temperature=t.sample_temperature, top_k=t.sample_top_k or None, seed=t.seed)
        self.note(f"--- sample at step {self.step} ---\n{t.sample_prompt}{text}\n---")
        self.log({"step": self.step, "sample": t.sample_prompt + text})

    def maybe_sample(self) -> None:
        if self._every(self.t.sample_every, last=False) and self.step != self.t.steps:
            self.sample()

    def maybe_checkpoint(self) -> None:
        """Every `checkpoint_every` steps and at the end: a resumable checkpoint (all processes take part)."""
        if not self._every(self.t.checkpoint_every, last=True):
            return
        t, dist = self.t, self.dist
        stream_meta, stream_tensors = self.data.state_dict()  # the data stream's position ("sampler" in the files)
        rank_tensors = {f"sampler.{k}": v for k, v in stream_tensors.items()}
        rank_tensors.update(states_to_tensors(self.model, self.states))
        meta = {"run_config": self.run_cfg.to_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler": stream_meta, "best_val": None if math.isinf(self.best) else self.best,
                "elapsed_s": self.elapsed, "tokens": self.tokens_seen, "data_sha256": self.data.sha256}
        ckpt.save_checkpoint(self.root, self.step, model=self.model, tokenizer=self.tokenizer,
                             optimizer=self.optimizer, rank_tensors=rank_tensors, trainer_meta=meta, rank=dist.rank,
                             world=dist.world, barrier=dist.barrier, keep_last=t.keep_last)

    # ------------------------------------------------------------------------------------------- the end
    def finish(self) -> TrainResult:
        """Full validation, a sample, the final model and summary.json in OUT."""
        final = self.evaluate(self.t.final_eval_tokens)
        self.say(f"final val {self.data.eval_text(final, final=True)}")
        self.log({"step": self.step, "split": "final", **final, "elapsed_s": self.elapsed})
        self.sample()
        cuda = self.device.type == "cuda"
        summary = {"step": self.step, "val_loss": final["loss"], "val_bpb": final.get("bpb"),
                   "val_tokens": final["tokens"], "val_bytes": final.get("bytes"), "train_time_s": self.elapsed,
                   "tokens": self.tokens_seen, "tok_per_s": self.tokens_seen / max(self.elapsed, 1e-9),
                   "best_periodic_val_loss": None if math.isinf(self.best) else self.best,
                   "params": self.model.num_params(), "peak_rss_mib": peak_rss_mib(),
                   "peak_cuda_mib": torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None}
        summary.update(self.data.summary(final))
        if self.dist.main:
            self.model.save_pretrained(self.out, tokenizer=self.tokenizer)
            atomic_write_json(self.out / "summary.json", summary)
            self.say(f"saved the model to {self.out} (bdh generate --model {self.out} --prompt ...)")
        return TrainResult(self.model, self.tokenizer, summary)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        torch.set_num_threads(self._threads)
        self.step_fn = None  # the DDP wrapper (its reducer holds the process group) goes before the group
        self.dist.close()

    def run(self) -> TrainResult:
        try:
            self.setup()
            if self.finished is not None:
                return self.finished
            self.loop()
            result = self.finish()
            # every process leaves together, after process 0 has saved the model: a process whose gloo group went
            # down while its peer was still saving was seen to abort at exit (SIGABRT, a successful run exiting 1)
            self.dist.barrier()
            return result
        finally:
            self.close()


def train(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str | os.PathLike | None = None,
    progress: bool | None = None,
    echo=None,
    overwrite: bool = False,
) -> TrainResult:
    """Train `run` into `out_dir`; `resume` = a checkpoint, a run directory, or "latest" (of `out_dir`).

    `progress`: a tqdm bar (None: only on a terminal; otherwise a text line every `log_every` steps).
    `overwrite`: a new run may replace a model already saved in `out_dir` (otherwise ValueError, before any write).
    Resuming a run that already finished (its last checkpoint is at `train.steps`, its model saved) changes nothing
    and returns its model and summary; on resume the corpus must be the one the run started with.
    Raises ValueError for bad data or configs, TrainingDiverged on a NaN/Inf loss, OSError when a write fails.
    """
    return Trainer(run, out_dir, resume=resume, progress=progress, echo=echo, overwrite=overwrite).run()


# ----------------------------------------------------------------------------------------------- launching
def launch(run: RunConfig, out_dir: str | os.PathLike, *, resume=None, progress: bool | None = None,
           overwrite: bool = False) -> dict:
    """Run `train` in `run.train.processes` local processes (DDP), or in this one; return the summary.

    What torchrun does, without torchrun: for `bdh train` on a multi-core CPU, where P processes of one
    thread keep their speed when the machine is shared and P OpenMP threads do not. Under torchrun (WORLD_SIZE
    set) or with processes = 1 this is just `train`.
    """
    n = run.train.processes
    if n <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return train(run, out_dir, resume=resume, progress=progress, overwrite=overwrite).summary
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bdh-launch-") as errors:
        try:
            mp.start_processes(_spawned, args=(n, port, run, str(out_dir), resume, progress, errors, overwrite,
                                               os.getpid()),
                               nprocs=n, start_method="spawn", join=True)
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
            for f in sorted(Path(errors).glob("rank*.json")):  # the first process that failed with a message
                try:
                    e = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, ValueError):  # half-written on a full disk
                    continue
                raise (OSError if e["kind"] == "OSError" else ValueError)(e["message"]) from None
            if isinstance(exc, mp.ProcessExitedException):  # its message could not be handed over: it printed it
                raise OSError(f"training process {exc.error_index} exited with code {exc.exit_code} "
                              "(its error is printed above)") from None
            raise
    return json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))


def _spawned(rank: int, world: int, port: int, run: RunConfig, out: str, resume, progress, errors: str,
             overwrite: bool = False, parent: int | None = None) -> None:
    if parent is not None:
        die_with_parent(parent)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        train(run, out, resume=resume, progress=progress, overwrite=overwrite)
    except (ValueError, OSError) as e:  # bad input or a failed write: hand the message to the launching process
        try:
            with open(Path(errors) / f"rank{rank}.json", "w", encoding="utf-8") as f:
                json.dump({"kind": "OSError" if isinstance(e, OSError) else "ValueError", "message": str(e)}, f)
        except OSError:  # a full disk may refuse even that: print it (one line)
            print(f"bdh train: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
