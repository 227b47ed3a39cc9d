"""transformers classes around our models: configs, causal LMs with a state cache, the tokenizer.

| class               | what it is                                                                           |
|---------------------|--------------------------------------------------------------------------------------|
| `{Name}ConfigHF`    | `PreTrainedConfig` of a registered model type: every field of config.json as an       |
|                     | attribute (`BDHConfigHF` for "bdh", `GPTConfigHF` for "gpt"; `hf_classes`)            |
| `{Name}ForCausalLM` | `PreTrainedModel` + `GenerationMixin` holding our model as `.model` (`BDHForCausalLM`,|
|                     | `GPTForCausalLM`, ...); made for every registered type, on registration (`register`)  |
| `BDHCache`          | a `transformers.Cache` carrying the model's own state (BDHState: rho + positions;     |
|                     | GPTState: the KV cache) through `generate()`; beam search reorders its rows           |
| `BDHTokenizerFast`  | `PreTrainedTokenizerFast` of the directory's tokenizer (`Tokenizer.to_hf`), same ids  |

Loading and saving go through `bdh.checkpoint` (one home for checkpoints: the same checks, files and names), so a
directory moves both ways between `bdh` and transformers. The forward pass is the model's own: a prompt is
prefilled in pieces with the state carried (`bdh.generation.read_in_pieces`), one new token is one in-place
`model.step` under inference mode, exactly as `bdh.generation` does, so greedy `generate()` gives the ids `bdh
generate` gives; without autograd, non-finite logits are its error too (`bdh.generation.check_finite`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    directory_tokenizer,
    load_pretrained,
    save_pretrained,
    save_tokenizer,
)
from ..generation import check_finite, read_in_pieces
from ..checkpoint import hf_class_names
from ..interface import build_model, get_model_type, load_config, model_type_of, model_types, on_register
from ..tokenization import load_tokenizer

# keyword arguments of `from_pretrained` that only matter for the Hub or for transformers' own loader
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder",
               "trust_remote_code", "code_revision", "_from_auto", "_from_pipeline", "_commit_hash",
               "low_cpu_mem_usage", "use_safetensors", "attn_implementation", "proxies", "adapter_kwargs")
# generate() options that make it assisted / speculative decoding (draft tokens checked, then the cache cropped)
_ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp")


# ----------------------------------------------------------------------------------------------- configs
class _FamilyConfig(PreTrainedConfig):
    """A config.json of ours as a `PreTrainedConfig`: every key becomes an attribute (transformers keeps unknown
    keyword arguments), `bdh_config()` gives back our validated config."""

    model_type = ""

    def bdh_config(self):
        """Our config (`BDHConfig` / `GPTConfig`) from this one's attributes, validated by its own class."""
        import dataclasses

        cls = get_model_type(self.model_type).config_class
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if hasattr(self, f.name)}
        return cls.from_dict(d)


def hf_config(config) -> _FamilyConfig:
    """The transformers config of one of our configs (of any registered model type)."""
    name = model_type_of(config).name  # ValueError for an unregistered type
    config_class, model_class = hf_classes(name)
    return config_class(**config.to_dict(), architectures=[model_class.__name__])


# ----------------------------------------------------------------------------------------------- the cache
class BDHCache(Cache):
    """The model's own inference state (`state`: a BDHState or a GPTState) as a transformers `Cache`.

    transformers' `generate()` passes it from step to step; beam search calls `reorder_cache(beam_idx)` (rows
    selected and repeated, `state.select`). A state cannot be rolled back (rho sums over every past token), so
    `crop` (assisted / speculative decoding) is refused, as is `update` (there are no per-layer keys/values to hand
    out). Pass only new tokens with a cache that already holds a state. The cache owns its state: a one-token
    forward updates it in place (`model.step(..., inplace=True)`, as bdh.generation's decode loop).
    """

    def __init__(self, state: Any = None):
        super().__init__(layers=[])
        self.state = state
        self.steps = 0  # one-token forwards since the last prompt (the "generated token n" of an error)

    def __repr__(self) -> str:
        return f"BDHCache({self.state!r})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen by the longest row (rows of a state may sit at different positions)."""
        return 0 if self.state is None else int(self.state.pos.max())

    @property
    def batch_size(self) -> int:
        return -1 if self.state is None else self.state.batch_size

    @property
    def is_croppable(self) -> bool:
        return False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the new state is row beam_idx[i] of the old one."""
        if self.state is not None:
            self.state = self.state.select(beam_idx.to(self.state.pos.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(torch.as_tensor(indices, dtype=torch.long))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            rows = torch.arange(self.state.batch_size).repeat_interleave(repeats)
            self.reorder_cache(rows)

    def reset(self) -> None:
        self.state = None
        self.steps = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("BDHCache cannot be cropped: the state (rho, or a KV cache used as a running state) cannot "
                         "drop tokens it has read; assisted / speculative decoding is not supported (expected "
                         "generate() without assistant_model)")

    def update(self, *args, **kwargs):
        raise ValueError("BDHCache holds the model's own state, not per-layer keys and values: expected it to be "
                         "used only by BDHForCausalLM / GPTForCausalLM")

    def activate_past_recording(self) -> None:
        raise ValueError("BDHCache cannot record past states for a rollback (expected generate() without "
                         "assistant_model)")


# ----------------------------------------------------------------------------------------------- models
def as_torch_dtype(dtype) -> torch.dtype | None:
    """A `dtype` argument (None / 'auto': as saved, a torch.dtype, or its name) as a torch.dtype or None."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, dtype.removeprefix("torch."))
    raise ValueError(f"dtype={dtype!r}: expected a torch dtype, its name (e.g. 'float32') or 'auto'")


