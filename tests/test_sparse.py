"""Sparse decode (bdh.sparse) gives the dense recurrent path's logits and states."""

import copy

import pytest
import torch

import bdh.model
import bdh.sparse
from bdh import BDH, BDHState
from bdh.sparse import pair_activity
from conftest import tiny_config, train_briefly


@pytest.fixture(scope="module")
def trained():
    """Trained weights without damping (3 layers)."""
    torch.manual_seed(2)
    return train_briefly(BDH(tiny_config(n_layer=3, mlp_internal_dim_multiplier=16)), steps=60)


@pytest.fixture(scope="module")
def trained_damped():
    """Trained weights with ALiBi damping (the default config's choice)."""
    torch.manual_seed(3)
    return train_briefly(BDH(tiny_config(n_layer=2, mlp_internal_dim_multiplier=16, damping="alibi")), steps=60)


def _prefill_ragged(model, B, g):
    """A state whose rows sit at different positions (prompts of different lengths, prefilled one by one)."""
    states = [model.prefill(torch.randint(32, 127, (1, 20 + 7 * b), generator=g))[1] for b in range(B)]
    return BDHState.cat(states)


def _pending(state):
    """True when some layer of the state has a pending lazy damping scale."""
    return any(state.lazy_scale(l) is not None for l in range(state.n_layer))


def _compare(model, B, steps=40, seed=0, tol=1e-5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        s_dense = _prefill_ragged(model, B, g)
        s_sparse = s_dense.clone()
        acts, lazy = [], False
        for t in torch.randint(32, 127, (steps, B), generator=g):
            ld, s_dense = model.step(t, s_dense)  # functional, dense
            ls, s_sparse = model.step(t, s_sparse, inplace=True, sparse=True)
            assert (ld - ls).abs().max().item() <= tol
            lazy |= _pending(s_sparse)
            x = torch.relu(model._embed(t.view(-1, 1)) @ model.encoder)
            acts.append(pair_activity(x).item())
    assert torch.equal(s_dense.pos, s_sparse.pos)
    for a, b in zip(s_dense.rho, s_sparse.rho):  # .rho is the true rho (scale * stored)
        # rho sums many tokens (|rho| up to ~10-100): fp32 rounding of the two summation orders, relative
        assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item() / 10)
    true = [r.clone() for r in s_sparse.rho]
    assert not _pending(s_sparse.fold_())  # folded in place: the stored tensors are now the true rho
    assert all(torch.equal(a, s_sparse.stored(l)) for l, a in enumerate(true))
    assert max(acts) < 1.0  # some pairs are inactive: the sparse path really skipped work
    return lazy


@pytest.mark.parametrize("B", [1, 4])
def test_sparse_equals_dense_on_trained_weights(trained, B):
    assert not _compare(trained, B)


@pytest.mark.parametrize("B", [1, 3])
def test_sparse_equals_dense_with_damping(trained_damped, B):
    assert _compare(trained_damped, B, steps=60)  # the lazy scale was used


@pytest.mark.parametrize("y_max", [0.0, 1.0])
def test_both_y_variants(trained_damped, monkeypatch, y_max):
    """y from gathered D_y columns (few active neurons) or from one dense product: same logits."""
    monkeypatch.setattr(bdh.sparse, "SPARSE_Y_MAX_ACTIVITY", y_max)
    _compare(trained_damped, 2, steps=20)


def test_fold_often(trained_damped, monkeypatch):
    """Folding the lazy scale into the state (normally every ~90 tokens) at every step keeps the results."""
    m = copy.deepcopy(trained_damped)  # never mutate the shared fixture
    m._fold_every = 1  # fold after every decay
    assert not _compare(m, 2, steps=20)


