"""The run configuration: `[model]` (the config fields of the registered model type `model_type`, default
"bdh": BDHConfig; "gpt": the GPT-2 baseline's GPTConfig; see `bdh.interface`), `[data]` and `[train]`, read
from TOML once and validated.

    cfg = load_run_config("tiny", overrides=["train.lr=3e-4", "data.block_size=64"])

A config is a shipped name (`tiny`, `default`, `reference-25m`: `bdh/configs/<name>.toml`) or a path to a
`.toml` file. Keys missing from the file keep the dataclass defaults below (for `[model]`, the defaults of
`BDHConfig`, i.e. the reference 25M model). `--set section.key=value` overrides are parsed as TOML values
(`3e-4`, `true`, `"text"`, `[0.9, 0.99]`; a bare word is a string) and checked against the field's type.
`model.vocab_size` is taken from the tokenizer.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from ..interface import DEFAULT_MODEL_TYPE, get_model_type, model_types
from .sources import data_source_kind

SHIPPED_CONFIGS = ("tiny", "default", "reference-25m", "gpt-default", "task-tiny")
TASK_PREFIX = "task:"  # data.corpus = "task:REF": train on a bdh.tasks task (REF as bdh.tasks.load_task takes it)
BATCHING = ("random", "tbptt")
DECAYS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
CURRICULA = ("uniform", "grow", "mixed")  # data.task_curriculum
MAX_LAYER_PASSES = 64  # train.layer_passes bound: bdh.tasks.MAX_PASSES (training does not import bdh.tasks)


@dataclasses.dataclass
class DataConfig:
    corpus: str = "shakespeare"  # bdh.data.corpora.resolve_corpus spec: shakespeare, pydoc, gettext:fr, a path, ...
    # or "task:REF": a bdh.tasks task (a built-in name, FILE.py:NAME, module:NAME); then the tokenizer is the task's
    # vocabulary (WordTokenizer; data.tokenizer is ignored), sequence lengths come from the sizes (data.block_size
    # is ignored) and only data.batching = "random" applies
    tokenizer: str = "bytes"  # bytes | gpt2 | bpe (trained on the training split)
    bpe_vocab_size: int = 4096
    block_size: int = 256  # T: tokens per sequence (random crops) or per TBPTT chunk
    batching: str = "random"  # random: independent crops (the reference); tbptt: streams, state carried (+ damping)
    jsonl_field: str = "text"
    encoding_errors: str = "strict"  # strict | replace (invalid UTF-8 in user files)
    val_fraction: float = 0.1  # for corpora split by characters (user files, pydoc)
    task_size: int = 0  # task runs: the largest training size (0 = the task's train_size)
    task_min_size: int = 0  # task runs: the smallest training size (0 = the task's min_size); each micro-step draws
    # one size uniformly in [task_min_size, task_size]
    task_curriculum: str = "uniform"  # task runs, sizes over training (spec 6d; bdh.training.batching.TaskSampler):
    # uniform: one size per micro-step, uniform in [task_min_size, task_size] | grow: the same, but the largest size
    # grows linearly from task_min_size (step 0) to task_size (step task_curriculum_steps - 1), then stays | mixed:
    # every example of a batch its own size, uniform in [task_min_size, task_size] (right-padded to the longest)
    task_curriculum_steps: int = 0  # "grow": optimizer steps over which the largest size grows (0 = train.steps)

    @property
    def task_ref(self) -> str | None:
        """REF of data.corpus = "task:REF", None for a text corpus."""
        return self.corpus[len(TASK_PREFIX):] if self.corpus.startswith(TASK_PREFIX) else None

    def task_sizes(self, task) -> tuple[int, int]:
        """(smallest, largest) training size of `task` for this config: ValueError (TaskError) naming a bad one."""
        hi = self.task_size or task.train_size
        lo = self.task_min_size or task.min_size
        task.check_size(lo)
        task.check_size(hi)
        if lo > hi:
            raise ValueError(f"data.task_min_size = {lo} > data.task_size = {hi}: expected min <= max")
        return lo, hi

    def validate(self) -> None:
        _positive(self, "block_size", "bpe_vocab_size")
        _non_negative(self, "task_size", "task_min_size", "task_curriculum_steps")
        _choice(self, "task_curriculum", CURRICULA)
        if self.task_ref is None and self.task_curriculum != "uniform":
            raise _bad(self, "task_curriculum", "'uniform' for a text corpus: a curriculum over sizes applies to "
                       "task runs (data.corpus = 'task:...')")
        if self.task_curriculum_steps and self.task_curriculum != "grow":
            raise _bad(self, "task_curriculum_steps", f"0 with data.task_curriculum = {self.task_curriculum!r}: it is "
                       "the length of the 'grow' curriculum")
        if self.task_ref is not None:
            if not self.task_ref:
                raise _bad(self, "corpus", "task:NAME, task:FILE.py:NAME or task:module:NAME")
            if self.batching != "random":
                raise _bad(self, "batching", "'random' for a task (data.corpus = 'task:...'): task examples are "
                           "independent sequences, TBPTT streams do not apply")
        _choice(self, "batching", BATCHING)
        _choice(self, "tokenizer", ("bytes", "gpt2", "bpe"))
        _choice(self, "encoding_errors", ("strict", "replace"))
        if not 0.0 < self.val_fraction < 1.0:
            raise _bad(self, "val_fraction", "a number in (0, 1)")
        if not self.corpus:
            raise _bad(self, "corpus", "a corpus name or a path")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps (time-boxed by count, never by wall clock: resume stays exact)
    batch_size: int = 32  # sequences per micro-step, global: split over the DDP processes
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 3e-3  # peak learning rate
    warmup: int = 100  # linear warmup steps
    decay: str = "linear"  # linear | cosine | constant, from lr after warmup to lr * min_lr_ratio at `steps`
    min_lr_ratio: float = 0.1
    optimizer: str = "adamw"  # adamw | muon (Muon on the hidden weight matrices, AdamW on the rest: bdh.training.muon)
    weight_decay: float = 0.1  # decoupled, on matrices and embeddings (AdamW and Muon alike), none on vectors
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    seed: int = 1337  # model initialisation and dropout
    data_seed: int = 1337  # batch sampling
    no_bptt: bool = False  # detach attention keys and values (paper §7.2; the model's detach_kv)
    activity_penalty: float = 0.0  # weight of the Hoyer activity penalty on x_sparse (bdh.sparse.hoyer_activity,
    # mean over layers): trains sparser models for sparse decode; 0 = the paper's objective
    init_from: str = ""  # a model directory (save_pretrained / a finished run) whose weights start the run
    form: str = "auto"  # attention form for training: auto | parallel | chunked
    layer_passes: list[int] | None = None  # [lo, hi]: each optimizer step runs the model with a number of layer
    # passes drawn uniformly in [lo, hi] (from train.seed and the step: resume is exact), depth as test-time compute
    # (spec 6d); model types with the "layer_passes" capability (BDH: weights shared across layers), random batching
    # only; evaluation uses model.n_layer. None or [] = model.n_layer
    compile: bool = False  # torch.compile the training step
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (CUDA, or CPUs with AVX512-BF16/AMX)
    threads: int = 0  # CPU threads per process (torch.set_num_threads); 0 = torch's default
    processes: int = 1  # local DDP processes that `bdh train` spawns itself (like torchrun --nproc_per_node)
    log_every: int = 10
    eval_every: int = 250  # also evaluated at the end; 0 = only at the end
    eval_tokens: int = 65536  # periodic evals: a fixed subset of this many validation tokens; 0 = all
    final_eval_tokens: int = 0  # the final eval: 0 = the whole validation split
    eval_batch_size: int = 32  # validation streams evaluated together
    sample_every: int = 0  # print a text sample every N steps (and at the end when > 0 or sample_tokens > 0)
    sample_tokens: int = 200  # length of the final sample; 0 = no sample
    sample_prompt: str = "\n"
    sample_temperature: float = 0.8
    sample_top_k: int = 0  # 0 = off
    checkpoint_every: int = 500  # also at the end; 0 = only at the end
    keep_last: int = 2  # step checkpoints kept (the best-by-val model is kept separately)

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "grad_accum", "eval_batch_size", "keep_last", "processes")
        _non_negative(
            self, "warmup", "log_every", "eval_every", "eval_tokens", "final_eval_tokens", "sample_every",
            "sample_tokens", "sample_top_k", "checkpoint_every", "seed", "data_seed", "threads",
        )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise _bad(self, "lr", "a positive number")
        for f in ("weight_decay", "grad_clip", "sample_temperature", "activity_penalty"):
            if not (math.isfinite(getattr(self, f)) and getattr(self, f) >= 0):
                raise _bad(self, f, "a number >= 0")
        for f in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise _bad(self, f, "a number in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise _bad(self, "min_lr_ratio", "a number in [0, 1]")
        _choice(self, "decay", DECAYS)
        _choice(self, "optimizer", ("adamw", "muon"))
        _choice(self, "precision", PRECISIONS)
        _choice(self, "form", ("auto", "parallel", "chunked"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise _bad(self, "device", "auto, cpu, cuda or cuda:N")
        if self.batch_size % self.processes:
            raise _bad(self, "batch_size", f"a multiple of train.processes = {self.processes} (the global batch)")
        if self.sample_tokens and not self.sample_prompt:
            raise _bad(self, "sample_prompt", "a non-empty prompt (or sample_tokens = 0)")
        if self.layer_passes:
            lp = self.layer_passes
            if len(lp) != 2 or not 1 <= lp[0] <= lp[1] <= MAX_LAYER_PASSES:
                raise _bad(self, "layer_passes", f"[lo, hi] with 1 <= lo <= hi <= {MAX_LAYER_PASSES} (or [] for "
                           "model.n_layer)")

    @property
    def passes_range(self) -> tuple[int, int] | None:
        """(lo, hi) of train.layer_passes, None when unset (the model's n_layer)."""
        return (self.layer_passes[0], self.layer_passes[1]) if self.layer_passes else None


@dataclasses.dataclass
class RunConfig:
    model: dict[str, Any]  # the model type's config fields except vocab_size (from the tokenizer)
    data: DataConfig
    train: TrainConfig
    name: str = "custom"  # the config's name (shipped name or file stem)

    @property
    def model_type(self) -> str:
        return self.model.get("model_type", DEFAULT_MODEL_TYPE)

    def model_config(self, vocab_size: int):
        """The config of the registered type `model.model_type` (default "bdh") for a tokenizer of `vocab_size`."""
        cls = get_model_type(self.model_type).config_class
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in self.model.items() if k != "model_type"}
        wrong = sorted(set(kwargs) - fields)
        if wrong:
            raise ValueError(
                f"model.{wrong[0]} is not a setting of model_type {self.model_type!r}; it has "
                + ", ".join(sorted(fields - {"vocab_size"}))
            )
        return cls(**kwargs, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": dict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }

    def to_toml(self) -> str:
        """The resolved config as TOML: `bdh train --config OUT/run.toml` repeats the run."""
        lines = [f"# resolved config of {self.name!r}"]
        for section, values in self.to_dict().items():
            if section == "name":
                continue
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]  # None: the default
        return "\n".join(lines) + "\n"

    def validate(self) -> None:
        """Every section, the model config, and the train options against the model type's capabilities."""
        self.data.validate()
        self.train.validate()
        data_source_kind(self.data.corpus).check(self)  # e.g. a task run: the task loads, its examples are well-formed
        cfg = self.model_config(self.model.get("vocab_size", 256))  # raises ValueError naming the bad field
        cfg.check_training(batching=self.data.batching)  # type-specific data constraints (e.g. the GPT's positions)
        self._check_capabilities(get_model_type(self.model_type).model_class)

    def _check_capabilities(self, model_class: type) -> None:
        """ValueError for a train option the model type does not support (`LanguageModel.capabilities`)."""
        caps, t, mt = getattr(model_class, "capabilities", frozenset()), self.train, self.model_type
        if t.no_bptt and "no_bptt" not in caps:
            raise ValueError(f"train.no_bptt = true is a BDH option (detached keys and values); model_type {mt!r} "
                             "does not support it (no 'no_bptt' capability)")
        if t.activity_penalty and "activity_penalty" not in caps:
            raise ValueError(f"train.activity_penalty = {t.activity_penalty}: a BDH option (x_sparse); model_type "
                             f"{mt!r} does not support it (no 'activity_penalty' capability)")
        if t.form != "auto" and "forms" not in caps:
            raise ValueError(f"train.form = {t.form!r}: model_type {mt!r} has one form (auto)")
        if t.layer_passes and "layer_passes" not in caps:
            raise ValueError(f"train.layer_passes = {t.layer_passes}: model_type {mt!r} has per-layer weights (no "
                             "'layer_passes' capability); it applies to models that share weights across layers, "
                             "e.g. BDH")
        if t.layer_passes and self.data.batching != "random":
            raise ValueError(f"train.layer_passes = {t.layer_passes}: expected data.batching = 'random' (a carried "
                             "TBPTT state holds one layer state per pass)")


