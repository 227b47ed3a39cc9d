"""Sparse recurrent decode: per token and layer, work only for active neurons.

A neuron i with x_sparse_i = 0 contributes nothing to y, to the decoder, to the state write or to the
state read, except through its RoPE partner: RoPE rotates the pair (2k, 2k+1), so the rotated query/key
qr_i = RoPE(x_sparse)_i is non-zero when either member of its pair is active. Per layer (batch rows and
heads flattened into (b, h) rows; the state stored as R with true rho = c * R, see "damping" below):

    x      = relu(v @ D_x)                            dense, (B, h, N): the one d x n product
    qr     = RoPE(x)                                  dense, O(n) elementwise
    rows   = {(b, h, i): qr_i != 0 or x_i > 0}        the only rows of rho that are read or written
    a      = c * sum_{i in rows} qr_i R[b,h,i,:]      gather + weighted sum (embedding_bag)       (read)
    R[b,h,i,:] += qr_i * v / c   for i in rows        scatter-add into the same rows, in place   (write;
                                                      one dense rank-1 update when many rows are active)
    c     *= gamma_h                                  the damping of every row of rho, O(1) per head
    y_i    = relu(LN(a) . D_y[:, i])  for x_i > 0     gather the D_y columns of those neurons (or one dense
                                                      product when many are active: SPARSE_Y_MAX_ACTIVITY)
    v'     = LN(v + LN(sum_{x_i y_i > 0} x_i y_i E_i))   decoder rows of gated neurons only (embedding_bag)

Damping: the dense recurrence is rho <- gamma_h (rho + qr (x) v), which rescales every row of rho at every
token (O(n d)). Decode loops keep a lazy per-head scale c = gamma^k instead (`BDHState.lazy_scale`, one home for
it): the write adds qr (x) v / c to the stored rows and the decay multiplies c only; the read multiplies by c.
Every ~90 tokens (c about 1e-20 for the fastest ALiBi head gamma = e^-0.5) the scale is folded into the stored
tensor. The dense in-place decode step uses the same scale (`bdh.forms.StepForm`), so sparse and dense decode
are compared without the dense path's extra decay pass.

`SparseStepForm` is the attention form of `BDH.layer` (bdh.model) for this path: it does the read and write
above and the gathered y / decoder lines; the rest of the layer is the model's one definition. Tests check
equality of logits and states with the dense step on trained weights, with and without damping.

When it pays (benchmarks/sparse_decode.py, shared 2-core CPU, one thread; table in the README): the sparse layer
still does the dense x = relu(v D_x) product and ~30 small tensor ops of fixed overhead, and its scattered row
reads and writes are latency-bound (a touched row costs several times a row of a dense pass). At the default
config's size (n = 1024, d = 64) it loses at any activity (0.7x at batch 1, even with ~3% of rows active). At
n = 32768 it gains ~1.4x at batch 1 (~1.0x at batch 8) at the activity of plain training (~35% of x, ~55% of rows)
and ~2.7x at batch 1 (~2x at batch 8) on a model fine-tuned with `train.activity_penalty = 3` (~4% of x, ~8% of
rows, +0.008 nats/token).
`sparse="auto"` therefore runs a layer sparsely only when the model is large enough (`SPARSE_MIN_STATE`) and the
current token's active rows are few enough (`SPARSE_MAX_ACTIVITY`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .forms import StepForm

# sparse="auto": a layer runs sparsely when n * d (neurons times embedding) is at least SPARSE_MIN_STATE and at
# most SPARSE_MAX_ACTIVITY of its state rows (the (b, h, i) with qr_i != 0 or x_i > 0, i.e. active RoPE pairs)
# are active for the current token. Calibrated with benchmarks/sparse_decode.py and random-weight probes on the
# 2-core CPU (one thread, d = 64): at n*d = 2^16 (the default config) sparse is ~2x slower than dense at any
# activity (fixed op overhead), at 2^18 it still loses, at 2^19 it is even, at 2^21 it wins at every activity
# measured (up to random init, ~75% of rows). 2^20 keeps "auto" on the safe side.
SPARSE_MIN_STATE = 1 << 20
SPARSE_MAX_ACTIVITY = 0.85

# Inside a sparse layer, y = relu(LN(a) D_y) is computed only for the neurons with x > 0 (gathering their D_y
# columns) when the active rows are at most this fraction; above it one dense product is cheaper (CPU).
SPARSE_Y_MAX_ACTIVITY = 0.25

# The state write scatters into the active rows (index_add_) when they are at most this fraction, else it is one
# dense rank-1 update of the stored state (addcmul_, zeros for inactive rows): on the CPU index_add_ is ~5x
# slower per row than the dense update (measured at n*d = 2^21), so the scatter only pays for few rows.
# Either way the lazy damping scale spares the dense decay pass.
SPARSE_SCATTER_MAX_ACTIVITY = 0.15

def hoyer_activity(x_sparse: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean Hoyer measure of x_sparse (..., N): (sum_i x_i)^2 / (N sum_i x_i^2) per vector, in [1/N, 1].

    A differentiable, scale-invariant proxy for the fraction of active neurons (it equals that fraction when the
    active values are equal). An L1 penalty would not sparsify BDH: every path from x_sparse to the logits ends
    in a LayerNorm, so shrinking D_x lowers L1 without changing the function. Used as the training option
    `train.activity_penalty` (Hoyer regulariser, Kurtz et al. 2020) to train models for sparse decode.
    """
    s1 = x_sparse.sum(-1)
    s2 = x_sparse.pow(2).sum(-1)
    return (s1 * s1 / (x_sparse.shape[-1] * s2 + eps)).mean()