def test_sparse_float64_exact():
    torch.manual_seed(0)
    for damping in (None, "alibi"):
        m = BDH(tiny_config(damping=damping)).double().eval()
        with torch.no_grad():
            _, s = m.prefill(torch.randint(0, 256, (2, 12)))
            s2 = s.clone()
            for t in torch.randint(0, 256, (10, 2)):
                a, s = m.step(t, s)
                b, s2 = m.step(t, s2, inplace=True, sparse=True)
                assert (a - b).abs().max() <= 1e-12
            assert all((x - y).abs().max() <= 1e-12 for x, y in zip(s.rho, s2.rho))


def test_lazy_scale_state_is_honest(trained_damped, tmp_path):
    """A state with a pending lazy scale looks like the true rho to select/cat/clone/save/load, and reading it
    changes nothing."""
    m = trained_damped
    with torch.no_grad():
        _, s = m.prefill(torch.randint(32, 127, (2, 10)))
        ref = s.clone()
        for t in torch.randint(32, 127, (5, 2)):
            _, ref = m.step(t, ref)
            _, s = m.step(t, s, inplace=True, sparse=True)
    c0 = s.lazy_scale(0)
    assert c0 is not None and s.lazy_scale(1) is not None
    g = torch.tensor(m.config.decay(), dtype=torch.float64)
    assert torch.allclose(c0.double(), g**5, rtol=1e-6)  # gamma^k for the k = 5 steps taken: known on the host
    raw0 = s.stored(0).clone()
    assert not torch.allclose(raw0, ref.rho[0], atol=1e-3)  # the stored tensor is not the true rho...
    assert (raw0 * c0.view(1, -1, 1, 1) - ref.rho[0]).abs().max() <= 1e-5  # ...scale * stored is
    sel = s.select([1])
    assert torch.equal(s.stored(0), raw0) and s.lazy_scale(0) is not None  # reading did not modify the state
    assert (sel.rho[0] - ref.rho[0][1:]).abs().max() <= 1e-5
    s.save(tmp_path / "s.safetensors")
    back = BDHState.load(tmp_path / "s.safetensors")
    cat = BDHState.cat([back, sel])
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(cat.rho, BDHState.cat([ref, ref.select([1])]).rho))


def test_fold_outside_inference_mode(trained_damped):
    """Sparse steps under inference_mode leave a lazy scale; reading and folding it afterwards works."""
    m = trained_damped
    with torch.inference_mode():
        _, s = m.prefill(torch.randint(32, 127, (1, 10)))
        ref = s.clone()
        for t in torch.randint(32, 127, (4, 1)):
            _, ref = m.step(t, ref)
            _, s = m.step(t, s, inplace=True, sparse=True)
    assert _pending(s)
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(s.rho, ref.rho))
    s.fold_()
    assert not _pending(s) and all((a - b).abs().max() <= 1e-5 for a, b in zip(s.rho, ref.rho))


def _spy_sparse_layers(monkeypatch):
    """Record the layers that SparseStepForm ran sparsely (its active set was used)."""
    calls = []
    real = bdh.sparse.SparseStepForm.attend

    def spy(self, l, qr, v, x_sparse):
        a = real(self, l, qr, v, x_sparse)
        if self.rows is not None:
            calls.append(l)
        return a

    monkeypatch.setattr(bdh.sparse.SparseStepForm, "attend", spy)
    return calls


def _layers_run_sparsely(model, monkeypatch, sparse, token, state):
    calls = _spy_sparse_layers(monkeypatch)
    with torch.no_grad():
        logits, _ = model.step(token, state, inplace=True, sparse=sparse)
    monkeypatch.undo()
    return calls, logits


def _row_activity(model, token, state):
    """Fraction of active state rows per layer for this token (the model's hooks, on a dense step of a copy)."""
    from bdh.sparse import active_rows

    acts, xs = [], {}
    keep_x = lambda name, x, pos: xs.__setitem__(name.split(".")[1], x)  # noqa: E731
    rows = lambda name, qr, pos: acts.append(active_rows(xs[name.split(".")[1]], qr).numel() / qr.numel())  # noqa: E731
    L = model.config.n_layer
    with torch.no_grad(), model.hooks({**{f"blocks.{l}.x_sparse": keep_x for l in range(L)},
                                       **{f"blocks.{l}.qr": rows for l in range(L)}}):
        model.step(token, state.clone(), sparse=False)
    return acts


