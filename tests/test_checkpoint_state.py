"""save_pretrained / from_pretrained, state persistence, config validation and bad input."""

import json
import os

import pytest
import torch

from bdh import BDH, BDHConfig, BDHState, CheckpointError
from bdh import io as bdh_io
from conftest import tiny_config


@pytest.fixture()
def saved(tmp_path, trained_tiny):
    d = tmp_path / "model"
    trained_tiny.save_pretrained(d)
    return d, trained_tiny


def test_save_load_gives_identical_logits(saved):
    d, model = saved
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "modeling_bdh.py"]  # + bdh.hf remote code
    assert json.loads((d / "config.json").read_text())["model_type"] == "bdh"
    loaded = BDH.from_pretrained(d)
    idx = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = loaded(idx)
    assert torch.equal(a, b)
    assert loaded.config == model.config


def test_damping_survives_save_load(tmp_path):
    torch.manual_seed(0)
    m = BDH(tiny_config(damping=[0.5, 0.7, 0.9, 1.0])).eval()
    m.save_pretrained(tmp_path)
    m2 = BDH.from_pretrained(tmp_path)
    idx = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert torch.equal(m(idx)[0], m2(idx)[0])


def test_config_tensor_disagreement(saved):
    d, _ = saved
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'embed.weight' has shape \(256, 32\).*n_embd=64.*expects \(256, 64\)"):
        BDH.from_pretrained(d)


def test_truncated_weights(saved):
    d, _ = saved
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        BDH.from_pretrained(d)


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BDH.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="missing config.json"):
        BDH.from_pretrained(tmp_path)


def test_unknown_config_field(saved):
    d, _ = saved
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embed"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown field.*n_embed"):
        BDH.from_pretrained(d)


def test_failed_save_leaves_previous_checkpoint_intact(saved, monkeypatch):
    d, model = saved
    before = {p: (d / p).read_bytes() for p in os.listdir(d)}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(d)
    assert {p: (d / p).read_bytes() for p in os.listdir(d)} == before  # no temp files left, nothing changed


