"""The training loop, for any registered model type: AdamW, warmup + decay, grad clipping and accumulation,
random crops or TBPTT streams, periodic evaluation and samples, metrics, checkpoints with exact resume, DDP.

    from bdh.training import load_run_config, train
    result = train(load_run_config("tiny"), "runs/tiny")      # result.model, result.summary

`train` = `Trainer(run, out).run()`: `setup` (processes, data, model, optimizer, resume), then `loop` over
`train_step` (forward / backward / accumulate / clip / step) with `maybe_log`, `maybe_eval`, `maybe_sample` and
`maybe_checkpoint`, then `finish` (final evaluation and model). The model is used only through
`bdh.interface.LanguageModel`: its carried TBPTT states go into checkpoints as `model.state_to_tensors`.

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
import csv
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..allocator import keep_freed_memory
from ..attention import cpu_bf16_supported
from .._version import __version__
from ..checkpoint import CheckpointError, check_output_dir
from ..interface import build_model, load_config
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..sparse import hoyer_activity
from . import checkpointing as ckpt
from .batching import make_sampler
from .config import RunConfig
from .evaluation import evaluate, token_byte_lengths
from .schedule import make_scheduler


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    model: nn.Module  # any registered model type (bdh.interface.LanguageModel)
    tokenizer: Any
    summary: dict


# ----------------------------------------------------------------------------------------------- processes
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device_pref: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            cuda = device_pref != "cpu" and torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if cuda else "gloo")
            owns = True
        return cls(rank, world, local, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.world
        return x

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def pick_device(pref: str, dist: Dist) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device = {pref!r}: CUDA is not available on this machine; use cpu or auto")
        return torch.device(f"cuda:{dist.local_rank}" if dist.world > 1 or pref == "cuda" else pref)
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------- data
def prepare_data(run: RunConfig, out: Path, dist: Dist, tokenizer=None, expect_sha256: dict | None = None):
    """(tokenizer, train tokens, val tokens, {split: source SHA-256}) for the run; tokens are memmaps of a cache
    in OUT/data. `expect_sha256` (on resume: the hashes the run started with) are checked before anything is
    written: a corpus that changed since is a ValueError."""
    from ..data.cache import build_token_cache, cached_source_hash, source_hash
    from ..data.corpora import resolve_corpus
    from ..tokenization import BPETokenizer, get_tokenizer, load_tokenizer

    d = run.data
    splits = resolve_corpus(
        d.corpus, jsonl_field=d.jsonl_field, encoding_errors=d.encoding_errors, val_fraction=d.val_fraction,
        seed=run.train.data_seed,
    )
    if not splits.train.strip():
        raise ValueError(f"data.corpus = {d.corpus!r}: the training split is empty")
    hashes = {"train": source_hash(splits.train), "val": source_hash(splits.val)}
    cache = out / "data"
    for split, want in (expect_sha256 or {}).items():
        where = "the checkpoint"
        if want is None and tokenizer is not None:  # a checkpoint from before data_sha256: the token cache's manifest
            want, where = cached_source_hash(cache, split, tokenizer.name), f"the token cache in {cache}"
        if want is not None and hashes.get(split) != want:
            raise ValueError(
                f"data.corpus = {d.corpus!r} changed since the run started: its {split} split has SHA-256 "
                f"{hashes.get(split, '')[:12]}..., {where} records {want[:12]}...; resume with the original corpus "
                "(and data.val_fraction, train.data_seed), or start a new run in another --out"
            )
    if tokenizer is None:
        if d.tokenizer == "bpe":
            if dist.main:
                BPETokenizer.train([splits.train], d.bpe_vocab_size).save(out / "tokenizer")
            dist.barrier()
            tokenizer = load_tokenizer(out / "tokenizer")
        else:
            tokenizer = get_tokenizer(d.tokenizer)
    data = {}
    for rank_turn in (True, False):  # process 0 builds the cache, the others reuse it
        if dist.main == rank_turn:
            for split, text in (("train", splits.train), ("val", splits.val)):
                data[split] = build_token_cache(text, tokenizer, cache, split, source_id=d.corpus)
        dist.barrier()
    T = d.block_size
    if len(data["train"]) < T + 1:
        raise ValueError(
            f"data.corpus = {d.corpus!r}: the training split has {len(data['train'])} tokens, fewer than "
            f"data.block_size + 1 = {T + 1}; use a longer corpus or a smaller data.block_size"
        )
    if len(data["val"]) < 2:
        raise ValueError(f"data.corpus = {d.corpus!r}: the validation split has {len(data['val'])} token(s); need >= 2")
    return tokenizer, data["train"], data["val"], hashes


# ----------------------------------------------------------------------------------------------- the step
class LossModule(nn.Module):
    """The function DDP wraps: (x, y, state) -> (objective, mean cross-entropy, new state or None).

    The objective is the cross-entropy plus, with `activity_penalty` > 0, that weight times the mean Hoyer
    activity of x_sparse over layers (`bdh.sparse.hoyer_activity`); without it the two are the same tensor.
    """

    def __init__(self, model: nn.Module, form: str, detach_kv: bool, carry: bool, activity_penalty: float = 0.0):
        super().__init__()
        self.model, self.form, self.detach_kv, self.carry = model, form, detach_kv, carry
        self.activity_penalty = activity_penalty

    def forward(self, x: torch.Tensor, y: torch.Tensor, state: Any = None):
        xs = [] if self.activity_penalty else None
        kw = {} if xs is None else {"x_sparse_out": xs}  # the "activity_penalty" capability
        if self.form != "auto":
            kw["form"] = self.form  # the "forms" capability
        if self.detach_kv:
            kw["detach_kv"] = True  # the "no_bptt" capability
        new = None
        if not self.carry:
            _, loss = self.model(x, y, **kw)
        else:
            logits, new = self.model.prefill(x, state, **kw)  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        if xs is None:
            return loss, loss, new
        penalty = torch.stack([hoyer_activity(xl.float()) for xl in xs]).mean()
        return loss + self.activity_penalty * penalty, loss, new


EMULATED_BF16_ENV = "BDH_ALLOW_EMULATED_BF16"  # "1": train.precision = "bf16" on a CPU without native bf16


def make_optimizer(model: nn.Module, t) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on matrices and embeddings (every BDH parameter), none on vectors; or,
    with train.optimizer = "muon", Muon on the hidden weight matrices and AdamW on the rest (`bdh.training.muon`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if t.optimizer == "muon":
        from .muon import MuonAdamW, is_hidden_matrix

        groups = [
            {"params": [p for n, p in named if is_hidden_matrix(n, p)], "weight_decay": t.weight_decay, "muon": True},
            {"params": [p for n, p in named if p.dim() >= 2 and not is_hidden_matrix(n, p)], "weight_decay": t.weight_decay},
            {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0},
        ]
        return MuonAdamW([g for g in groups if g["params"]], lr=t.lr, betas=(t.beta1, t.beta2))
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=(t.beta1, t.beta2))


def _config_diff(saved, model_cfg, where: str) -> list[str]:
    """'key=<saved value> <where>, <run value> now' for every model config field that differs (bdh_version aside)."""
    a, b = saved.to_dict(), model_cfg.to_dict()
    return [f"{k}={a.get(k)!r} {where}, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k != "bdh_version" and a.get(k) != b.get(k)]


def _init_from_config(path: str, model_cfg=None):
    """`train.init_from`: the model config saved in `path`; when `model_cfg` is given, checked equal to it.
    Raises ValueError for a directory without a saved model, or naming the fields that differ."""
    cfg_file = Path(path, "config.json")
    if not cfg_file.is_file():
        raise ValueError(f"train.init_from = {path!r}: expected a model directory with config.json and "
                         "model.safetensors (save_pretrained or a finished run's OUT)")
    saved = load_config(cfg_file)
    if model_cfg is not None and (diff := _config_diff(saved, model_cfg, "saved")):
        raise ValueError(f"train.init_from = {path!r}: the saved model is another config: " + "; ".join(diff))
    return saved


# ----------------------------------------------------------------------------------------------- metrics
CSV_FIELDS = ("step", "split", "loss", "bpb", "lr", "grad_norm", "tokens", "tok_per_s", "elapsed_s")


class Metrics:
    """metrics.jsonl (every record) and metrics.csv (losses), plus TensorBoard when it imports."""

    def __init__(self, out: Path, resume_step: int | None, finish_step: int | None = None):
        """`resume_step`: keep the records up to that step (None: a new run, no records); `finish_step`: also drop
        the records `Trainer.finish` wrote at `resume_step` (its "final" and its sample at the run's last step),
        because the resumed run finishes again."""
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        self.failed = False
        kept = []
        if resume_step is not None and self.jsonl.is_file():  # drop what a killed run logged after its checkpoint
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    r = json.loads(line)
                    step = r.get("step", 0)
                    by_finish = finish_step is not None and step == resume_step and (
                        r.get("split") == "final" or ("sample" in r and step == finish_step))
                    if step <= resume_step and not by_finish:
                        kept.append(r)
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        with atomic_path(self.csv) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in kept if "loss" in r)
        self._j = open(self.jsonl, "a", encoding="utf-8")
        self._c = open(self.csv, "a", encoding="utf-8", newline="")
        self._cw = csv.DictWriter(self._c, CSV_FIELDS, extrasaction="ignore")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=None if resume_step is None else resume_step + 1)
        except Exception:  # TensorBoard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        path = self.jsonl
        try:
            self._j.write(json.dumps(record) + "\n")
            self._j.flush()
            if "loss" in record:
                path = self.csv
                self._cw.writerow(record)
                self._c.flush()
        except OSError as e:  # a full disk: one line naming the file and the errno
            self.failed = True
            raise OSError(e.errno, f"could not write {path} ({e.strerror or e})") from e
        if "loss" in record and self.tb is not None:
            for k in ("loss", "bpb", "lr", "grad_norm", "tok_per_s"):
                if record.get(k) is not None:
                    self.tb.add_scalar(f"{record['split']}/{k}", record[k], record["step"])

    def close(self) -> None:
        for f in (self._j, self._c):
            try:
                f.close()
            except OSError:
                if not self.failed:  # after a failed write the error is already on its way
                    raise
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------- training
def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process so far (MiB), None where `resource` is unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # Linux: KiB, macOS: bytes


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def states_to_tensors(model, states: list) -> dict[str, torch.Tensor]:
    """The carried TBPTT states of this process (one per micro-step, None where empty) as named tensors
    `stream.<m>.*` (`model.state_to_tensors`)."""
    out = {}
    for m, st in enumerate(states):
        if st is not None:
            out.update(model.state_to_tensors(st, f"stream.{m}."))
    return out


def states_from_tensors(model, tensors: dict[str, torch.Tensor], n: int, device) -> list:
    """The inverse of `states_to_tensors`: n states (None for a stream without tensors)."""
    states = []
    for m in range(n):
        prefix = f"stream.{m}."
        mine = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        states.append(model.state_from_tensors(mine, prefix, device=device) if mine else None)
    return states


def _check_resume(run: RunConfig, saved: dict, model_cfg, path: Path) -> None:
    saved_cfg = load_config(path / "config.json")
    if type(saved_cfg) is not type(model_cfg):
        raise CheckpointError(f"--resume {path}: the checkpoint holds a {type(saved_cfg).__name__} model, "
                              f"the config a {type(model_cfg).__name__}")
    diff = _config_diff(saved_cfg, model_cfg, "in the checkpoint")
    if diff:
        raise CheckpointError(f"--resume {path}: the checkpoint is for another model config: " + "; ".join(diff))
    sd = saved["run_config"]["data"]
    for key in ("corpus", "tokenizer", "block_size", "batching", "task_size", "task_min_size"):
        if sd.get(key, 0 if key.startswith("task_") else None) != getattr(run.data, key):
            raise CheckpointError(
                f"--resume {path}: data.{key} = {sd.get(key)!r} in the checkpoint, {getattr(run.data, key)!r} now"
            )


# ----------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run: `Trainer(run, out).run()` sets up (processes, data, model, optimizer, resume), loops
    over `train_step` with `maybe_log` / `maybe_eval` / `maybe_sample` / `maybe_checkpoint`, then `finish`es.

    The host waits for the device only at log, eval, sample and checkpoint steps: losses and gradient norms stay
    tensors in between, and a NaN/Inf is reported there, naming the first step it appeared at
    (`check_finite`). A checkpoint is written only after that check, so the last checkpoint is always good.
    """

    def __init__(self, run: RunConfig, out_dir: str | os.PathLike, *, resume=None, progress: bool | None = None,
                 echo=None, overwrite: bool = False):
        self.run_cfg, self.t, self.T = run, run.train, run.data.block_size
        self.out, self.resume, self.progress, self.overwrite = Path(out_dir), resume, progress, overwrite
        self.root = self.out / "checkpoints"
        self.dist = Dist.from_env(run.train.device)
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.metrics, self.bar, self._threads = None, None, torch.get_num_threads()
        self.saved: dict | None = None  # the checkpoint resumed from (read once, in _resume_path)
        self.finished: TrainResult | None = None  # resuming a run that is already finished: nothing to do
        self.data_sha256: dict = {}
        self._finished_at_ckpt = False  # OUT holds the finished run of the checkpoint resumed from
        self.step, self.best, self.elapsed, self.tokens_seen = 0, math.inf, 0.0, 0
        self.window_tokens, self.window_time = 0, 0.0
        self.task = None  # a task run (data.corpus = "task:REF"): the bdh.tasks.Task

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
        """Device and threads, data and tokenizer, model, optimizer, schedule, sampler, resume, DDP, run files."""
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
            path = self._read_resume_checkpoint(out if str(self.resume) == "latest" else self.resume)
            if not path.resolve().is_relative_to(out.resolve()):  # another run's checkpoint: OUT's model is not ours
                check_output_dir(out, overwrite=self.overwrite)
            return path
        if ckpt.list_checkpoints(self.root):
            raise ValueError(f"--out {str(out)!r} already holds checkpoints of a run: pass --resume to continue it, "
                             "or choose another --out")
        # a saved model in OUT is replaced only with --overwrite, and never when it is the run's own init_from
        check_output_dir(out, overwrite=self.overwrite, inputs=[t.init_from] if t.init_from else [])
        if t.init_from:  # the vocabulary is checked again once the tokenizer is known
            saved_cfg = _init_from_config(t.init_from)
            _init_from_config(t.init_from, self.run_cfg.model_config(saved_cfg.vocab_size))
        return None

    def _read_resume_checkpoint(self, spec) -> Path:
        """Read the checkpoint to resume from into `self.saved`: `spec` itself, or the newest readable checkpoint of
        the run directory `spec`, falling back past damaged ones (saying so). Processes agree on one checkpoint."""
        candidates, error, read_at = ckpt.resume_candidates(spec), None, None
        i, agreed = 0, None
        while True:
            while i < len(candidates) and read_at != i:  # the first checkpoint from i on that this process reads
                try:
                    self.saved, read_at = ckpt.read_checkpoint(candidates[i], self.dist.rank), i
                except CheckpointError as e:
                    error, i = e, i + 1
                    if i < len(candidates):
                        self.echo(f"warning: checkpoint {candidates[i - 1]} is damaged ({str(e).splitlines()[0]}); "
                                  f"falling back to the previous one, {candidates[i]}")
            if self.dist.world == 1:
                prev, agreed = i, i
            else:  # one all_reduce per round on every process: the oldest checkpoint any process needs
                t = torch.tensor([i], dtype=torch.int64, device=self.device)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                prev, agreed = agreed, int(t)
            if agreed == len(candidates):
                raise error or CheckpointError(f"--resume {spec}: no checkpoint that every process can read")
            if prev == agreed:
                return candidates[agreed]
            i = agreed

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
        _check_resume(self.run_cfg, self.saved["meta"], self.run_cfg.model_config(saved_cfg.vocab_size), path)
        self.say(f"the run in {self.out} is already finished (step {step}, train.steps = {self.t.steps}): nothing "
                 "to do; raise train.steps to train further")
        model = load_model(self.out)
        self.finished = TrainResult(model, model.tokenizer, summary)
        return True

    def _setup_data(self, resume_path: Path | None) -> None:
        """The tokenizer (the checkpoint's on resume, the saved model's for a trained one with init_from)."""
        from ..tokenization import load_tokenizer

        if self.run_cfg.data.task_ref is not None:
            return self._setup_task_data(resume_path)
        self.out.mkdir(parents=True, exist_ok=True)
        tokenizer = None
        if resume_path is not None:
            tokenizer = load_tokenizer(resume_path)
        elif self.t.init_from and self.run_cfg.data.tokenizer == "bpe":  # fine-tuning keeps the trained BPE
            tokenizer = load_tokenizer(self.t.init_from)
        expect = None
        if resume_path is not None:  # checked against the corpus the run started with (None: ask the token cache)
            recorded = self.saved["meta"].get("data_sha256")
            expect = recorded if isinstance(recorded, dict) else {"train": None, "val": None}
        self.tokenizer, self.train_tokens, self.val_tokens, self.data_sha256 = prepare_data(
            self.run_cfg, self.out, self.dist, tokenizer, expect)
        self._save_tokenizer()
        self.byte_lengths = token_byte_lengths(self.tokenizer)

    def _save_tokenizer(self) -> None:
        """The tokenizer into OUT (process 0) as the final `save_pretrained` writes it, so a resume rewrites the
        same bytes."""
        from ..checkpoint import hf_fields, save_tokenizer

        if self.dist.main:
            save_tokenizer(self.tokenizer, self.out, hf=bool(hf_fields(self.run_cfg.model_type)))

    def _setup_task_data(self, resume_path: Path | None) -> None:
        """A task run: the task (checked), its vocabulary as the tokenizer, the fixed validation set."""
        from ..tasks.validation import task_for_run, validation_set
        from ..tokenization import WordTokenizer

        self.task, lo, hi = task_for_run(self.run_cfg.data)  # before anything is written
        self.tokenizer = WordTokenizer(self.task.vocab)
        if resume_path is not None:
            from ..tokenization import load_tokenizer

            saved = getattr(load_tokenizer(resume_path), "vocab", None)
            if saved is not None and list(saved) != list(self.task.vocab):
                raise CheckpointError(f"--resume {resume_path}: task {self.task.name!r} has another vocabulary now "
                                      f"({len(self.task.vocab)} tokens) than when the run started ({len(saved)})")
        self.val_batches = validation_set(self.task, lo, hi, self.t.eval_batch_size)  # user code: before any write
        self.task_sizes = (lo, hi)
        self.out.mkdir(parents=True, exist_ok=True)
        self._save_tokenizer()
        self.train_tokens = self.val_tokens = None
        self.byte_lengths = None
        self.data_sha256 = {}

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
        self.sampler = make_sampler(self.train_tokens, self.run_cfg.data, t, dist.rank, dist.world, task=self.task)
        self.carry = self.run_cfg.data.batching == "tbptt"
        self.states: list = [None] * t.grad_accum  # the carried TBPTT state of each micro-step's streams
        self.tokens_per_step = t.batch_size * t.grad_accum * self.T
        if self.task is not None:  # updated every step from the sampler (lengths vary with the sizes)
            self.tokens_per_step = t.batch_size * t.grad_accum * int(self.val_batches[-1][0].shape[1])
        self._bad = torch.zeros(3, dtype=torch.float64, device=self.device)  # first non-finite (step, loss, norm)
        self._lrs: dict[int, float] = {}  # lr of every step since the last check_finite

    def _init_weights(self) -> None:
        """`train.init_from`: start from a saved model's weights (fine-tuning)."""
        from ..checkpoint import load_model

        _init_from_config(self.t.init_from, self.model_cfg)
        self.model.load_state_dict(load_model(self.t.init_from).state_dict(), strict=True)
        self.say(f"initialised the weights from {self.t.init_from}")

    def _restore(self, path: Path) -> None:
        """Weights, optimizer, schedule, sampler, RNG states and carried states of checkpoint `path`."""
        dist = self.dist
        saved = self.saved
        meta = saved["meta"]
        _check_resume(self.run_cfg, meta, self.model_cfg, path)
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
            self.sampler.load_state_dict(meta["sampler"], {k[8:]: v for k, v in rt.items() if k.startswith("sampler.")})
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
        if self.task is not None:
            lo, hi = self.task_sizes
            data = (f"task {self.task.name!r}: {self.task.size_name} {lo}..{hi}, {self.task.vocab_size} tokens | "
                    f"{t.steps} steps x {t.batch_size * t.grad_accum} examples")
        else:
            data = (f"{run.data.corpus}: {len(self.train_tokens):,} train / {len(self.val_tokens):,} val tokens "
                    f"({self.tokenizer.name}) | {t.steps} steps x {self.tokens_per_step:,} tokens")
        self.say(f"{type(model).__name__} {model.extra_repr()} | {data} | {self.device}"
                 + (f" x {dist.world} processes" if dist.world > 1 else ""))
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
        loss_sum = torch.zeros((), device=self.device)
        hoyer_sum = torch.zeros((), device=self.device)  # the activity penalty's measure (train.activity_penalty)
        for micro in range(t.grad_accum):
            objective, loss = self._micro_step(micro)
            loss_sum += loss.detach().float()
            if t.activity_penalty:
                hoyer_sum += (objective - loss).detach().float() / t.activity_penalty
        self.sampler.end_step()
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
        x, y, reset = self.sampler.next(micro)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        last = micro == self.t.grad_accum - 1
        sync = contextlib.nullcontext() if self.dist.world == 1 or last else self.step_fn.no_sync()
        with sync:
            with self.autocast():
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
            if self.task is not None:
                self.tokens_per_step = self.sampler.step_tokens
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
        self.log(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
        elif t.log_every:
            eta = (t.steps - self.step) * self.tokens_per_step / tps
            self.say(f"step {self.step}/{t.steps} | loss {record['loss']:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
                     f"eta {_fmt_time(eta)}")
        self.window_tokens, self.window_time = 0, 0.0

    def evaluate(self, max_tokens: int) -> dict:
        """Validation loss and bits/byte (`bdh.training.evaluate`), leaving the training RNG untouched."""
        t, dist = self.t, self.dist
        if self.task is not None:  # masked loss and exact-match accuracy on the fixed validation examples
            from ..tasks.run import evaluate_validation

            with torch.random.fork_rng(devices=[]):
                return evaluate_validation(self.model, self.val_batches, batch_size=t.eval_batch_size, form=t.form,
                                           autocast=self.autocast)
        with torch.random.fork_rng(devices=[]):
            return evaluate(self.model, self.val_tokens, self.byte_lengths, self.T, batch_size=t.eval_batch_size,
                            max_tokens=max_tokens, carry=self.carry, form=t.form, rank=dist.rank, world=dist.world,
                            autocast=self.autocast)

    def maybe_eval(self) -> None:
        """Every `eval_every` steps and at the end: a val record; the best model so far into checkpoints/best."""
        if not self._every(self.t.eval_every, last=bool(self.t.eval_every)):
            return
        res = self.evaluate(self.t.eval_tokens)
        self.log({"step": self.step, "split": "val", **res, "elapsed_s": self.elapsed})
        self.note(f"step {self.step}: val {self._val_text(res)}")
        if res["loss"] < self.best:
            self.best = res["loss"]
            if self.dist.main:
                ckpt.save_best(self.root, self.step, res, self.model, self.tokenizer)

    def _val_text(self, res: dict) -> str:
        if "accuracy" in res:
            return f"loss {res['loss']:.4f} nats/answer, accuracy {res['accuracy']:.3f} ({res['examples']} examples)"
        return f"loss {res['loss']:.4f} nats/token, {res['bpb']:.4f} bits/byte"

    def sample(self) -> None:
        """A text sample from `train.sample_prompt` (process 0), printed and logged (none for a task run)."""
        t = self.t
        if not self.dist.main or not t.sample_tokens or self.task is not None:
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
        rank_tensors = {f"sampler.{k}": v for k, v in self.sampler.state_dict()[1].items()}
        rank_tensors.update(states_to_tensors(self.model, self.states))
        meta = {"run_config": self.run_cfg.to_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict()[0], "best_val": None if math.isinf(self.best) else self.best,
                "elapsed_s": self.elapsed, "tokens": self.tokens_seen, "data_sha256": self.data_sha256}
        ckpt.save_checkpoint(self.root, self.step, model=self.model, tokenizer=self.tokenizer,
                             optimizer=self.optimizer, rank_tensors=rank_tensors, trainer_meta=meta, rank=dist.rank,
                             world=dist.world, barrier=dist.barrier, keep_last=t.keep_last)

    # ------------------------------------------------------------------------------------------- the end
    def finish(self) -> TrainResult:
        """Full validation, a sample, the final model and summary.json in OUT."""
        final = self.evaluate(self.t.final_eval_tokens)
        if self.task is not None:
            self.say(f"final val {self._val_text(final)}")
        else:
            self.say(f"final val loss {final['loss']:.4f} nats/token, {final['bpb']:.4f} bits/byte "
                     f"({final['tokens']:,} tokens, {final['bytes']:,} bytes)")
        self.log({"step": self.step, "split": "final", **final, "elapsed_s": self.elapsed})
        self.sample()
        cuda = self.device.type == "cuda"
        summary = {"step": self.step, "val_loss": final["loss"], "val_bpb": final.get("bpb"),
                   "val_tokens": final["tokens"], "val_bytes": final.get("bytes"), "train_time_s": self.elapsed,
                   "tokens": self.tokens_seen, "tok_per_s": self.tokens_seen / max(self.elapsed, 1e-9),
                   "best_periodic_val_loss": None if math.isinf(self.best) else self.best,
                   "params": self.model.num_params(), "peak_rss_mib": _peak_rss_mib(),
                   "peak_cuda_mib": torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None}
        if self.task is not None:
            summary.update(val_accuracy=final["accuracy"], task=self.task.name, task_sizes=list(self.task_sizes))
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


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGTERM this process when `parent` (the launching `bdh train`) dies
    (PR_SET_PDEATHSIG), so that killing it never leaves its training processes running on. torch.multiprocessing
    asks for SIGINT, which a process started as a background job (`bdh train ... &`, nohup) ignores. Elsewhere
    nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _spawned(rank: int, world: int, port: int, run: RunConfig, out: str, resume, progress, errors: str,
             overwrite: bool = False, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
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