# ----------------------------------------------------------------------------------------------- loading
def config_path(name_or_path: str | os.PathLike) -> Path:
    """The TOML file of a shipped config name, or the given path."""
    s = os.fspath(name_or_path)
    if s in SHIPPED_CONFIGS:
        return Path(str(importlib.resources.files("bdh") / "configs" / f"{s}.toml"))
    p = Path(s).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"config {s!r} is neither a shipped config ({', '.join(SHIPPED_CONFIGS)}) nor an existing .toml file"
        )
    return p


def load_run_config(
    name_or_path: str | os.PathLike = "default", overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a TOML config (shipped name or path), apply `section.key=value` overrides, validate."""
    path = config_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    name = os.fspath(name_or_path) if os.fspath(name_or_path) in SHIPPED_CONFIGS else path.stem
    cfg = RunConfig(model={}, data=DataConfig(), train=TrainConfig(), name=name)
    for section, table in raw.items():
        if section not in ("model", "data", "train") or not isinstance(table, dict):
            raise ValueError(f"{path}: unknown section or key {section!r}; expected tables [model], [data], [train]")
        for key, value in table.items():
            _set(cfg, section, key, value, str(path))
    for item in overrides:
        apply_override(cfg, item)
    cfg.validate()
    return cfg


def apply_override(cfg: RunConfig, item: str) -> None:
    """Apply one `section.key=value` override (value parsed as TOML, else taken as a string)."""
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
    dotted, text = item.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ValueError(f"--set {item!r}: expected a key of the form section.key (model.*, data.*, train.*)")
    section, key = dotted.split(".")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    if not isinstance(value, str) and _field_types(section, "--set").get(key) is str:
        value = text  # a text field takes the text as written (data.corpus=2024.txt, sample_prompt=1984)
    _set(cfg, section, key, value, "--set")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# ----------------------------------------------------------------------------------------------- type checks
def _model_types() -> dict[str, Any]:
    """Field types of `[model]`: the union over the registered config classes (the default type wins where types
    differ)."""
    names = sorted(model_types(), key=lambda n: n == DEFAULT_MODEL_TYPE)  # the default type last: its types override
    types_ = {}
    for name in names:
        cls = get_model_type(name).config_class
        hints = typing.get_type_hints(cls)
        types_.update({f.name: hints[f.name] for f in dataclasses.fields(cls)})
    return {**types_, "model_type": str}


_TYPES = {"data": typing.get_type_hints(DataConfig), "train": typing.get_type_hints(TrainConfig)}


def _field_types(section: str, source: str) -> dict[str, Any]:
    if section == "model":
        return {k: t for k, t in _model_types().items() if k != "vocab_size"}
    if section in _TYPES:
        return _TYPES[section]
    raise ValueError(f"{source}: unknown config section {section!r}; expected model, data or train")


def _set(cfg: RunConfig, section: str, key: str, value: Any, source: str) -> None:
    fields = _field_types(section, source)
    if key not in fields:
        hint = " (it is set from the tokenizer)" if (section, key) == ("model", "vocab_size") else ""
        raise ValueError(
            f"{source}: unknown config key {section}.{key}{hint}; [{section}] has keys {', '.join(sorted(fields))}"
        )
    ok, converted = _check_type(value, fields[key])
    if not ok:
        raise ValueError(
            f"{source}: {section}.{key} = {value!r} has type {type(value).__name__}; expected {_type_name(fields[key])}"
        )
    if section == "model":
        cfg.model[key] = converted
    else:
        setattr(getattr(cfg, section), key, converted)


def _check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """(matches, value converted to the field type) for int, float, bool, str, None, list[X] and unions."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in typing.get_args(tp):
            return True, None  # TOML has no null: the words none / null stand for it
        for arm in typing.get_args(tp):
            ok, v = _check_type(value, arm)
            if ok:
                return True, v
        return False, value
    if origin is list:
        (arm,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        out = []
        for v in value:
            ok, c = _check_type(v, arm)
            if not ok:
                return False, value
            out.append(c)
        return True, out
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(
            value, (int, float)
        ) and not isinstance(value, bool) else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return "none" if tp is type(None) else tp.__name__


# ----------------------------------------------------------------------------------------------- validation
def _bad(obj: Any, field: str, expected: str) -> ValueError:
    section = "data" if isinstance(obj, DataConfig) else "train"
    return ValueError(f"{section}.{field} = {getattr(obj, field)!r}: expected {expected}")


def _positive(obj: Any, *fields: str) -> None:
    for f in fields:
        if getattr(obj, f) < 1:
            raise _bad(obj, f, "a positive integer")


def _non_negative(obj: Any, *fields: str) -> None:
    for f in fields:
        if getattr(obj, f) < 0:
            raise _bad(obj, f, "an integer >= 0")


def _choice(obj: Any, field: str, choices: tuple[str, ...]) -> None:
    if getattr(obj, field) not in choices:
        raise _bad(obj, field, "one of " + ", ".join(choices))