def test_auto_chooses_per_layer(trained, monkeypatch):
    m = trained
    with torch.no_grad():
        _, s0 = m.prefill(torch.randint(32, 127, (1, 30), generator=torch.Generator().manual_seed(5)))
    # find a token whose layers have different activities, and put the threshold between them
    for tok in range(32, 127):
        t = torch.tensor([tok])
        acts = _row_activity(m, t, s0)
        if max(acts) - min(acts) > 0.02:
            break
    else:
        pytest.skip("no token with distinct per-layer activity")
    thr = (max(acts) + min(acts)) / 2
    want_sparse = [l for l, a in enumerate(acts) if a <= thr]
    assert 0 < len(want_sparse) < m.config.n_layer
    ref, _ = m.step(t, s0)
    def run(sparse, min_state=0):
        monkeypatch.setattr(bdh.model, "SPARSE_MIN_STATE", min_state)
        monkeypatch.setattr(bdh.sparse, "SPARSE_MAX_ACTIVITY", thr)
        return _layers_run_sparsely(m, monkeypatch, sparse, t, s0.clone())

    calls, logits = run("auto")
    assert calls == want_sparse
    assert (logits - ref).abs().max() <= 1e-5
    # forced either way; and "auto" on a model below SPARSE_MIN_STATE is dense
    assert run(True)[0] == list(range(m.config.n_layer))
    assert run(False)[0] == []
    assert run("auto", m.config.n * m.config.D + 1)[0] == []


def test_default_generate_identical_sparse_on_off(trained_damped, monkeypatch):
    """`generate` (sparse="auto" by default) gives the same text with every layer sparse or every layer dense."""
    m = trained_damped
    prompts = ["The quick brown fox", "Lists are"]  # different lengths: rows at different positions
    outs = []
    for min_state, max_act in ((0, 1.0), (1 << 62, 1.0)):  # auto -> always sparse, auto -> always dense
        monkeypatch.setattr(bdh.model, "SPARSE_MIN_STATE", min_state)
        monkeypatch.setattr(bdh.sparse, "SPARSE_MAX_ACTIVITY", max_act)
        calls = _spy_sparse_layers(monkeypatch)
        outs.append(m.generate(prompts, max_new_tokens=40, temperature=0.8, seed=1))
        assert bool(calls) == (min_state == 0)
    assert outs[0] == outs[1]
    assert all(len(o) > 0 for o in outs[0])


def test_generate_sparse_argument(trained_damped, monkeypatch):
    """`generate(..., sparse=True/False)` forces the path (same text); GPT has no sparse decode."""
    from bdh.baselines.gpt import GPT, GPTConfig

    calls = _spy_sparse_layers(monkeypatch)
    on = trained_damped.generate(["The quick", "Lists"], max_new_tokens=30, seed=2, sparse=True)
    assert calls
    calls.clear()
    off = trained_damped.generate(["The quick", "Lists"], max_new_tokens=30, seed=2, sparse=False)
    assert not calls and on == off
    with pytest.raises(ValueError, match="sparse='on'"):
        trained_damped.generate("x", 3, sparse="on")
    gpt = GPT(GPTConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=256)).eval()
    assert isinstance(gpt.generate("x", 3, seed=0, sparse="auto"), str)
    with pytest.raises(ValueError, match="sparse decode is a BDH option; GPT"):
        gpt.generate("x", 3, sparse=True)
    _, st = gpt.prefill(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="sparse=True: sparse decode is a BDH option"):
        gpt.step(torch.tensor([3]), st, sparse=True)
    assert torch.equal(gpt.step(torch.tensor([3]), st, sparse=False)[0], gpt.step(torch.tensor([3]), st)[0])


