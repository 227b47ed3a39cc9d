"""The model-type registry and the `LanguageModel` protocol for the builtin types (BDH, GPT), and the generic
checkpoint loader built on them."""

import json

import pytest
import torch

from bdh import BDH, BDHConfig, CheckpointError, build_model, load_model
from bdh.baselines import GPT, GPTConfig, GPTState
from bdh.interface import (LanguageModel, ModelConfig, config_from_dict, get_model_type, model_type_of,
                           model_types, register_model_type)
from conftest import tiny_config


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(n_layer=2, n_embd=32, n_head=4, vocab_size=256, block_size=64), **kw}))


def tiny_bdh(**kw) -> BDH:
    torch.manual_seed(0)
    return BDH(tiny_config(**kw))


MODELS = {"bdh": tiny_bdh, "gpt": tiny_gpt}


# ----------------------------------------------------------------------------- registry
def test_builtin_types_are_registered():
    assert {"bdh", "gpt"} <= set(model_types())
    assert get_model_type("gpt").config_class is GPTConfig and get_model_type("gpt").model_class is GPT
    assert get_model_type("bdh").model_class is BDH
    assert model_type_of(tiny_gpt()).name == "gpt" and model_type_of(BDHConfig()).name == "bdh"
    assert isinstance(build_model(GPTConfig(n_layer=1, n_embd=16, n_head=2)), GPT)
    assert isinstance(config_from_dict({"model_type": "gpt", "n_embd": 16, "n_head": 2}), GPTConfig)
    assert isinstance(config_from_dict({"n_embd": 32}), BDHConfig)  # no model_type: bdh


def test_unknown_model_type_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"model_type='nope': expected one of 'bdh', 'gpt'"):
        config_from_dict({"model_type": "nope"})
    with pytest.raises(ValueError, match="model_type=None"):
        model_type_of(object())
    with pytest.raises(TypeError, match="build_model: expected a config of a registered model type"):
        build_model({"n_layer": 1})
    tiny_gpt().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "nope"}))
    with pytest.raises(CheckpointError, match="invalid config: model_type='nope'"):
        load_model(tmp_path)


def test_duplicate_registration_is_an_error():
    class OtherGPT(GPT):
        pass

    register_model_type("gpt", GPTConfig, GPT)  # the same pair again: a no-op
    with pytest.raises(ValueError, match="model type 'gpt' is already registered \\(GPT\\); pass replace=True"):
        register_model_type("gpt", GPTConfig, OtherGPT)
    with pytest.raises(ValueError, match="GPTConfig.MODEL_TYPE is 'gpt', expected 'bdh'"):
        register_model_type("bdh", GPTConfig, GPT)
    assert get_model_type("gpt").model_class is GPT  # unchanged


# ----------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("kind", MODELS)
def test_builtin_models_implement_the_protocol(kind):
    model = MODELS[kind]()
    assert isinstance(model, LanguageModel) and isinstance(model.config, ModelConfig)
    assert model.capabilities == (frozenset({"hooks"}) if kind == "gpt" else
                                  frozenset({"forms", "no_bptt", "activity_penalty", "sparse_decode", "hooks", "neurons",
                                             "rho_state", "layer_passes"}))


