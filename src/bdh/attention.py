"""BDH-GPU linear attention: RoPE, and one function in three forms.

The attention of a layer (paper eq. 4/5; reference `Attention.forward`) with queries = keys = RoPE(x_sparse)
and values = the layer input v* (d-dim, shared by all heads):

    out_t = sum_{s<t} gamma^(t-s) <QR_t, QR_s> V_s          (strictly causal, tril(-1), no softmax)

gamma is the damping (1 when off, the reference): per head, log_gamma (nh,); or per neuron, log_gamma (nh, N), the
state's rows decaying at their own rates, out_t = sum_{s<t} <QR_t, diag(gamma^(t-s)) QR_s> V_s. The three forms compute
this same function:

- `attention_parallel`: the quadratic reference form, T x T scores (the readable reference);
- `attention_chunked`: linear time, masked C x C products inside a chunk plus an exclusive running state
  across chunks (each chunk is `attention_parallel` from the carried state);
- `attention_step`: one token, read the state then write the token (the recurrent form).

The running state S (the paper's rho_{t-1,l}, kept in the rotated-key basis) is
S_t = sum_{s<t} gamma^(t-s) QR_s (x) V_s, shape (B, nh, N, D): the state that token t reads. It is
accumulated in fp32 (fp64 for fp64 inputs) whatever the compute dtype.

Fast paths, each bound to its readable form by tests/test_fused.py (values and gradients, fp64): `rope` is one
complex multiply (`rope_reference` is the reference's stack/interleave); the products batch over (h, B) when
the layer's activations are stored head-major (`_head_major`, `_bmm`), so they are never copied; the scores'
gradient is one product (G + G^T) QR since keys = queries (`gram`).
"""

from __future__ import annotations

import math

import torch


# ----------------------------------------------------------------------------- RoPE
def rope_freqs(N: int, theta: float, n_rope: int | None = None) -> torch.Tensor:
    """Per-neuron RoPE frequencies in turns per position, (N,) float64.

    Computed exactly as the reference (`get_freqs` in fp32: pairs of neurons share a frequency
    theta^(-2 floor(i/2) / N) / 2pi), then stored in fp64 so that phase arithmetic never happens in a lower
    precision. `n_rope` (even, <= N; `BDHConfig.n_rope`): only the first n_rope neurons rotate, the others get
    frequency 0: a rotation by angle 0 (cos 1, sin 0), which leaves them exactly unchanged. None: all N.
    """
    i = torch.arange(0, N, 1, dtype=torch.float32)
    q = (i / 2).floor() * 2
    f32 = 1.0 / (torch.tensor(theta, dtype=torch.float32) ** (q / N)) / (2 * math.pi)
    f = f32.to(torch.float64)
    if n_rope is not None and n_rope < N:
        f[n_rope:] = 0.0  # not rotated
    return f


