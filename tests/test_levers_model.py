"""The model levers of generalisation over time (spec §6d, issue 26 point 2): what each computes, and that every
form computes it exactly.

- Position: `rope_fraction` (RoPE on the first n_rope neurons of each head; 0 = NoPE).
- Timescales: `damping="learned"` (a trained gamma per head) and `"learned-neuron"` (per neuron of each head),
  `damping_init_range`.
- State normalisation: the read-out a* passes through a LayerNorm before it is used, so any positive per-token
  scale of it (1/t, 1/sqrt(t), a linear-attention denominator) is a no-op up to LN's eps: no option, a test.

Forms are compared in fp64 on random weights (values <= 1e-9, gradients <= 1e-9 relative), as test_forms.py and
test_gradients.py do for the fixed damping.
"""

import math
import types

import pytest
import torch
import torch.nn.functional as F

from bdh import BDH, BDHConfig, BDHState
from bdh.attention import attention_chunked, attention_parallel, attention_step, rope_freqs, rope_reference
from bdh.config import alibi_slopes
from conftest import tiny_config

FORMS = ("parallel", "chunked", "recurrent")
N = 64  # tiny_config: n_embd 32 * multiplier 8 / 4 heads

LEVERS = {
    "nope": dict(rope_fraction=0.0),
    "rope-0.3": dict(rope_fraction=0.3),
    "learned": dict(damping="learned"),
    "learned-range": dict(damping="learned", damping_init_range=[0.5, 200.0]),
    "learned-neuron": dict(damping="learned-neuron"),
    "neuron-range-rope-0.5": dict(damping="learned-neuron", damping_init_range=[1.0, 64.0], rope_fraction=0.5),
}


def _model(seed: int = 0, **kw) -> BDH:
    """A fresh fp64 model (random weights) with the lever's options; learned decays moved off their init."""
    torch.manual_seed(seed)
    m = BDH(tiny_config(vocab_size=64, **kw)).double().eval()
    if m.config.learned_damping:
        with torch.no_grad():  # distinct rates everywhere, so a form that mixes up heads or neurons shows
            m.log_decay_rate.add_(torch.randn(m.log_decay_rate.shape, generator=torch.Generator().manual_seed(seed),
                                               dtype=torch.float64) * 0.5)
    return m


def _ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


# ============================================================================ config
@pytest.mark.parametrize("kw, field", [
    (dict(rope_fraction=-0.1), "rope_fraction"), (dict(rope_fraction=1.5), "rope_fraction"),
    (dict(rope_fraction="half"), "rope_fraction"), (dict(rope_fraction=True), "rope_fraction"),
    (dict(rope_fraction=math.nan), "rope_fraction"),
    (dict(damping="learnt"), "damping"),
    (dict(damping_init_range=[1.0, 10.0]), "damping_init_range"),  # no learned damping to initialise
    (dict(damping="alibi", damping_init_range=[1.0, 10.0]), "damping_init_range"),
    (dict(damping="learned", damping_init_range=[0.0, 10.0]), "damping_init_range"),
    (dict(damping="learned", damping_init_range=[10.0, 1.0]), "damping_init_range"),
    (dict(damping="learned", damping_init_range=[1.0]), "damping_init_range"),
    (dict(damping="learned-neuron", damping_init_range=[1.0, math.inf]), "damping_init_range"),
    (dict(damping="learned-neuron", damping_init_range=[True, 2.0]), "damping_init_range"),
])
def test_bad_values_raise_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"BDHConfig\.{field}=.*expected"):
        tiny_config(**kw)


def test_learned_damping_messages_say_what_is_expected():
    with pytest.raises(ValueError, match="learned-neuron"):
        tiny_config(damping="learnt")
    with pytest.raises(ValueError, match="rotates"):
        tiny_config(rope_fraction=2)
    with pytest.raises(ValueError, match="trained parameter"):  # no fixed retention in the config
        tiny_config(damping="learned").decay()


@pytest.mark.parametrize("f, n_rope", [(1.0, 64), (0.0, 0), (0.5, 32), (0.3, 20), (0.01, 0), (0.97, 62), (1, 64)])
def test_n_rope_counts_whole_pairs(f, n_rope):
    assert tiny_config(rope_fraction=f).n_rope == n_rope  # 2 * round(f * N / 2), half up


