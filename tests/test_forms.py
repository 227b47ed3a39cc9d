"""The three forms (parallel, chunked, recurrent) compute one function, with and without damping."""

import math
from fractions import Fraction

import pytest
import torch

from bdh import BDH
from bdh.attention import attention_chunked, attention_parallel, attention_step, rope_cos_sin, rope_freqs
from conftest import tiny_config, train_briefly


def _random_model(damping=None, seed=0, **kw):
    torch.manual_seed(seed)
    return BDH(tiny_config(damping=damping, vocab_size=64, **kw)).double().eval()


@pytest.mark.parametrize("damping", [None, "alibi", [0.5, 0.9, 0.99, 1.0]])
@pytest.mark.parametrize("T,C,B", [(1, 4, 2), (5, 4, 1), (16, 16, 3), (17, 16, 2), (40, 7, 2), (33, 1, 1)])
def test_forms_equal_float64_random_weights(damping, T, C, B):
    model = _random_model(damping, chunk_size=C)
    idx = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(T * 100 + C))
    with torch.no_grad():
        lp, _ = model(idx, form="parallel")
        lc, _ = model(idx, form="chunked")
        lr, _ = model(idx, form="recurrent")
        la, _ = model(idx, form="auto")
    assert lp.shape == (B, T, 64)
    assert (lp - lc).abs().max() <= 1e-9
    assert (lp - lr).abs().max() <= 1e-9
    assert (lp - la).abs().max() <= 1e-9
    assert lp.abs().max() > 1e-3  # not a degenerate all-zero function


@pytest.fixture(scope="module", params=[None, "alibi"], ids=["nodamp", "alibi"])
def trained(request):
    torch.manual_seed(1)
    return train_briefly(BDH(tiny_config(damping=request.param)), steps=30)


@pytest.mark.parametrize("T,C", [(20, 8), (64, 16), (50, 64)])
def test_forms_equal_float32_trained_weights(trained, T, C):
    trained.config.chunk_size = C
    idx = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        lp, _ = trained(idx, form="parallel")
        lc, _ = trained(idx, form="chunked")
        lr, _ = trained(idx, form="recurrent")
    assert (lp - lc).abs().max() <= 1e-4
    assert (lp - lr).abs().max() <= 1e-4


def test_trained_float64_forms_equal(trained):
    m = BDH(trained.config)
    m.load_state_dict(trained.state_dict())
    m = m.double().eval()
    idx = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        lp, _ = m(idx, form="parallel")
        lr, _ = m(idx, form="recurrent")
        lc, _ = m(idx, form="chunked")
    assert (lp - lr).abs().max() <= 1e-9 and (lp - lc).abs().max() <= 1e-9


