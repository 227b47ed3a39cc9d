"""BDH-GPU (paper §3, eq. 8; reference `bdh.py`): one layer definition, three exact forms, hook points.

Parameters, in the reference's names and the paper's notation (d = n_embd, h = n_head, N neurons per head,
n = h N, V = vocab_size):

| attribute            | shape         | paper                                   |
|----------------------|---------------|-----------------------------------------|
| `embed.weight`       | (V, d)        | token encoder f_e                        |
| `encoder`            | (h, d, N)     | D_x, per head: x_sparse = (D_x v*)^+     |
| `encoder_v`          | (h, d, N)     | D_y, per head: y_sparse = (D_y LN(a*))^+ |
| `decoder`            | (h N, d)      | E: v* = LN(E (x_sparse * y_sparse))     |
| `lm_head`            | (d, V)        | token decoder f_d                        |
| `freqs` (buffer)     | (N,) fp64     | RoPE frequency of each neuron (U); 0 for |
|                      |               | the neurons past `config.n_rope`         |
| `log_decay_rate`     | (h,) or (h N,)| learned damping only: w, gamma =         |
|                      |               | exp(-exp(w)) per head / per neuron       |

One layer, `BDH.layer` (weights shared by all L layers, as in the reference; residual in d-space, spec §2.1 (a)):

    x_sparse = relu(v @ encoder)                  # (B, h, T, N)
    a        = attention(RoPE(x_sparse), v)       # (B, h, T, d): strictly causal, keys = queries, values = v
    y_sparse = relu(LN(a) @ encoder_v)            # (B, h, T, N)
    y        = x_sparse * y_sparse                # gate taken before RoPE
    v        = LN(v + LN(y @ decoder))            # (B, 1, T, d)

Forms differ only in the attention call (`bdh.forms`): "parallel" (the quadratic reference), "chunked" (linear
time), "recurrent" (token by token through `step`; with `sparse`, `bdh.sparse.SparseStepForm` also gathers the
active neurons' y and decoder rows), "auto" (parallel up to `config.chunk_size` tokens, chunked above).

Hook points (TransformerLens-style names), emitted by every form, `step` included:

| name                  | shape (T tokens of the call) | paper                                           |
|-----------------------|------------------------------|-------------------------------------------------|
| `blocks.{l}.v_in`     | (B, 1, T, d)                 | v*_{t,l-1}: the layer input                      |
| `blocks.{l}.x_sparse` | (B, h, T, N)                 | x_{t,l} = (D_x v*)^+, before RoPE                |
| `blocks.{l}.qr`       | (B, h, T, N)                 | RoPE_t(x_{t,l}): queries = keys                  |
| `blocks.{l}.attn`     | (B, h, T, d)                 | a*_{t,l}: the read of rho_{t-1,l}                |
| `blocks.{l}.y_sparse` | (B, h, T, N)                 | (D_y LN(a*))^+                                   |
| `blocks.{l}.xy`       | (B, h, T, N)                 | y_{t,l} = x * y_sparse (after dropout)           |
| `blocks.{l}.v_out`    | (B, 1, T, d)                 | v*_{t,l} = LN(v + LN(E y))                       |
| `blocks.{l}.rho`      | (B, h, N, d)                 | rho after the call's last token (observe only)   |
| `logits`              | (B, T, V)                    | f_d(v*_{t,L})                                    |

    with model.hooks({"blocks.0.x_sparse": fn}):  # fn(name, tensor, pos) -> None, or a tensor to use instead
        model(idx)
    handle = model.add_hook("logits", fn); ...; handle.remove()

`pos` is the (B,) position of each row's first token in the call. A hook may return a replacement tensor of
the same shape (an intervention: ablate neurons, patch activations); `rho` hooks only observe. With no hook
attached nothing is called or built (one dict check per layer). A step with hooks attached runs densely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import _head_major, compute_dtype, rope, rope_cos_sin, rope_freqs, state_dtype
from .config import FORMS, BDHConfig
from .forms import AttentionForm, ParallelForm, StepForm
from .hooks import HookPoints, hook_name as _hook_name
from .interface import register_model_type
from .pretrained import PretrainedMixin
from .sparse import SPARSE_MIN_STATE, SparseStepForm
from .state import BDHState, fold_period

HOOK_KINDS = ("v_in", "x_sparse", "qr", "attn", "y_sparse", "xy", "v_out", "rho")


def hook_name(layer: int, kind: str) -> str:
    """`blocks.{layer}.{kind}` (TransformerLens style) for one of BDH's HOOK_KINDS."""
    return _hook_name(layer, kind, HOOK_KINDS)