def test_new_fields_round_trip_through_config_json(tmp_path):
    c = tiny_config(damping="learned-neuron", damping_init_range=(2, 512), rope_fraction=0.25)
    assert c.damping_init_range == [2, 512]
    c.save(tmp_path / "config.json")
    assert BDHConfig.load(tmp_path / "config.json") == c


# ============================================================================ position: rope_fraction
def test_rope_fraction_one_is_todays_model():
    torch.manual_seed(3)
    a = BDH(tiny_config())
    torch.manual_seed(3)
    b = BDH(tiny_config(rope_fraction=1.0))
    assert torch.equal(a.freqs, rope_freqs(N, a.config.rope_theta)) and torch.equal(a.freqs, b.freqs)
    idx = _ids(2, 20, 0)
    with torch.no_grad():
        assert torch.equal(a(idx)[0], b(idx)[0])


def _capture(model, idx, state=None, form="parallel"):
    """x_sparse and qr of every layer (hook points) for one prefill."""
    got = {}
    keep = lambda name, t, pos: got.__setitem__(name, t.clone())  # noqa: E731
    names = [f"blocks.{l}.{k}" for l in range(model.config.n_layer) for k in ("x_sparse", "qr")]
    with torch.no_grad(), model.hooks({n: keep for n in names}):
        _, state = model.prefill(idx, state, form=form)
    return got, state


@pytest.mark.parametrize("f", [0.3, 0.5, 0.0])
def test_rope_fraction_rotates_exactly_the_first_n_rope_neurons(f):
    model = _model(rope_fraction=f)
    m = model.config.n_rope
    full = rope_freqs(N, model.config.rope_theta)
    assert torch.equal(model.freqs[:m], full[:m]) and bool((model.freqs[m:] == 0).all())
    _, state = model.prefill(_ids(2, 9, 1))  # continue at position 9: rotations of absolute positions
    got, _ = _capture(model, _ids(2, 7, 2), state)
    pos = torch.arange(9, 16, dtype=torch.float64)
    ang = 2 * math.pi * pos.view(-1, 1) * full  # (T, N): today's RoPE angles
    for l in range(model.config.n_layer):
        x, qr = got[f"blocks.{l}.x_sparse"], got[f"blocks.{l}.qr"]
        assert torch.equal(qr[..., m:], x[..., m:])  # not rotated at all, bit for bit
        if m:
            want = rope_reference(x, torch.cos(ang), torch.sin(ang))  # every neuron rotated as today
            assert (qr[..., :m] - want[..., :m]).abs().max() <= 1e-12
            assert (qr[..., :m] - x[..., :m]).abs().max() > 1e-3  # the first n_rope really rotate


def _nope_reference(model: BDH, idx: torch.Tensor) -> torch.Tensor:
    """BDH-GPU written out with no positional signal: scores <x_t, x_s> (s < t), no RoPE anywhere."""
    ln = lambda u: F.layer_norm(u, (u.shape[-1],), eps=model.ln.eps)  # noqa: E731
    B, T = idx.shape
    nh, Nn = model.config.n_head, model.config.N
    v = ln(model.embed.weight[idx]).unsqueeze(1)  # (B, 1, T, d)
    for _ in range(model.config.n_layer):
        x = F.relu(v @ model.encoder)  # (B, h, T, N)
        scores = torch.zeros(B, nh, T, T, dtype=x.dtype)
        for t in range(T):
            for s in range(t):
                scores[:, :, t, s] = (x[:, :, t] * x[:, :, s]).sum(-1)  # no rotation: position-free
        a = scores @ v  # (B, h, T, d)
        y = F.relu(ln(a) @ model.encoder_v)
        out = (x * y).transpose(1, 2).reshape(B, 1, T, nh * Nn) @ model.decoder
        v = ln(v + ln(out))
    return v[:, 0] @ model.lm_head


