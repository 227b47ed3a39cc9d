"""The training loop: AdamW, warmup + decay, grad clipping and accumulation, random crops or TBPTT streams,
periodic evaluation and samples, metrics, checkpoints with exact resume, DDP.

    from bdh.training import load_run_config, train
    result = train(load_run_config("tiny"), "runs/tiny")      # result.model, result.summary

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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..checkpoint import CheckpointError, atomic_path
from ..model import BDH
from ..models import build_model, load_config
from ..sparse import hoyer_activity
from ..state import BDHState
from . import checkpointing as ckpt
from .batching import make_sampler
from .config import RunConfig
from .evaluation import evaluate, token_byte_lengths
from .schedule import make_scheduler


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    model: nn.Module  # BDH or the GPT baseline
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
def prepare_data(run: RunConfig, out: Path, dist: Dist, tokenizer=None):
    """(tokenizer, train tokens, val tokens) for the run; tokens are memmaps of a cache in OUT/data."""
    from ..data.cache import build_token_cache
    from ..data.corpora import resolve_corpus
    from ..tokenization import BPETokenizer, get_tokenizer, load_tokenizer

    d = run.data
    splits = resolve_corpus(
        d.corpus, jsonl_field=d.jsonl_field, encoding_errors=d.encoding_errors, val_fraction=d.val_fraction,
        seed=run.train.data_seed,
    )
    if not splits.train.strip():
        raise ValueError(f"data.corpus = {d.corpus!r}: the training split is empty")
    if tokenizer is None:
        if d.tokenizer == "bpe":
            if dist.main:
                BPETokenizer.train([splits.train], d.bpe_vocab_size).save(out / "tokenizer")
            dist.barrier()
            tokenizer = load_tokenizer(out / "tokenizer")
        else:
            tokenizer = get_tokenizer(d.tokenizer)
    cache = out / "data"
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
    return tokenizer, data["train"], data["val"]


# ----------------------------------------------------------------------------------------------- the step
class LossModule(nn.Module):
    """The function DDP wraps: (x, y, state) -> (objective, mean cross-entropy, new state or None).

    The objective is the cross-entropy plus, with `activity_penalty` > 0, that weight times the mean Hoyer
    activity of x_sparse over layers (`bdh.sparse.hoyer_activity`); without it the two are the same tensor.
    """

    def __init__(self, model: BDH, form: str, detach_kv: bool, carry: bool, activity_penalty: float = 0.0):
        super().__init__()
        self.model, self.form, self.detach_kv, self.carry = model, form, detach_kv, carry
        self.activity_penalty = activity_penalty

    def forward(self, x: torch.Tensor, y: torch.Tensor, state: BDHState | None = None):
        xs = [] if self.activity_penalty else None
        kw = {} if xs is None else {"x_sparse_out": xs}
        new = None
        if not self.carry:
            _, loss = self.model(x, y, form=self.form, detach_kv=self.detach_kv, **kw)
        else:
            logits, new = self.model.prefill(x, state, form=self.form, detach_kv=self.detach_kv, **kw)  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        if xs is None:
            return loss, loss, new
        penalty = torch.stack([hoyer_activity(xl.float()) for xl in xs]).mean()
        return loss + self.activity_penalty * penalty, loss, new


def make_optimizer(model: BDH, t) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices and embeddings (every BDH parameter), none on vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
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

    def __init__(self, out: Path, resume_step: int | None):
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        kept = []
        if resume_step is not None and self.jsonl.is_file():  # drop what a killed run logged after its checkpoint
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    r = json.loads(line)
                    if r.get("step", 0) <= resume_step:
                        kept.append(r)
        with atomic_path(self.jsonl) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
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
        self._j.write(json.dumps(record) + "\n")
        self._j.flush()
        if "loss" in record:
            self._cw.writerow(record)
            self._c.flush()
            if self.tb is not None:
                for k in ("loss", "bpb", "lr", "grad_norm", "tok_per_s"):
                    if record.get(k) is not None:
                        self.tb.add_scalar(f"{record['split']}/{k}", record[k], record["step"])

    def close(self) -> None:
        self._j.close()
        self._c.close()
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


def _states_to_tensors(states: list) -> dict[str, torch.Tensor]:
    """The carried TBPTT states of this process (one per micro-step; BDHState or a GPT KV cache) as named tensors."""
    out = {}
    for m, st in enumerate(states):
        if isinstance(st, BDHState):
            out.update({f"stream.{m}.rho.{l}": r for l, r in enumerate(st.rho)})
            out[f"stream.{m}.pos"] = st.pos
        elif st is not None:
            out.update(st.to_tensors(f"stream.{m}."))
    return out


def _states_from_tensors(tensors: dict, n: int, n_layer: int, device) -> list:
    def state(m: int):
        if f"stream.{m}.k.0" in tensors:  # the GPT baseline's KV cache
            from ..baselines.gpt import GPTState

            return GPTState.from_tensors(tensors, n_layer, f"stream.{m}.", device)
        rho = [tensors[f"stream.{m}.rho.{l}"].to(device) for l in range(n_layer)]
        return BDHState(rho, tensors[f"stream.{m}.pos"].to(device))

    return [state(m) if f"stream.{m}.pos" in tensors else None for m in range(n)]


def _check_resume(run: RunConfig, saved: dict, model_cfg, path: Path) -> None:
    saved_cfg = load_config(path / "config.json")
    if type(saved_cfg) is not type(model_cfg):
        raise CheckpointError(f"--resume {path}: the checkpoint holds a {type(saved_cfg).__name__} model, "
                              f"the config a {type(model_cfg).__name__}")
    diff = _config_diff(saved_cfg, model_cfg, "in the checkpoint")
    if diff:
        raise CheckpointError(f"--resume {path}: the checkpoint is for another model config: " + "; ".join(diff))
    sd = saved["run_config"]["data"]
    for key in ("corpus", "tokenizer", "block_size", "batching"):
        if sd.get(key) != getattr(run.data, key):
            raise CheckpointError(
                f"--resume {path}: data.{key} = {sd.get(key)!r} in the checkpoint, {getattr(run.data, key)!r} now"
            )


def train(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str | os.PathLike | None = None,
    progress: bool | None = None,
    echo=None,
) -> TrainResult:
    """Train `run` into `out_dir`; `resume` = a checkpoint, a run directory, or "latest" (of `out_dir`).

    `progress`: a tqdm bar (None: only on a terminal; otherwise a text line every `log_every` steps).
    Raises ValueError for bad data or configs, TrainingDiverged on a NaN/Inf loss, OSError when a write fails.
    """
    t, T = run.train, run.data.block_size
    out = Path(out_dir)
    dist = Dist.from_env(t.device)
    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    say = echo if dist.main else (lambda s: None)
    metrics, threads = None, torch.get_num_threads()
    try:
        device = pick_device(t.device, dist)
        if t.threads:
            torch.set_num_threads(t.threads)  # restored on return
        if t.precision == "bf16" and device.type != "cuda":
            raise ValueError("train.precision = 'bf16': bf16 autocast is CUDA-only; use auto or fp32 on CPU")
        autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if device.type == "cuda" and t.precision in ("auto", "bf16")
            else contextlib.nullcontext
        )
        if t.init_from and resume is None:  # checked before anything is written (the vocabulary again below)
            saved_cfg = _init_from_config(t.init_from)
            _init_from_config(t.init_from, run.model_config(saved_cfg.vocab_size))
        root = out / "checkpoints"
        resume_path = None
        if resume is not None:
            resume_path = ckpt.find_checkpoint(out if str(resume) == "latest" else resume)
        elif ckpt.list_checkpoints(root):
            raise ValueError(
                f"--out {str(out)!r} already holds checkpoints of a run: pass --resume to continue it, or choose "
                "another --out"
            )
        out.mkdir(parents=True, exist_ok=True)

        # data and tokenizer (from the checkpoint when resuming)
        tokenizer = None
        if resume_path is not None:
            from ..tokenization import load_tokenizer

            tokenizer = load_tokenizer(resume_path)
        tokenizer, train_tokens, val_tokens = prepare_data(run, out, dist, tokenizer)
        if dist.main:
            tokenizer.save(out)
        byte_lengths = token_byte_lengths(tokenizer)

        # model, optimizer, schedule, sampler
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        model_cfg = run.model_config(tokenizer.vocab_size)
        model = build_model(model_cfg).to(device)  # BDH, or the GPT baseline (model.model_type = "gpt")
        torch.manual_seed(t.seed + dist.rank)  # dropout differs between processes
        optimizer = make_optimizer(model, t)
        scheduler = make_scheduler(optimizer, t)
        sampler = make_sampler(train_tokens, run.data, t, dist.rank, dist.world)
        carry = run.data.batching == "tbptt"
        states: list[BDHState | None] = [None] * t.grad_accum
        step, best, elapsed, tokens_seen = 0, math.inf, 0.0, 0

        if t.init_from and resume_path is None:  # fine-tuning: start from a saved model's weights
            from ..models import load_model

            _init_from_config(t.init_from, model_cfg)
            model.load_state_dict(load_model(t.init_from).state_dict(), strict=True)
            say(f"initialised the weights from {t.init_from}")
        if resume_path is not None:
            saved = ckpt.read_checkpoint(resume_path, dist.rank)
            meta = saved["meta"]
            _check_resume(run, meta, model_cfg, resume_path)
            if meta["world_size"] != dist.world:
                raise CheckpointError(
                    f"--resume {resume_path}: written by {meta['world_size']} process(es), now {dist.world}; "
                    "resume with the same number of processes"
                )
            model.load_state_dict(saved["model_tensors"], strict=True)
            ckpt.load_optimizer_state(optimizer, meta["optimizer"], saved["optimizer_tensors"])
            scheduler.load_state_dict(meta["scheduler"])
            rt = saved["rank_tensors"]
            sampler.load_state_dict(meta["sampler"], {k[8:]: v for k, v in rt.items() if k.startswith("sampler.")})
            ckpt.set_rng_state(saved["rank_meta"], rt)
            states = _states_from_tensors(rt, t.grad_accum, model_cfg.n_layer, device)
            step, elapsed, tokens_seen = meta["step"], meta["elapsed_s"], meta["tokens"]
            best = math.inf if meta["best_val"] is None else meta["best_val"]
            changed = sorted(k for k, v in run.to_dict()["train"].items() if meta["run_config"]["train"].get(k) != v)
            say(f"resumed from {resume_path} at step {step}" + (f" (train settings changed: {', '.join(changed)})"
                                                                 if changed else ""))

        loss_module = LossModule(model, t.form, t.no_bptt, carry, t.activity_penalty)
        step_fn = torch.compile(loss_module) if t.compile else loss_module
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_fn = DDP(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                          forward_sync_buffers=False)

        if dist.main:
            info = {"config": run.to_dict(), "model": model_cfg.to_dict(), "params": model.num_params(),
                    "world_size": dist.world, "device": str(device), "bdh": __version__, "torch": torch.__version__}
            with atomic_path(out / "run.json") as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
            with atomic_path(out / "run.toml") as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(run.to_toml())
            metrics = Metrics(out, step if resume_path is not None else None)
        tokens_per_step = t.batch_size * t.grad_accum * T
        say(f"{type(model).__name__} {model.extra_repr()} | {run.data.corpus}: {len(train_tokens):,} train / {len(val_tokens):,} val "
            f"tokens ({tokenizer.name}) | {t.steps} steps x {tokens_per_step:,} tokens | {device}"
            + (f" x {dist.world} processes" if dist.world > 1 else ""))

        if carry and getattr(model_cfg, "damping", 0) is None:
            say("note: data.batching = 'tbptt' with model.damping = none: the carried state sums every past token of a "
                "stream (tens of thousands); long contexts need damping (--set model.damping=alibi)")

        def log(record: dict) -> None:
            if metrics is not None:
                metrics.write(record)

        def run_eval(max_tokens: int) -> dict:
            with torch.random.fork_rng(devices=[]):
                return evaluate(model, val_tokens, byte_lengths, T, batch_size=t.eval_batch_size,
                                max_tokens=max_tokens, carry=carry, form=t.form, rank=dist.rank,
                                world=dist.world, autocast=autocast)

        def sample(at: int) -> None:
            if not dist.main or not t.sample_tokens:
                return
            text = model.generate(t.sample_prompt, t.sample_tokens, tokenizer=tokenizer,
                                  temperature=t.sample_temperature, top_k=t.sample_top_k or None, seed=t.seed)
            note(f"--- sample at step {at} ---\n{t.sample_prompt}{text}\n---")
            log({"step": at, "sample": t.sample_prompt + text})

        use_bar = sys.stderr.isatty() if progress is None else progress
        bar = None
        if dist.main and use_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

        def note(msg: str) -> None:  # a message that does not break the progress bar
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                say(msg)

        model.train()
        window_tokens, window_time = 0, 0.0
        while step < t.steps:
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            hoyer_sum = torch.zeros((), device=device)  # the activity penalty's measure (train.activity_penalty)
            for micro in range(t.grad_accum):
                x, y, reset = sampler.next(micro)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = micro == t.grad_accum - 1
                sync = contextlib.nullcontext() if dist.world == 1 or last else step_fn.no_sync()
                with sync:
                    with autocast():
                        objective, loss, new_state = step_fn(x, y, None if reset else states[micro])
                    (objective / t.grad_accum).backward()
                if carry:
                    states[micro] = model.carry_state(new_state)  # detached (GPT: the last kv_window slots)
                loss_sum += loss.detach().float()
                if t.activity_penalty:
                    hoyer_sum += (objective - loss).detach().float() / t.activity_penalty
            sampler.end_step()
            loss_value = float(dist.mean(loss_sum / t.grad_accum))
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf))
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                done = ckpt.list_checkpoints(root)
                where = f"the last good checkpoint is {done[-1]}" if done else "no checkpoint had been written yet"
                what = f"loss {loss_value}" if not math.isfinite(loss_value) else f"gradient norm {grad_norm}"
                raise TrainingDiverged(
                    f"training diverged: {what} at step {step + 1} (lr {lr:.3g}); stopped before applying the update; "
                    f"{where} (lower train.lr and resume)"
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            window_time += dt

            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)
            if step % max(t.log_every, 1) == 0 or step == t.steps:
                tps = window_tokens / max(window_time, 1e-9)
                record = {"step": step, "split": "train", "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                          "tokens": tokens_seen, "tok_per_s": tps, "elapsed_s": elapsed}
                if t.activity_penalty:
                    record["x_hoyer"] = float(dist.mean(hoyer_sum / t.grad_accum))
                log(record)
                if bar is None and t.log_every:
                    eta = (t.steps - step) * tokens_per_step / tps
                    say(f"step {step}/{t.steps} | loss {loss_value:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
                        f"eta {_fmt_time(eta)}")
                window_tokens, window_time = 0, 0.0

            if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                res = run_eval(t.eval_tokens)
                log({"step": step, "split": "val", **res, "elapsed_s": elapsed})
                msg = f"step {step}: val loss {res['loss']:.4f} nats/token, {res['bpb']:.4f} bits/byte"
                note(msg)
                if res["loss"] < best:
                    best = res["loss"]
                    if dist.main:
                        ckpt.save_best(root, step, res, model, tokenizer)
            if t.sample_every and step % t.sample_every == 0 and step != t.steps:
                sample(step)
            if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps:
                rank_tensors = {f"sampler.{k}": v for k, v in sampler.state_dict()[1].items()}
                rank_tensors.update(_states_to_tensors(states))
                ckpt.save_checkpoint(
                    root, step, model=model, tokenizer=tokenizer, optimizer=optimizer, rank_tensors=rank_tensors,
                    trainer_meta={"run_config": run.to_dict(), "scheduler": scheduler.state_dict(),
                                  "sampler": sampler.state_dict()[0],
                                  "best_val": None if math.isinf(best) else best, "elapsed_s": elapsed,
                                  "tokens": tokens_seen},
                    rank=dist.rank, world=dist.world, barrier=dist.barrier, keep_last=t.keep_last,
                )
        if bar is not None:
            bar.close()
            bar = None

        # the end: full validation, a sample, the final model in OUT
        final = run_eval(t.final_eval_tokens)
        say(f"final val loss {final['loss']:.4f} nats/token, {final['bpb']:.4f} bits/byte "
            f"({final['tokens']:,} tokens, {final['bytes']:,} bytes)")
        log({"step": step, "split": "final", **final, "elapsed_s": elapsed})
        sample(step)
        summary = {"step": step, "val_loss": final["loss"], "val_bpb": final["bpb"], "val_tokens": final["tokens"],
                   "val_bytes": final["bytes"], "train_time_s": elapsed, "tokens": tokens_seen,
                   "tok_per_s": tokens_seen / max(elapsed, 1e-9),
                   "best_periodic_val_loss": None if math.isinf(best) else best,
                   "params": model.num_params(), "peak_rss_mib": _peak_rss_mib(),
                   "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
        if dist.main:
            model.save_pretrained(out, tokenizer=tokenizer)
            with atomic_path(out / "summary.json") as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
            say(f"saved the model to {out} (bdh generate --model {out} --prompt ...)")
        return TrainResult(model, tokenizer, summary)
    finally:
        if metrics is not None:
            metrics.close()
        torch.set_num_threads(threads)
        dist.close()


# ----------------------------------------------------------------------------------------------- launching
def launch(run: RunConfig, out_dir: str | os.PathLike, *, resume=None, progress: bool | None = None) -> dict:
    """Run `train` in `run.train.processes` local processes (DDP), or in this one; return the summary.

    What torchrun does, without torchrun: for `bdh train` on a multi-core CPU, where P processes of one
    thread keep their speed when the machine is shared and P OpenMP threads do not. Under torchrun (WORLD_SIZE
    set) or with processes = 1 this is just `train`.
    """
    n = run.train.processes
    if n <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return train(run, out_dir, resume=resume, progress=progress).summary
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bdh-launch-") as errors:
        try:
            mp.start_processes(_spawned, args=(n, port, run, str(out_dir), resume, progress, errors), nprocs=n,
                               start_method="spawn", join=True)
        except (mp.ProcessExitedException, mp.ProcessRaisedException):
            for f in sorted(Path(errors).glob("rank*.json")):  # the first process that failed with a message
                e = json.loads(f.read_text(encoding="utf-8"))
                raise (OSError if e["kind"] == "OSError" else ValueError)(e["message"]) from None
            raise
    return json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))


def _spawned(rank: int, world: int, port: int, run: RunConfig, out: str, resume, progress, errors: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        train(run, out, resume=resume, progress=progress)
    except (ValueError, OSError) as e:  # bad input: hand the message to the launching process
        with open(Path(errors) / f"rank{rank}.json", "w", encoding="utf-8") as f:
            json.dump({"kind": "OSError" if isinstance(e, OSError) else "ValueError", "message": str(e)}, f)
        raise SystemExit(1) from None