def rope_cos_sin(
    positions: torch.Tensor, freqs: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles for integer `positions` (..., T) -> (..., T, N) in `dtype`.

    Phases are formed in fp64 and reduced modulo 1 turn before any cast, so positions stay exact over long
    streams (fp32 phase arithmetic drifts by ~0.14 rad at position 1M).
    """
    phase = positions.to(torch.float64).unsqueeze(-1) * freqs.to(torch.float64)  # (..., T, N) turns
    phase = torch.frac(phase)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    angle = phase.to(work) * (2 * math.pi)
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def rope_reference(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate neuron pairs (v[2k], v[2k+1]) by the angle of their frequency (reference `Attention.rope`).

    The readable reference of `rope` (any dtype): v (..., N); cos, sin broadcastable to v.
    """
    v_rot = torch.stack((-v[..., 1::2], v[..., ::2]), dim=-1).view(*v.size())
    return v * cos + v_rot * sin


def _complex_ok(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether v can be viewed as complex pairs (fp32/fp64, even N, pair-aligned strides) and cos/sin are constants."""
    if v.dtype not in (torch.float32, torch.float64) or cos.dtype != v.dtype or sin.dtype != v.dtype:
        return False
    if torch.compiler.is_compiling():  # inductor has no complex kernels; it fuses the reference's real ops instead
        return False
    if v.shape[-1] % 2 or v.stride(-1) != 1 or v.storage_offset() % 2:
        return False
    if cos.requires_grad or sin.requires_grad:
        return False
    return all(st % 2 == 0 for st, sz in zip(v.stride()[:-1], v.shape[:-1]) if sz > 1)


def rope(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rope_reference`, computed as one complex multiply where it can be (fp32 / fp64).

    Both neurons of a pair share a frequency (`rope_freqs`), so cos[2k] = cos[2k+1] and the rotation of the pair
    (v[2k], v[2k+1]) is (v[2k] + i v[2k+1]) * (cos + i sin): one kernel forward and one backward (times the
    conjugate), instead of the reference's slices, negation, stack/interleave copy, two products and a sum, and
    their backward (zero-filled slice gradients summed). Exact to rounding; tests/test_fused.py binds values and
    gradients to `rope_reference` in fp64. bf16 (no complex bf16 on CPU) and odd layouts use `rope_reference`.
    """
    if not _complex_ok(v, cos, sin):
        return rope_reference(v, cos, sin)
    phase = torch.complex(cos[..., 0::2], sin[..., 0::2])  # (..., T, N/2): e^{i angle} of each pair
    vc = torch.view_as_complex(v.view(*v.shape[:-1], v.shape[-1] // 2, 2))  # (..., T, N/2) complex view of v
    return torch.view_as_real(vc * phase).view(v.shape)


# ----------------------------------------------------------------------------- helpers
def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the attention state is accumulated in: fp32, or fp64 for fp64 models."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_dtype(x: torch.Tensor) -> torch.Tensor | torch.dtype:
    """The dtype activations are computed in: the autocast dtype when autocast is on for x's device, else x's.

    The precision policy: under bf16 autocast the (B, h, T, N) activations (x_sparse, RoPE(x_sparse), y_sparse,
    x*y) and the T x T / C x C scores are bf16; RoPE phases are formed in fp64 and reduced before the cast
    (`rope_cos_sin`); the state rho accumulates in fp32 (`_advance_state`, `attention_step`).
    """
    dev = x.device.type
    if x.dtype.is_floating_point and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _head_major(x: torch.Tensor) -> bool:
    """Whether a (B, h, ...) tensor is stored head-major, as an (h, B, ...) tensor with (h, B) mergeable.

    `BDH.layer` keeps its (B, h, T, N) activations so (`bdh.model._per_head`): products then batch over h B
    matrices in that frame (`_bmm`) without copying them, forward and backward.
    """
    return x.dim() == 4 and x.shape[0] > 1 and x.shape[1] > 1 and x.stride(1) == x.shape[0] * x.stride(0)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for (B, h, ...) operands (either may broadcast over h): computed in the (h, B) frame when one is
    head-major (the result is head-major too), else the plain `a @ b`. Same values either way."""
    if _head_major(a) or _head_major(b):
        return (a.transpose(0, 1) @ b.transpose(0, 1)).transpose(0, 1)
    return a @ b


class _Gram(torch.autograd.Function):
    """Q Q^T (B, nh, T, T) for keys = queries; backward (G + G^T) Q: one product instead of two (G Q for the
    queries and G^T Q for the keys) and no sum of a transposed gradient. Bound to `_bmm(Q, Q.mT)` by
    tests/test_fused.py (values and gradients, fp64)."""

    @staticmethod
    def forward(ctx, Q: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(Q)
        return _bmm(Q, Q.mT)

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> torch.Tensor:
        (Q,) = ctx.saved_tensors
        return _bmm(G + G.mT, Q)


def gram(Q: torch.Tensor) -> torch.Tensor:
    """Q Q^T over the last two dims (B, nh, T, N) -> (B, nh, T, T): the scores of keys = queries."""
    return _Gram.apply(Q)


def cpu_bf16_supported(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags, or in the text
    `cpuinfo` when given).

    Without it bf16 matmuls are emulated: on an AVX2-only AMD EPYC a bf16 1024^3 GEMM ran at 0.2 GFLOP/s
    against 17.6 for fp32 (loaded machine), and a default-config training step 7.4x slower under bf16 autocast.
    With it (an AVX512-BF16 AMD EPYC) the default config's training step took 0.48x the fp32 time
    (benchmarks/precision_speed.py).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    return False


def _cached(cache: dict | None, key, make):
    """make(), memoised in `cache` (a dict owned by one model call, shared by its chunks and layers) when given."""
    if cache is None:
        return make()
    out = cache.get(key)
    if out is None:
        out = cache[key] = make()
    return out


def _per_neuron(log_gamma: torch.Tensor | None) -> bool:
    """Whether the damping is per neuron (log_gamma (nh, N)) rather than per head ((nh,)) or off (None)."""
    return log_gamma is not None and log_gamma.dim() == 2


def _decay_powers(log_gamma: torch.Tensor | None, exps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """gamma ** exps in `dtype`: (nh, *exps.shape) per head, (nh, *exps.shape, N) per neuron; None when damping is off.

    Exponents are >= 0 wherever the powers are used, so no power exceeds 1 (no overflow). Differentiable in
    log_gamma (a learned damping)."""
    if log_gamma is None:
        return None
    if _per_neuron(log_gamma):
        nh, N = log_gamma.shape
        lg = log_gamma.to(torch.float64).view(nh, *([1] * exps.dim()), N)
        return torch.exp(lg * exps.to(torch.float64).unsqueeze(-1)).to(dtype)
    return torch.exp(log_gamma.to(torch.float64).view(-1, *([1] * exps.dim())) * exps.to(torch.float64)).to(dtype)


def _causal_mask(T: int, log_gamma: torch.Tensor | None, device, dtype) -> torch.Tensor:
    """Strictly-lower-triangular (T, T) mask, times gamma^(t-s) per head ((nh, T, T)) with damping (not per neuron)."""
    t = torch.arange(T, device=device)
    dist = t.view(-1, 1) - t.view(1, -1)  # t - s
    strict = dist > 0
    if log_gamma is None:
        return strict.to(dtype)
    return _decay_powers(log_gamma, dist.clamp(min=0), dtype) * strict.to(dtype)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _neuron_decay_attention(
    QR: torch.Tensor, K: torch.Tensor, V: torch.Tensor, log_gamma: torch.Tensor, cache: dict | None = None
) -> torch.Tensor:
    """out_t = sum_{s<t} <QR_t, diag(gamma^(t-s)) K_s> V_s for a per-neuron damping log_gamma (nh, N): (B, nh, T, D).

    No (T, T) mask can hold a decay that differs per neuron, so the pairs s < t are summed by a binary split of
    the tokens. At level h = 1, 2, 4, ... the blocks [2hp, 2hp + 2h) pair their right half (queries t) with their
    left half (keys s) around the midpoint m = 2hp + h, where

        gamma^(t-s) = gamma^(t-m) * gamma^(m-s),   t - m in [0, h),  m - s in [1, h]:

    queries scaled by gamma^(t-m), keys by gamma^(m-s), both exponents >= 0, so no factor exceeds 1 (nothing
    overflows, however fast the decay; a product that underflows is below the smallest float anyway). Each pair
    s < t is summed at exactly one level (that of the highest bit in which t and s differ), so the products are
    T(T-1)/2 query-key pairs times (N + D): the causal count, in ceil(log2 T) levels of batched matmuls. A last,
    partial block (T not a multiple of 2h) is one more product. Autograd keeps the scaled queries and keys of every
    level: about log2(T) tensors of (B, nh, T, N) (the chunked form bounds T by the chunk size).
    QR, K (B, nh, T, N); V (B, 1, T, D).
    """
    B, nh, T, N = QR.shape
    dev, dt = QR.device, QR.dtype
    out = QR.new_zeros((B, nh, T, V.shape[-1])) if T < 2 else None
    h = 1
    while h < T:
        ar = torch.arange(h, device=dev)
        up = _cached(cache, ("nd_up", h, dt), lambda: _decay_powers(log_gamma, ar, dt))  # (nh, h, N) gamma^(t-m)
        down = _cached(cache, ("nd_down", h, dt), lambda: _decay_powers(log_gamma, h - ar, dt))  # gamma^(m-s)
        P, r = divmod(T, 2 * h)
        parts = []
        if P:  # P whole blocks: (B, nh, P, 2, h, N) -> right halves (queries), left halves (keys, values)
            q = QR[:, :, : 2 * h * P].unflatten(2, (P, 2, h))[:, :, :, 1] * up.unsqueeze(1)  # (B, nh, P, h, N)
            k = K[:, :, : 2 * h * P].unflatten(2, (P, 2, h))[:, :, :, 0] * down.unsqueeze(1)  # (B, nh, P, h, N)
            v = V[:, :, : 2 * h * P].unflatten(2, (P, 2, h))[:, :, :, 0]  # (B, 1, P, h, D)
            o = (q @ k.mT) @ v  # (B, nh, P, h, D): the right halves' reads of their left halves
            parts.append(torch.stack((torch.zeros_like(o), o), 3).flatten(2, 4))  # (B, nh, 2hP, D), 0 on the left
        a = 2 * h * P
        if r > h:  # a last, partial block: queries [a + h, T) read keys [a, a + h)
            q = QR[:, :, a + h :] * up[:, : r - h]  # (B, nh, r - h, N)
            k = K[:, :, a : a + h] * down  # (B, nh, h, N)
            o = (q @ k.mT) @ V[:, :, a : a + h]  # (B, nh, r - h, D)
            parts.append(torch.nn.functional.pad(o, (0, 0, h, 0)))  # (B, nh, r, D)
        elif r:
            parts.append(QR.new_zeros((B, nh, r, V.shape[-1])))  # a lone left half: no pair at this level
        level = torch.cat(parts, 2) if len(parts) > 1 else parts[0]  # (B, nh, T, D)
        out = level if out is None else out + level
        h *= 2
    return out


# ----------------------------------------------------------------------------- three forms
def attention_parallel(
    QR: torch.Tensor,
    V: torch.Tensor,
    S0: torch.Tensor | None = None,
    log_gamma: torch.Tensor | None = None,
    need_state: bool = True,
    detach_kv: bool = False,
    *,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Quadratic form (the reference): out = tril(QR QR^T, -1) V [+ QR S0].

    QR (B, nh, T, N); V (B, 1, T, D); S0 (B, nh, N, D) or None; log_gamma (nh,) per head, (nh, N) per neuron
    (`_neuron_decay_attention`: no T x T mask), or None.
    `detach_kv`: no gradient through keys and values (the paper's no-BPTT recipe, §7.2).
    `cache`: a dict shared by the calls of one model call, so masks and decay powers are built once.
    Returns out (B, nh, T, D) and the state after the last token (or None when not `need_state`).
    """
    B, nh, T, N = QR.shape
    dev, dt = QR.device, QR.dtype
    K, V = (QR.detach(), V.detach()) if detach_kv else (QR, V)
    if _per_neuron(log_gamma):
        out = _neuron_decay_attention(QR, K, V, log_gamma, cache)  # (B, nh, T, D)
    else:
        mask = _cached(cache, ("mask", T, dt), lambda: _causal_mask(T, log_gamma, dev, dt))  # (T, T) or (nh, T, T)
        scores = (gram(QR) if K is QR else _bmm(QR, K.mT)) * mask  # (B, nh, T, T)
        out = _bmm(scores, V)  # (B, nh, T, D)
    if S0 is not None:
        w = _cached(cache, ("pow", T, dt), lambda: _decay_powers(log_gamma, torch.arange(T, device=dev), dt))
        if _per_neuron(log_gamma):  # gamma^t per neuron: (nh, T, N), on the queries (diag(gamma^t) S0)
            out = out + _bmm(QR * w.unsqueeze(0), S0.to(dt))
        else:
            read = _bmm(QR, S0.to(dt))  # (B, nh, T, D)
            out = out + (read if w is None else read * w.view(1, nh, T, 1))  # gamma^t: decay of the carried state
    if not need_state:
        return out, None
    return out, _advance_state(K, V, S0, log_gamma, cache)


def _advance_state(
    K: torch.Tensor, V: torch.Tensor, S0: torch.Tensor | None, log_gamma: torch.Tensor | None, cache: dict | None = None
) -> torch.Tensor:
    """S_T = gamma^T S0 + sum_s gamma^(T-s) K_s (x) V_s, accumulated in fp32/fp64. K (B,nh,T,N), V (B,1,T,D).

    Per-neuron damping: gamma^(T-s) scales each neuron of K_s, and gamma^T each row of S0."""
    B, nh, T, N = K.shape
    dev = K.device
    sd = state_dtype(K.dtype)
    with _no_autocast(dev):
        Kf, Vf = K.to(sd), V.to(sd)
        w = _cached(cache, ("adv", T, sd), lambda: _decay_powers(log_gamma, T - torch.arange(T, device=dev), sd))
        if w is not None:
            Kf = Kf * w.view(1, nh, T, -1)  # gamma^(T-s): (nh, T) per head, (nh, T, N) per neuron
        S = _bmm(Vf.mT, Kf).mT  # (B, nh, N, D) = K^T V, as (V^T K)^T: the keys' gradient V G^T is not transposed
        if S0 is not None:
            g = _cached(cache, ("advT", T, sd), lambda: _decay_powers(log_gamma, torch.tensor(T, device=dev), sd))
            S = S + (S0 if g is None else S0 * g.view(1, nh, -1, 1))  # gamma^T S0: (nh,) per head, (nh, N) per neuron
    return S


def attention_chunked(
    QR: torch.Tensor,
    V: torch.Tensor,
    S0: torch.Tensor | None = None,
    log_gamma: torch.Tensor | None = None,
    chunk_size: int = 128,
    need_state: bool = True,
    detach_kv: bool = False,
    *,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear-time form: masked C x C products inside each chunk, running state across chunks.

    Same arguments and result as `attention_parallel`; any T (the last chunk may be shorter).
    Memory O(T*C + N*D) per head instead of the T x T scores. Masks and decay powers are built once per chunk
    length (per model call with `cache`).
    """
    B, nh, T, N = QR.shape
    D = V.shape[-1]
    cache = {} if cache is None else cache
    S = S0 if S0 is not None else QR.new_zeros((B, nh, N, D), dtype=state_dtype(QR.dtype))
    outs = []
    # split (not slicing in a loop): backward then concatenates the chunk gradients instead of zero-filling a
    # full-size gradient per chunk
    chunks = list(zip(QR.split(chunk_size, 2), V.split(chunk_size, 2)))  # (B, nh, c, N), (B, 1, c, D)
    for i, (q, v) in enumerate(chunks):
        write = i < len(chunks) - 1 or need_state
        # in-chunk products, plus the read of the carried state (exclusive of this chunk) decayed by gamma^i
        out, S_next = attention_parallel(q, v, S, log_gamma, write, detach_kv, cache=cache)
        outs.append(out)
        if write:
            S = S_next
    return torch.cat(outs, dim=2), (S if need_state else None)


def attention_step(
    qr: torch.Tensor, v: torch.Tensor, S: torch.Tensor, gamma: torch.Tensor | None = None, inplace: bool = False,
    detach_kv: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recurrent form, one token: read the state, then write the token.

    qr (B, nh, N); v (B, D); S (B, nh, N, D); gamma (nh,) per head, (nh, N) per neuron (diag(gamma) scales the
    rows of S), or None.
    Returns out (B, nh, D) and the new state gamma * (S + qr (x) v): a new tensor, or S itself updated in
    place when `inplace` (no allocation; for decode loops that own their state). `detach_kv`: the write uses
    detached keys and values (gradients reach qr only through the read, as in the other forms).
    """
    out = (qr.unsqueeze(-2).to(S.dtype) @ S).squeeze(-2)  # (B, nh, D): read excludes the current token
    k, v = (qr.detach(), v.detach()) if detach_kv else (qr, v)
    k = k.to(S.dtype).unsqueeze(-1)  # (B, nh, N, 1)
    val = v.to(S.dtype)[:, None, None, :]  # (B, 1, 1, D)
    S_new = S.addcmul_(k, val) if inplace else torch.addcmul(S, k, val)  # S + qr (x) v: one pass over S
    if gamma is not None:
        S_new.mul_(gamma.to(S.dtype).view(1, gamma.shape[0], -1, 1))  # (1, nh, 1 or N, 1): per head or per neuron
    return out.to(qr.dtype), S_new


def attention_step_scaled(qr: torch.Tensor, v: torch.Tensor, R: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """`attention_step` (without the decay) on a state stored with a per-head scale: true S = c R.

    qr (B, nh, N); v (B, D); R (B, nh, N, D), updated in place; c (nh,) or None (= 1). Reads c (qr . R), then
    writes S + qr (x) v = c (R + qr (x) v / c). The decay S <- gamma S is the caller's: it multiplies c
    (`BDHState.lazy_decay_`), O(1) instead of a pass over S. Returns the read (B, nh, D).
    """
    q = qr.to(R.dtype)
    a = (q.unsqueeze(-2) @ R).squeeze(-2)  # (B, nh, D): read excludes the current token
    if c is None:
        R.addcmul_(q.unsqueeze(-1), v.to(R.dtype)[:, None, None, :])
        return a.to(qr.dtype)
    cb = c.view(1, -1, 1)
    R.addcmul_((q / cb).unsqueeze(-1), v.to(R.dtype)[:, None, None, :])
    return (a * cb).to(qr.dtype)