def test_nope_is_the_hand_written_position_free_model():
    model = _model(rope_fraction=0.0)
    idx = _ids(2, 12, 3)
    with torch.no_grad():
        for form in FORMS:
            assert (model(idx, form=form)[0] - _nope_reference(model, idx)).abs().max() <= 1e-10


def test_nope_output_does_not_depend_on_absolute_position():
    """With rope_fraction=0 (and no damping) nothing reads the position: the same state continued from position 9 or
    9 + 1000 gives the same logits, bit for bit. With full RoPE it does not (the lever changes something)."""
    idx, more = _ids(2, 9, 4), _ids(2, 6, 5)
    for f, same in ((0.0, True), (1.0, False)):
        model = _model(rope_fraction=f)
        with torch.no_grad():
            _, s = model.prefill(idx)
            shifted = BDHState(s.rho, s.pos + 1000)
            a, _ = model.prefill(more, s)
            b, _ = model.prefill(more, shifted)
        assert torch.equal(a, b) == same
        if not same:
            assert (a - b).abs().max() > 1e-4


# ============================================================================ timescales: learned damping
def test_learned_per_head_starts_at_alibi():
    torch.manual_seed(0)
    alibi = BDH(tiny_config(damping="alibi")).double().eval()
    torch.manual_seed(0)
    learned = BDH(tiny_config(damping="learned")).double().eval()
    assert learned.log_decay_rate.shape == (4,) and learned.log_decay_rate.dtype == torch.float64
    want = -torch.tensor(alibi_slopes(4), dtype=torch.float64)
    assert torch.allclose(learned.log_gamma, want, rtol=1e-6, atol=0)  # w = log(slope), stored in fp32
    assert torch.allclose(learned.log_gamma, alibi.log_gamma, rtol=1e-6, atol=0)
    learned.load_state_dict({**alibi.state_dict(), "log_decay_rate": learned.log_decay_rate})
    idx = _ids(2, 30, 6)
    with torch.no_grad():
        assert (learned(idx)[0] - alibi(idx)[0]).abs().max() <= 1e-5


def test_learned_neuron_init_is_a_geometric_spread_of_alibi_rates():
    model = BDH(tiny_config(damping="learned-neuron"))
    assert model.log_decay_rate.shape == (4 * N,)  # a vector: AdamW, no weight decay (see below)
    lg = model.log_gamma
    assert lg.shape == (4, N) and lg.dtype == torch.float64
    rates = -lg  # (h, N), the same in every head
    assert torch.equal(rates, rates[:1].expand(4, N))
    slopes = alibi_slopes(4)
    assert math.isclose(rates[0, 0].item(), max(slopes), rel_tol=1e-6)
    assert math.isclose(rates[0, -1].item(), min(slopes), rel_tol=1e-6)
    ratio = rates[0, 1:] / rates[0, :-1]  # geometric: a constant ratio, fastest (neuron 0) to slowest
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5) and ratio[0] < 1


@pytest.mark.parametrize("damping, K", [("learned", 4), ("learned-neuron", N)])
def test_damping_init_range_is_half_lives_spread_geometrically(damping, K):
    model = BDH(tiny_config(damping=damping, damping_init_range=[2.0, 512.0]))
    gamma = model.log_gamma.exp().reshape(-1, K)[0]  # (K,): heads, or the neurons of head 0
    half = math.log(0.5) / gamma.log()  # half-life in tokens: gamma^half = 1/2
    want = 2.0 * 256.0 ** (torch.arange(K, dtype=torch.float64) / (K - 1))
    assert torch.allclose(half, want, rtol=1e-6)


@pytest.mark.parametrize("damping", ["learned", "learned-neuron"])
def test_gamma_stays_in_0_1_and_gradients_reach_it(damping):
    model = _model(damping=damping).train()
    with torch.no_grad():
        w = model.log_decay_rate
        w.copy_(torch.linspace(-20, 3, w.numel(), dtype=w.dtype))  # rates e^-20 .. e^3
    g = model.log_gamma.exp()
    assert bool(((g > 0) & (g < 1)).all())
    idx = _ids(2, 21, 7)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    grad = model.log_decay_rate.grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    # the gradient is the derivative: central differences of the loss in two entries of w
    for i in (0, w.numel() - 1):
        def loss_at(x):
            with torch.no_grad():
                old = w[i].item()
                w[i] = x
                out = model(idx[:, :-1], idx[:, 1:])[1].item()
                w[i] = old
            return out
        eps = 1e-5
        fd = (loss_at(w[i].item() + eps) - loss_at(w[i].item() - eps)) / (2 * eps)
        assert abs(fd - grad[i].item()) <= 1e-6 * max(1.0, abs(fd)) + 1e-9


