"""The FLOP model of each model type (`Model.flops`, `bdh.interface.token_flops`) against what ran.

Counted by `torch.utils.flop_counter.FlopCounterMode`, which counts matmuls (mm, bmm, addmm, matmul, SDPA where
it sees it) and nothing else. Tolerance: exact (relative 1e-12) for BDH in every form, forward and forward +
backward, at T a multiple of the chunk size and not. What the analytic model leaves out, as MFU does: all
elementwise work (LayerNorm, ReLU, RoPE, damping masks and powers, softmax, the loss) and the optimizer; in the
recurrent form it counts the state write (an addcmul, which the counter does not see) as the matmul it is.
The GPT: exact, or exact less the attention products where the counter does not see the CPU SDPA kernel.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bdh import BDH, BDHConfig
from bdh.baselines.gpt import GPT, GPTConfig
from bdh.interface import TokenFlops, token_flops


def counted(model, x, form=None, backward=False) -> int:
    kw = {} if form is None else {"form": form}
    with FlopCounterMode(display=False) as fc:
        if backward:
            _, loss = model(x, x, **kw)
            loss.backward()
        else:
            with torch.no_grad():
                model(x, **kw)
    return fc.get_total_flops()


def bdh_config(damping=None, **kw) -> BDHConfig:
    return BDHConfig(**{**dict(n_layer=2, n_embd=32, n_head=4, mlp_internal_dim_multiplier=8, vocab_size=64,
                               dropout=0.0, chunk_size=16, damping=damping), **kw})


@pytest.mark.parametrize("form, T", [("parallel", 16), ("parallel", 40), ("chunked", 48), ("chunked", 40),
                                     ("chunked", 12)])
@pytest.mark.parametrize("damping", [None, "alibi"])
def test_bdh_flops_equal_the_counted_matmuls(form, T, damping):
    cfg = bdh_config(damping)
    torch.manual_seed(0)
    model = BDH(cfg)
    B = 2
    x = torch.randint(0, cfg.vocab_size, (B, T))
    f = token_flops(cfg, T, form=form)
    assert f == BDH.flops(cfg, T, form=form) and isinstance(f, TokenFlops)
    assert counted(model, x, form) == pytest.approx(B * T * f.forward, rel=1e-12)
    assert counted(model, x, form, backward=True) == pytest.approx(B * T * f.executed_training, rel=1e-12)
    assert f.executed_training < f.training == 3 * f.forward  # keys = queries: fewer executed than model FLOPs


def test_bdh_recurrent_flops_are_the_decode_step():
    cfg = bdh_config("alibi")
    torch.manual_seed(0)
    model = BDH(cfg)
    B, T = 2, 5
    x = torch.randint(0, cfg.vocab_size, (B, T))
    f = BDH.flops(cfg, T, form="recurrent")
    write = cfg.n_layer * 2 * cfg.n * cfg.D  # the state write qr (x) v is an addcmul: not a counted matmul
    assert counted(model, x, "recurrent") == pytest.approx(B * T * (f.forward - write), rel=1e-12)
    assert model.flops_per_token() == f.forward == 2 * (5 * cfg.n * cfg.D * cfg.n_layer + cfg.D * cfg.vocab_size)
    assert BDH.flops(cfg, 1000, form="recurrent") == f  # constant in the context


def test_bdh_auto_is_the_form_forward_runs():
    cfg = bdh_config()
    assert token_flops(cfg, 16) == BDH.flops(cfg, 16, form="parallel")
    assert token_flops(cfg, 17) == BDH.flops(cfg, 17, form="chunked")
    deeper = dataclasses.replace(cfg, n_layer=5)  # layer passes: the per-layer part scales, the head does not
    head = 2 * cfg.D * cfg.vocab_size
    assert (token_flops(deeper, 64).forward - head) == pytest.approx(2.5 * (token_flops(cfg, 64).forward - head))


def test_causal_counts_half_the_attention():
    cfg = bdh_config(n_embd=64, chunk_size=128)
    T = 2048
    dense = cfg.n_layer * 6 * cfg.n * cfg.D + 2 * cfg.D * cfg.vocab_size
    full, causal = (BDH.flops(cfg, T, form="parallel", causal=c).forward for c in (False, True))
    assert (causal - dense) / (full - dense) == pytest.approx((T - 1) / (2 * T))
    g = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=64)
    full, causal = (token_flops(g, T, causal=c).forward for c in (False, True))
    dense = token_flops(g, 1).forward - g.n_layer * 4 * g.n_embd
    assert (causal - dense) / (full - dense) == pytest.approx((T + 1) / (2 * T))


@pytest.mark.parametrize("positions", ["alibi", "rope", "learned"])
def test_gpt_flops_equal_the_counted_matmuls(positions):
    cfg = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=64, dropout=0.0, positions=positions)
    torch.manual_seed(0)
    model = GPT(cfg)
    B, T = 2, 24
    x = torch.randint(0, cfg.vocab_size, (B, T))
    f = token_flops(cfg, T)
    attention = B * T * cfg.n_layer * 4 * T * cfg.n_embd  # scores + weighted values, full T keys
    # torch's counter may not see the CPU SDPA kernel (a mask): then it counts everything but attention
    assert counted(model, x) in (pytest.approx(B * T * f.forward), pytest.approx(B * T * f.forward - attention))
    got = counted(model, x, backward=True)
    assert got in (pytest.approx(B * T * f.training), pytest.approx(B * T * f.training - 3 * attention))
    assert f.executed_training == f.training
    # the attention term itself, against an explicit softmax attention of the same shapes
    q = torch.randn(B, cfg.n_head, T, cfg.head_dim)
    with FlopCounterMode(display=False) as fc:
        torch.softmax(q @ q.mT, -1) @ q
    assert fc.get_total_flops() == attention // cfg.n_layer


def test_gpt_decode_flops():
    cfg = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=64, dropout=0.0)
    model = GPT(cfg)
    c = cfg
    for ctx in (0, 7):
        assert model.flops_per_token(ctx) == 2 * (c.n_layer * (4 * c.n_embd**2 + 2 * c.n_embd * c.hidden)
                                                  + c.n_embd * c.vocab_size + 2 * c.n_layer * c.n_embd * (ctx + 1))
    with pytest.raises(ValueError, match="form='chunked'"):
        token_flops(cfg, 8, form="chunked")


def test_token_flops_refuses_bad_arguments():
    with pytest.raises(ValueError, match="T=0"):
        token_flops(bdh_config(), 0)
    with pytest.raises(ValueError, match="form='fast'"):
        token_flops(bdh_config(), 8, form="fast")
    assert token_flops(BDH(bdh_config()), 8) == token_flops(bdh_config(), 8)  # a model or its config