def test_atomic_path_removes_temp_on_error(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with bdh_io.atomic_path(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_atomic_dir_swaps_the_whole_directory(tmp_path):
    """The new files replace the old directory together; a failure leaves the old one as it was, and no temp."""
    target = tmp_path / "best"
    target.mkdir()
    (target / "model.bin").write_bytes(b"old")
    (target / "best.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with bdh_io.atomic_dir(target) as d:
            (d / "model.bin").write_bytes(b"new")
            raise RuntimeError("killed before best.json")
    assert sorted(os.listdir(tmp_path)) == ["best"]
    assert (target / "model.bin").read_bytes() == b"old" and (target / "best.json").read_text() == "{}"
    with bdh_io.atomic_dir(target) as d:
        (d / "model.bin").write_bytes(b"new")
    assert sorted(os.listdir(tmp_path)) == ["best"] and os.listdir(target) == ["model.bin"]
    assert (target / "model.bin").read_bytes() == b"new" and (target.stat().st_mode & 0o777) != 0o700


# ----------------------------------------------------------------------------- state
def test_state_save_restore_continues_exactly(tmp_path, trained_tiny):
    idx = torch.randint(0, 256, (2, 25), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = trained_tiny.prefill(idx[:, :20])
        state.save(tmp_path / "s.safetensors")
        restored = BDHState.load(tmp_path / "s.safetensors")
        a, _ = trained_tiny.prefill(idx[:, 20:], state)
        b, _ = trained_tiny.prefill(idx[:, 20:], restored)
        full, _ = trained_tiny(idx)
    assert torch.equal(a, b)
    assert restored.pos.tolist() == [20, 20]
    assert (b - full[:, 20:]).abs().max() <= 1e-4


def test_step_returns_new_state_and_leaves_input_untouched(trained_tiny):
    with torch.no_grad():
        _, s = trained_tiny.prefill(torch.tensor([[1, 2, 3]]))
        snapshot = s.clone()
        _, s2 = trained_tiny.step(torch.tensor([4]), s)
    assert all(torch.equal(a, b) for a, b in zip(s.rho, snapshot.rho)) and torch.equal(s.pos, snapshot.pos)
    assert s2.pos.item() == 4 and not torch.equal(s2.rho[0], s.rho[0])


def test_state_size_is_constant_in_context(trained_tiny):
    with torch.no_grad():
        _, s_short = trained_tiny.prefill(torch.randint(0, 256, (1, 4)))
        _, s_long = trained_tiny.prefill(torch.randint(0, 256, (1, 300)))
    c = trained_tiny.config
    assert s_short.nbytes() == s_long.nbytes() == c.n_layer * c.n * c.D * 4 + 8


def test_state_from_another_config_is_rejected(trained_tiny):
    other = BDH(tiny_config(mlp_internal_dim_multiplier=16))
    state = other.init_state(1)
    with pytest.raises(ValueError, match="another config"):
        trained_tiny.step(torch.tensor([1]), state)
    with pytest.raises(ValueError, match="n_layer"):
        BDH(tiny_config(n_layer=3)).prefill(torch.tensor([[1]]), trained_tiny.init_state(1))


def test_batch_size_mismatch(trained_tiny):
    state = trained_tiny.init_state(2)
    with pytest.raises(ValueError, match="batch size 3.*batch size 2"):
        trained_tiny.step(torch.tensor([1, 2, 3]), state)
    with pytest.raises(ValueError, match="batch size 1.*batch size 2"):
        trained_tiny.prefill(torch.tensor([[1, 2]]), state)


def test_bad_token_ids(trained_tiny):
    with pytest.raises(ValueError, match=r"token id 256 is outside the vocabulary \[0, 256\)"):
        trained_tiny(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match="token id -1"):
        trained_tiny.step(torch.tensor([-1]), trained_tiny.init_state(1))
    with pytest.raises(ValueError, match="empty input"):
        trained_tiny.prefill(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        trained_tiny(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="form='fast'"):
        trained_tiny(torch.tensor([[1]]), form="fast")


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(n_layer=0), r"n_layer=0: expected a positive integer"),
        (dict(n_embd=2.5), r"n_embd=2.5"),
        (dict(dropout=1.0), r"dropout=1.0: expected a float in \[0, 1\)"),
        (dict(n_head=3, n_embd=32, mlp_internal_dim_multiplier=1), r"divisible by n_head \(3\)"),
        (dict(n_head=4, n_embd=4, mlp_internal_dim_multiplier=1), r"even number of neurons per head"),
        (dict(damping="exp"), r"damping='exp'"),
        (dict(damping=[0.5, 1.5]), r"damping"),
        (dict(rope_theta=1), r"rope_theta=1"),
    ],
)
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        BDHConfig(**kw)


def test_config_defaults_are_the_reference():
    c = BDHConfig()
    assert (c.n_layer, c.n_embd, c.n_head, c.mlp_internal_dim_multiplier, c.vocab_size, c.dropout) == (6, 256, 4, 128, 256, 0.1)
    assert c.N == 8192 and c.n == 32768 and c.damping is None and c.rope_theta == 2**16
    assert c.num_params() == 25_296_896  # 3nd + 2Vd, spec §2.1


def test_param_count_matches_formula():
    for kw in [{}, dict(n_head=2, mlp_internal_dim_multiplier=4), dict(vocab_size=1000)]:
        m = BDH(tiny_config(**kw))
        assert m.num_params() == m.config.num_params() == 3 * m.config.n * m.config.D + 2 * m.config.vocab_size * m.config.D


def test_inplace_step_equals_functional_step(trained_tiny):
    with torch.no_grad():
        _, s = trained_tiny.prefill(torch.tensor([[5, 6, 7], [8, 9, 10]]))
        a, s_func = trained_tiny.step(torch.tensor([1, 2]), s)
        own = s.clone()
        b, s_in = trained_tiny.step(torch.tensor([1, 2]), own, inplace=True)
    assert s_in is own and torch.equal(a, b) and torch.equal(s_in.pos, s_func.pos)
    assert all(torch.equal(x, y) for x, y in zip(s_in.rho, s_func.rho))


def test_saved_files_have_ordinary_permissions_and_are_deterministic(tmp_path, trained_tiny):
    trained_tiny.save_pretrained(tmp_path / "a")
    trained_tiny.save_pretrained(tmp_path / "b")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o666 & ~umask
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ----------------------------------------------------------------------------- corrupt weights (issue 13, item 2)
def retag_tensor(path, name: str, dtype: str) -> None:
    """Edit the JSON header of a safetensors file in place: tensor `name` is tagged `dtype` (e.g. "I32"), the
    bytes untouched (what a corrupted or hand-edited file looks like)."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header[name]["dtype"] = dtype
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def save_with_nan(model, directory, name: str = "decoder") -> None:
    """Save a copy of `model` with one NaN in the parameter `name`."""
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        dict(bad.named_parameters())[name].view(-1)[7] = float("nan")
    bad.save_pretrained(directory)


@pytest.mark.parametrize("name,dtype", [("lm_head", "I32"), ("decoder", "I32"), ("freqs", "I64")])
def test_weights_tagged_with_an_integer_dtype_are_refused(saved, name, dtype):
    """Same byte size, another dtype tag: before the fix `lm_head` loaded as int32 bit patterns (~1e9)."""
    d, _ = saved
    retag_tensor(d / "model.safetensors", name, dtype)
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' has dtype torch.int(32|64), expected a floating"):
        BDH.from_pretrained(d)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, trained_tiny):
    save_with_nan(trained_tiny, tmp_path / "nan", "encoder_v")
    with pytest.raises(CheckpointError, match=r"tensor 'encoder_v' holds 1 non-finite value"):
        BDH.from_pretrained(tmp_path / "nan")
    m = BDH(tiny_config())
    with torch.no_grad():
        m.lm_head[0, 0] = float("inf")
    m.save_pretrained(tmp_path / "inf")
    from bdh import load_model

    with pytest.raises(CheckpointError, match=r"'lm_head' holds 1 non-finite"):
        load_model(tmp_path / "inf")


def test_model_from_tensors_checks_dtypes_and_values():
    from bdh.checkpoint import model_from_tensors

    m = BDH(tiny_config())
    good = m.state_dict()
    for name, t, msg in [("decoder", good["decoder"].to(torch.int32), "expected a floating-point"),
                         ("freqs", good["freqs"].to(torch.int64), "expected a floating-point"),
                         ("embed.weight", good["embed.weight"].bool(), "expected a floating-point"),
                         ("encoder", torch.full_like(good["encoder"], float("nan")), "non-finite"),
                         ("lm_head", [[0.0]], "is a list, expected a torch.Tensor")]:
        with pytest.raises(CheckpointError, match=rf"'{name}'.*{msg}"):
            model_from_tensors({**good, name: t}, m.config, "test")
    # floating point of another precision is fine (a model saved in bf16; reference fp32 RoPE frequencies)
    other = {k: v.to(torch.bfloat16) if k != "freqs" else v.float() for k, v in good.items()}
    model_from_tensors(other, m.config, "test")


# ----------------------------------------------------------------------------- state arguments (issue 13, item 10)
def test_state_cat_select_load_name_bad_arguments(trained_tiny, tmp_path):
    s = trained_tiny.init_state(2)
    for bad, err, msg in [([s, "x"], TypeError, r"states\[1\] is a str, expected a BDHState"),
                          ("x", TypeError, "expected a list of BDHState, got str"),
                          (s, TypeError, "expected a list of BDHState, got BDHState"),
                          ([], ValueError, "at least one state")]:
        with pytest.raises(err, match=msg):
            BDHState.cat(bad)
    for rows, err, msg in [([5], ValueError, r"row 5 is outside the batch \[0, 2\)"),
                           ([-1], ValueError, "row -1 is outside"),
                           ([1.5], TypeError, r"integer row indices, got 1.5"),
                           ("ab", TypeError, "got str"),
                           (torch.tensor([0.0]), TypeError, "dtype torch.float32"),
                           (None, TypeError, "got NoneType")]:
        with pytest.raises(err, match=msg):
            s.select(rows)
    assert s.select(torch.tensor([1, 0])).batch_size == 2 and s.select([1]).batch_size == 1
    with pytest.raises(TypeError, match="BDHState.load.*got int"):
        BDHState.load(3)


def test_from_pretrained_names_a_wrong_directory_type():
    from bdh import load_model

    for bad in (5, None, ["m"]):
        with pytest.raises(TypeError, match=f"model directory: expected a path.*got {type(bad).__name__}"):
            load_model(bad)
        with pytest.raises(TypeError, match="model directory: expected a path"):
            BDH.from_pretrained(bad)