def test_learned_decay_trains_and_stays_fp32_or_fp64():
    torch.manual_seed(0)
    model = BDH(tiny_config(damping="learned-neuron"))
    assert model.log_decay_rate.dtype == torch.float32
    before = model.log_decay_rate.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, loss = model(_ids(2, 24, 8), _ids(2, 24, 9))
    loss.backward()
    opt.step()
    assert (model.log_decay_rate - before).abs().max() > 1e-4
    w = model.log_decay_rate.detach().clone()
    half = model.to(torch.bfloat16)
    assert half.lm_head.dtype == torch.bfloat16 and half.log_decay_rate.dtype == torch.float32
    assert torch.equal(half.log_decay_rate.detach(), w)  # not rounded through bf16
    assert half.double().log_decay_rate.dtype == torch.float64


# ---------------------------------------------------------------------------- per-neuron decay: the kernels
def _explicit_neuron_decay(Q, V, lg, S0=None):
    """The readable definition: out_t = sum_{s<t} sum_n Q_tn Q_sn gamma_n^(t-s) V_s (+ read of diag(gamma^t) S0), with
    the explicit (B, h, T, T, N) product; and the state after T tokens."""
    B, nh, T, Nn = Q.shape
    t = torch.arange(T, dtype=torch.float64)
    dist = t.view(-1, 1) - t.view(1, -1)  # t - s
    G = torch.exp(lg.view(nh, 1, 1, Nn) * dist.clamp(min=0).view(1, T, T, 1)) * (dist > 0).view(1, T, T, 1)
    prod = Q.unsqueeze(3) * Q.unsqueeze(2) * G.unsqueeze(0)  # (B, h, T, T, N)
    out = prod.sum(-1) @ V
    wS = torch.exp(lg.view(nh, 1, Nn) * (T - t).view(1, T, 1))  # gamma^(T-s)
    S = (Q * wS).mT @ V  # (B, h, N, D)
    if S0 is not None:
        out = out + (Q * torch.exp(lg.view(nh, 1, Nn) * t.view(1, T, 1))) @ S0
        S = S + S0 * torch.exp(lg * T).view(1, nh, Nn, 1)
    return out, S


