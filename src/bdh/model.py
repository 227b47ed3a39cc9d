"""BDH-GPU (paper §3, eq. 8; reference `bdh.py`), one function in three exact forms.

Parameters, in the reference's names and the paper's notation (d = n_embd, h = n_head, N neurons per head,
n = h N, V = vocab_size):

| attribute            | shape         | paper                                   |
|----------------------|---------------|-----------------------------------------|
| `embed.weight`       | (V, d)        | token encoder f_e                        |
| `encoder`            | (h, d, N)     | D_x, per head: x_sparse = (D_x v*)^+     |
| `encoder_v`          | (h, d, N)     | D_y, per head: y_sparse = (D_y LN(a*))^+ |
| `decoder`            | (h N, d)      | E: v* = LN(E (x_sparse * y_sparse))     |
| `lm_head`            | (d, V)        | token decoder f_d                        |
| `freqs` (buffer)     | (N,) fp64     | RoPE frequency of each neuron (U)        |

One layer (weights shared by all L layers, as in the reference; residual in d-space, see spec §2.1 (a)):

    x_sparse = relu(v @ encoder)                  # (B, h, T, N)
    a        = attention(RoPE(x_sparse), v)       # (B, h, T, d): strictly causal, keys = queries, values = v
    y_sparse = relu(LN(a) @ encoder_v)            # (B, h, T, N)
    y        = x_sparse * y_sparse                # gate taken before RoPE
    v        = LN(v + LN(y @ decoder))            # (B, 1, T, d)

Forms (`form=`): "parallel" (the quadratic reference), "chunked" (linear time), "recurrent" (token by token
through `step`), "auto" (parallel up to `config.chunk_size` tokens, chunked above: measured faster on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_chunked, attention_parallel, attention_step, rope, rope_cos_sin, rope_freqs, state_dtype
from .config import FORMS, BDHConfig
from .models import PretrainedMixin
from .sparse import SPARSE_MAX_ACTIVITY, SPARSE_MIN_STATE, active_rows, lazy_attention_step, sparse_step_layer
from .state import BDHState


class BDH(PretrainedMixin, nn.Module):
    has_sparse_decode = True  # step(..., sparse=True) skips inactive neurons (bdh.sparse)

    def __init__(self, config: BDHConfig):
        super().__init__()
        if not isinstance(config, BDHConfig):
            raise TypeError(f"BDH(config): expected a BDHConfig, got {type(config).__name__}")
        self.config = config
        nh, D, N, V = config.n_head, config.n_embd, config.N, config.vocab_size
        self.decoder = nn.Parameter(torch.zeros((nh * N, D)).normal_(std=0.02))
        self.encoder = nn.Parameter(torch.zeros((nh, D, N)).normal_(std=0.02))
        self.encoder_v = nn.Parameter(torch.zeros((nh, D, N)).normal_(std=0.02))
        self.embed = nn.Embedding(V, D)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)
        self.lm_head = nn.Parameter(torch.zeros((D, V)).normal_(std=0.02))
        self.ln = nn.LayerNorm(D, elementwise_affine=False, bias=False)
        self.drop = nn.Dropout(config.dropout)
        self.register_buffer("freqs", rope_freqs(N, config.rope_theta))  # (N,) fp64, kept fp64 by _apply
        decay = config.decay()
        self.register_buffer(
            "log_gamma", None if decay is None else torch.log(torch.tensor(decay, dtype=torch.float64)), persistent=False
        )

    # Keep the RoPE frequencies (and the damping) in fp64 whatever `.to(dtype)` / `.half()` asks for.
    def _apply(self, fn, recurse=True):
        keep = {k: getattr(self, k) for k in ("freqs", "log_gamma") if getattr(self, k) is not None}
        super()._apply(fn, recurse)
        for k, t in keep.items():
            moved = fn(t)
            setattr(self, k, t.to(moved.device) if moved.dtype != t.dtype else moved)
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def device(self) -> torch.device:
        return self.lm_head.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.dtype

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of recurrent decode: 2 FLOPs per multiply-add.

        Per layer: encoder, encoder_v, decoder (3 nd) + state read and write (2 nd); plus lm_head (dV).
        """
        c = self.config
        return 2 * (5 * c.n * c.D * c.n_layer + c.D * c.vocab_size)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> BDHState:
        """An empty state (position 0) for `batch_size` sequences."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        c = self.config
        device = self.device if device is None else device
        sd = state_dtype(self.dtype)
        rho = [torch.zeros((batch_size, c.n_head, c.N, c.D), device=device, dtype=sd) for _ in range(c.n_layer)]
        return BDHState(rho, torch.zeros(batch_size, dtype=torch.long, device=device))

    def carry_state(self, state: BDHState) -> BDHState:
        """The state carried to the next training / evaluation window (TBPTT): detached from autograd."""
        return BDHState([r.detach() for r in state.rho], state.pos)

    # ------------------------------------------------------------------ input checks
    def _resolve_form(self, form: str, T: int) -> str:
        if form not in FORMS:
            raise ValueError(f"form={form!r}: expected one of {FORMS}")
        if form == "auto":
            return "parallel" if T <= self.config.chunk_size else "chunked"
        return form

    # ------------------------------------------------------------------ the function
    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, form: str = "auto", detach_kv: bool = False,
        x_sparse_out: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for token ids (B, T) from an empty state, and the mean cross-entropy if `targets`.

        `detach_kv=True` stops gradients through attention keys and values (no BPTT, paper §7.2).
        `x_sparse_out`: a list to which x_sparse (B, nh, T, N) of every layer is appended (differentiable; for
        activity penalties and probes).
        """
        self._check_ids(idx, "idx", 2)
        logits, _ = self._run(idx, None, self._resolve_form(form, idx.shape[1]), False, detach_kv, x_sparse_out)
        return logits, self._loss(logits, idx, targets)

    def prefill(
        self, idx: torch.Tensor, state: BDHState | None = None, *, form: str = "auto", detach_kv: bool = False,
        x_sparse_out: list | None = None,
    ) -> tuple[torch.Tensor, BDHState]:
        """Run a prompt (B, T), continuing from `state` when given; returns logits (B, T, V) and the new state.

        Differentiable (training with a carried state: detach the returned state between minibatches).
        `x_sparse_out` as in `forward`.
        """
        self._check_ids(idx, "idx", 2)
        B, T = idx.shape
        if state is None:
            state = self.init_state(B)
        else:
            self._check_state(state, B)
        return self._run(idx, state, self._resolve_form(form, T), True, detach_kv, x_sparse_out)

    def step(
        self, token_ids: torch.Tensor, state: BDHState, *, inplace: bool = False, sparse: bool | str = "auto"
    ) -> tuple[torch.Tensor, BDHState]:
        """One token per row, (B,), from `state`: logits (B, V) and the new state. O(1) work per token.

        `inplace=True` updates `state` itself and returns it (no allocation; for loops that own the state).
        `sparse`: with `inplace=True` in inference (eval mode, no autograd), layers can skip inactive neurons
        (`bdh.sparse`; same logits to float rounding). "auto" picks per layer and token from the measured
        activity (and only for models large enough to gain), True forces it, False is dense.
        """
        self._check_ids(token_ids, "token_ids", 1)
        self._check_state(state, token_ids.shape[0])
        if sparse not in (True, False, "auto"):
            raise ValueError(f"sparse={sparse!r}: expected True, False or 'auto'")
        return self._step(token_ids, state, inplace, sparse)

    def _check_state(self, state: BDHState, batch_size: int) -> None:
        if not isinstance(state, BDHState):
            raise TypeError(f"state: expected a BDHState (from model.init_state or prefill), got {type(state).__name__}")
        c = self.config
        state.check_compatible(c.n_layer, c.n_head, c.N, c.D, batch_size)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.ln(self.embed(idx).unsqueeze(1))  # (B, 1, T, D)

    def _layer_mlp(self, v: torch.Tensor, x_sparse: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """From the attention read a (B, nh, T, D) to the next layer input v (B, 1, T, D)."""
        B, nh, T, N = x_sparse.shape
        y_sparse = F.relu(self.ln(a) @ self.encoder_v)  # (B, nh, T, N)
        xy_sparse = self.drop(x_sparse * y_sparse)  # (B, nh, T, N): gate with x_sparse before RoPE
        y = xy_sparse.transpose(1, 2).reshape(B, 1, T, nh * N) @ self.decoder  # (B, 1, T, D)
        return self.ln(v + self.ln(y))

    def _run(
        self, idx: torch.Tensor, state: BDHState | None, form: str, need_state: bool, detach_kv: bool = False,
        x_sparse_out: list | None = None,
    ) -> tuple[torch.Tensor, BDHState | None]:
        B, T = idx.shape
        if form == "recurrent":
            if detach_kv:
                raise ValueError("detach_kv=True is a training option of the parallel and chunked forms")
            if x_sparse_out is not None:
                raise ValueError("x_sparse_out is an option of the parallel and chunked forms")
            if state is None:
                state = self.init_state(B)
            logits = []
            own = False  # after the first step the state is ours: update it in place when no autograd is needed
            for t in range(T):
                lt, state = self._step(idx[:, t], state, inplace=own)
                own = not torch.is_grad_enabled()
                logits.append(lt)
            return torch.stack(logits, 1), state  # (B, T, V)

        v = self._embed(idx)  # (B, 1, T, D)
        if state is None:
            positions = torch.arange(T, device=idx.device).view(1, T)  # shared by all rows
        else:
            p0 = state.pos.view(-1, 1)
            same = bool((p0 == p0[0]).all())
            positions = (p0[:1] if same else p0) + torch.arange(T, device=idx.device).view(1, T)  # (1 or B, T)
        cos, sin = rope_cos_sin(positions, self.freqs, v.dtype)  # (1 or B, T, N)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1 or B, 1, T, N)
        new_rho = []
        for l in range(self.config.n_layer):
            x_sparse = F.relu(v @ self.encoder)  # (B, nh, T, N)
            if x_sparse_out is not None:
                x_sparse_out.append(x_sparse)
            QR = rope(x_sparse, cos, sin)
            S0 = None if state is None else state.rho[l]
            if form == "parallel":
                a, S = attention_parallel(QR, v, S0, self.log_gamma, need_state, detach_kv)
            else:
                a, S = attention_chunked(QR, v, S0, self.log_gamma, self.config.chunk_size, need_state, detach_kv)
            new_rho.append(S)
            v = self._layer_mlp(v, x_sparse, a)
        logits = v.view(B, T, -1) @ self.lm_head  # (B, T, V)
        if not need_state:
            return logits, None
        pos = (state.pos if state is not None else torch.zeros(B, dtype=torch.long, device=idx.device)) + T
        return logits, BDHState(new_rho, pos)

    def _step(
        self, token_ids: torch.Tensor, state: BDHState, inplace: bool = False, sparse: bool | str = False
    ) -> tuple[torch.Tensor, BDHState]:
        B = token_ids.shape[0]
        c = self.config
        nh, N, D = c.n_head, c.N, c.D
        v = self._embed(token_ids.view(B, 1)).view(B, D)  # (B, D)
        cos, sin = rope_cos_sin(state.pos.view(B, 1), self.freqs, v.dtype)  # (B, 1, N): broadcast over heads
        gamma = None if self.log_gamma is None else self.log_gamma.exp()
        # the sparse path writes rho in place; it needs inference (no autograd, no dropout). "auto" only
        # considers it for models large enough that it can win (bdh.sparse.SPARSE_MIN_STATE).
        can_sparse = sparse is not False and inplace and not self.training and not torch.is_grad_enabled()
        if sparse == "auto" and c.n * D < SPARSE_MIN_STATE:
            can_sparse = False
        new_rho = []
        for l in range(c.n_layer):
            # per-head products as (nh, B, .) bmm: `(B,1,1,D) @ (nh,D,N)` would broadcast-copy the weights B times
            x_sparse = F.relu(torch.bmm(v.unsqueeze(0).expand(nh, B, D), self.encoder)).transpose(0, 1).contiguous()
            qr = rope(x_sparse, cos, sin)  # (B, nh, N)
            if can_sparse:
                rows = active_rows(x_sparse, qr)
                if sparse is True or rows.numel() <= SPARSE_MAX_ACTIVITY * qr.numel():
                    v = sparse_step_layer(self, v, x_sparse, qr, state, l, gamma, rows)
                    new_rho.append(state._rho[l])
                    continue
            if gamma is not None and inplace and not torch.is_grad_enabled():  # a decode loop owning the state:
                a = lazy_attention_step(qr, v, state, l, gamma)  # the decay goes to the lazy scale (bdh.sparse)
                new_rho.append(state._rho[l])
            else:
                S0 = state._fold(l)  # the true rho of this layer (folds a pending lazy scale)
                a, S = attention_step(qr, v, S0, gamma, inplace)  # (B, nh, D), (B, nh, N, D)
                new_rho.append(S)
            y_sparse = F.relu(torch.bmm(self.ln(a).transpose(0, 1), self.encoder_v)).transpose(0, 1)  # (B, nh, N)
            xy_sparse = self.drop(x_sparse * y_sparse)  # gate with x_sparse before RoPE (as `_layer_mlp`)
            v = self.ln(v + self.ln(xy_sparse.reshape(B, nh * N) @ self.decoder))  # (B, D)
        logits = v @ self.lm_head  # (B, V)
        if inplace:
            state.pos += 1
            return logits, state
        return logits, BDHState(new_rho, state.pos + 1)

    def _encoder_v_rows(self) -> torch.Tensor:
        """D_y as (nh*N, D), contiguous, for gathering the columns of active neurons (cached per weight version)."""
        key = (self.encoder_v.data_ptr(), self.encoder_v._version, self.encoder_v.dtype)
        cache = getattr(self, "_dy_rows_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, self.encoder_v.detach().transpose(1, 2).reshape(-1, self.config.D).contiguous())
            self._dy_rows_cache = cache
        return cache[1]

    # ------------------------------------------------------------------ checkpoints (generate, stream,
    # save_pretrained, from_pretrained: `PretrainedMixin`)
    @classmethod
    def from_reference(cls, path_or_state_dict, config: BDHConfig) -> "BDH":
        """Load weights saved by the reference `bdh.py` (a state_dict, or a `.pt` file read with weights_only)."""
        from .checkpoint import load_reference

        return load_reference(path_or_state_dict, config)

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights in the reference `bdh.py` format (keys and shapes)."""
        from .checkpoint import to_reference_state_dict

        return to_reference_state_dict(self)

    def extra_repr(self) -> str:
        c = self.config
        return f"L={c.n_layer}, d={c.D}, h={c.n_head}, N={c.N}, n={c.n}, V={c.vocab_size}, params={self.num_params():,}"

