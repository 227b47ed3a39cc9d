"""Sparsity statistics and the repeated-fact experiment (§6.4)."""

import numpy as np
import torch

from bdh import BDH
from bdh.analysis.record import run_with_cache
from bdh.analysis.sparsity import (
    activity_per_token, measure_activity, plot_activity, plot_repeated_fact, repeated_fact_experiment,
    repeated_fact_stream, rope_bands,
)
from bdh.attention import rope_freqs

from conftest import tiny_config


def test_rope_bands_match_the_papers_buckets():
    band, edges = rope_bands(rope_freqs(256, 2.0**16), 2.0**16)
    assert np.allclose(edges, 4.0 ** np.arange(9))  # freq0 = [1, 4] ... freq7 = [16384, 65536]
    assert band[0] == 0 and band[-1] == 7 and np.all(np.diff(band) >= 0)
    assert np.bincount(band).tolist() == [32] * 8


def test_activity_counts_match_the_recorded_activations():
    torch.manual_seed(0)
    m = BDH(tiny_config()).eval()
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    st = measure_activity(m, [ids[:2], ids[2:]])
    _, c = run_with_cache(m, ids)
    for kind in ("x_sparse", "y_sparse", "xy"):
        direct = (c.stack(kind) > 0).float().mean(dim=(1, 3))  # (L, h, N)
        assert np.allclose(st.per_neuron(kind), direct.numpy())
        assert np.allclose(st.by_layer(kind), direct.mean(dim=(1, 2)).numpy())
    assert st.n_tokens == 60 and np.all(st.by_layer("xy") <= st.by_layer("x_sparse"))
    d = st.to_dict()
    assert len(d["xy"]["by_layer_band"][0]) == 8 and sum(d["neurons_per_band"]) == m.config.N
    per_tok, _ = activity_per_token(m, ids[:1], ("xy",))
    assert np.allclose(per_tok["xy"][:, :, -1], (c.stack("xy")[:, 0] > 0).float().mean(dim=(1, 3)).numpy(), atol=1e-6)


def test_repeated_fact_stream_structure():
    s = repeated_fact_stream(n_periods=3, seed=4)
    assert s.period == 77 and len(s.text) == 231
    warm = s.text[:13]
    for p in range(3):
        chunk = s.text[77 * p : 77 * (p + 1)]
        assert chunk[:13] == warm and chunk[13:] == chunk[13:21] * 8
        assert list(s.occurrence[77 * p : 77 * p + 13]) == [-1] * 13
        assert list(s.occurrence[77 * p + 13 : 77 * (p + 1) : 8]) == list(range(8))


def test_repeated_fact_experiment_and_plots(tmp_path):
    torch.manual_seed(0)
    m = BDH(tiny_config()).eval()
    r = repeated_fact_experiment(m, n_periods=3)
    L = m.config.n_layer
    for phase in ("warmup", "memorising", "repeating"):
        assert len(r["by_layer"][phase]) == L and all(0 <= v <= 1 for v in r["by_layer"][phase])
    assert len(r["profile_by_layer"][0]) == 77 and len(r["by_layer_band"]["memorising"][0]) == 8
    assert len(r["loss_nats"]["by_occurrence"]) == 8
    plot_repeated_fact(r, tmp_path / "rf.png")
    plot_activity(measure_activity(m, torch.randint(0, 256, (2, 16))), tmp_path / "a.png")
    assert (tmp_path / "rf.png").stat().st_size > 1000 and (tmp_path / "a.png").stat().st_size > 1000
