"""The parallel, chunked and recurrent forms have equal gradients (fp64, every parameter, <= 1e-9 relative)."""

import pytest
import torch

from bdh import BDH

from conftest import tiny_config

FORMS = ("parallel", "chunked", "recurrent")


def _model(damping) -> BDH:
    """A fresh fp64 model per test (never a shared fixture: gradients accumulate on parameters)."""
    torch.manual_seed(11)
    return BDH(tiny_config(damping=damping, chunk_size=8, vocab_size=64)).double().eval()


def _grads(model: BDH, form: str, idx, carried, detach_kv: bool) -> dict[str, torch.Tensor]:
    """Gradients of the loss on idx (B, T), continuing from `carried` (a detached state, or None), plus a term of
    the returned state (so gradients that flow into the carried-out state are compared too)."""
    model.zero_grad(set_to_none=True)
    logits, state = model.prefill(idx[:, :-1], carried, form=form, detach_kv=detach_kv)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    g = torch.Generator().manual_seed(3)
    loss = loss + sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum() * 1e-3 for r in state.rho)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("damping", [None, "alibi"])
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("detach_kv", [False, True])
def test_gradients_equal_across_forms(damping, carry, detach_kv):
    model = _model(damping)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 64, (2, 21), generator=g)  # T = 20 after the shift: chunks of 8, 8, 4
    carried = None
    if carry:  # a state carried from a previous window (TBPTT: detached), rows at different positions
        with torch.no_grad():
            s0 = model.prefill(torch.randint(0, 64, (1, 9), generator=g))[1]
            s1 = model.prefill(torch.randint(0, 64, (1, 13), generator=g))[1]
        carried = model.carry_state(type(s0).cat([s0, s1]))
    grads = {f: _grads(model, f, idx, carried, detach_kv) for f in FORMS}
    ref = grads["parallel"]
    for f in ("chunked", "recurrent"):
        for k, gp in ref.items():
            scale = gp.abs().max().item()
            assert scale > 0, k
            err = (grads[f][k] - gp).abs().max().item() / scale
            assert err <= 1e-9, f"{f} vs parallel: d loss / d {k} differs by {err:.2e} (relative)"


def test_detach_kv_gradients_differ_from_full_bptt():
    """detach_kv really removes the key/value paths (in every form), so the tests above compare two functions."""
    model = _model("alibi")
    idx = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(6))
    for f in FORMS:
        full, cut = _grads(model, f, idx, None, False), _grads(model, f, idx, None, True)
        assert (full["encoder"] - cut["encoder"]).abs().max() > 1e-6
