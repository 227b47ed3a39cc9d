"""The fast training path is bound to its readable references (values and gradients, fp64):

- `bdh.attention.rope` (one complex multiply) == `rope_reference` (the reference's stack/interleave);
- `bdh.model._per_head` (one GEMM/bmm, head-major result) == `u @ W`;
- `bdh.model._decode` (per-head bmm + sum) == `y.transpose(1, 2).reshape(B, 1, T, n) @ E`;
- `bdh.attention.gram` (backward (G + G^T) Q) == `Q @ Q.mT`;
- the attention forms on head-major inputs == on contiguous inputs;
and the same paths run under CUDA with bf16 autocast and torch.compile (skipped without CUDA).
"""

import pytest
import torch

from bdh import BDH
from bdh.attention import (_bmm, _head_major, attention_chunked, attention_parallel, gram, rope, rope_cos_sin,
                           rope_freqs, rope_reference)
from bdh.model import _decode, _per_head

from conftest import tiny_config

G = torch.Generator().manual_seed(0)


def _rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, generator=G, dtype=dtype)


def _check(fast, ref, inputs, tol=1e-12):
    """fast(*inputs) == ref(*inputs) in value and in the gradient of every input (fp64, relative to scale)."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ys = [x.detach().clone().requires_grad_(True) for x in inputs]
    a, b = fast(*xs), ref(*ys)
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 0 and (a - b).abs().max().item() <= tol * scale
    w = _rand(*b.shape)
    (a * w).sum().backward()
    (b * w).sum().backward()
    for x, y in zip(xs, ys):
        gs = y.grad.abs().max().item()
        assert gs > 0 and (x.grad - y.grad).abs().max().item() <= tol * gs


@pytest.mark.parametrize("P,T", [(1, 7), (3, 5), (3, 1)])
def test_rope_complex_equals_reference(P, T):
    N = 16
    pos = torch.randint(0, 10**6, (P, T), generator=G)
    cos, sin = rope_cos_sin(pos, rope_freqs(N, 65536.0), torch.float64)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (P, 1, T, N)
    x = torch.relu(_rand(3, 4, T, N))
    _check(lambda v: rope(v, cos, sin), lambda v: rope_reference(v, cos, sin), [x])
    # a head-major (B, h, T, N) view, as the layer produces it, takes the complex path too
    hm = x.transpose(0, 1).contiguous().transpose(0, 1)
    _check(lambda v: rope(v.transpose(0, 1).contiguous().transpose(0, 1), cos, sin),
           lambda v: rope_reference(v, cos, sin), [hm])
    # bf16 (no complex bf16) and fp32 agree with the reference as well
    for dt, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        xd, cd, sd = x.to(dt), cos.to(dt), sin.to(dt)
        assert (rope(xd, cd, sd).double() - rope_reference(xd, cd, sd).double()).abs().max() <= tol * x.abs().max()


@pytest.mark.parametrize("k,T", [(1, 6), (4, 6), (1, 1), (4, 1)])
def test_per_head_equals_broadcast_matmul(k, T):
    B, nh, d, N = 3, 4, 8, 16
    _check(_per_head, lambda u, W: u @ W, [_rand(B, k, T, d), _rand(nh, d, N)])
    if T > 1:
        assert _head_major(_per_head(_rand(B, k, T, d), _rand(nh, d, N)))


@pytest.mark.parametrize("head_major", [True, False])
def test_decode_equals_concatenated_heads(head_major):
    B, nh, T, N, d = 3, 4, 5, 16, 8

    def layout(y):
        return y.transpose(0, 1).contiguous().transpose(0, 1) if head_major else y.contiguous()

    _check(lambda y, E: _decode(layout(y), E), lambda y, E: y.transpose(1, 2).reshape(B, 1, T, -1) @ E,
           [_rand(B, nh, T, N), _rand(nh * N, d)])


@pytest.mark.parametrize("head_major", [True, False])
def test_gram_equals_matmul(head_major):
    def layout(q):
        return q.transpose(0, 1).contiguous().transpose(0, 1) if head_major else q

    _check(lambda q: gram(layout(q)), lambda q: q @ q.mT, [_rand(3, 4, 9, 16)])
    _check(lambda q: _bmm(layout(q), q.mT), lambda q: q @ q.mT, [_rand(3, 4, 9, 16)])


@pytest.mark.parametrize("chunk", [None, 4])
@pytest.mark.parametrize("damped", [False, True])
def test_attention_head_major_equals_contiguous(chunk, damped):
    """The attention forms give the same outputs, states and gradients on head-major and contiguous inputs."""
    B, nh, T, N, D = 2, 4, 10, 8, 6
    log_gamma = torch.log(torch.tensor([0.5, 0.9, 0.99, 1.0], dtype=torch.float64)) if damped else None
    S0 = _rand(B, nh, N, D)

    def run(Q, V, hm):
        Qin = Q.transpose(0, 1).contiguous().transpose(0, 1) if hm else Q
        f = attention_parallel if chunk is None else (lambda *a, **k: attention_chunked(*a, chunk_size=chunk, **k))
        out, S = f(Qin, V, S0, log_gamma)
        return torch.cat([out.flatten(), S.flatten()])

    _check(lambda Q, V: run(Q, V, True), lambda Q, V: run(Q, V, False), [_rand(B, nh, T, N), _rand(B, 1, T, D)],
           tol=1e-11)


def test_layer_activations_are_head_major_and_hooks_see_the_same_values():
    """A training forward keeps (B, h, T, N) activations head-major; a hook that replaces x_sparse by a
    contiguous copy (the other layout) changes nothing."""
    torch.manual_seed(0)
    m = BDH(tiny_config(vocab_size=64)).double()
    idx = torch.randint(0, 64, (3, 12), generator=G)
    seen = {}
    ref, _ = m(idx)
    with m.hooks({"blocks.0.x_sparse": lambda n, t, p: seen.__setitem__(n, _head_major(t))}):
        m(idx)
    assert seen == {"blocks.0.x_sparse": True}
    with m.hooks({f"blocks.{l}.{k}": (lambda n, t, p: t.contiguous()) for l in range(2) for k in ("x_sparse", "xy")}):
        out, _ = m(idx)
    assert (out - ref).abs().max() <= 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_bf16_and_compile_match_fp32():
    """GPU readiness: the same fast paths under CUDA, bf16 autocast and torch.compile track fp32 eager."""
    torch.manual_seed(0)
    m = BDH(tiny_config(damping="alibi")).cuda()
    idx = torch.randint(0, 256, (4, 33), device="cuda")
    with torch.no_grad():
        _, ref = m(idx[:, :-1], idx[:, 1:])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, bf = m(idx[:, :-1], idx[:, 1:])
        _, comp = torch.compile(m)(idx[:, :-1], idx[:, 1:])
    assert abs(bf.item() - ref.item()) <= 0.01 * ref.item()
    assert abs(comp.item() - ref.item()) <= 1e-4 * ref.item()
    _, loss = m(idx[:, :-1], idx[:, 1:], form="chunked")
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


_FAULTS = """
import resource, sys, torch
from bdh.allocator import keep_freed_memory
applied = keep_freed_memory()
for _ in range(2):  # warm-up: the heap grows to hold the block
    x = torch.ones(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.ones(16 * 2**20)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in():
    """bdh.allocator: after tuning, re-allocating a freed 64 MiB tensor page-faults (almost) nothing; glibc's
    defaults (BDH_MALLOC_TUNE=0) fault every page in again (16k pages of 4 KiB per allocation)."""
    import os
    import subprocess
    import sys

    def run(env):
        r = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        applied, faults = r.stdout.split()
        return applied == "True", int(faults)

    applied, tuned = run({})
    if not applied:
        pytest.skip("not glibc: mallopt unavailable")
    off, untuned = run({"BDH_MALLOC_TUNE": "0"})
    assert not off
    assert untuned > 2 * 16384 and tuned < untuned / 4, (tuned, untuned)  # measured: 0 vs 81,925


_TRAIN_THEN_FAULTS = """
import resource, sys, tempfile, torch
import bdh.allocator
from bdh.training import load_run_config, train
assert bdh.allocator._applied is None  # nothing applied it before the library trains
run = load_run_config("tiny", ["train.steps=2", "train.eval_every=0", "train.sample_tokens=0", "train.checkpoint_every=0",
                               "train.processes=1", "train.threads=1", "train.final_eval_tokens=64"])
with tempfile.TemporaryDirectory() as d:
    train(run, d + "/run", progress=False, echo=lambda *a, **k: None)
for _ in range(2):
    x = torch.ones(16 * 2**20)
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.ones(16 * 2**20)
    del x
print(bdh.allocator._applied, bdh.allocator.glibc_malloc_active(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_library_training_applies_the_allocator_setting():
    """`bdh.training.train(...)` called in-process (the Python API; `bdh.tasks` trains through it) on CPU leaves
    the process tuned as `bdh train` does (bdh.allocator): a freed 64 MiB tensor is re-allocated without page faults."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _TRAIN_THEN_FAULTS], capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    applied, glibc, faults = r.stdout.split()[-3:]
    if glibc != "True":
        pytest.skip("not glibc malloc")
    assert applied == "True" and int(faults) < 16384, (applied, faults)  # untuned: 5 x 16,385 faults


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="LD_PRELOAD allocators: Linux")
@pytest.mark.parametrize("lib", ["jemalloc", "tcmalloc_minimal"])
def test_keep_freed_memory_reports_false_under_a_preloaded_allocator(lib):
    """With jemalloc or tcmalloc preloaded, glibc's mallopt still returns 1 (measured: jemalloc leaves glibc's own
    mallopt in place, tuning an unused heap; tcmalloc's is a stub) but tunes nothing: keep_freed_memory() must say
    False, and training must work as usual."""
    import ctypes.util
    import os
    import subprocess
    import sys

    name = ctypes.util.find_library(lib)
    if name is None:
        pytest.skip(f"lib{lib} not installed (Debian: libjemalloc2, libtcmalloc-minimal4)")
    code = ("import torch, bdh.allocator as a; from bdh import BDH, BDHConfig\n"
            "m = BDH(BDHConfig(n_layer=1, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, vocab_size=256))\n"
            "x = torch.randint(0, 256, (2, 17)); m(x[:, :-1], x[:, 1:])[1].backward()\n"
            "print(a.glibc_malloc_active(), a.keep_freed_memory())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LD_PRELOAD": name}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "cannot be preloaded" not in r.stderr, r.stderr
    assert r.stdout.split()[-2:] == ["False", "False"], r.stdout
