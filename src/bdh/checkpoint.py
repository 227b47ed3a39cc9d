"""Checkpoints of any registered model type: `save_pretrained` / `load_pretrained` (config.json + model.safetensors).

    save_pretrained(model, "runs/m", tokenizer)    # config.json tagged with its model_type, model.safetensors
    model = load_model("runs/m")                   # whichever model type the directory holds, in eval mode

Generic: the config class and the model class come from the registry (`bdh.interface`) by the config's
"model_type"; the tensors are checked (names and shapes) against a model built on the meta device before any
memory is spent. The reference `bdh.py` format of BDH lives in `bdh.reference`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .interface import build_model, load_config
from .io import atomic_path, atomic_write_json, atomic_write_text, file_sha256

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HF_CODE_NAME = "modeling_bdh.py"  # what transformers imports for `trust_remote_code=True` (config.json's auto_map)
HF_TOKENIZER_CLASS = "BDHTokenizerFast"  # AutoTokenizer's class (tokenizer_config.json's auto_map), every model type
HF_CODE = '''"""Hugging Face classes of this model directory, for transformers' `trust_remote_code=True`.

The model's code is not in this file: it comes from the installed `bdh` package (pip install "bdh[hf]"), whose
`bdh.hf` classes (config, causal LM with a state cache, tokenizer) this file re-exports: `{Name}ConfigHF` and
`{Name}ForCausalLM` of any registered model type, made on first use.
"""
import bdh.hf.modeling as _modeling
from bdh.hf.modeling import BDHTokenizerFast  # noqa: F401


def __getattr__(name):
    return getattr(_modeling, name)
'''
MAX_SHAPE_ERRORS = 8  # shape disagreements listed in one CheckpointError


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, truncated, or not matching its config."""


def _describe(config) -> str:
    """The integer sizes of a config, e.g. "n_layer=6, n_embd=256, ...", for shape errors."""
    items = config.to_dict().items()
    return ", ".join(f"{k}={v}" for k, v in items if isinstance(v, int) and not isinstance(v, bool))


def check_tensors(tensors: dict[str, torch.Tensor], config, source: str) -> None:
    """Raise CheckpointError unless `tensors` has exactly the names, shapes and dtypes of `config`'s model's
    state_dict and finite values: floating point for parameters and floating buffers, a buffer's own dtype
    otherwise (a header edited to tag weights I32 is refused, not read as huge numbers)."""
    with torch.device("meta"):
        meta = build_model(config)
    params = {k for k, _ in meta.named_parameters()}
    ref = meta.state_dict()
    want = {k: tuple(v.shape) for k, v in ref.items()}
    missing = [k for k in want if k not in tensors]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing}")
    unexpected = sorted(set(tensors) - set(want))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {unexpected}")
    for k in want:
        if not isinstance(tensors[k], torch.Tensor):
            raise CheckpointError(f"{source}: tensor {k!r} is a {type(tensors[k]).__name__}, expected a torch.Tensor")
    bad = [k for k, shape in want.items() if tuple(tensors[k].shape) != shape]
    if bad:  # every disagreement (up to MAX_SHAPE_ERRORS), each naming the config: no tensor is special
        cfg = f"model_type={type(config).MODEL_TYPE!r}, {_describe(config)}"
        msgs = [f"tensor {k!r} has shape {tuple(tensors[k].shape)} but the config ({cfg}) expects {want[k]}"
                for k in bad[:MAX_SHAPE_ERRORS]]
        more = f"; and {len(bad) - MAX_SHAPE_ERRORS} more" if len(bad) > MAX_SHAPE_ERRORS else ""
        raise CheckpointError(f"{source}: " + "; ".join(msgs) + more)
    for k in want:
        t, r = tensors[k], ref[k]
        if k in params or r.dtype.is_floating_point:
            if not t.dtype.is_floating_point:
                kind = "parameter" if k in params else "buffer"
                raise CheckpointError(f"{source}: tensor {k!r} has dtype {t.dtype}, expected a floating-point dtype "
                                      f"for this {kind} (the file is corrupt or was edited)")
            bad_values = int((~torch.isfinite(t)).sum())
            if bad_values:
                raise CheckpointError(f"{source}: tensor {k!r} holds {bad_values} non-finite value(s) (nan or inf): "
                                      "expected finite weights (the model diverged or the file is corrupt)")
        elif t.dtype != r.dtype:
            raise CheckpointError(f"{source}: buffer {k!r} has dtype {t.dtype}, expected {r.dtype}")


def model_from_tensors(tensors: dict[str, torch.Tensor], config, source: str) -> torch.nn.Module:
    """A model of `config`'s type (on the CPU, in train mode) holding `tensors`, checked first.

    The model is built normally, so non-persistent buffers are computed by its `__init__` (without touching the
    global RNG), and the tensors are copied into it: buffers keep their own dtype (fp64 RoPE frequencies stay fp64).
    """
    check_tensors(tensors, config, source)
    with torch.random.fork_rng(devices=[]):
        model = build_model(config)
    model.load_state_dict(tensors, strict=True)
    return model