@pytest.mark.parametrize("T", [1, 2, 5, 8, 13, 16, 23])
@pytest.mark.parametrize("with_state", [False, True])
def test_per_neuron_kernels_equal_the_explicit_product(T, with_state):
    g = torch.Generator().manual_seed(T)
    B, nh, Nn, D = 2, 3, 6, 4
    Q = torch.rand(B, nh, T, Nn, generator=g, dtype=torch.float64, requires_grad=True)
    V = torch.randn(B, 1, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    lg = (-torch.rand(nh, Nn, generator=g, dtype=torch.float64) * 2).requires_grad_()
    S0 = torch.randn(B, nh, Nn, D, generator=g, dtype=torch.float64, requires_grad=True) if with_state else None
    want, S_want = _explicit_neuron_decay(Q, V, lg, S0)
    gout = torch.randn(want.shape, generator=g, dtype=torch.float64)
    gS = torch.randn(S_want.shape, generator=g, dtype=torch.float64)
    inputs = [Q, V, lg] + ([S0] if with_state else [])

    def grads(out, S):
        return torch.autograd.grad((out * gout).sum() + (S * gS).sum(), inputs)

    g_want = grads(want, S_want)
    St = torch.zeros(B, nh, Nn, D, dtype=torch.float64) if S0 is None else S0
    outs = []
    for t in range(T):
        o, St = attention_step(Q[:, :, t], V[:, 0, t], St, lg.exp())
        outs.append(o)
    results = {
        "parallel": attention_parallel(Q, V, S0, lg),
        "chunked-4": attention_chunked(Q, V, S0, lg, chunk_size=4),
        "chunked-1": attention_chunked(Q, V, S0, lg, chunk_size=1),
        "step": (torch.stack(outs, 2), St),
    }
    for name, (out, S) in results.items():
        assert (out - want).abs().max() <= 1e-12, name
        assert (S - S_want).abs().max() <= 1e-12, name
        for a, b in zip(grads(out, S), g_want):
            assert (a - b).abs().max() <= 1e-11 * max(1.0, b.abs().max().item()), name


def test_per_neuron_decay_is_safe_at_extreme_rates_in_fp32():
    """Rates from e^-14 to 80 per token (gamma down to 2e-35), 300 tokens, fp32: no factor exceeds 1, so nothing
    overflows (a gamma^-s factorisation would be e^24000), and the result tracks fp64."""
    g = torch.Generator().manual_seed(0)
    B, nh, T, Nn, D = 1, 2, 300, 8, 4
    Q = torch.rand(B, nh, T, Nn, generator=g, dtype=torch.float64)
    V = torch.randn(B, 1, T, D, generator=g, dtype=torch.float64)
    lg = -torch.logspace(-6, math.log10(80), nh * Nn, dtype=torch.float64).view(nh, Nn)
    ref, S_ref = attention_parallel(Q, V, None, lg)
    for out, S in (attention_parallel(Q.float(), V.float(), None, lg), attention_chunked(Q.float(), V.float(), None, lg, 64)):
        assert torch.isfinite(out).all() and torch.isfinite(S).all()
        assert (out.double() - ref).abs().max() <= 1e-4 * ref.abs().max()
        assert (S.double() - S_ref).abs().max() <= 1e-4 * S_ref.abs().max()
    Qg = Q.float().requires_grad_()
    lgg = lg.clone().requires_grad_()
    out, _ = attention_parallel(Qg, V.float(), None, lgg)
    out.sum().backward()
    assert torch.isfinite(Qg.grad).all() and torch.isfinite(lgg.grad).all()


# ============================================================================ every lever: the forms are one function
@pytest.mark.parametrize("lever", list(LEVERS))
@pytest.mark.parametrize("T,C,B", [(1, 4, 2), (17, 8, 2), (33, 16, 1), (12, 1, 1)])
def test_forms_equal_for_every_lever(lever, T, C, B):
    model = _model(chunk_size=C, **LEVERS[lever])
    idx = _ids(B, T, T * 10 + C)
    with torch.no_grad():
        out = {f: model(idx, form=f)[0] for f in (*FORMS, "auto")}
    for f in ("chunked", "recurrent", "auto"):
        assert (out[f] - out["parallel"]).abs().max() <= 1e-9, f
    assert out["parallel"].abs().max() > 1e-3


@pytest.mark.parametrize("lever", list(LEVERS))
def test_prefill_pieces_and_decode_carry_the_state(lever):
    model = _model(chunk_size=5, **LEVERS[lever])
    idx = _ids(3, 30, 7)
    with torch.no_grad():
        full, _ = model(torch.cat([idx, idx[:, :2]], 1), form="parallel")
        pieces, state = [], None
        for (a, b), form in zip([(0, 4), (4, 13), (13, 14), (14, 30)], ["chunked", "parallel", "recurrent", "auto"]):
            lg, state = model.prefill(idx[:, a:b], state, form=form)
            pieces.append(lg)
        l1, s1 = model.step(idx[:, 0], state)  # functional step
        l2, s2 = model.step(idx[:, 1], s1.clone(), inplace=True, sparse=False)  # in-place decode (lazy per-head scale)
    assert (torch.cat(pieces, 1) - full[:, :30]).abs().max() <= 1e-9
    assert (l1 - full[:, 30]).abs().max() <= 1e-9 and (l2 - full[:, 31]).abs().max() <= 1e-9
    with torch.no_grad():
        _, s_ref = model.prefill(torch.cat([idx, idx[:, :2]], 1), form="chunked")
    for a, b in zip(s2.rho, s_ref.rho):
        assert (a - b).abs().max() <= 1e-9


def _grads(model, form, idx, carried, detach_kv):
    """Gradients of the loss plus a term of the returned state, for every parameter (as test_gradients.py)."""
    model.zero_grad(set_to_none=True)
    logits, state = model.prefill(idx[:, :-1], carried, form=form, detach_kv=detach_kv)
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    g = torch.Generator().manual_seed(3)
    loss = loss + sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum() * 1e-3 for r in state.rho)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("lever", list(LEVERS))
