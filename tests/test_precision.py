"""The precision policy under bf16 autocast: (B, h, T, N) activations and T x T / C x C scores in bf16, the
state rho accumulated in fp32, RoPE phases exact; the loss tracks fp32."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bdh.attention
from bdh import BDH
from bdh.model import hook_name

from conftest import tiny_config, train_briefly


class _Shapes(TorchDispatchMode):
    """Records (shape, dtype) of every floating tensor an aten op produces, except inside the state write
    (`_advance_state` converts the keys and values to fp32 on purpose: the state accumulates in fp32)."""

    def __init__(self):
        super().__init__()
        self.out, self.in_state_write = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        r = func(*args, **(kwargs or {}))
        for t in r if isinstance(r, (tuple, list)) else (r,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not self.in_state_write:
                self.out.append((tuple(t.shape), t.dtype))
        return r


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return train_briefly(BDH(tiny_config(damping="alibi")), steps=30)


@pytest.mark.parametrize("form,T", [("parallel", 24), ("chunked", 40)])
def test_bf16_autocast_activations_and_scores(trained, form, T, monkeypatch):
    m, c = trained, trained.config
    B, nh, N = 2, c.n_head, c.N
    idx = torch.randint(32, 127, (B, T), generator=torch.Generator().manual_seed(1))
    kinds = ("x_sparse", "qr", "attn", "y_sparse", "xy")
    dtypes = {}
    keep = lambda name, t, pos: dtypes.__setitem__(name, t.dtype)  # noqa: E731
    rec = _Shapes()
    real = bdh.attention._advance_state

    def state_write(*a, **k):
        rec.in_state_write = True
        try:
            return real(*a, **k)
        finally:
            rec.in_state_write = False

    monkeypatch.setattr(bdh.attention, "_advance_state", state_write)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with m.hooks({hook_name(l, k): keep for l in range(c.n_layer) for k in kinds}), rec:
            logits, state = m.prefill(idx, form=form)
    assert all(dt == torch.bfloat16 for dt in dtypes.values()), dtypes
    assert len(dtypes) == len(kinds) * c.n_layer
    S = T if form == "parallel" else c.chunk_size
    scores = [dt for shape, dt in rec.out if len(shape) == 4 and shape[:2] == (B, nh) and shape[2:] in ((S, S), (T % S, T % S))]
    acts = [dt for shape, dt in rec.out if shape in ((B, nh, T, N), (B, nh, S, N), (B, nh, T % S, N))]
    assert scores and all(dt == torch.bfloat16 for dt in scores), "T x T / C x C scores must be bf16"
    assert acts and all(dt == torch.bfloat16 for dt in acts), "(B, h, T, N) activations must be bf16"
    assert all(r.dtype == torch.float32 for r in state.rho)  # the state accumulates in fp32
    assert m.freqs.dtype == torch.float64  # phases formed in fp64 before the cast


def test_bf16_autocast_loss_tracks_fp32(trained):
    """Stated tolerance: the bf16-autocast loss is within 1% of the fp32 loss, in every form."""
    m = trained
    idx = torch.randint(32, 127, (2, 41), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, ref = m(idx[:, :-1], idx[:, 1:])
        for form in ("parallel", "chunked", "recurrent"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                _, loss = m(idx[:, :-1], idx[:, 1:], form=form)
            assert abs(loss.item() - ref.item()) <= 0.01 * ref.item(), (form, loss.item(), ref.item())


def test_train_bf16_on_cpu_only_where_native(tmp_path):
    """train.precision = 'bf16' on CPU: trains under bf16 autocast where the CPU has AVX512-BF16/AMX, else a
    one-line error naming the missing support (emulated bf16 measured 7x slower than fp32)."""
    from bdh.attention import cpu_bf16_supported
    from bdh.training import load_run_config, train

    run = load_run_config("tiny", ["train.steps=3", "train.precision=bf16", "train.eval_every=0", "train.sample_tokens=0",
                                   "train.checkpoint_every=0", "train.processes=1"])
    if not cpu_bf16_supported():
        with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
            train(run, tmp_path / "run", progress=False, echo=lambda s: None)
        assert not (tmp_path / "run" / "model.safetensors").exists()
        return
    result = train(run, tmp_path / "run", progress=False, echo=lambda s: None)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_train_bf16_emulated_on_request(tmp_path, monkeypatch):
    """BDH_ALLOW_EMULATED_BF16=1: a CPU without native bf16 trains under bf16 autocast anyway (for studying the
    numerics): the loss is computed from bf16 activations, so it differs from fp32's, and stays close to it."""
    from bdh.training import load_run_config, train
    from bdh.training.trainer import EMULATED_BF16_ENV

    monkeypatch.setenv(EMULATED_BF16_ENV, "1")
    over = ["train.steps=3", "train.eval_every=0", "train.sample_tokens=0", "train.checkpoint_every=0",
            "train.processes=1", "train.log_every=1"]
    notes = []
    bf = train(load_run_config("tiny", over + ["train.precision=bf16"]), tmp_path / "bf16", progress=False,
               echo=notes.append)
    fp = train(load_run_config("tiny", over + ["train.precision=fp32"]), tmp_path / "fp32", progress=False,
               echo=lambda s: None)
    assert bf.summary["val_loss"] != fp.summary["val_loss"]
    assert abs(bf.summary["val_loss"] - fp.summary["val_loss"]) < 0.02 * fp.summary["val_loss"]
    from bdh.attention import cpu_bf16_supported

    assert any("emulated" in n for n in notes) != cpu_bf16_supported()