def test_sparse_falls_back_to_dense_without_inplace_or_with_grad():
    torch.manual_seed(0)
    m = BDH(tiny_config(damping="alibi")).eval()
    with torch.no_grad():
        _, s = m.prefill(torch.randint(0, 256, (1, 5)))
        before = [r.clone() for r in s.rho]
        a, _ = m.step(torch.tensor([3]), s)
        b, s_new = m.step(torch.tensor([3]), s, sparse=True)  # functional: the state passed in is unchanged
        assert s_new is not s and all(torch.equal(x, y) for x, y in zip(before, s.rho))
        c, _ = m.step(torch.tensor([3]), s.clone(), inplace=True, sparse=True)
    assert (a - b).abs().max() <= 1e-6 and (a - c).abs().max() <= 1e-6
    m.train()
    with torch.no_grad():
        d, _ = m.step(torch.tensor([3]), s.clone(), inplace=True, sparse=True)  # training mode: dense
    assert (a - d).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="sparse='yes'"):
        m.step(torch.tensor([3]), s, sparse="yes")


def test_sparse_equals_dense_on_a_model_trained_sparse(tmp_path, monkeypatch):
    """Weights trained with train.activity_penalty (few active rows, as sparse decode is meant for): the scatter
    write and gathered-y branches run on real activity, and logits and states equal the dense path's."""
    from bdh.training import load_run_config, train

    run = load_run_config("tiny", ["train.steps=60", "train.lr=0.01", "train.activity_penalty=3", "model.damping=alibi",
                                   "train.eval_every=0", "train.sample_tokens=0", "train.checkpoint_every=0"])
    model = train(run, tmp_path / "run", progress=False, echo=lambda s: None).model.eval()
    scatters = []
    real = torch.Tensor.index_add_

    def spy(self, *a, **k):
        scatters.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "index_add_", spy)
    ids = torch.tensor([list(b"The quick brown fox jumps over the lazy dog; lists are mutable sequences.")])
    with torch.no_grad():
        _, s_dense = model.prefill(ids[:, :20])
        s_sparse = s_dense.clone()
        rows = []
        for t in ids[0, 20:]:
            rows += _row_activity(model, t.view(1), s_dense)
            ld, s_dense = model.step(t.view(1), s_dense)
            ls, s_sparse = model.step(t.view(1), s_sparse, inplace=True, sparse=True)
            assert (ld - ls).abs().max().item() <= 1e-5
    # fp32 states of magnitude ~30 after 54 tokens: 1e-5 absolute, or 1e-6 of the state's scale (a few ulps)
    assert all((a - b).abs().max().item() <= max(1e-5, 1e-6 * a.abs().max().item()) for a, b in zip(s_dense.rho, s_sparse.rho))
    assert sum(rows) / len(rows) < 0.3  # trained sparse: under 30% of the state rows touched on average
    assert scatters  # some tokens were sparse enough for the scatter write


@pytest.mark.parametrize("floor", [None, 2.0])
def test_dense_inplace_decode_with_damping_uses_the_lazy_scale(trained_damped, monkeypatch, floor):
    """step(inplace=True, sparse=False) with damping decays the lazy scale, not rho: same logits and states as
    the functional step (floor 2.0: the scale is folded into rho at every step)."""
    m = copy.deepcopy(trained_damped)  # never mutate the shared fixture
    if floor is not None:
        m._fold_every = 1
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        s_fun = _prefill_ragged(m, 3, g)
        s_inp = s_fun.clone()
        for t in torch.randint(32, 127, (60, 3), generator=g):
            lf, s_fun = m.step(t, s_fun, sparse=False)
            li, s_inp = m.step(t, s_inp, inplace=True, sparse=False)
            assert (lf - li).abs().max().item() <= 1e-5
        assert _pending(s_inp) == (floor is None)  # pending scale, or folded at every step
        assert all((a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item() / 10)
                   for a, b in zip(s_fun.rho, s_inp.rho))
