"""Sparse decode (bdh.sparse) gives the dense recurrent path's logits."""

import pytest
import torch

from bdh import BDH
from bdh.sparse import pair_activity
from conftest import tiny_config, train_briefly


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(2)
    return train_briefly(BDH(tiny_config(n_layer=3, mlp_internal_dim_multiplier=16)), steps=60)


@pytest.mark.parametrize("B", [1, 4])
def test_sparse_equals_dense_on_trained_weights(trained, B):
    g = torch.Generator().manual_seed(B)
    prompt = torch.randint(32, 127, (B, 30), generator=g)
    toks = torch.randint(32, 127, (40, B), generator=g)
    with torch.no_grad():
        _, s_dense = trained.prefill(prompt)
        s_sparse = s_dense.clone()
        acts = []
        for t in toks:
            ld, s_dense = trained.step(t, s_dense)  # functional, dense
            ls, s_sparse = trained.step(t, s_sparse, inplace=True, sparse=True)
            assert (ld - ls).abs().max() <= 1e-5
            x = torch.relu(trained._embed(t.view(-1, 1)) @ trained.encoder)
            acts.append(pair_activity(x).item())
    for a, b in zip(s_dense.rho, s_sparse.rho):
        assert (a - b).abs().max() <= 1e-5
    assert max(acts) < 1.0  # some pairs are inactive: the sparse path really skipped work


def test_sparse_float64_exact():
    torch.manual_seed(0)
    m = BDH(tiny_config()).double().eval()
    with torch.no_grad():
        _, s = m.prefill(torch.randint(0, 256, (2, 12)))
        s2 = s.clone()
        for t in torch.randint(0, 256, (10, 2)):
            a, s = m.step(t, s)
            b, s2 = m.step(t, s2, inplace=True, sparse=True)
            assert (a - b).abs().max() <= 1e-12


def test_sparse_falls_back_to_dense_with_damping_or_grad():
    torch.manual_seed(0)
    m = BDH(tiny_config(damping="alibi")).eval()
    with torch.no_grad():
        _, s = m.prefill(torch.randint(0, 256, (1, 5)))
        a, _ = m.step(torch.tensor([3]), s)
        b, _ = m.step(torch.tensor([3]), s.clone(), inplace=True, sparse=True)
    assert (a - b).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="sparse='yes'"):
        m.step(torch.tensor([3]), s, sparse="yes")