def _per_head(u: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """u (B, 1 or h, T, d) times W (h, d, N), per head -> (B, h, T, N).

    Never broadcasts the weights B times (what `u @ W` does: a copy of W per row, and a sum over rows in backward).
    T > 1: one (h, B T, d) x (h, d, N) bmm whose result is stored head-major, (h, B, T, N) in memory, returned as
    its (B, h, T, N) view: the later products (attention, `_decode`) then batch over (h, B) without copying
    these activations (`bdh.attention._head_major`). One token: an (h, B, d) x (h, d, N) bmm.
    Same values as `u @ W` to rounding (tests/test_fused.py).
    """
    B, k, T, D = u.shape
    nh, _, N = W.shape
    if T != 1:
        u3 = u.reshape(1, B * T, D).expand(nh, B * T, D) if k == 1 else u.transpose(0, 1).reshape(nh, B * T, D)
        return torch.bmm(u3, W).view(nh, B, T, N).transpose(0, 1)  # (B, h, T, N), head-major
    if k == 1:
        return torch.bmm(u.view(1, B, D).expand(nh, B, D), W).transpose(0, 1).unsqueeze(2).contiguous()
    return torch.bmm(u.view(B, nh, D).transpose(0, 1), W).transpose(0, 1).unsqueeze(2)


def _decode(y: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """E y: y (B, h, T, N) with the heads' neurons concatenated (n = h N) times E (h N, d) -> (B, 1, T, d).

    The readable form is `y.transpose(1, 2).reshape(B, 1, T, h N) @ E`, which copies y into token-major order; a
    head-major y (`_per_head`) is multiplied per head instead, (h, B T, N) x (h, N, d), and the h partial
    products summed: no copy of y, the same sum in another order.
    """
    B, nh, T, N = y.shape
    if T != 1 and _head_major(y):
        return torch.bmm(y.transpose(0, 1).reshape(nh, B * T, N), E.view(nh, N, -1)).sum(0).view(B, 1, T, -1)
    return y.transpose(1, 2).reshape(B, 1, T, -1) @ E


class BDH(HookPoints, PretrainedMixin, nn.Module):
    HOOK_KINDS, OBSERVE_ONLY = HOOK_KINDS, ("rho",)  # bdh.hooks: the points of the table above
    # bdh.interface: sparse_decode: step(..., sparse=True) skips inactive neurons (bdh.sparse); layer_passes: one
    # set of weights shared by every layer, so the model runs at any n_layer
    capabilities = frozenset({"forms", "no_bptt", "activity_penalty", "sparse_decode", "hooks", "neurons", "rho_state",
                              "layer_passes"})
    embedding_params = ("embed", "lm_head")  # left to AdamW by Muon (bdh.training.muon)

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
        # (N,) fp64, kept fp64 by _apply; frequency 0 (no rotation) past the first n_rope neurons (rope_fraction)
        self.register_buffer("freqs", rope_freqs(N, config.rope_theta, config.n_rope))
        decay = None if config.learned_damping else config.decay()
        self.register_buffer(  # fixed damping: log gamma_h (nh,) fp64 (`log_gamma`)
            "_log_gamma", None if decay is None else torch.log(torch.tensor(decay, dtype=torch.float64)), persistent=False
        )
        if config.learned_damping:
            # w = log(-log gamma) = log of the decay rate: gamma = exp(-exp(w)) in (0, 1). Per head (nh,), or per
            # neuron flattened head-major (nh N,) so that it is a vector: the optimizers treat it as one (AdamW, no
            # weight decay: bdh.training.step.make_optimizer). Kept in fp32 or fp64 (`_apply`).
            rates = torch.tensor(config.decay_init_rates(), dtype=torch.float64)  # (nh,) or (N,): m = -log gamma
            if config.damping == "learned-neuron":
                rates = rates.repeat(nh)  # the same spread in every head
            self.log_decay_rate = nn.Parameter(rates.log().to(torch.float32))
        self._fold_every = fold_period(decay)  # decode steps between folds of the lazy damping scale (fixed gamma)
        self._fold_cache: tuple | None = None  # learned gamma: (parameter version, fold period)

    @property
    def log_gamma(self) -> torch.Tensor | None:
        """log gamma of the damping, fp64: (nh,) per head, (nh, N) per neuron ("learned-neuron"), None when off.

        A learned damping computes it from `log_decay_rate` (-exp(w)), differentiably: gradients reach w."""
        if not self.config.learned_damping:
            return self._log_gamma
        lg = -torch.exp(self.log_decay_rate.to(torch.float64))
        return lg.view(self.config.n_head, -1) if self.config.damping == "learned-neuron" else lg

    @log_gamma.setter
    def log_gamma(self, value: torch.Tensor | None) -> None:
        if self.config.learned_damping:
            raise ValueError(f"damping={self.config.damping!r}: log_gamma is computed from the trained "
                             "log_decay_rate; set that parameter instead")
        self._log_gamma = value

    def _fold_period(self) -> int:
        """Lazy decays between folds (`BDHState.lazy_decay_`): fixed for a fixed damping; for a learned one, from
        the current gamma (recomputed when the parameter changes)."""
        if not self.config.learned_damping:
            return self._fold_every
        w = self.log_decay_rate
        key = (w._version, w.data_ptr(), str(w.device))
        if self._fold_cache is None or self._fold_cache[0] != key:
            self._fold_cache = (key, fold_period(torch.exp(-torch.exp(w.detach().double())).tolist()))
        return self._fold_cache[1]

    # Keep the RoPE frequencies (and a fixed damping) in fp64, and a learned damping in fp32 or fp64, whatever
    # `.to(dtype)` / `.half()` asks for.
    def _apply(self, fn, recurse=True):
        keep = {k: getattr(self, k) for k in ("freqs", "_log_gamma") if getattr(self, k) is not None}
        w = self.log_decay_rate.detach() if self.config.learned_damping else None  # the values before fn
        super()._apply(fn, recurse)
        for k, t in keep.items():
            moved = fn(t)
            setattr(self, k, t.to(moved.device) if moved.dtype != t.dtype else moved)
        if w is not None and self.log_decay_rate.dtype not in (torch.float32, torch.float64):
            self.log_decay_rate.data = w.to(device=self.log_decay_rate.device, dtype=torch.float32)
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
        """Forward FLOPs per token of recurrent decode (2 per multiply-add): `BDH.flops(config, 1, form="recurrent")`."""
        return int(self.flops(self.config, 1, form="recurrent").forward)

    @classmethod
    def flops(cls, config: BDHConfig, T: int, *, form: str = "auto", causal: bool = False):
        """BDH's FLOP model: matmul FLOPs per token (2 per multiply-add) of T tokens in `form` (bdh.interface.TokenFlops).

            per layer, every form:  2*3*n*d            encoder, encoder_v (h heads of d x N), decoder (n x d)
            parallel:               + 2*K*(n + h*d)    scores QR QR^T (K keys of N dims, h heads) and the
                                                       weighted values (K keys x d per head); K = T
            chunked (chunks c_i):   + 2*K*(n + h*d)    the same inside each chunk: K = sum(c_i^2) / T
                                    + 2*n*d            state read q @ S (every chunk, the first's zero state too)
                                    + 2*n*d*(T-c_last)/T  state write K^T V (not after the last chunk)
            recurrent (one step):   + 2*n*d + 2*n*d    state read and write (the write is an addcmul)
            once:                   + 2*d*V            lm_head

        Per-neuron damping ("learned-neuron") has no T x T product: its blocks sum the T(T-1)/2 query-key pairs
        exactly once (`bdh.attention._neuron_decay_attention`), so K is the causal count in every case, and no
        keys = queries saving applies. Damping and RoPE scale queries, keys and states elementwise (O(n) per token
        and level, not counted); rope_fraction changes no product.

        "auto" is what `forward` runs (parallel up to chunk_size tokens). `causal`: K counts only the earlier keys
        ((T-1)/2, sum(c_i(c_i-1)/2)/T) instead of the full products the kernels execute. The executed backward is
        2 x forward less the scores' second product (keys = queries: one (G + G^T) QR, `bdh.attention.gram`; 2*K*n)
        and, chunked, the gradient of the first chunk's read of the constant initial state (2*c_1*n*d/T).
        """
        from .interface import TokenFlops

        n, d, h, L, V = config.n, config.D, config.n_head, config.n_layer, config.vocab_size
        if form == "auto":
            form = "parallel" if T <= config.chunk_size else "chunked"
        dense, state, saving = 2 * 3 * n * d, 0.0, 0.0
        causal = causal or config.damping == "learned-neuron"  # its kernel computes only the causal pairs
        if form == "recurrent":
            keys, state = 0.0, 4 * n * d
        elif form == "parallel":
            keys = (T - 1) / 2 if causal else T
        elif form == "chunked":
            C = min(config.chunk_size, T)
            sizes = [C] * (T // C) + ([T % C] if T % C else [])
            keys = sum(c * (c - 1) / 2 if causal else c * c for c in sizes) / T
            state = 2 * n * d + 2 * n * d * (T - sizes[-1]) / T
            saving = 2 * n * d * sizes[0] / T
        else:
            raise ValueError(f"form={form!r}: expected one of {FORMS}")
        attn = 2 * keys * (n + h * d)
        fwd = L * (dense + attn + state) + 2 * d * V
        gram_saving = 0.0 if config.damping == "learned-neuron" else 2 * keys * n  # keys = queries (`gram`)
        return TokenFlops(fwd, 2 * fwd - L * (gram_saving + saving))

    # ------------------------------------------------------------------ the layer (paper eq. 8)
    def layer(self, l: int, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, form: AttentionForm,
              emit=None) -> torch.Tensor:
        """One BDH-GPU layer l: v (B, 1, T, d) -> (B, 1, T, d). The one definition, for every form.

        cos, sin (1 or B, 1, T, N): RoPE of the tokens' positions; `form` reads and writes rho (bdh.forms);
        `emit`: the hook dispatcher (`_emitter`), or None.
        """
        B, _, T, D = v.shape
        if emit:
            v = emit(f"blocks.{l}.v_in", v)
        x_sparse = F.relu(_per_head(v, self.encoder))  # x_{t,l} = (D_x v*_{t,l-1})^+        (B, h, T, N)
        if emit:
            x_sparse = emit(f"blocks.{l}.x_sparse", x_sparse)
        qr = rope(x_sparse, cos, sin)  # RoPE_t(x_{t,l}): queries = keys                     (B, h, T, N)
        if emit:
            qr = emit(f"blocks.{l}.qr", qr)
        a = form.attend(l, qr, v, x_sparse)  # a*_{t,l} = sum_s<t <qr_t, qr_s> v*_s = rho_{t-1,l} qr_t  (B, h, T, d)
        if emit:
            a = emit(f"blocks.{l}.attn", a)
            if self.hooked(f"blocks.{l}.rho"):
                emit(f"blocks.{l}.rho", form.state_after(l))
        out = form.sparse_decoder_input(self, l, a, x_sparse)  # sparse decode: E y over active neurons only
        if out is None:
            y_sparse = F.relu(_per_head(self.ln(a), self.encoder_v))  # (D_y LN(a*))^+        (B, h, T, N)
            if emit:
                y_sparse = emit(f"blocks.{l}.y_sparse", y_sparse)
            xy = self.drop(x_sparse * y_sparse)  # y_{t,l} = x * y_sparse, gated before RoPE  (B, h, T, N)
            if emit:
                xy = emit(f"blocks.{l}.xy", xy)
            out = _decode(xy, self.decoder)  # E y_{t,l}: xy with heads concatenated @ E      (B, 1, T, d)
        v = self.ln(v + self.ln(out))  # v*_{t,l} = LN(v*_{t,l-1} + LN(E y))                 (B, 1, T, d)
        if emit:
            v = emit(f"blocks.{l}.v_out", v)
        return v

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.ln(self.embed(idx).unsqueeze(1))  # (B, 1, T, D)

    def _rope(self, positions: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (P, 1, T, N) of positions (P, T), in the compute dtype (bf16 under bf16 autocast)."""
        cos, sin = rope_cos_sin(positions, self.freqs, compute_dtype(v))  # (P, T, N)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def _logits(self, v: torch.Tensor, emit) -> torch.Tensor:
        logits = v.flatten(1, 2) @ self.lm_head  # (B, T, V)
        return emit("logits", logits) if emit else logits

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
        self._check_state(state, None)
        return BDHState([r.detach() for r in state.rho], state.pos.clone())  # its own pos: steps may be in place

    def state_to_tensors(self, state: BDHState, prefix: str = "") -> dict[str, torch.Tensor]:
        """`{prefix}rho.{l}` (B, nh, N, d) and `{prefix}pos` (B,): the state as named tensors (checkpoints)."""
        self._check_state(state, None)
        return state.to_tensors(prefix)

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], prefix: str = "", device=None) -> BDHState:
        if not isinstance(tensors, dict):
            raise TypeError(f"state_from_tensors: expected a dict of named tensors, got {type(tensors).__name__}")
        state = BDHState.from_tensors(tensors, prefix, device=device)
        self._check_state(state, state.batch_size)
        return state

    def _check_state(self, state: BDHState, batch_size: int | None) -> None:
        if not isinstance(state, BDHState):
            raise TypeError(f"state: expected a BDHState (from model.init_state or prefill), got {type(state).__name__}")
        c = self.config
        state.check_compatible(c.n_layer, c.n_head, c.N, c.D, batch_size)

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
        idx = self._check_ids(idx, "idx", 2)
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
        idx = self._check_ids(idx, "idx", 2)
        B, T = idx.shape
        if state is None:
            state = self.init_state(B)
        else:
            self._check_state(state, B)
        return self._run(idx, state, self._resolve_form(form, T), True, detach_kv, x_sparse_out)

    def states_at(
        self, idx: torch.Tensor, positions, state: BDHState | None = None, *, form: str = "auto",
        detach_kv: bool = False,
    ) -> tuple[torch.Tensor, list[BDHState], BDHState]:
        """`prefill` that also returns the state after each token of `positions` (indices into the T tokens).

        Returns logits (B, T, V), one BDHState per entry of `positions` (what the token after it reads; rho of
        every layer) and the state after the last token. One pass (hooks see the call once), differentiable; the
        block forms advance the call's starting state to each position with their own state write (`bdh.forms`),
        the recurrent form copies its state after those tokens. Each kept state is a full state: keep few.
        """
        idx = self._check_ids(idx, "idx", 2)
        B, T = idx.shape
        ps = [int(p) for p in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
        bad = [p for p in ps if not 0 <= p < T]
        if bad:
            raise ValueError(f"positions: {bad[0]} is outside the call's tokens [0, T={T})")
        if state is None:
            state = self.init_state(B)
        else:
            self._check_state(state, B)
        keep = dict.fromkeys(sorted(set(ps)))
        logits, final = self._run(idx, state, self._resolve_form(form, T), True, detach_kv, keep=keep)
        return logits, [keep[p] for p in ps], final

    def step(
        self, token_ids: torch.Tensor, state: BDHState, *, inplace: bool = False, sparse: bool | str = "auto",
        check_ids: bool = True,
    ) -> tuple[torch.Tensor, BDHState]:
        """One token per row, (B,), from `state`: logits (B, V) and the new state. O(1) work per token.

        `inplace=True` updates `state` itself and returns it (no allocation; for loops that own the state).
        `sparse`: with `inplace=True` in inference (eval mode, no autograd, no hooks), layers can skip inactive
        neurons (`bdh.sparse`; same logits to float rounding). "auto" picks per layer and token from the measured
        activity (and only for models large enough to gain), True forces it, False is dense.
        `check_ids=False` skips the id range check (its device->host sync) for ids the caller produced itself.
        """
        token_ids = self._check_ids(token_ids, "token_ids", 1, values=check_ids)
        self._check_state(state, token_ids.shape[0])
        if sparse not in (True, False, "auto"):
            raise ValueError(f"sparse={sparse!r}: expected True, False or 'auto'")
        if sparse is True and self.config.damping == "learned-neuron":
            raise ValueError("sparse=True: the sparse decode keeps one lazy decay scale per head; "
                             "damping='learned-neuron' decays every neuron at its own rate (use sparse=False or 'auto')")
        return self._step(token_ids, state, inplace, sparse)

    def _run(
        self, idx: torch.Tensor, state: BDHState | None, form: str, need_state: bool, detach_kv: bool = False,
        x_sparse_out: list | None = None, keep: dict | None = None,
    ) -> tuple[torch.Tensor, BDHState | None]:
        """The parallel / chunked forms over a block of tokens (B, T); the recurrent form steps through it.

        `keep`: {position: None} (sorted), filled with the BDHState after each of these tokens (`states_at`).
        """
        if x_sparse_out is not None:  # a user of the hook points
            if form == "recurrent":
                raise ValueError("x_sparse_out is an option of the parallel and chunked forms")
            append = lambda name, t, pos: x_sparse_out.append(t)  # noqa: E731
            with self.hooks({hook_name(l, "x_sparse"): append for l in range(self.config.n_layer)}):
                return self._run(idx, state, form, need_state, detach_kv, keep=keep)
        B, T = idx.shape
        if form == "recurrent":
            return self._run_recurrent(idx, state, detach_kv, keep)
        pos0 = state.pos if state is not None else torch.zeros(B, dtype=torch.long, device=idx.device)
        if state is None:
            positions = torch.arange(T, device=idx.device).view(1, T)  # shared by all rows
        else:
            p0 = state.pos.view(-1, 1)
            same = bool((p0 == p0[0]).all())
            positions = (p0[:1] if same else p0) + torch.arange(T, device=idx.device).view(1, T)  # (1 or B, T)
        v = self._embed(idx)  # (B, 1, T, D)
        cos, sin = self._rope(positions, v)  # (1 or B, 1, T, N)
        emit = self._emitter(pos0)
        rho_hooked = emit is not None and any(k.endswith(".rho") for k in self._hook_table)
        chunk = self.config.chunk_size if form == "chunked" else None
        keep_at = [p + 1 for p in keep] if keep else None
        attn = ParallelForm(state, self.log_gamma, need_state or rho_hooked, detach_kv, chunk, keep_at)
        for l in range(self.config.n_layer):
            v = self.layer(l, v, cos, sin, attn, emit)
        logits = self._logits(v, emit)
        for i, p in enumerate(keep or ()):
            keep[p] = BDHState([rho_l[i] for rho_l in attn.kept], pos0 + p + 1)
        if not need_state:
            return logits, None
        return logits, BDHState(attn.rho, pos0 + T)

    def _run_recurrent(self, idx: torch.Tensor, state: BDHState | None, detach_kv: bool, keep: dict | None = None):
        B, T = idx.shape
        if state is None:
            state = self.init_state(B)
        logits = []
        own = False  # after the first step the state is ours: update it in place when no autograd is needed
        for t in range(T):
            lt, state = self._step(idx[:, t], state, inplace=own, detach_kv=detach_kv)
            own = not torch.is_grad_enabled()
            logits.append(lt)
            if keep and t in keep:
                keep[t] = state.clone() if own else state  # a state updated in place by later steps is copied
        return torch.stack(logits, 1), state  # (B, T, V)

    def _step(
        self, token_ids: torch.Tensor, state: BDHState, inplace: bool = False, sparse: bool | str = False,
        detach_kv: bool = False,
    ) -> tuple[torch.Tensor, BDHState]:
        B = token_ids.shape[0]
        if inplace:
            state.writable_()
        v = self._embed(token_ids.view(B, 1))  # (B, 1, 1, D)
        cos, sin = self._rope(state.pos.view(B, 1), v)  # (B, 1, 1, N): broadcast over heads
        emit = self._emitter(state.pos)
        # the sparse path writes rho in place; it needs inference (no autograd, no dropout, no hooks). "auto"
        # only considers it for models large enough that it can win (bdh.sparse.SPARSE_MIN_STATE).
        sparse_ok = sparse is not False and inplace and not self.training and not torch.is_grad_enabled()
        if sparse == "auto" and self.config.n * self.config.D < SPARSE_MIN_STATE or emit is not None:
            sparse_ok = False
        if self.config.damping == "learned-neuron":  # no per-neuron lazy scale: the dense step
            sparse_ok = False
        log_gamma = self.log_gamma
        # the lazy scale's fold period is read only where it is used (a learned one costs a host sync per change)
        fold = self._fold_period() if log_gamma is not None and inplace and not torch.is_grad_enabled() else 1 << 62
        if sparse_ok:
            form = SparseStepForm(state, log_gamma, fold, force=sparse is True)
        else:
            form = StepForm(state, log_gamma, fold, inplace, detach_kv)
        for l in range(self.config.n_layer):
            v = self.layer(l, v, cos, sin, form, emit)
        logits = self._logits(v, emit)[:, 0]  # (B, V)
        if inplace:
            state.pos += 1
            return logits, state
        return logits, BDHState(form.rho, state.pos + 1)

    # ------------------------------------------------------------------ checkpoints (generate, stream,
    # save_pretrained, from_pretrained: `PretrainedMixin`)
    @classmethod
    def from_reference(cls, path_or_state_dict, config: BDHConfig) -> "BDH":
        """Load weights saved by the reference `bdh.py` (a state_dict, or a `.pt` file read with weights_only)."""
        from .reference import load_reference

        return load_reference(path_or_state_dict, config)

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights in the reference `bdh.py` format (keys and shapes)."""
        from .reference import to_reference_state_dict

        return to_reference_state_dict(self)

    def extra_repr(self) -> str:
        c = self.config
        return f"L={c.n_layer}, d={c.D}, h={c.n_head}, N={c.N}, n={c.n}, V={c.vocab_size}, params={self.num_params():,}"


register_model_type("bdh", BDHConfig, BDH)
