"""Reference compatibility: a reference-format checkpoint computes the reference bdh.py function.

`reference_logits` below is an independent, straightforward transcription of the reference equations
(it does not call the package's model code).
"""

import math
import pickle
import re

import pytest
import torch

from bdh import BDH, BDHConfig, CheckpointError

CFG = dict(n_layer=3, n_embd=32, n_head=4, mlp_internal_dim_multiplier=16, vocab_size=256, dropout=0.1)


def reference_freqs(N: int, theta: float = 2.0**16) -> torch.Tensor:
    """get_freqs of the reference, fp32: pairs share theta^(-2 floor(i/2) / N) / 2pi."""
    i = torch.arange(N, dtype=torch.float32)
    return (1.0 / (theta ** (((i / 2).floor() * 2) / N)) / (2 * math.pi)).view(1, 1, 1, N)


def reference_state_dict(seed: int = 0) -> dict:
    """Tensors with the reference's keys, shapes and init (std 0.02), as `torch.save(model.state_dict())` writes."""
    g = torch.Generator().manual_seed(seed)
    nh, D, V = CFG["n_head"], CFG["n_embd"], CFG["vocab_size"]
    N = CFG["mlp_internal_dim_multiplier"] * D // nh
    r = lambda *s: torch.randn(*s, generator=g) * 0.02 * 10  # larger than init so that outputs vary a lot
    return {
        "decoder": r(nh * N, D),
        "encoder": r(nh, D, N),
        "attn.freqs": reference_freqs(N),
        "embed.weight": r(V, D),
        "encoder_v": r(nh, D, N),
        "lm_head": r(D, V),
    }


def reference_logits(sd: dict, idx: torch.Tensor, n_layer: int, n_head: int) -> torch.Tensor:
    """The reference forward (eval mode), written out in float64."""
    emb, enc, enc_v = sd["embed.weight"].double(), sd["encoder"].double(), sd["encoder_v"].double()
    dec, head, freqs = sd["decoder"].double(), sd["lm_head"].double(), sd["attn.freqs"].double().reshape(-1)
    B, T = idx.shape
    D, N = emb.shape[1], freqs.shape[0]

    def ln(z):
        mu = z.mean(-1, keepdim=True)
        var = ((z - mu) ** 2).mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(var + 1e-5)

    angle = ((torch.arange(T, dtype=torch.float64).view(T, 1) * freqs.view(1, N)) % 1) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)

    def rotate(v):  # (v0, v1) -> (v0 cos - v1 sin, v1 cos + v0 sin) for each neuron pair
        out = torch.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * cos[:, 0::2] - v[..., 1::2] * sin[:, 0::2]
        out[..., 1::2] = v[..., 1::2] * cos[:, 1::2] + v[..., 0::2] * sin[:, 1::2]
        return out

    x = ln(emb[idx]).unsqueeze(1)  # B, 1, T, D
    mask = torch.ones(T, T, dtype=torch.float64).tril(-1)
    for _ in range(n_layer):
        x_sparse = torch.relu(x @ enc)  # B, nh, T, N
        qr = rotate(x_sparse)
        yKV = ln(((qr @ qr.transpose(-1, -2)) * mask) @ x)
        y_sparse = torch.relu(yKV @ enc_v)
        xy = x_sparse * y_sparse
        yMLP = xy.transpose(1, 2).reshape(B, 1, T, n_head * N) @ dec
        x = ln(x + ln(yMLP))
    return x.view(B, T, D) @ head


@pytest.fixture()
def ref_pt(tmp_path):
    sd = reference_state_dict()
    path = tmp_path / "ref.pt"
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("form", ["parallel", "chunked", "recurrent"])
def test_reference_checkpoint_matches_reference_equations_float64(ref_pt, form):
    path, sd = ref_pt
    model = BDH.from_reference(path, BDHConfig(**CFG, chunk_size=8)).double()
    idx = torch.randint(0, 256, (2, 29), generator=torch.Generator().manual_seed(0))
    want = reference_logits(sd, idx, CFG["n_layer"], CFG["n_head"])
    with torch.no_grad():
        got, _ = model(idx, form=form)
    assert want.abs().max() > 1.0  # a function with real variation
    assert (got - want).abs().max() <= 1e-9


def test_reference_checkpoint_float32(ref_pt):
    path, sd = ref_pt
    model = BDH.from_reference(path, BDHConfig(**CFG))
    assert not model.training  # loaded for inference
    idx = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, _ = model(idx)
    assert (got.double() - reference_logits(sd, idx, CFG["n_layer"], CFG["n_head"])).abs().max() <= 1e-4


def test_export_round_trip(ref_pt):
    path, sd = ref_pt
    model = BDH.from_reference(path, BDHConfig(**CFG))
    out = model.reference_state_dict()
    assert set(out) == set(sd)
    for k in sd:
        assert out[k].dtype == sd[k].dtype and torch.equal(out[k], sd[k]), k
    again = BDH.from_reference(out, BDHConfig(**CFG))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_reference_variants_are_accepted(ref_pt):
    """train.py-style {"model": ...} checkpoints, torch.compile's `_orig_mod.` prefix, the first commit's lm_gate."""
    _, sd = ref_pt
    wrapped = {"model": {f"_orig_mod.{k}": v for k, v in sd.items()} | {"_orig_mod.lm_gate": torch.zeros(32, 1)}}
    with pytest.warns(UserWarning, match="lm_gate"):
        model = BDH.from_reference(wrapped, BDHConfig(**CFG))
    assert torch.equal(model.encoder, sd["encoder"])


def test_reference_shape_mismatch_is_a_clear_error(ref_pt):
    path, _ = ref_pt
    with pytest.raises(CheckpointError, match=r"'encoder' has shape \(4, 32, 128\).*expects \(4, 32, 64\)"):
        BDH.from_reference(path, BDHConfig(**{**CFG, "mlp_internal_dim_multiplier": 8}))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_reference_loader_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"encoder": _Evil()}, f)
    with pytest.raises(CheckpointError, match="tensors-only"):
        BDH.from_reference(path, BDHConfig(**CFG))


def test_reference_export_refuses_damping():
    model = BDH(BDHConfig(**{**CFG, "damping": "alibi"}))
    with pytest.raises(ValueError, match="damping"):
        model.reference_state_dict()


@pytest.mark.parametrize("edit,words", [
    (lambda sd: sd | {"attn.freqs": sd["attn.freqs"].reshape(-1).tolist()}, "'attn.freqs' (str key, list value)"),
    (lambda sd: sd | {7: sd["encoder"]}, "entry 7 (int key, Tensor value)"),
    (lambda sd: {"model": sd | {"decoder": None}}, "'decoder' (str key, NoneType value)"),
])
def test_reference_file_with_non_tensor_entries_is_a_checkpoint_error(ref_pt, tmp_path, edit, words):
    """A `.pt` holding a list, None or an int key (before: AttributeError from inside the loader)."""
    _, sd = ref_pt
    path = tmp_path / "odd.pt"
    torch.save(edit(dict(sd)), path)
    with pytest.raises(CheckpointError, match=re.escape(words)):
        BDH.from_reference(path, BDHConfig(**CFG))
