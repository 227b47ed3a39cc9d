"""The model interface and the model-type registry.

Generic code (the trainer, evaluation, generation, checkpoints, the CLI) talks to a model only through
`LanguageModel` below and finds its classes through the registry, by the `model_type` written in
`config.json`. A model type is a config class + a model class (+ its state class), registered once in the
model's own module:

    register_model_type("bdh", BDHConfig, BDH)        # bottom of bdh/model.py
    register_model_type("gpt", GPTConfig, GPT)        # bottom of bdh/baselines/gpt.py

    build_model(config)           # a fresh model of config's type
    config_from_dict(d)           # the config class named by d["model_type"] (default "bdh")

Adding a model type touches one file: a config (a dataclass with `MODEL_TYPE`, subclass `bdh.config.JSONConfig`),
a model implementing `LanguageModel` (subclass `bdh.pretrained.PretrainedMixin` for the loss, generate and
checkpoints), and a `register_model_type` call. `tests/test_interface.py` does exactly this for a toy model and
trains, checkpoints, resumes and generates with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

# What a model type may support beyond the core interface (`LanguageModel.capabilities`):
#   "forms"            forward/prefill accept form="parallel" | "chunked" | "recurrent" (else only "auto")
#   "no_bptt"          forward/prefill accept detach_kv=True (train.no_bptt)
#   "activity_penalty" forward/prefill accept x_sparse_out=[...] (train.activity_penalty)
#   "sparse_decode"    step accepts sparse=True / "auto"
#   "hooks"            the model emits named hook points (`model.hooks(...)`; its kinds: `Model.HOOK_KINDS`)
#   "neurons"          BDH's neuron views apply: hook kinds x_sparse / y_sparse / xy per neuron, config sizes N, n, D,
#                      encoder / decoder matrices (`bdh view`'s Neuron and Synapse views, its neuron index)
#   "rho_state"        the state holds BDH's rho per layer (`states_at`; `bdh view`'s State view)
#   "layer_passes"     the weights do not depend on config.n_layer (one set shared by every layer): the model runs K
#                      layer passes with its config's n_layer = K (`bdh.tasks.evaluate.with_layers`, `bdh tasks
#                      compare`'s passes sweep; train.layer_passes sets `model.config` around the training forward)
CAPABILITIES = ("forms", "no_bptt", "activity_penalty", "sparse_decode", "hooks", "neurons", "rho_state",
                "layer_passes")

# What a model class may declare beside `capabilities` (defaults in `bdh.pretrained.PretrainedMixin`):
#   max_positions: int | None      the longest context (learned positions), None when unbounded (servers check it)
#   embedding_params: tuple[str]   names (dotted parts) of the embedding / output-head parameters: the matrices
#                                  Muon leaves to AdamW (`bdh.training.muon.is_hidden_matrix`)
#   tiny_task_model: dict          `[model]` fields of a small model for reasoning-task runs (`bdh.tasks`), or None
#   hf_name: str                   the prefix of its transformers classes ({hf_name}ConfigHF / {hf_name}ForCausalLM;
#                                  default: the model class's name)


@runtime_checkable
class ModelConfig(Protocol):
    """A model config: a validated dataclass, saved as `config.json` tagged with its `MODEL_TYPE`."""

    MODEL_TYPE: ClassVar[str]
    n_layer: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig": ...

    def save(self, path: str | os.PathLike) -> None: ...

    def check_training(self, *, batching: str) -> None:
        """Raise ValueError naming the setting when this model cannot be trained with these data options."""


@runtime_checkable
class LanguageModel(Protocol):
    """What the trainer, evaluation, generation, checkpoints and the CLI use of a model (an nn.Module).

    States are opaque to generic code: it creates them (`init_state`, `prefill`), threads them through `step`,
    detaches them between TBPTT windows (`carry_state`), stacks/selects rows (`state.select`, `type(state).cat`)
    and converts them to named tensors for checkpoints (`state_to_tensors` / `state_from_tensors`).
    """

    config: ModelConfig
    capabilities: ClassVar[frozenset[str]]
    max_positions: int | None  # the longest context, None when unbounded (PretrainedMixin: None)
    embedding_params: ClassVar[tuple[str, ...]]  # embedding / output-head parameter names (PretrainedMixin: ())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, form: str = "auto",
                detach_kv: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) of ids (B, T) from an empty state, and the mean cross-entropy when `targets`."""

    def init_state(self, batch_size: int, device=None) -> Any:
        """An empty state for `batch_size` sequences."""

    def prefill(self, idx: torch.Tensor, state: Any = None, *, form: str = "auto",
                detach_kv: bool = False) -> tuple[torch.Tensor, Any]:
        """Logits (B, T, V) of a prompt continuing from `state`, and the new state (differentiable)."""

    def step(self, token_ids: torch.Tensor, state: Any, *, inplace: bool = False,
             check_ids: bool = True) -> tuple[torch.Tensor, Any]:
        """One token per row (B,): logits (B, V) and the new state. `check_ids=False` skips the id range check
        (a device->host sync) for ids the caller produced itself, e.g. sampled tokens in a decode loop."""

    def carry_state(self, state: Any) -> Any:
        """The state carried to the next TBPTT window: detached from autograd (and trimmed if the type needs)."""

    def state_to_tensors(self, state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state as named tensors (every name starts with `prefix`), for safetensors checkpoints."""

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], prefix: str = "", device=None) -> Any:
        """The inverse of `state_to_tensors`."""

    def num_params(self) -> int: ...

    def flops_per_token(self) -> int:
        """Forward FLOPs per token (2 per multiply-add) of one decode step (`type(self).flops(config, 1,
        form="recurrent").forward` for a type with a FLOP model)."""

    # The FLOP model of the type (optional: `token_flops` names a type without one):
    #     @classmethod
    #     def flops(cls, config, T: int, *, form: str = "auto", causal: bool = False) -> TokenFlops
    # matmul FLOPs per token of a sequence of T tokens in `form` ("recurrent": one decode step after T - 1 tokens).
    # A classmethod of the model class taking a config, so planners size runs without building a model.


@dataclasses.dataclass(frozen=True)
class TokenFlops:
    """Matmul FLOPs per token (2 per multiply-add) of a model type at one sequence length and form.

    The count of a model type's `flops` (its one FLOP model), tested against `torch.utils.flop_counter` in
    tests/test_flops.py. Elementwise work (LayerNorm, ReLU, RoPE, masks, softmax, the loss) and the optimizer
    are not counted, as in MFU.

    forward: the forward pass. training: the model FLOPs of one training token, 3 x forward (backward = 2 x
    forward; what MFU counts, as usual). executed_training: what forward + backward actually execute
    (<= training where the backward skips products, e.g. BDH's scores with keys = queries); HFU counts these.
    """

    forward: float
    executed_backward: float

    @property
    def training(self) -> float:
        return 3 * self.forward

    @property
    def executed_training(self) -> float:
        return self.forward + self.executed_backward


def token_flops(config, T: int, *, form: str = "auto", causal: bool = False) -> TokenFlops:
    """Matmul FLOPs per token of `config`'s registered model type at sequence length T (`Model.flops`).

    `form`: "auto" (what `forward` runs at T), or a form the type declares ("parallel", "chunked", "recurrent"
    for BDH); `causal`: count only the keys a query attends to (the work of a perfect causal kernel) instead
    of the full T x T product the kernels execute."""
    config = getattr(config, "config", config)  # a model or its config
    mt = model_type_of(config)
    fn = getattr(mt.model_class, "flops", None)
    if not callable(fn):
        raise ValueError(f"model type {mt.name!r}: {mt.model_class.__name__} declares no FLOP model "
                         "(a classmethod flops(config, T, form=..., causal=...) -> bdh.interface.TokenFlops)")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T={T!r}: expected a positive integer (tokens in the sequence)")
    return fn(config, T, form=form, causal=causal)


@dataclasses.dataclass(frozen=True)
class ModelType:
    name: str
    config_class: type
    model_class: type


_REGISTRY: dict[str, ModelType] = {}
DEFAULT_MODEL_TYPE = "bdh"  # a config.json / [model] section without "model_type" (the format before the registry)
_LISTENERS: list = []


def on_register(callback) -> None:
    """Call `callback(model_type: ModelType)` for every registered type now and for each one registered later
    (e.g. `bdh.hf` makes and registers a type's transformers classes)."""
    _LISTENERS.append(callback)
    for entry in list(_REGISTRY.values()):
        callback(entry)


def hf_name(name: str) -> str:
    """The prefix of a registered type's transformers classes (`{prefix}ConfigHF`, `{prefix}ForCausalLM`)."""
    cls = get_model_type(name).model_class
    return getattr(cls, "hf_name", None) or cls.__name__


def tiny_task_model(name: str) -> dict:
    """The `[model]` fields of a small model of this type for reasoning-task runs (its `tiny_task_model`; the
    config's defaults when it declares none), with "model_type"."""
    fields = getattr(get_model_type(name).model_class, "tiny_task_model", None)
    return {"model_type": name, **(fields or {})}


def register_model_type(name: str, config_class: type, model_class: type, *, replace: bool = False) -> ModelType:
    """Register a model type under `name` (= `config_class.MODEL_TYPE`, the "model_type" of its config.json)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model_type: name={name!r}: expected a non-empty string")
    if getattr(config_class, "MODEL_TYPE", None) != name:
        raise ValueError(f"register_model_type({name!r}): {config_class.__name__}.MODEL_TYPE is "
                         f"{getattr(config_class, 'MODEL_TYPE', None)!r}, expected {name!r}")
    missing = [m for m in ("forward", "init_state", "prefill", "step", "carry_state", "state_to_tensors",
                           "state_from_tensors", "num_params", "flops_per_token") if not callable(getattr(model_class, m, None))]
    if missing:
        raise TypeError(f"register_model_type({name!r}): {model_class.__name__} lacks {missing} (bdh.interface.LanguageModel)")
    caps = getattr(model_class, "capabilities", None)
    if not isinstance(caps, frozenset) or not caps <= set(CAPABILITIES):
        raise TypeError(f"register_model_type({name!r}): {model_class.__name__}.capabilities must be a frozenset of "
                        f"{CAPABILITIES}, got {caps!r}")
    old = _REGISTRY.get(name)
    if old is not None and not replace and (old.config_class, old.model_class) != (config_class, model_class):
        raise ValueError(f"model type {name!r} is already registered ({old.model_class.__name__}); pass replace=True")
    _REGISTRY[name] = entry = ModelType(name, config_class, model_class)
    for callback in _LISTENERS:
        callback(entry)
    return entry


def unregister_model_type(name: str) -> None:
    _REGISTRY.pop(name, None)


def model_types(capability: str | None = None) -> tuple[str, ...]:
    """The registered type names (with `capability`: those declaring it)."""
    return tuple(n for n, mt in _REGISTRY.items() if capability is None or capability in mt.model_class.capabilities)


def get_model_type(name: str) -> ModelType:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"model_type={name!r}: expected one of {', '.join(map(repr, _REGISTRY))}") from None


def model_type_of(obj) -> ModelType:
    """The registered type of a config or a model."""
    config = getattr(obj, "config", obj)
    return get_model_type(getattr(type(config), "MODEL_TYPE", None))


def config_from_dict(d: dict[str, Any]):
    """The config of the type named by d["model_type"] (default "bdh"), validated."""
    if not isinstance(d, dict):
        raise ValueError(f"model config: expected a JSON object, got {type(d).__name__}")
    return get_model_type(d.get("model_type", DEFAULT_MODEL_TYPE)).config_class.from_dict(d)


def load_config(path: str | os.PathLike):
    """A config.json of any registered type."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return config_from_dict(d)


def build_model(config) -> torch.nn.Module:
    """A freshly initialised model of config's registered type."""
    mt = getattr(type(config), "MODEL_TYPE", None)
    if mt not in _REGISTRY or not isinstance(config, _REGISTRY[mt].config_class):
        raise TypeError(f"build_model: expected a config of a registered model type ({', '.join(_REGISTRY)}), "
                        f"got {type(config).__name__}")
    return _REGISTRY[mt].model_class(config)
