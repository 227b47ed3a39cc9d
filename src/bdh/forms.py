"""How a BDH layer's attention reads and writes rho: one small class per form, one method each.

`BDH.layer` (bdh.model) is the one definition of the layer's equations; the only thing that differs between
the parallel, chunked and recurrent forms (and the sparse decode, `bdh.sparse.SparseStepForm`) is the
attention call and where the new state goes:

    a = form.attend(l, qr, v, x_sparse)       # (B, h, T, d): reads rho_{t-1,l}, writes the T tokens
    out = form.sparse_decoder_input(...)      # the sparse decode's active-set E (x * y), else None (dense lines)
    form.rho                                  # the new state per layer (functional forms), or None

Forms are created per model call and hold the call's state; they never modify the state passed in, except the
in-place step (`inplace=True`), which updates it (a decode loop that owns it). The block forms can also keep rho
after chosen tokens of the call (`keep_at`, for `BDH.states_at`).

This module is the only caller of the attention functions of `bdh.attention` (tests/test_imports.py): the rest
of the package reads rho through the model (its states, `BDH.states_at`, the `rho` hook point).
"""

from __future__ import annotations

import torch

from .attention import _advance_state, attention_chunked, attention_parallel, attention_step, attention_step_scaled
from .state import BDHState


class AttentionForm:
    """Base: no state. Subclasses implement `attend` and fill `rho` (the new state per layer)."""

    def __init__(self) -> None:
        self.rho: list[torch.Tensor | None] = []

    def attend(self, l: int, qr: torch.Tensor, v: torch.Tensor, x_sparse: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sparse_decoder_input(self, model, l: int, a: torch.Tensor, x_sparse: torch.Tensor) -> torch.Tensor | None:
        """E (x * y) computed on the active neurons only (sparse decode), or None: the layer's dense lines."""
        return None

    def state_after(self, l: int) -> torch.Tensor | None:
        """Layer l's rho after this call's tokens (what the next token reads), for the `rho` hook."""
        return self.rho[l]


def states_after(qr: torch.Tensor, v: torch.Tensor, S0: torch.Tensor | None, log_gamma: torch.Tensor | None,
                 counts: list[int], detach_kv: bool = False) -> list[torch.Tensor]:
    """rho after the first k tokens of a block, for each k in `counts` (increasing, in [1, T]): (B, h, N, d) each.

    qr (B, h, T, N), v (B, 1, T, d), S0 the state before the block (None: empty). S0 is advanced segment by segment
    (tokens [k_{i-1}, k_i)) with the block forms' state write: O(T n d) for all counts together.
    """
    K, V = (qr.detach(), v.detach()) if detach_kv else (qr, v)
    out, S, a = [], S0, 0
    for b in counts:
        S = _advance_state(K[:, :, a:b], V[:, :, a:b], S, log_gamma).contiguous()
        out.append(S)
        a = b
    return out


class ParallelForm(AttentionForm):
    """The parallel (T x T, `chunk_size=None`) or chunked (C x C + carried state) form over a block of T tokens.

    state: the BDHState continued from (None: empty); need_state: return the new rho (else rho[l] is None);
    keep_at: token counts k (increasing, in [1, T]) after which rho is also kept, `kept[l][i]` after k_i tokens.
    """

    def __init__(self, state: BDHState | None, log_gamma: torch.Tensor | None, need_state: bool,
                 detach_kv: bool = False, chunk_size: int | None = None, keep_at: list[int] | None = None):
        super().__init__()
        self.state, self.log_gamma, self.need_state = state, log_gamma, need_state
        self.detach_kv, self.chunk_size = detach_kv, chunk_size
        self.cache: dict = {}  # causal masks and decay powers, built once for all chunks and layers of the call
        self.keep_at, self.kept = keep_at, []

    def attend(self, l, qr, v, x_sparse):
        S0 = None if self.state is None else self.state.layer_rho(l)  # (B, h, N, d)
        if self.chunk_size is None:
            a, S = attention_parallel(qr, v, S0, self.log_gamma, self.need_state, self.detach_kv, cache=self.cache)
        else:
            a, S = attention_chunked(qr, v, S0, self.log_gamma, self.chunk_size, self.need_state, self.detach_kv,
                                     cache=self.cache)
        self.rho.append(S if S is None else S.contiguous())  # (a head-major S from head-major keys: see _bmm)
        if self.keep_at:
            self.kept.append(states_after(qr, v, S0, self.log_gamma, self.keep_at, self.detach_kv))
        return a  # (B, h, T, d)


class StepForm(AttentionForm):
    """One token per row (the recurrent form). qr (B, h, 1, N), v (B, 1, 1, d).

    Functional: a new rho per layer. `inplace`: `state` itself is updated. With per-head damping, an in-place step
    outside autograd (a decode loop) decays the state's lazy scale instead of every row of rho
    (`BDHState.lazy_decay_`): the dense and the sparse decode then do the same work per token.
    """

    def __init__(self, state: BDHState, log_gamma: torch.Tensor | None, fold_every: int, inplace: bool,
                 detach_kv: bool = False):
        super().__init__()
        self.state, self.log_gamma, self.fold_every = state, log_gamma, fold_every
        self.inplace, self.detach_kv = inplace, detach_kv
        # the lazy scale is per head: a per-neuron damping (log_gamma (h, N)) decays rho itself, every token
        self.lazy = log_gamma is not None and log_gamma.dim() == 1 and inplace and not torch.is_grad_enabled()
        self.gamma = None if log_gamma is None or self.lazy else log_gamma.exp()  # the lazy path decays the scale

    def attend(self, l, qr, v, x_sparse):
        q, u = qr[:, :, 0], v[:, 0, 0]  # (B, h, N), (B, d)
        st = self.state
        if self.lazy:  # true rho = c * stored: read and write the stored tensor, decay the scale
            a = attention_step_scaled(q, u, st.stored(l), st.lazy_scale(l))
            st.lazy_decay_(l, self.log_gamma, self.fold_every)
            self.rho.append(st.stored(l))
        else:
            S0 = st.fold_(l).stored(l) if self.inplace else st.layer_rho(l)
            a, S = attention_step(q, u, S0, self.gamma, self.inplace, self.detach_kv)  # (B, h, d), (B, h, N, d)
            self.rho.append(S)
        return a.unsqueeze(2)  # (B, h, 1, d)

    def state_after(self, l):
        return self.state.layer_rho(l) if self.inplace else self.rho[l]