# ----------------------------------------------------------------------------- output directories
def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> None:
    """Raise ValueError (one line) unless a model may be written into `path`.

    Refused always: `path` is one of `inputs` (a command never writes onto its own input). Refused unless
    `overwrite`: `path` already holds a model (config.json or model.safetensors). Call it before writing anything.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not a directory")
    target = out.resolve()
    for src in inputs:
        if src is not None and Path(src).resolve() == target:
            raise ValueError(f"output {str(out)!r} is also an input of this command: choose another output directory")
    held = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if (out / n).exists()]
    if held and not overwrite:
        raise ValueError(f"output {str(out)!r} already holds a model ({held[0]}): pass --overwrite to replace it")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, atomically; a failed write raises OSError naming `path` and the errno
    (safetensors raises its own error type, e.g. "I/O error: File too large (os error 27)")."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:
            m = re.search(r"os error (\d+)", str(e))
            if m is None:
                raise
            raise OSError(int(m.group(1)), os.strerror(int(m.group(1)))) from None  # atomic_path adds the path


# ----------------------------------------------------------------------------- native format
def hf_class_names(model_type: str) -> tuple[str, str]:
    """The names of a registered type's transformers classes in `bdh.hf.modeling` (config, causal LM), from the
    type's `hf_name` (default: its model class's name), e.g. ("BDHConfigHF", "BDHForCausalLM")."""
    from .interface import hf_name

    prefix = hf_name(model_type)
    return f"{prefix}ConfigHF", f"{prefix}ForCausalLM"


def hf_fields(model_type: str) -> dict[str, Any]:
    """`architectures` and `auto_map` for config.json, so that transformers loads the directory (`bdh.hf`; with
    `trust_remote_code=True` through the `modeling_bdh.py` written beside it); every registered type has them."""
    config_class, model_class = hf_class_names(model_type)
    module = HF_CODE_NAME.removesuffix(".py")
    return {"architectures": [model_class],
            "auto_map": {"AutoConfig": f"{module}.{config_class}", "AutoModelForCausalLM": f"{module}.{model_class}"}}


def model_fingerprint(directory: str | os.PathLike) -> str:
    """SHA-256 of a model directory's config.json and weights: what caches and sessions made from a model are
    keyed to (`bdh view`'s neuron index, `bdh serve`'s sessions), so that other weights are told apart."""
    return file_sha256(Path(directory) / CONFIG_NAME, Path(directory) / WEIGHTS_NAME)


def save_pretrained(model, directory: str | os.PathLike, tokenizer: Any = None) -> None:
    """Write `config.json` (with its model_type and the Hugging Face fields, `hf_fields`) and `model.safetensors`,
    each atomically, `modeling_bdh.py` (+ the tokenizer, `save_tokenizer`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_tensors(directory / WEIGHTS_NAME, tensors, {"format": "pt"})  # one key: byte-identical files
    model.config.save(directory / CONFIG_NAME, extra=hf_fields(type(model.config).MODEL_TYPE))  # atomic (bdh.io)
    atomic_write_text(directory / HF_CODE_NAME, HF_CODE)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """`tokenizer.save(directory)`, with `auto_map` in its tokenizer_config.json and `modeling_bdh.py` beside it, as config.json has: transformers' AutoTokenizer then loads `BDHTokenizerFast` with
    trust_remote_code=True (and without it asks for trust_remote_code rather than for sentencepiece)."""
    import json

    from .tokenization import CONFIG_FILE

    directory = Path(directory)
    tokenizer.save(directory)
    cfg = directory / CONFIG_FILE
    if cfg.is_file():  # (a MissingTokenizer writes nothing)
        fields = json.loads(cfg.read_text(encoding="utf-8"))
        fields["auto_map"] = {"AutoTokenizer": [None, f"{HF_CODE_NAME.removesuffix('.py')}.{HF_TOKENIZER_CLASS}"]}
        atomic_write_json(cfg, fields, sort_keys=True)
        atomic_write_text(directory / HF_CODE_NAME, HF_CODE)


def directory_tokenizer(directory: str | os.PathLike, vocab_size: int):
    """The tokenizer saved in a model directory, for a model of `vocab_size` tokens (`load_tokenizer`): bytes when
    none is saved and vocab_size is 256, else a `MissingTokenizer` (an error on use); CheckpointError for a saved
    tokenizer of another size (`check_vocab`)."""
    from .tokenization import check_vocab, load_tokenizer

    tokenizer = load_tokenizer(directory, vocab_size)
    check_vocab(tokenizer, vocab_size, str(directory), CheckpointError)
    return tokenizer


def load_pretrained(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
    """Load whichever registered model type `save_pretrained` wrote into `directory`, with `model.tokenizer`,
    in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"model directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    directory = Path(directory)
    if directory.is_file():
        raise NotADirectoryError(f"model directory {str(directory)!r} is a file: expected the directory that holds "
                                 f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{directory}: missing {p.name} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = load_config(cfg_path)  # the class registered for its "model_type"
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid config: {e}") from e
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{w_path}: truncated or not a safetensors file ({e})") from e
    model = model_from_tensors(tensors, config, str(w_path))
    model.tokenizer = directory_tokenizer(directory, config.vocab_size)  # bytes when none is saved (vocab_size 256)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval()


def load_model(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None):
    """Load whichever model type `save_pretrained` wrote into `directory`, in eval mode (= `load_pretrained`)."""
    return load_pretrained(directory, device=device, dtype=dtype)
