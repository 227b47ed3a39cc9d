"""Recording (bdh.analysis.record): same function as the model, bounded selections, scores and state."""

import pytest
import torch

from bdh import BDH
from bdh.analysis.record import ActivationCache, hook_name, run_with_cache, run_with_hooks

from conftest import tiny_config


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"plain": BDH(tiny_config()).eval(), "alibi": BDH(tiny_config(damping="alibi")).eval()}


@pytest.mark.parametrize("kind", ["plain", "alibi"])
@pytest.mark.parametrize("T", [12, 40])  # parallel (T <= chunk_size=16) and chunked forms
def test_logits_identical_with_and_without_recording(models, kind, T):
    m = models[kind]
    idx = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        ref, _ = m(idx)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    logits, cache = run_with_cache(m, idx, lambda n: True)
    assert torch.equal(logits, ref)
    assert torch.equal(cache["logits"], ref)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert cache["blocks.1.xy"].shape == (2, 4, T, m.config.N)
    assert torch.equal(cache["blocks.1.xy"], cache["blocks.1.x_sparse"] * cache["blocks.1.y_sparse"])


def test_token_chunks_and_selection_match_full_run(models):
    m = models["alibi"]
    idx = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    ref, full = run_with_cache(m, idx, lambda n: True)
    heads, neurons = [1, 3], [0, 5, 17]
    logits, part = run_with_cache(m, idx, ["blocks.1.xy", "blocks.0.v_out", "blocks.1.attn"], heads=heads,
                                  neurons=neurons, tokens=(5, 30), token_chunk=7)
    assert torch.allclose(logits, ref, atol=1e-5)
    assert part.tokens == (5, 30) and part.heads == heads and part.neurons == neurons
    assert torch.allclose(part["blocks.1.xy"], full["blocks.1.xy"][:, heads][:, :, 5:30][..., neurons], atol=1e-5)
    assert torch.allclose(part["blocks.0.v_out"], full["blocks.0.v_out"][:, 5:30], atol=1e-5)
    assert part["blocks.1.attn"].shape == (2, 2, 25, m.config.D)
    assert set(part) == {"blocks.1.xy", "blocks.0.v_out", "blocks.1.attn"}
    only_l1 = run_with_cache(m, idx, layers=[1])[1]
    assert sorted(only_l1) == sorted(hook_name(1, k) for k in ("x_sparse", "attn", "y_sparse", "xy"))
    assert only_l1.stack("xy").shape == (1, 2, 4, 37, m.config.N)


@pytest.mark.parametrize("kind", ["plain", "alibi"])
def test_scores_are_the_models_attention_and_rho_its_state(models, kind):
    m = models[kind]
    idx = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(2))
    _, c = run_with_cache(m, idx, ["blocks.1.scores", "blocks.1.v_in", "blocks.1.attn", "blocks.1.rho"])
    attn = c["blocks.1.scores"] @ c["blocks.1.v_in"].unsqueeze(1)  # (B, h, T, T) @ (B, 1, T, d)
    assert torch.allclose(attn, c["blocks.1.attn"], atol=1e-5)
    assert torch.all(torch.triu(c["blocks.1.scores"]) == 0)  # strictly causal
    _, state = m.prefill(idx)
    assert torch.allclose(c["blocks.1.rho"], state.rho[1], atol=1e-5)
    _, sub = run_with_cache(m, idx, ["blocks.1.scores"], tokens=(4, 25), token_chunk=6, heads=[2])
    assert torch.allclose(sub["blocks.1.scores"], c["blocks.1.scores"][:, [2], 4:25, 4:25], atol=1e-5)


def test_hooks_see_every_piece(models):
    m = models["plain"]
    idx = torch.randint(0, 256, (1, 25), generator=torch.Generator().manual_seed(3))
    seen = []
    run_with_hooks(m, idx, {"blocks.0.x_sparse": lambda n, t, t0: seen.append((t0, t.shape[2]))}, token_chunk=10)
    assert seen == [(0, 10), (10, 10), (20, 5)]


def test_bad_requests_are_refused(models):
    m = models["plain"]
    idx = torch.randint(0, 256, (1, 10))
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        run_with_cache(m, idx, ["blocks.7.xy"])
    with pytest.raises(ValueError, match="hook name"):
        run_with_cache(m, idx, ["blocks.0.nope"])
    with pytest.raises(ValueError, match="tokens"):
        run_with_cache(m, idx, tokens=(5, 50))
    with pytest.raises(ValueError, match="neurons"):
        run_with_cache(m, idx, neurons=[999])
    with pytest.raises(ValueError, match="max_bytes"):
        run_with_cache(m, idx, max_bytes=100)
    with pytest.raises(ValueError, match="vocabulary"):
        run_with_cache(m, torch.tensor([[300]]))
    assert isinstance(run_with_cache(m, idx, ["logits"])[1], ActivationCache)


@pytest.mark.parametrize("kind", ["plain", "alibi"])
def test_rho_at_positions_is_the_prefill_state(models, kind):
    m = models[kind]
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(4))
    _, c = run_with_cache(m, idx, ["blocks.1.rho", "blocks.0.qr"], rho_positions=[3, 21, 39], token_chunk=15, heads=[0, 2])
    assert c["blocks.1.rho"].shape == (2, 3, 2, m.config.N, m.config.D)
    for q, p in enumerate((3, 21, 39)):
        _, state = m.prefill(idx[:, : p + 1])
        assert torch.allclose(c["blocks.1.rho"][:, q], state.rho[1][:, [0, 2]], atol=1e-5)
    with pytest.raises(ValueError, match="rho_positions"):
        run_with_cache(m, idx, ["blocks.1.rho"], rho_positions=[40])


@pytest.mark.parametrize("kind", ["plain", "alibi"])
@pytest.mark.parametrize("token_chunk", [None, 7])
def test_rho_at_positions_is_the_recurrent_state_and_changes_nothing_else(models, kind, token_chunk):
    """rho after chosen tokens (the model's own `states_at`, in the recording pass) == a float64 step-by-step
    rebuild; recording it leaves every other cached activation and the logits bit-identical."""
    import copy

    m = copy.deepcopy(models[kind]).double()
    idx = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(5))
    names = ["blocks.0.rho", "blocks.1.rho", "blocks.1.xy", "blocks.0.qr", "blocks.1.scores", "logits"]
    positions = [0, 6, 7, 18, 29]
    kw = dict(token_chunk=token_chunk, heads=[1, 3], neurons=[0, 4, 9], dtype=torch.float64)
    logits, c = run_with_cache(m, idx, names, rho_positions=positions, **kw)
    ref_logits, ref = run_with_cache(m, idx, [n for n in names if not n.endswith(".rho")], **kw)
    assert torch.equal(logits, ref_logits) and all(torch.equal(c[n], ref[n]) for n in ref)
    state, steps = None, []
    with torch.no_grad():
        for t in range(30):
            _, state = m.prefill(idx[:, t : t + 1], state, form="recurrent")
            steps.append(state)
    for l in range(2):
        want = torch.stack([steps[p].rho[l][:, [1, 3]][:, :, [0, 4, 9]] for p in positions], 1)
        assert torch.allclose(c[f"blocks.{l}.rho"], want, rtol=1e-9, atol=1e-9)
