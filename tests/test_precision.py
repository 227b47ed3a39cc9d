"""The precision policy under bf16 autocast: (B, h, T, N) activations and T x T / C x C scores in bf16, the
state rho accumulated in fp32, RoPE phases exact; the loss tracks fp32."""

from pathlib import Path

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


CPUINFO_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
CPUINFO_AVX512_BF16 = CPUINFO_AVX2.replace("avx512f", "avx512f avx512_bf16 avx512_vnni")
CPUINFO_AMX = CPUINFO_AVX2.replace("avx512f", "avx512f amx_tile amx_bf16")


def test_cpu_bf16_supported_reads_the_flags():
    from bdh.attention import cpu_bf16_supported

    assert not cpu_bf16_supported(CPUINFO_AVX2)
    assert cpu_bf16_supported(CPUINFO_AVX512_BF16) and cpu_bf16_supported(CPUINFO_AMX)
    assert not cpu_bf16_supported("processor : 0\nFeatures : fp asimd\n")  # no x86 flags line
    assert not cpu_bf16_supported("flags : avx512_bf16x\n")  # whole flag names only
    real = Path("/proc/cpuinfo")
    if real.is_file():
        assert cpu_bf16_supported() == cpu_bf16_supported(real.read_text(errors="replace"))


def _train_tiny(tmp_path, precision: str, name: str):
    from bdh.training import load_run_config, train

    run = load_run_config("tiny", ["train.steps=3", f"train.precision={precision}", "train.eval_every=0",
                                   "train.sample_tokens=0", "train.checkpoint_every=0", "train.processes=1"])
    notes = []
    return train(run, tmp_path / name, progress=False, echo=notes.append), notes


@pytest.mark.parametrize("native", [False, True], ids=["avx2-only", "native-bf16"])
def test_train_precision_on_either_kind_of_cpu(tmp_path, monkeypatch, native):
    """Both kinds of CPU, whatever this one is (the trainer's view of the flags is patched): 'bf16' trains under
    bf16 autocast where the CPU computes bf16 natively and is a one-line error naming the missing support
    elsewhere (emulated bf16 measured 7x slower than fp32); 'auto' is fp32 on both, and says where bf16 would help."""
    import bdh.training.trainer as trainer

    monkeypatch.delenv(trainer.EMULATED_BF16_ENV, raising=False)
    monkeypatch.setattr(trainer, "cpu_bf16_supported", lambda: native)
    if not native:
        with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
            _train_tiny(tmp_path, "bf16", "bf16")
        assert not (tmp_path / "bf16" / "model.safetensors").exists()
    else:
        result, notes = _train_tiny(tmp_path, "bf16", "bf16")
        assert all(torch.isfinite(p).all() for p in result.model.parameters())
        assert not any("emulated" in n for n in notes) and not any(n.startswith("precision:") for n in notes)
    auto, notes = _train_tiny(tmp_path, "auto", "auto")
    fp32, _ = _train_tiny(tmp_path, "fp32", "fp32")
    assert auto.summary["val_loss"] == fp32.summary["val_loss"]  # auto is fp32 on CPU
    hint = [n for n in notes if n.startswith("precision: fp32 (auto on CPU); this CPU computes bf16 natively")]
    assert len(hint) == int(native)


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

    # the note itself (not any line holding the word: the run directory's name contains "emulated")
    assert any(n.startswith("bf16 autocast is emulated on this CPU") for n in notes) != cpu_bf16_supported()