def _device(device_map) -> torch.device:
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, (str, int, torch.device)) and device_map != "auto":
        return torch.device(device_map)
    raise ValueError(f"device_map={device_map!r}: expected one device (e.g. 'cpu', 'cuda:0'); the model is not "
                     "split across devices")


def local_dir(name_or_path: str | os.PathLike, **hub_kwargs) -> Path:
    """A local model directory: the path itself, else a Hub snapshot (huggingface_hub; offline: from its cache)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path: expected a directory (str or os.PathLike), got "
                        f"{type(name_or_path).__name__}")
    p = Path(name_or_path)
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    kw = {k: hub_kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if hub_kwargs.get(k)}
    try:
        return Path(snapshot_download(os.fspath(name_or_path), **kw))
    except Exception as e:  # noqa: BLE001 (hub errors: offline, not found, invalid id)
        raise FileNotFoundError(f"model directory {os.fspath(name_or_path)!r} does not exist (and is not an "
                                f"available Hub snapshot: {type(e).__name__})") from None


class _FamilyForCausalLM(PreTrainedModel, GenerationMixin):
    """Our model (`self.model`) behind transformers' causal-LM interface (forward with `cache`, `generate`)."""

    config_class = _FamilyConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # generate() refuses assisted decoding (the state cannot be rolled back)
    _supports_cache_class = True

    def __init__(self, config: _FamilyConfig, model: torch.nn.Module | None = None):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__}(config): expected a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        super().__init__(config)
        if model is None:
            model = build_model(config.bdh_config())
        elif type(model.config).MODEL_TYPE != config.model_type:
            raise TypeError(f"{type(self).__name__}: expected a model of model_type {config.model_type!r}, got "
                            f"{type(model.config).MODEL_TYPE!r}")
        self.model = model  # our module: the weights and the maths
        self.post_init()

    def _init_weights(self, module) -> None:
        """Nothing: our modules initialise themselves, and loaded weights are never touched."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward creates its BDHCache

    @property
    def tokenizer(self):
        """Our tokenizer (bdh.tokenization) of the directory this model was loaded from, if any."""
        return getattr(self.model, "tokenizer", None)

    # ------------------------------------------------------------------ loading and saving (bdh.checkpoint)
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, dtype=None,
                        torch_dtype=None, device_map=None, **kwargs):
        """Load a directory written by `bdh train` / `save_pretrained` through `bdh.checkpoint` (its checks),
        in eval mode. `dtype` ('auto' = as saved) and `device_map` (one device) are honoured."""
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained: unexpected positional arguments {model_args!r}")
        unknown = sorted(k for k, v in kwargs.items() if k not in _HUB_KWARGS and v is not None)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained: unsupported argument(s) {unknown}")
        directory = local_dir(pretrained_model_name_or_path, **kwargs)
        model = load_pretrained(directory, device=_device(device_map), dtype=as_torch_dtype(dtype or torch_dtype))
        want = cls.config_class.model_type
        got = type(model.config).MODEL_TYPE
        if want and got != want:
            raise CheckpointError(f"{directory}: holds a model of model_type {got!r}, expected {want!r} for "
                                  f"{cls.__name__} (load it with AutoModelForCausalLM after import bdh.hf)")
        if isinstance(config, _FamilyConfig) and config.bdh_config() != model.config:  # (AutoModel passes its own)
            raise ValueError(f"config=: differs from {directory / 'config.json'}; expected the directory's config "
                             "(the weights are shaped by it)")
        return wrap(model, name_or_path=os.fspath(pretrained_model_name_or_path))

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs) -> None:
        """Write our format (bdh.checkpoint.save_pretrained: config.json with the HF fields, model.safetensors
        with our tensor names, modeling_bdh.py, the tokenizer): `bdh` and transformers both load it."""
        if push_to_hub:
            raise ValueError("push_to_hub=True: not supported here; save the directory and upload it with "
                             "huggingface_hub")
        save_pretrained(self.model, save_directory, tokenizer=self.tokenizer)

    # ------------------------------------------------------------------ generation
    def generate(self, inputs=None, generation_config=None, *args, **kwargs):
        """transformers' `generate`, refusing first (whatever the transformers version) what a state cannot do:
        assisted / speculative decoding, which rolls the cache back past rejected draft tokens."""
        gc = generation_config if generation_config is not None else self.generation_config
        asked = [k for k in _ASSISTED if kwargs.get(k, getattr(gc, k, None)) not in (None, False)]
        if asked:
            raise ValueError(f"generate({', '.join(asked)}=...): assisted generation is not supported with stateful "
                             "models (the state cannot be rolled back past rejected draft tokens); expected "
                             f"generate() without {', '.join(_ASSISTED)}")
        return super().generate(inputs, generation_config, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, inputs_embeds=None,
                                      **kwargs) -> dict:
        """The forward's inputs at each `generate()` step, and nothing else: the tokens the cache has not read (all
        of them first), the cache and the attention mask (`forward` refuses padding). transformers 5 says how many
        tokens are new (`next_sequence_length`; None: all of `input_ids`, which may be only the new ones); without
        it, those past the cache's length are."""
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        state = getattr(cache, "state", None)
        if state is not None and "next_sequence_length" in kwargs:
            n = kwargs["next_sequence_length"]
            input_ids = input_ids if n is None else input_ids[:, input_ids.shape[1] - n :]
        elif state is not None:
            input_ids = input_ids[:, cache.get_seq_length() :]
        inputs = {"input_ids": input_ids, "cache": cache, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        inputs.update({k: kwargs[k] for k in ("use_cache", "logits_to_keep") if k in kwargs})
        return inputs

    # ------------------------------------------------------------------ the forward pass
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: BDHCache | None = None, labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, return_dict: bool | None = None, inputs_embeds=None,
                **kwargs) -> CausalLMOutputWithPast:
        """Logits (B, T, V) of input_ids (B, T) continuing from `cache` (a BDHCache), the updated cache, and the
        mean next-token cross-entropy when `labels` (B, T) are given (shifted here; -100 is ignored). Without
        autograd, non-finite logits (a diverged or corrupt model) are a ValueError, as in `bdh generate`."""
        if "past_key_values" in kwargs:  # the pre-5.x name of `cache`
            cache = kwargs.pop("past_key_values") if cache is None else cache
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(f"{type(self).__name__}: expected input_ids (token ids); inputs_embeds are not supported")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("attention_mask holds padding (zeros): this model never pads a state; expected a batch "
                             "of prompts of equal length (bdh.generation.generate takes prompts of any lengths)")
        if cache is not None and not isinstance(cache, BDHCache):
            raise TypeError(f"cache: expected a BDHCache (or None), got {type(cache).__name__} (a cache of another "
                            "model type?)")
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and labels is None
        state = cache.state if cache is not None else None
        if use_cache or state is not None:
            if cache is None:
                cache = BDHCache()
            logits, cache.state = self._run(input_ids, state, logits_to_keep)
            cache.steps = cache.steps + 1 if state is not None and input_ids.shape[1] == 1 else 0
        else:
            logits, _ = self.model(input_ids)
            if logits_to_keep:
                logits = logits[:, -logits_to_keep:]
        if not torch.is_grad_enabled():  # (the check bdh.generation makes before every token)
            check_finite(logits, cache.steps if cache is not None else 0)
        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("labels: expected logits for every position (logits_to_keep=0)")
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache or cache else None)

    def _run(self, idx: torch.Tensor, state, logits_to_keep: int):
        """As bdh.generation: one token from a state is one `step` (in place: the cache owns its state); a
        prompt is prefilled in pieces with the state carried, keeping the logits asked for."""
        m = self.model
        if state is not None and idx.shape[1] == 1 and not torch.is_grad_enabled() and not m.training:
            with torch.inference_mode():  # as bdh.generation's loop (the state's tensors stay usable outside it)
                logits, state = m.step(idx[:, 0], state, inplace=True)
            return logits[:, None].clone(), state  # (a normal tensor: the caller may update it in place)
        return read_in_pieces(m, idx, state, keep=logits_to_keep)


