"""Sparse recurrent decode: per token and layer, work only for active neurons.

A neuron i with x_sparse_i = 0 contributes nothing to y, to the decoder, to the state write or to the
state read, except through its RoPE partner: RoPE rotates the pair (2k, 2k+1), so a pair is active when
either member is. Per layer (batch rows and heads flattened into (b, h) rows):

    x      = relu(v @ D_x)                          dense, (B, h, N): the one d x n product
    pairs  = {(b, h, k): x[b,h,2k] > 0 or x[b,h,2k+1] > 0}
    a      = sum_{active i} QR_i * rho[b,h,i,:]        gather rho rows of active pairs      (read)
    rho[b,h,i,:] += QR_i * v                           scatter into the same rows, in place  (write)
    y_i    = relu(LN(a) . D_y[:, i]) for x_i > 0       gather D_y columns of active neurons
    v'     = LN(v + LN(sum_{x_i y_i > 0} x_i y_i E_i))  gather decoder rows of gated neurons

`dense_step_layer` in `bdh.model` (the reference) computes the same function densely; tests check equality.
The sparse path updates rho in place (copying it would cost the dense O(n d) it avoids) and does not support
damping (gamma would rescale every row of rho at every token): such layers run densely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# sparse="auto" runs a layer sparsely when at most this fraction of its RoPE pairs is active. Not yet calibrated:
# on the shared 2-core CPU the gather/scatter path was not faster than the dense products at any activity we
# tried (down to 8% of pairs), so "auto" stays dense until a benchmark shows a crossover; sparse=True forces it.
SPARSE_MAX_PAIR_ACTIVITY = 0.0


def pair_activity(x_sparse: torch.Tensor) -> torch.Tensor:
    """Fraction of active RoPE pairs in x_sparse (..., N)."""
    return (x_sparse.unflatten(-1, (-1, 2)) > 0).any(-1).float().mean()


def sparse_step_layer(model, v: torch.Tensor, x: torch.Tensor, S: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """One layer of one decode step, sparse. Updates S in place.

    v (B, D): the layer input; x (B, nh, N): x_sparse (already computed densely); S (B, nh, N, D);
    cos, sin (B*nh*N,): the RoPE factors of every (b, h, i). Returns the next layer input (B, D).
    Neurons are addressed by their flat index n = (b*nh + h)*N + i, which is also their row in S.
    """
    B, nh, N = x.shape
    D = v.shape[-1]
    x = x.reshape(-1)  # (B*nh*N,)
    # --- active RoPE pairs and their rotated query/key values
    p = (x.view(-1, 2) > 0).any(-1).nonzero().squeeze(1)  # (P,) active pairs
    n0, n1 = 2 * p, 2 * p + 1
    x0, x1 = x.index_select(0, n0), x.index_select(0, n1)
    q0 = x0 * cos.index_select(0, n0) - x1 * sin.index_select(0, n0)  # RoPE of the pair (reference `rope`)
    q1 = x1 * cos.index_select(0, n1) + x0 * sin.index_select(0, n1)
    r = torch.cat([n0, n1])  # (2P,) rows of S
    q = torch.cat([q0, q1]).to(S.dtype).unsqueeze(-1)  # (2P, 1)
    S_rows = S.view(-1, D)  # (B*nh*N, D)
    # --- read, then write (the read excludes the current token)
    S_sel = S_rows.index_select(0, r)  # (2P, D): the rho rows of active pairs
    a = _segment_matrix(r // N, q.squeeze(-1), B * nh) @ S_sel  # (B*nh, D): sum over the rows of each (b, h)
    S_rows.index_copy_(0, r, S_sel + q * v.to(S.dtype).index_select(0, r // (nh * N)))  # rows are distinct
    # --- y only where x > 0 (the gate), decoder rows only where x*y > 0
    xn = (x > 0).nonzero().squeeze(1)  # (A,) active neurons
    w = xn % (nh * N)  # row of the neuron in D_y^T (nh*N, D) and in the decoder E (nh*N, D)
    ln_a = model.ln(a.to(v.dtype))  # (B*nh, D)
    y = F.relu((ln_a.index_select(0, xn // N) * model._encoder_v_rows().index_select(0, w)).sum(-1))  # (A,)
    xy = x.index_select(0, xn) * y
    keep = (xy > 0).nonzero().squeeze(1)
    E_rows = model.decoder.index_select(0, w.index_select(0, keep))  # (K, D)
    out = _segment_matrix(xn.index_select(0, keep) // (nh * N), xy.index_select(0, keep), B) @ E_rows  # (B, D)
    return model.ln(v + model.ln(out))


def _segment_matrix(segment: torch.Tensor, values: torch.Tensor, n_segments: int) -> torch.Tensor:
    """(n_segments, K) matrix M with M[segment[k], k] = values[k]: M @ rows sums rows per segment."""
    M = values.new_zeros(n_segments, values.shape[0])
    M[segment, torch.arange(values.shape[0], device=values.device)] = values
    return M