@pytest.mark.parametrize("kind", MODELS)
@torch.no_grad()
def test_state_to_tensors_round_trip(kind):
    model = MODELS[kind]().eval()
    idx = torch.randint(0, 256, (2, 7))
    _, state = model.prefill(idx)
    tensors = model.state_to_tensors(state, prefix="s.")
    assert tensors and all(k.startswith("s.") and isinstance(v, torch.Tensor) for k, v in tensors.items())
    back = model.state_from_tensors({k: v.clone() for k, v in tensors.items()}, prefix="s.")
    assert type(back) is type(state)
    assert {k: v for k, v in model.state_to_tensors(back, prefix="s.").items()}.keys() == tensors.keys()
    for k, v in model.state_to_tensors(back, prefix="s.").items():
        assert torch.equal(v, tensors[k]), k
    nxt = torch.tensor([3, 5])
    a, _ = model.step(nxt, state)
    b, _ = model.step(nxt, back, check_ids=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", MODELS)
def test_inplace_step_on_a_state_made_under_inference_mode(kind):
    """A state made under torch.inference_mode, stepped in place outside it (before: "Inplace update to inference
    tensor outside InferenceMode"), gives the logits of the functional step; the state then moves on in place."""
    model = MODELS[kind](**({"damping": "alibi"} if kind == "bdh" else {})).eval()
    idx = torch.randint(0, 256, (2, 6))
    with torch.inference_mode():
        _, state = model.prefill(idx)
    nxt = torch.tensor([3, 5])
    with torch.no_grad():
        want, after = model.step(nxt, state)
        got, same = model.step(nxt, state, inplace=True)
        assert same is state and torch.equal(state.pos, torch.tensor([7, 7]))
        assert torch.allclose(got, want, atol=1e-6)
        again, _ = model.step(nxt, state, inplace=True)
        ref, _ = model.step(nxt, after)
        assert torch.allclose(again, ref, atol=1e-6)


@pytest.mark.parametrize("kind", MODELS)
def test_carried_state_does_not_share_positions(kind):
    """carry_state's result owns its tensors: an in-place step on it leaves the original's pos (before, for BDH,
    both reported the new position)."""
    model = MODELS[kind]().eval()
    with torch.no_grad():
        _, state = model.prefill(torch.randint(0, 256, (2, 4)))
        carried = model.carry_state(state)
        model.step(torch.tensor([1, 2]), carried, inplace=True)
    assert state.pos.tolist() == [4, 4] and carried.pos.tolist() == [5, 5]


def test_gpt_state_from_tensors_checks_the_model():
    model = tiny_gpt()
    _, state = model.prefill(torch.randint(0, 256, (1, 4)))
    tensors = model.state_to_tensors(state)
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['v.1'\]"):
        model.state_from_tensors({k: v for k, v in tensors.items() if k != "v.1"})
    with pytest.raises(ValueError, match="does not belong to this model"):
        tiny_gpt(n_head=2).state_from_tensors(tensors)
    assert isinstance(model.state_from_tensors(tensors), GPTState)


def test_gpt_step_uses_the_checked_ids():
    model = tiny_gpt().eval()
    _, state = model.prefill(torch.tensor([[1, 2, 3]]))
    a, _ = model.step(torch.tensor([7], dtype=torch.int32), state)  # int32: converted to int64 by _check_ids
    b, _ = model.step(torch.tensor([7]), state, check_ids=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"token id 256 is outside the vocabulary \[0, 256\)"):
        model.step(torch.tensor([256]), state)


def test_check_training():
    with pytest.raises(ValueError, match="data.batching = 'tbptt' with a GPT needs model.positions = alibi or rope"):
        GPTConfig(positions="learned").check_training(batching="tbptt")
    GPTConfig(positions="learned").check_training(batching="random")
    GPTConfig().check_training(batching="tbptt")
    BDHConfig().check_training(batching="tbptt")  # JSONConfig's default: everything trains


# ----------------------------------------------------------------------------- generic checkpoints
def test_config_save_is_tagged_and_atomic(tmp_path):
    from bdh._version import __version__

    GPTConfig(n_embd=16, n_head=2).save(tmp_path / "c" / "config.json")
    d = json.loads((tmp_path / "c" / "config.json").read_text())
    assert d["model_type"] == "gpt" and d["bdh_version"] == __version__ and d["n_embd"] == 16
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["config.json"]  # no temp file left


@pytest.mark.parametrize("kind", MODELS)
def test_load_keeps_buffers_and_the_rng(kind, tmp_path):
    model = MODELS[kind](**({"damping": "alibi"} if kind == "bdh" else {"positions": "rope"})).eval()
    model.save_pretrained(tmp_path)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    loaded = load_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)  # loading draws no random numbers
    assert type(loaded) is type(model) and not loaded.training
    for (k, v), (k2, v2) in zip(model.named_buffers(), loaded.named_buffers()):  # fp64 buffers stay fp64
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2), k
    idx = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded(idx)[0])


def test_shape_errors_name_the_config(tmp_path):
    tiny_gpt(n_embd=64).save_pretrained(tmp_path / "o")
    tiny_gpt().save_pretrained(tmp_path / "g")
    (tmp_path / "g" / "model.safetensors").write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"tensor 'wte.weight' has shape \(256, 64\) but the config "
                                              r"\(model_type='gpt', n_layer=2, n_embd=32.*\) expects \(256, 32\)"):
        load_model(tmp_path / "g")
