"""Hook points emitted by the model itself (bdh.model): names, shapes, every form, interventions, removal."""

import pytest
import torch

import bdh.sparse
from bdh import BDH
from bdh.model import HOOK_KINDS, hook_name

from conftest import tiny_config


def _model(**kw) -> BDH:
    torch.manual_seed(4)
    return BDH(tiny_config(**kw)).eval()


def _record(model, names, run):
    """Run `run()` with hooks on `names` that keep (tensor copy, pos copy) per call."""
    seen = {n: [] for n in names}
    keep = lambda name, t, pos: seen[name].append((t.detach().clone(), pos.clone()))  # noqa: E731
    with torch.no_grad(), model.hooks({n: keep for n in names}):
        out = run()
    return out, seen


ALL = lambda L: [hook_name(l, k) for l in range(L) for k in HOOK_KINDS] + ["logits"]  # noqa: E731


@pytest.mark.parametrize("damping", [None, "alibi"])
def test_every_form_emits_the_same_activations(damping):
    m = _model(damping=damping)
    c = m.config
    idx = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))  # > chunk_size: 2 chunks
    names = ALL(c.n_layer)
    ref = {}
    for form in ("parallel", "chunked", "recurrent"):
        (logits, state), seen = _record(m, names, lambda: m.prefill(idx, form=form))
        assert all(seen[n] for n in names), [n for n in names if not seen[n]]
        if form == "recurrent":  # one call per token: (.., 1, ..) pieces at positions 0, 1, ...
            assert [int(p[0]) for _, p in seen["blocks.0.x_sparse"]] == list(range(20))
            cat = {n: torch.cat([t for t, _ in seen[n]], dim=1 if n == "logits" else 2) for n in names if ".rho" not in n}
        else:
            assert all(len(seen[n]) == 1 for n in names)
            cat = {n: seen[n][0][0] for n in names if ".rho" not in n}
        cat.update({n: seen[n][-1][0] for n in names if ".rho" in n})  # rho after the last token
        shapes = {"v_in": (2, 1, 20, c.D), "x_sparse": (2, c.n_head, 20, c.N), "qr": (2, c.n_head, 20, c.N),
                  "attn": (2, c.n_head, 20, c.D), "y_sparse": (2, c.n_head, 20, c.N), "xy": (2, c.n_head, 20, c.N),
                  "v_out": (2, 1, 20, c.D), "rho": (2, c.n_head, c.N, c.D)}
        for k, shape in shapes.items():
            assert tuple(cat[hook_name(1, k)].shape) == shape, (form, k)
        assert torch.equal(cat["logits"], logits)
        assert torch.allclose(cat["blocks.1.rho"], state.rho[1], atol=1e-5)
        assert torch.equal(cat["blocks.1.xy"], cat["blocks.1.x_sparse"] * cat["blocks.1.y_sparse"])
        assert torch.equal(cat["blocks.1.v_in"], cat["blocks.0.v_out"])
        if ref:
            for n, t in ref.items():
                assert torch.allclose(cat[n], t, atol=1e-4), (form, n)
        else:
            ref = cat


def test_step_emits_with_positions_and_matches_prefill():
    m = _model(damping="alibi")
    idx = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        _, s = m.prefill(idx[:, :7])
    names = [hook_name(0, "xy"), hook_name(1, "attn"), hook_name(1, "rho"), "logits"]
    (lg, s2), seen = _record(m, names, lambda: m.step(idx[:, 7], s.clone(), inplace=True, sparse=False))
    (full, sf), ref = _record(m, names, lambda: m.prefill(idx))
    assert seen["logits"][0][1].tolist() == [7, 7]  # pos: the position of the token
    assert torch.allclose(seen["blocks.0.xy"][0][0], ref["blocks.0.xy"][0][0][:, :, 7:], atol=1e-5)
    assert torch.allclose(seen["blocks.1.attn"][0][0], ref["blocks.1.attn"][0][0][:, :, 7:], atol=1e-5)
    assert torch.allclose(seen["blocks.1.rho"][0][0], sf.rho[1], atol=1e-5)  # true rho, lazy scale applied
    assert torch.allclose(lg, full[:, 7], atol=1e-5)


def test_a_hook_can_intervene():
    """Zeroing neurons K of x_sparse in every layer through hooks == zeroing their D_x columns (exactly the same
    function), and differs from the unmodified model."""
    m = _model()
    K = torch.tensor([0, 3, 17, 40])
    idx = torch.randint(0, 256, (2, 12))
    mask = torch.ones(m.config.N)
    mask[K] = 0
    ablate = lambda name, x, pos: x * mask  # noqa: E731
    with torch.no_grad():
        plain, _ = m(idx)
        with m.hooks({hook_name(l, "x_sparse"): ablate for l in range(m.config.n_layer)}):
            hooked, _ = m(idx)
        m2 = _model()
        m2.encoder.data[:, :, K] = 0
        edited, _ = m2(idx)
    assert torch.allclose(hooked, edited, atol=1e-6)
    assert (hooked - plain).abs().max() > 1e-3


def test_hooks_are_removed_and_validated():
    m = _model()
    idx = torch.randint(0, 256, (1, 5))
    calls = []
    h = m.add_hook("logits", lambda n, t, p: calls.append(n))
    m(idx)
    h.remove()
    m(idx)
    assert calls == ["logits"] and m._hooks == {}
    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks({"blocks.0.qr": lambda n, t, p: None}):
            raise RuntimeError("boom")
    assert m._hooks == {}  # removed on the way out of an exception
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        m.add_hook("blocks.5.xy", print)
    with pytest.raises(ValueError, match="hook name 'blocks.0.nope'"):
        m.add_hook("blocks.0.nope", print)
    with pytest.raises(TypeError, match="expected a callable"):
        m.add_hook("logits", 3)
    with m.hooks({"blocks.0.xy": lambda n, t, p: t[:, :1]}), pytest.raises(ValueError, match="expected None or a tensor of shape"):
        m(idx)
    with m.hooks({"blocks.0.rho": lambda n, t, p: t}), pytest.raises(ValueError, match="rho hooks only observe"):
        m(idx)
    assert m._hooks == {}