# ----------------------------------------------------------------------------------------------- per model type
_MADE: dict[str, tuple[type, type]] = {}  # model_type -> (config class, causal LM class), made once (`hf_classes`)


def hf_classes(model_type: str) -> tuple[type, type]:
    """The transformers config and causal LM classes of a registered model type, made on first use and kept (one
    pair per type, named `hf_class_names`: `BDHConfigHF` / `BDHForCausalLM` for "bdh"), so that `isinstance`,
    `AutoConfig` and pickling see one class."""
    get_model_type(model_type)  # ValueError naming the registered types
    if model_type not in _MADE:
        config_name, model_name = hf_class_names(model_type)
        config_class = type(config_name, (_FamilyConfig,), {"model_type": model_type, "__module__": __name__,
                                                            "__qualname__": config_name})
        model_class = type(model_name, (_FamilyForCausalLM,), {"config_class": config_class, "__module__": __name__,
                                                              "__qualname__": model_name})
        _MADE[model_type] = (config_class, model_class)
    return _MADE[model_type]


def __getattr__(name: str):
    """`BDHConfigHF`, `GPTForCausalLM`, ... of any registered type, by name (what `modeling_bdh.py` imports)."""
    for mt in model_types():
        names = hf_class_names(mt)
        if name in names:
            return hf_classes(mt)[names.index(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wrap(model: torch.nn.Module, name_or_path: str = "") -> _FamilyForCausalLM:
    """Our model (of any registered type, e.g. from `bdh.load_model`) as its transformers causal LM (the same
    module)."""
    config = hf_config(getattr(model, "config", None))
    config._name_or_path = name_or_path
    return hf_classes(config.model_type)[1](config, model=model).train(model.training)


# ----------------------------------------------------------------------------------------------- tokenizer
def default_prefix_token(tokenizer) -> int:
    """The token before a document or an empty context: GPT-2's <|endoftext|> for the GPT-2 tokenizer, else the id
    of "\\n" (one token), else 0. lm_eval's prefix token (model "bdh"), and the HF tokenizer's bos / eos token."""
    if tokenizer.name == "gpt2":
        return 50256
    ids = tokenizer.encode("\n")
    return ids[0] if len(ids) == 1 else 0


class BDHTokenizerFast(PreTrainedTokenizerFast):
    """Our tokenizer (bytes, BPE or GPT-2) as a `PreTrainedTokenizerFast`: the same ids, built from the model
    directory's tokenizer files by `bdh.checkpoint.directory_tokenizer` (bytes when there are none), refused when
    they do not match the directory's config.json vocab_size. Its bos and eos token is `default_prefix_token` ("\\n"
    for bytes and BPE, <|endoftext|> for GPT-2): what lm_eval's `hf` model puts before a document."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        directory = local_dir(pretrained_model_name_or_path, **kwargs)
        if (directory / CONFIG_NAME).is_file():  # a model directory: its tokenizer must match the model
            tokenizer = directory_tokenizer(directory, load_config(directory / CONFIG_NAME).vocab_size)
        else:
            tokenizer = load_tokenizer(directory)
        return cls.from_bdh(tokenizer, name_or_path=os.fspath(pretrained_model_name_or_path))

    @classmethod
    def from_bdh(cls, tokenizer, name_or_path: str = "") -> "BDHTokenizerFast":
        """The HF form of one of our tokenizers (`Tokenizer.to_hf`)."""
        tok = cls(tokenizer_object=tokenizer.to_hf(), name_or_path=name_or_path)
        # set after construction: the token stays an ordinary token of the vocabulary (not an added special token),
        # so encode gives our ids and decode(skip_special_tokens=True) keeps it
        tok.bos_token = tok.eos_token = tok.convert_ids_to_tokens(default_prefix_token(tokenizer))
        tok.bdh_tokenizer = tokenizer
        return tok

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Our files (tokenizer_config.json in our format with `auto_map`, tokenizer.json for BPE, modeling_bdh.py),
        which both sides read."""
        tokenizer = getattr(self, "bdh_tokenizer", None)
        if tokenizer is None:
            raise ValueError("BDHTokenizerFast.save_pretrained: this tokenizer was not made from a bdh tokenizer")
        save_tokenizer(tokenizer, save_directory)
        return (os.fspath(Path(save_directory) / "tokenizer_config.json"),)


# ----------------------------------------------------------------------------------------------- registration
def _register_type(entry) -> None:
    config_class, model_class = hf_classes(entry.name)
    try:
        AutoConfig.register(entry.name, config_class, exist_ok=True)
    except ValueError:  # a name transformers itself uses: loadable with trust_remote_code (auto_map) only
        return
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
    AutoTokenizer.register(config_class, fast_tokenizer_class=BDHTokenizerFast, exist_ok=True)


_registered = False


def register() -> None:
    """Register the configs, models and tokenizer of every model type, now and registered later, with
    transformers' Auto classes (idempotent)."""
    global _registered
    if not _registered:
        _registered = True
        on_register(_register_type)