def pair_activity(x_sparse: torch.Tensor) -> torch.Tensor:
    """Fraction of active RoPE pairs in x_sparse (..., N)."""
    return (x_sparse.unflatten(-1, (-1, 2)) > 0).any(-1).float().mean()


def active_rows(x: torch.Tensor, qr: torch.Tensor) -> torch.Tensor:
    """Flat indices (b*nh + h)*N + i of the state rows touched by this token: qr_i != 0 or x_i > 0. Sorted."""
    return (qr.reshape(-1).ne(0) | x.reshape(-1).gt(0)).nonzero().squeeze(1)


class SparseStepForm(StepForm):
    """The attention form of a sparse decode step (inference, in place): per layer, reads and writes only the
    active rows of rho, then computes y and the decoder input E (x * y) for active neurons only.

    `force`: always sparse (sparse=True); else a layer runs sparsely only when at most SPARSE_MAX_ACTIVITY of its
    state rows are active for this token, and densely (StepForm) otherwise.
    Neurons are addressed by their flat index (b*nh + h)*N + i, which is also their row in the stored rho.
    """

    def __init__(self, state, log_gamma, fold_every: int, force: bool):
        super().__init__(state, log_gamma, fold_every, inplace=True)
        self.force = force
        self.rows: torch.Tensor | None = None  # this layer's active rows; None: the layer ran densely

    def attend(self, l, qr, v, x_sparse):
        x, q_all = x_sparse.reshape(-1), qr.reshape(-1)  # (B*nh*N,)
        rows = active_rows(x, q_all)
        if not self.force and rows.numel() > SPARSE_MAX_ACTIVITY * q_all.numel():
            self.rows = None
            return super().attend(l, qr, v, x_sparse)  # dense, in place (lazy scale with damping)
        self.rows = rows
        B, nh, _, N = qr.shape
        D = v.shape[-1]
        st = self.state
        R = st.stored(l)  # (B, nh, N, D): true rho = c * R
        sd = R.dtype
        R_rows = R.view(-1, D)  # (B*nh*N, D)
        c = st.lazy_scale(l)  # (nh,) or None
        seg = rows.div(N, rounding_mode="floor")  # (M,) the (b, h) of each row, sorted
        q = q_all.index_select(0, rows).to(sd)  # (M,)
        bh = _arange(B * nh, rows.device)
        # --- read (excludes the current token): a[b,h] = c * sum_i q_i R[b,h,i]
        a = F.embedding_bag(rows, R_rows, torch.searchsorted(seg, bh), mode="sum", per_sample_weights=q)  # (B*nh, D)
        vf = v.reshape(B, D).to(sd)
        if c is not None:
            cbh = c.repeat(B)  # (B*nh,)
            a = a * cbh.unsqueeze(1)
            vbh = (vf.unsqueeze(1) / c.view(1, nh, 1)).view(B * nh, D)  # v / c per (b, h)
        else:
            vbh = vf.unsqueeze(1).expand(B, nh, D).reshape(B * nh, D)
        # --- write: R[rows] += q (x) v / c (rows are distinct), then the decay multiplies c only
        if rows.numel() <= SPARSE_SCATTER_MAX_ACTIVITY * q_all.numel():
            R_rows.index_add_(0, rows, vbh.index_select(0, seg).mul_(q.unsqueeze(1)))
        else:  # many rows: one dense rank-1 update (qr = 0 elsewhere, adds exact zeros) beats the scatter
            qd = qr.reshape(B, nh, N).to(sd)
            if c is not None:
                qd = qd / c.view(1, nh, 1)
            R.addcmul_(qd.unsqueeze(-1), vf.view(B, 1, 1, D))
        if self.log_gamma is not None:
            st.lazy_decay_(l, self.log_gamma, self.fold_every)
        self.rho.append(R)
        return a.to(v.dtype).view(B, nh, 1, D)

    def sparse_decoder_input(self, model, l, a, x_sparse):
        """E (x * y) (B, 1, 1, d) from the gated neurons only: y = relu(LN(a) . D_y[:, i]) for x_i > 0."""
        rows = self.rows
        if rows is None:
            return None
        B, nh, _, N = x_sparse.shape
        D = a.shape[-1]
        HN = nh * N
        ln_a = model.ln(a).view(B * nh, D)  # (B*nh, D)
        xf = x_sparse.reshape(-1)
        if rows.numel() <= SPARSE_Y_MAX_ACTIVITY * xf.numel():  # few neurons: y only where x > 0 (D_y columns)
            xn = xf.gt(0).nonzero().squeeze(1)  # (A,) neurons with x > 0 (nonzero of a bool mask: ~3x faster)
            w = xn.remainder(HN)  # row of the neuron in D_y^T (nh*N, D) and in the decoder E (nh*N, D)
            seg_x = xn.div(N, rounding_mode="floor")
            y = (_dy_rows(model).index_select(0, w) * ln_a.index_select(0, seg_x)).sum(-1).relu_()  # (A,)
            xy = xf.index_select(0, xn).mul_(y)
            keep = xy.gt(0).nonzero().squeeze(1)  # (K,)
            gated, w, xy = xn.index_select(0, keep), w.index_select(0, keep), xy.index_select(0, keep)
        else:  # many active neurons: one dense (d x n) product is cheaper than gathering most columns
            y = F.relu(torch.bmm(ln_a.view(B, nh, D).transpose(0, 1), model.encoder_v)).transpose(0, 1).reshape(-1)
            xy = xf * y
            gated = xy.gt(0).nonzero().squeeze(1)  # (K,)
            w, xy = gated.remainder(HN), xy.index_select(0, gated)
        bh = _arange(B * nh, rows.device)
        off = bh[:1] if B == 1 else torch.searchsorted(gated.div(HN, rounding_mode="floor"), bh[:B])
        out = F.embedding_bag(w, model.decoder, off, mode="sum", per_sample_weights=xy)  # (B, D)
        return out.view(B, 1, 1, D)


def _dy_rows(model) -> torch.Tensor:
    """D_y as (nh*N, D), contiguous, for gathering the columns of active neurons (cached per weight version)."""
    W = model.encoder_v
    key = (W.data_ptr(), W._version, W.dtype)
    cache = getattr(model, "_dy_rows_cache", None)
    if cache is None or cache[0] != key:
        cache = (key, W.detach().transpose(1, 2).reshape(-1, W.shape[1]).contiguous())
        model._dy_rows_cache = cache
    return cache[1]


_ARANGE: dict = {}


def _arange(n: int, device) -> torch.Tensor:
    key = (n, str(device))
    t = _ARANGE.get(key)
    if t is None:
        t = _ARANGE[key] = torch.arange(n, device=device)
    return t