def test_sparse_step_with_hooks_runs_dense(monkeypatch):
    m = _model(damping="alibi")
    made = []
    real = bdh.sparse.SparseStepForm.__init__
    monkeypatch.setattr(bdh.sparse.SparseStepForm, "__init__", lambda self, *a, **k: made.append(1) or real(self, *a, **k))
    with torch.no_grad():
        _, s = m.prefill(torch.randint(0, 256, (1, 6)))
        m.step(torch.tensor([5]), s.clone(), inplace=True, sparse=True)
        assert made
        made.clear()
        with m.hooks({"blocks.0.xy": lambda n, t, p: None}):
            m.step(torch.tensor([5]), s.clone(), inplace=True, sparse=True)
        assert not made


# ----------------------------------------------------------------------------- rho after chosen tokens
def _carried_state(m: BDH, gen: torch.Generator):
    """A state whose two rows are at different positions (5 and 9 tokens in)."""
    from bdh.state import BDHState

    a, b = torch.randint(0, 256, (1, 5), generator=gen), torch.randint(0, 256, (1, 9), generator=gen)
    return BDHState.cat([m.prefill(a)[1], m.prefill(b)[1]])


def _rebuild(m: BDH, idx, state, detach_kv=False):
    """Logits and the state after every token, one recurrent step per token (functional steps)."""
    logits, states = [], []
    for t in range(idx.shape[1]):
        lt, state = m.prefill(idx[:, t : t + 1], state, form="recurrent", detach_kv=detach_kv)
        logits.append(lt)
        states.append(state)
    return torch.cat(logits, 1), states


@pytest.mark.parametrize("damping", [None, "alibi"])
@pytest.mark.parametrize("form", ["parallel", "chunked", "recurrent"])
def test_states_at_equals_a_step_by_step_rebuild(damping, form):
    """`BDH.states_at`: the state after chosen tokens (any order, repeats, from a carried state with rows at
    different positions) == the recurrent rebuild in float64; logits and final state == prefill."""
    m = _model(damping=damping).double()
    gen = torch.Generator().manual_seed(7)
    state = _carried_state(m, gen)
    idx = torch.randint(0, 256, (2, 37), generator=gen)  # chunked: chunks of 16, 16, 5
    positions = [20, 0, 15, 16, 36, 3, 15]
    with torch.no_grad():
        logits, kept, final = m.states_at(idx, positions, state, form=form)
        ref_logits, ref = _rebuild(m, idx, state)
        pre_logits, pre = m.prefill(idx, state, form=form)
    assert len(kept) == len(positions)
    for p, s in zip(positions, kept):
        assert torch.equal(s.pos, ref[p].pos) and s.pos.tolist() == (state.pos + p + 1).tolist()
        for l in range(m.config.n_layer):
            assert torch.allclose(s.rho[l], ref[p].rho[l], rtol=1e-9, atol=1e-9), (p, l)
    assert torch.allclose(logits, ref_logits, rtol=1e-9, atol=1e-9)
    assert torch.equal(logits, pre_logits) and all(torch.equal(a, b) for a, b in zip(final.rho, pre.rho))
    assert all(torch.equal(a, b) for a, b in zip(state.rho, _carried_state(m, torch.Generator().manual_seed(7)).rho))


@pytest.mark.parametrize("damping", [None, "alibi"])
@pytest.mark.parametrize("detach_kv", [False, True])
def test_states_at_gradients_equal_the_step_by_step_rebuild(damping, detach_kv):
    """Gradients of a loss on the kept states and the logits, for every parameter: chunked `states_at` == the
    recurrent rebuild (float64, 1e-9 relative)."""
    m = _model(damping=damping).double()
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        state = _carried_state(m, gen)
    idx = torch.randint(0, 256, (2, 21), generator=gen)
    positions = [2, 16, 19]
    L = m.config.n_layer
    w = [[torch.randn(state.rho[l].shape, generator=gen, dtype=torch.float64) for l in range(L)] for _ in positions]
    wl = torch.randn((2, 21, 256), generator=gen, dtype=torch.float64)

    def grads(run):
        m.zero_grad()
        logits, kept = run()
        loss = (wl * logits).sum() + sum((w[i][l] * s.rho[l]).sum() for i, s in enumerate(kept) for l in range(L))
        loss.backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    def rebuilt():
        logits, states = _rebuild(m, idx, state, detach_kv)
        return logits, [states[p] for p in positions]

    got = grads(lambda: m.states_at(idx, positions, state, form="chunked", detach_kv=detach_kv)[:2])
    ref = grads(rebuilt)
    for k in ref:
        scale = ref[k].abs().max().clamp(min=1e-30)
        assert ((got[k] - ref[k]).abs().max() / scale) < 1e-9, k


def test_states_at_checks_positions():
    m = _model()
    idx = torch.randint(0, 256, (1, 6))
    with pytest.raises(ValueError, match="positions: 6 is outside"):
        m.states_at(idx, [2, 6])
    with pytest.raises(ValueError, match="positions: -1 is outside"):
        m.states_at(idx, torch.tensor([-1]))
    logits, kept, final = m.states_at(idx, [])
    assert kept == [] and final.pos.tolist() == [6]
