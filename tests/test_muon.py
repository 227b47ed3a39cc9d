"""train.optimizer = "muon": the batched Newton-Schulz iteration equals its one-matrix reference; MuonAdamW's
Muon groups equal torch.optim.Muon and its other groups torch.optim.AdamW (fp64); checkpoints resume exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import torch.optim._muon as torch_muon
from bdh import BDH
from bdh.training import load_run_config, train
from bdh.training.muon import MuonAdamW, is_hidden_matrix, newton_schulz_reference, zeropower
from bdh.training.trainer import make_optimizer
from conftest import tiny_config


@pytest.mark.parametrize("shape", [(4, 32, 64), (4, 64, 32), (96, 24), (24, 96), (2, 3, 8, 16)])
def test_batched_iteration_equals_the_reference(shape):
    G = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Z = zeropower(G)
    R = torch.stack([newton_schulz_reference(g) for g in G.reshape(-1, *shape[-2:])]).reshape(shape)
    torch.testing.assert_close(Z, R, atol=1e-12, rtol=0)


def test_iteration_orthogonalises():
    """Singular values spread 20x come out within the quintic's band (~0.7-1.2), singular vectors kept."""
    g = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(80, 48, dtype=torch.float64, generator=g))
    S = torch.logspace(0, -1.3, 48, dtype=torch.float64)  # 1 .. 0.05
    core = U.T @ zeropower(U @ torch.diag(S) @ V.T) @ V  # diagonal when the singular vectors are kept
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 1e-10
    s = torch.diagonal(core)
    assert 0.6 < s.min() and s.max() < 1.25


def _twin_steps(opt_a, opt_b, params_a, params_b, steps=4):
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        for pa, pb in zip(params_a, params_b):
            grad = torch.randn(pa.shape, dtype=pa.dtype, generator=g)
            pa.grad, pb.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()


def test_muon_groups_equal_torch_muon(monkeypatch):
    """2-D parameters: MuonAdamW's Muon groups are torch.optim.Muon (Nesterov, match_rms_adamw lr, decoupled
    weight decay), its bf16 Newton-Schulz replaced by the fp64 reference for the comparison."""
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz",
                        lambda grad, coeffs, steps, eps: newton_schulz_reference(grad, steps, eps))
    g = torch.Generator().manual_seed(3)
    a = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64, generator=g)) for s in ((40, 24), (24, 56))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = MuonAdamW([{"params": a, "muon": True}], lr=0.02, weight_decay=0.1)
    ref = torch.optim.Muon(b, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    _twin_steps(ours, ref, a, b)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, atol=1e-12, rtol=0)


def test_other_groups_equal_torch_adamw():
    g = torch.Generator().manual_seed(4)
    a = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64, generator=g)) for s in ((16, 8), (8,))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]  # noqa: E731
    ours = MuonAdamW(groups(a), lr=3e-3, betas=(0.9, 0.95))
    ref = torch.optim.AdamW(groups(b), lr=3e-3, betas=(0.9, 0.95))
    _twin_steps(ours, ref, a, b, steps=6)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, atol=1e-12, rtol=0)


def test_bdh_parameters_are_split_by_kind():
    """Muon trains D_x, D_y (per head) and E; the embedding, lm_head and vectors stay with AdamW."""
    model = BDH(tiny_config())
    run = load_run_config("tiny", ["train.optimizer=muon"])
    opt = make_optimizer(model, run.train)
    assert isinstance(opt, MuonAdamW)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {"encoder", "encoder_v", "decoder"}
    emb = type(model).embedding_params  # declared by the model class (bdh.interface)
    assert not is_hidden_matrix("embed.weight", model.embed.weight, emb) and not is_hidden_matrix("lm_head", model.lm_head, emb)
    assert is_hidden_matrix("encoder", model.encoder, emb)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=1e-3)
    with pytest.raises(ValueError, match="train.optimizer"):
        load_run_config("tiny", ["train.optimizer=sgd"])


def test_muon_training_learns_and_resumes_exactly(tmp_path):
    """A tiny run with Muon lowers the loss, and resuming from its step-4 checkpoint reproduces it exactly."""
    over = ["train.optimizer=muon", "train.steps=8", "train.checkpoint_every=4", "train.eval_every=0",
            "train.sample_tokens=0", "train.log_every=1", "train.threads=1"]
    full = train(load_run_config("tiny", over), tmp_path / "full", progress=False, echo=lambda s: None)
    recs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in recs if r.get("split") == "train"}
    assert losses[8] < losses[1] - 0.2
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000004", tmp_path / "res" / "checkpoints" / "step-00000004")
    resumed = train(load_run_config("tiny", over), tmp_path / "res", resume="latest", progress=False, echo=lambda s: None)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