@pytest.mark.parametrize("damping", [None, "alibi"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_prompt_split_across_calls_carries_state(damping, dtype, tol):
    model = _random_model(damping, chunk_size=5).to(dtype)
    idx = torch.randint(0, 64, (3, 30), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full, _ = model(idx, form="parallel")
        pieces, state = [], None
        for (a, b), form in zip([(0, 4), (4, 13), (13, 14), (14, 30)], ["chunked", "parallel", "recurrent", "auto"]):
            lg, state = model.prefill(idx[:, a:b], state, form=form)
            pieces.append(lg)
        # continue token by token with step()
        lg_step, state2 = model.step(idx[:, 0], state)
    assert (torch.cat(pieces, 1) - full).abs().max() <= tol
    assert state.pos.tolist() == [30, 30, 30] and state2.pos.tolist() == [31, 31, 31]
    with torch.no_grad():
        ref, _ = model(torch.cat([idx, idx[:, :1]], 1), form="parallel")
    assert (lg_step - ref[:, -1]).abs().max() <= tol


def test_rows_at_different_positions():
    """Rows of one batch may sit at different positions (prompts of different lengths)."""
    from bdh import BDHState

    model = _random_model("alibi")
    a = torch.randint(0, 64, (1, 9))
    b = torch.randint(0, 64, (1, 4))
    with torch.no_grad():
        _, sa = model.prefill(a)
        _, sb = model.prefill(b)
        nxt = torch.tensor([3, 5])
        both, _ = model.prefill(nxt.view(2, 1), BDHState.cat([sa, sb]), form="parallel")
        ra, _ = model(torch.cat([a, nxt[:1].view(1, 1)], 1))
        rb, _ = model(torch.cat([b, nxt[1:].view(1, 1)], 1))
    assert (both[0, -1] - ra[0, -1]).abs().max() <= 1e-9
    assert (both[1, -1] - rb[0, -1]).abs().max() <= 1e-9


def naive_attention(q, v, gamma):
    """out_t = sum_{s<t} gamma_h^(t-s) <q_t, q_s> v_s, by explicit loops. q (B,h,T,N), v (B,1,T,D)."""
    B, h, T, N = q.shape
    out = torch.zeros(B, h, T, v.shape[-1], dtype=q.dtype)
    for t in range(T):
        for s in range(t):
            w = (q[:, :, t] * q[:, :, s]).sum(-1)  # (B, h)
            if gamma is not None:
                w = w * gamma.view(1, h) ** (t - s)
            out[:, :, t] += w.unsqueeze(-1) * v[:, 0, s].unsqueeze(1)
    return out


@pytest.mark.parametrize("with_gamma", [False, True])
def test_attention_kernels_match_naive_definition(with_gamma):
    g = torch.Generator().manual_seed(0)
    B, h, T, N, D = 2, 3, 11, 6, 5
    q = torch.rand(B, h, T, N, generator=g, dtype=torch.float64)
    v = torch.randn(B, 1, T, D, generator=g, dtype=torch.float64)
    gamma = torch.tensor([0.5, 0.8, 1.0], dtype=torch.float64) if with_gamma else None
    lg = None if gamma is None else gamma.log()
    want = naive_attention(q, v, gamma)
    out_p, S_p = attention_parallel(q, v, None, lg)
    out_c, S_c = attention_chunked(q, v, None, lg, chunk_size=4)
    S = torch.zeros(B, h, N, D, dtype=torch.float64)
    outs = []
    for t in range(T):
        o, S = attention_step(q[:, :, t], v[:, 0, t], S, gamma)
        outs.append(o)
    out_r = torch.stack(outs, 2)
    for out in (out_p, out_c, out_r):
        assert (out - want).abs().max() <= 1e-12
    assert (S_p - S).abs().max() <= 1e-12 and (S_c - S).abs().max() <= 1e-12
    assert out_p[:, :, 0].abs().max() == 0  # strictly causal: the first token reads nothing


def test_step_reads_before_writing():
    """tril(-1): a token never attends to itself, so the first token's read is zero."""
    q = torch.rand(1, 1, 4, dtype=torch.float64)
    v = torch.randn(1, 3, dtype=torch.float64)
    S0 = torch.zeros(1, 1, 4, 3, dtype=torch.float64)
    out, S1 = attention_step(q, v, S0)
    assert out.abs().max() == 0
    assert torch.allclose(S1[0, 0], q[0, 0].unsqueeze(-1) * v[0].unsqueeze(0))
    assert S0.abs().max() == 0  # the input state is not modified


def test_rope_phase_exact_at_long_positions():
    """Phases are reduced modulo one turn in fp64: exact to 1e-9 rad at position 10^7 (fp32 is ~1 rad off)."""
    N = 64
    f = rope_freqs(N, 2.0**16)
    pos = torch.tensor([10**7 + 3])
    cos, sin = rope_cos_sin(pos, f, torch.float64)
    for i in [0, 1, 17, 63]:
        exact = Fraction(int(pos)) * Fraction(float(f[i]))
        turns = float(exact - math.floor(exact))
        assert abs(cos[0, i].item() - math.cos(2 * math.pi * turns)) < 1e-9
        assert abs(sin[0, i].item() - math.sin(2 * math.pi * turns)) < 1e-9
    fp32_phase = (pos.float() * f.float()) % 1  # the reference's fp32 arithmetic
    exact0 = Fraction(int(pos)) * Fraction(float(f[0]))
    assert abs(fp32_phase[0].item() - float(exact0 - math.floor(exact0))) > 1e-3


def test_freqs_stay_float64_under_dtype_casts():
    model = _random_model()
    model = model.to(torch.bfloat16)
    assert model.freqs.dtype == torch.float64 and model.lm_head.dtype == torch.bfloat16
    model = model.float()
    assert model.freqs.dtype == torch.float64
    assert torch.equal(model.freqs, rope_freqs(model.config.N, model.config.rope_theta))


def test_bfloat16_model_runs_and_tracks_float32():
    torch.manual_seed(0)
    m32 = BDH(tiny_config()).eval()
    m16 = BDH(tiny_config())
    m16.load_state_dict(m32.state_dict())
    m16 = m16.to(torch.bfloat16).eval()
    idx = torch.randint(0, 256, (1, 24))
    with torch.no_grad():
        l32, _ = m32(idx)
        l16, s16 = m16.prefill(idx, form="chunked")
    assert s16.dtype == torch.float32  # state accumulated in fp32
    assert (l32 - l16.float()).abs().max() < 0.1


def test_detach_kv_changes_gradients_not_values():
    model = _random_model().float().train()
    idx = torch.randint(0, 64, (2, 20))
    l1, loss1 = model(idx, idx, form="chunked")
    l2, loss2 = model(idx, idx, form="chunked", detach_kv=True)
    assert torch.equal(l1, l2)
    g1 = torch.autograd.grad(loss1, model.encoder)[0]
    g2 = torch.autograd.grad(loss2, model.encoder)[0]
    assert (g1 - g2).abs().max() > 1e-8