@pytest.mark.parametrize("carry, detach_kv", [(False, False), (True, False), (True, True)])
def test_gradients_equal_across_forms_for_every_lever(lever, carry, detach_kv):
    model = _model(chunk_size=8, **LEVERS[lever])
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 64, (2, 21), generator=g)  # T = 20 after the shift: chunks of 8, 8, 4
    carried = None
    if carry:  # a carried, detached state, rows at different positions
        with torch.no_grad():
            s0 = model.prefill(torch.randint(0, 64, (1, 9), generator=g))[1]
            s1 = model.prefill(torch.randint(0, 64, (1, 13), generator=g))[1]
        carried = model.carry_state(BDHState.cat([s0, s1]))
    grads = {f: _grads(model, f, idx, carried, detach_kv) for f in FORMS}
    ref = grads["parallel"]
    if model.config.learned_damping:
        assert "log_decay_rate" in ref
    for f in ("chunked", "recurrent"):
        for k, gp in ref.items():
            scale = gp.abs().max().item()
            assert scale > 0, k
            err = (grads[f][k] - gp).abs().max().item() / scale
            assert err <= 1e-9, f"{lever}: {f} vs parallel: d loss / d {k} differs by {err:.2e} (relative)"


# ============================================================================ decode, checkpoints, optimizer, others
def test_learned_per_head_lazy_and_sparse_decode_equal_dense():
    model = _model(damping="learned")
    idx = _ids(2, 12, 11)
    with torch.no_grad():
        want, _ = model(idx, form="parallel")
        for sparse in (False, True):
            state, out = model.init_state(2), []
            for t in range(12):
                lt, state = model.step(idx[:, t], state, inplace=True, sparse=sparse)
                out.append(lt)
            assert (torch.stack(out, 1) - want).abs().max() <= 1e-9, sparse
    assert model._fold_period() == _fold_of(model)
    with torch.no_grad():
        model.log_decay_rate.add_(1.0)  # faster decays: the period is recomputed from the new values
    assert model._fold_period() == _fold_of(model)


def _fold_of(model):
    from bdh.state import fold_period

    return fold_period(model.log_gamma.detach().exp().tolist())


def test_learned_neuron_decode_refuses_forced_sparse():
    model = _model(damping="learned-neuron")
    idx = _ids(1, 6, 12)
    with torch.no_grad():
        state = model.prefill(idx[:, :-1])[1]
        with pytest.raises(ValueError, match="sparse=True.*learned-neuron"):
            model.step(idx[:, -1], state.clone(), inplace=True, sparse=True)
        lt, _ = model.step(idx[:, -1], state.clone(), inplace=True, sparse="auto")  # runs dense
        assert (lt - model(idx)[0][:, -1]).abs().max() <= 1e-9


@pytest.mark.parametrize("kw", [LEVERS["learned"], LEVERS["neuron-range-rope-0.5"], LEVERS["rope-0.3"]])
def test_checkpoint_save_load_same_logits(tmp_path, kw):
    from bdh.checkpoint import load_pretrained

    model = _model(**kw).float()
    model.save_pretrained(tmp_path / "m")
    back = load_pretrained(tmp_path / "m")
    for k, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], t), k
    idx = _ids(2, 20, 13)
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model(idx)[0])


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_learned_decay_goes_to_adamw_without_weight_decay(optimizer):
    from bdh.training.config import TrainConfig
    from bdh.training.step import make_optimizer

    for damping in ("learned", "learned-neuron"):
        model = BDH(tiny_config(damping=damping))
        opt = make_optimizer(model, TrainConfig(optimizer=optimizer, weight_decay=0.1))
        (group,) = [g for g in opt.param_groups if any(p is model.log_decay_rate for p in g["params"])]
        assert not group.get("muon", False) and group["weight_decay"] == 0.0


def test_graph_and_analysis_forms_take_per_head_and_refuse_per_neuron():
    from bdh.analysis.merge import MergeError, check_mergeable
    from bdh.analysis.synapses import SigmaSpec
    from bdh.graph.from_gpu import GPUWeights

    head = _model(damping="learned")
    assert torch.allclose(GPUWeights.from_model(head).gamma, head.log_gamma.detach().exp(), rtol=1e-15)
    assert torch.allclose(SigmaSpec.from_model(head).gamma, head.log_gamma.detach().exp(), rtol=1e-15)
    neuron = _model(damping="learned-neuron")
    with pytest.raises(ValueError, match="per-neuron"):
        GPUWeights.from_model(neuron)
    with pytest.raises(ValueError, match="per-neuron"):
        SigmaSpec.from_model(neuron)
    with pytest.raises(MergeError, match="learned"):
        check_mergeable(head, head)


@pytest.mark.parametrize("form, T", [("parallel", 16), ("parallel", 21), ("chunked", 40)])
@pytest.mark.parametrize("damping", ["learned", "learned-neuron"])
def test_flops_count_the_executed_matmuls(form, T, damping):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tiny_config(damping=damping, vocab_size=64)
    torch.manual_seed(0)
    model = BDH(cfg)
    x = _ids(2, T, 14)
    f = BDH.flops(cfg, T, form=form)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x, form=form)
    assert fc.get_total_flops() == pytest.approx(2 * T * f.forward, rel=1e-12)
    with FlopCounterMode(display=False) as fc:
        model(x, x, form=form)[1].backward()
    assert fc.get_total_flops() == pytest.approx(2 * T * f.executed_training, rel=1e-12)


# ============================================================================ state normalisation
def test_positive_per_token_scale_of_the_read_out_is_a_no_op_up_to_ln_eps(trained_tiny):
    """`y_sparse = relu(LN(a*) D_y)`: a* is used only through a LayerNorm (per token and head, over d; no affine), and
    LN_eps(c a) = LN_(eps/c^2)(a) for c > 0. So scaling the read-out (or rho) by any positive per-token scalar (1/t,
    1/sqrt(t), a linear-attention denominator) only changes LN's eps for that token: a "state normalisation" option of
    that kind would be vacuous. Shown on trained weights (fp64): with eps made negligible (a* pre-scaled by 1e6 in
    both runs) every positive scale leaves the logits equal to 1e-9; at the model's own eps (1e-5, while the read's
    variance over d goes down to ~5e-4 on early tokens) 1/t moves them by ~4e-3 of ~3.3 (measured). A negative scale
    (a denominator sum_s <q_t, q_s> that RoPE can make negative) is not a no-op: LN is odd."""
    model = BDH(trained_tiny.config)
    model.load_state_dict(trained_tiny.state_dict())
    model = model.double().eval()
    idx = _ids(2, 48, 15)
    T = idx.shape[1]
    t = torch.arange(1, T + 1, dtype=torch.float64).view(1, 1, T, 1)
    rnd = torch.exp(torch.randn(2, 4, T, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2)

    def run(scale, layers=None):
        layers = range(model.config.n_layer) if layers is None else layers
        with torch.no_grad(), model.hooks({f"blocks.{l}.attn": (lambda name, a, pos: a * scale) for l in layers}):
            return model(idx)[0]

    base = model(idx)[0].detach()
    top = base.abs().max()
    no_eps = run(1e6)  # eps / 1e12: negligible
    for scale in (1 / t, 1 / t.sqrt(), t, rnd):
        assert (run(1e6 * scale) - no_eps).abs().max() <= 1e-9 * top  # positive scales: exactly nothing else
    for scale in (1 / t, 1 / t.sqrt(), t):
        assert (run(scale) - base).abs().max() <= 1e-2 * top  # at the model's eps: a small eps effect only
    assert (run(-1.0, [0]) - base).abs().max() > 1e-1 * top
