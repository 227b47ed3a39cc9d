"""The GPT-2 baseline: a nanoGPT-style decoder with a KV cache, trained and saved like BDH.

Pre-LN blocks (LN -> causal self-attention -> residual, LN -> GELU MLP -> residual), tied input/output
embeddings, positions by ALiBi (the paper's "GPTXL" baseline, default), RoPE, or learned embeddings.

    model = GPT(GPTConfig(n_layer=4, n_embd=128, n_head=4))
    logits, loss = model(idx, targets)             # (B, T, V): training / full recompute
    logits, state = model.prefill(prompt_ids)      # KV cache
    logits, state = model.step(next_ids, state)    # one token per row, reads the cache

The model implements `bdh.interface.LanguageModel` (one attention form, no BDH training options, dense decode;
the "hooks" capability) and is registered as model type "gpt", so the trainer, evaluation, generation,
checkpoints and the CLI run it unchanged.

Hook points (`bdh.hooks`: `model.hooks({...})`, `model.add_hook(name, fn)`), in forward, prefill and step:

| name                    | shape                 | what                                                      |
|-------------------------|-----------------------|-----------------------------------------------------------|
| `blocks.{l}.x_in`       | (B, T, d)             | the residual stream entering block l                      |
| `blocks.{l}.attn_probs` | (B, nh, T, S + T)     | softmax attention weights over the S cached + T new slots |
| `blocks.{l}.attn_out`   | (B, T, d)             | the attention's output projection (added to the stream)   |
| `blocks.{l}.mlp_out`    | (B, T, d)             | the MLP's output (added to the stream)                    |
| `blocks.{l}.x_out`      | (B, T, d)             | the residual stream leaving block l                       |
| `logits`                | (B, T, V)             |                                                           |

With a hook on `attn_probs` that layer's attention is computed explicitly, softmax(q k^T / sqrt(hd) + mask) v
(the definition `F.scaled_dot_product_attention` implements; equal to it to fp32 rounding), so a hook may read
or replace the weights; otherwise the fused kernel runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import JSONConfig, alibi_slopes
from ..hooks import HookPoints
from ..interface import register_model_type
from ..pretrained import PretrainedMixin
from ..state import check_rows, check_states

POSITIONS = ("alibi", "rope", "learned")


@dataclasses.dataclass
class GPTConfig(JSONConfig):
    MODEL_TYPE = "gpt"  # config.json's "model_type" (a class attribute, not a field)

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    vocab_size: int = 256
    mlp_dim: int | None = None  # hidden width of the MLP; None: 4 * n_embd (GPT-2)
    dropout: float = 0.0
    positions: str = "alibi"  # alibi (the paper's baseline) | rope | learned
    block_size: int = 1024  # longest context: only limits learned positions (ALiBi and RoPE extrapolate)
    bias: bool = False  # biases in Linear and LayerNorm (nanoGPT's option; False is slightly better and faster)
    rope_theta: float = 10000.0
    # TBPTT (data.batching = "tbptt"): key/value slots carried from one training window to the next, detached,
    # as TransformerXL (the paper's GPTXL baseline: 4096)
    kv_window: int = 4096

    def __post_init__(self) -> None:
        self.validate()

    def check_training(self, *, batching: str) -> None:
        """Learned position embeddings end at block_size, so TBPTT (positions growing without end) needs alibi/rope."""
        if batching == "tbptt" and self.positions == "learned":
            raise ValueError("data.batching = 'tbptt' with a GPT needs model.positions = alibi or rope: learned "
                             "position embeddings end at block_size")

    @property
    def hidden(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self) -> int:
        """Exact parameter count (tied embeddings counted once)."""
        d, V, L, H = self.n_embd, self.vocab_size, self.n_layer, self.hidden
        b = int(self.bias)
        per_layer = (d * 3 * d + 3 * d * b) + (d * d + d * b) + (d * H + H * b) + (H * d + d * b) + 2 * (2 * d if b else d)
        return V * d + (self.block_size * d if self.positions == "learned" else 0) + L * per_layer + (2 * d if b else d)

    def validate(self) -> None:
        def bad(field: str, constraint: str) -> ValueError:
            return ValueError(f"GPTConfig.{field}={getattr(self, field)!r}: expected {constraint}")

        for f in ("n_layer", "n_embd", "n_head", "vocab_size", "block_size", "kv_window"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f, "a positive integer")
        if self.mlp_dim is not None and (isinstance(self.mlp_dim, bool) or not isinstance(self.mlp_dim, int)
                                         or self.mlp_dim < 1):
            raise bad("mlp_dim", "a positive integer or None (4 * n_embd)")
        if self.n_embd % self.n_head:
            raise bad("n_embd", f"a multiple of n_head ({self.n_head})")
        if self.positions not in POSITIONS:
            raise bad("positions", "one of " + ", ".join(POSITIONS))
        if self.positions == "rope" and self.head_dim % 2:
            raise bad("n_embd", f"an even head dimension for RoPE (n_embd / n_head = {self.head_dim})")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a float in [0, 1)")
        if not isinstance(self.bias, bool):
            raise bad("bias", "true or false")
        if not isinstance(self.rope_theta, (int, float)) or isinstance(self.rope_theta, bool) or self.rope_theta <= 1:
            raise bad("rope_theta", "a number > 1")


# ----------------------------------------------------------------------------------------------- the KV cache
@dataclasses.dataclass
class GPTState:
    """The KV cache: per layer keys and values (B, nh, S, hd), rows left-padded to a common length S.

    Row b's tokens occupy the last `pos[b]` of the S slots (rows of different lengths share one cache), so the
    distance between two slots is the same in every row. Keys are stored after RoPE. `pos` (B,) is the position
    of each row's next token. The buffers may hold spare capacity beyond S for in-place appends.
    """

    k_buf: list[torch.Tensor]  # L x (B, nh, capacity, hd)
    v_buf: list[torch.Tensor]
    length: int  # S: used slots
    pos: torch.Tensor  # (B,) int64

    @property
    def k(self) -> list[torch.Tensor]:
        return [b[:, :, : self.length] for b in self.k_buf]

    @property
    def v(self) -> list[torch.Tensor]:
        return [b[:, :, : self.length] for b in self.v_buf]

    @property
    def batch_size(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_layer(self) -> int:
        return len(self.k_buf)

    def nbytes(self) -> int:
        """Bytes of the used cache (keys and values of every layer, without spare capacity)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v) + self.pos.numel() * 8

    def clone(self) -> "GPTState":
        return GPTState([t.clone() for t in self.k], [t.clone() for t in self.v], self.length, self.pos.clone())

    def select(self, rows: Sequence[int] | torch.Tensor) -> "GPTState":
        """The cache of the given batch rows (in that order).

        Leading slots that are padding in every selected row are dropped (a row holds at most `pos` slots), so a
        batch whose longest rows leave (continuous batching) or a single row taken out of a batch keeps no
        padding: a one-row selection is exactly that row's cache."""
        rows = check_rows(rows, self.batch_size, "GPTState")
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        pos = self.pos.index_select(0, idx)
        start = max(0, self.length - int(pos.max())) if len(rows) else 0  # slots [0, start) are padding in all rows
        return GPTState([t[:, :, start:].index_select(0, idx) for t in self.k],
                        [t[:, :, start:].index_select(0, idx) for t in self.v], self.length - start, pos)

    @staticmethod
    def cat(states: Sequence["GPTState"]) -> "GPTState":
        """Stack caches along the batch (left-padding the shorter ones with zeros, which are masked)."""
        states = check_states(states, GPTState)
        shapes = {(s.n_layer, tuple(s.k_buf[0].shape[1:2]), tuple(s.k_buf[0].shape[3:])) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"GPTState.cat: caches of different models (layers, heads, head_dim) {sorted(shapes)}")
        S = max(s.length for s in states)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (0, 0, S - t.shape[2], 0))

        L = states[0].n_layer
        k = [torch.cat([pad(s.k[l]) for s in states], 0) for l in range(L)]
        v = [torch.cat([pad(s.v[l]) for s in states], 0) for l in range(L)]
        return GPTState(k, v, S, torch.cat([s.pos for s in states], 0))

    def detached(self, window: int) -> "GPTState":
        """The last `window` slots, detached from autograd and copied (TBPTT: carried to the next window)."""
        keep = min(self.length, window)
        k = [t[:, :, self.length - keep :].detach().clone() for t in self.k]
        v = [t[:, :, self.length - keep :].detach().clone() for t in self.v]
        return GPTState(k, v, keep, self.pos.clone())

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}pos": self.pos}
        for l in range(self.n_layer):
            out[f"{prefix}k.{l}"], out[f"{prefix}v.{l}"] = self.k[l].contiguous(), self.v[l].contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_layer: int, prefix: str = "", device=None) -> "GPTState":
        k = [tensors[f"{prefix}k.{l}"].to(device) for l in range(n_layer)]
        v = [tensors[f"{prefix}v.{l}"].to(device) for l in range(n_layer)]
        return cls(k, v, k[0].shape[2], tensors[f"{prefix}pos"].to(device))

    def writable_(self) -> "GPTState":
        """Make the buffers updatable in place here (a cache made under `torch.inference_mode` holds inference
        tensors, which only inference mode may update in place; outside it they are copied once)."""
        if not torch.is_inference_mode_enabled():
            self.k_buf = [b.clone() if b.is_inference() else b for b in self.k_buf]
            self.v_buf = [b.clone() if b.is_inference() else b for b in self.v_buf]
            self.pos = self.pos.clone() if self.pos.is_inference() else self.pos
        return self

    def reserve(self, capacity: int) -> None:
        """Grow the buffers in place to hold `capacity` slots (geometrically: amortised O(1) per appended token)."""
        cap = self.k_buf[0].shape[2]
        if capacity > cap:
            new_cap = max(capacity, 2 * cap, 64)
            S = self.length
            self.k_buf = [F.pad(b[:, :, :S], (0, 0, 0, new_cap - S)) for b in self.k_buf]
            self.v_buf = [F.pad(b[:, :, :S], (0, 0, 0, new_cap - S)) for b in self.v_buf]

    def extended(self, T: int) -> "GPTState":
        """A copy with room for T more slots (the state passed to a call without `inplace` stays untouched)."""
        S = self.length
        return GPTState([F.pad(b[:, :, :S], (0, 0, 0, T)) for b in self.k_buf],
                        [F.pad(b[:, :, :S], (0, 0, 0, T)) for b in self.v_buf], S, self.pos.clone())


# ----------------------------------------------------------------------------------------------- the model
class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        d = c.n_embd
        self.ln_1 = nn.LayerNorm(d, bias=c.bias)
        self.c_attn = nn.Linear(d, 3 * d, bias=c.bias)  # q, k, v
        self.attn_proj = nn.Linear(d, d, bias=c.bias)
        self.ln_2 = nn.LayerNorm(d, bias=c.bias)
        self.c_fc = nn.Linear(d, c.hidden, bias=c.bias)
        self.mlp_proj = nn.Linear(c.hidden, d, bias=c.bias)
        self.drop = nn.Dropout(c.dropout)


class GPT(HookPoints, PretrainedMixin, nn.Module):
    capabilities = frozenset({"hooks"})  # bdh.interface: one form, no BDH training options, dense decode
    HOOK_KINDS = ("x_in", "attn_probs", "attn_out", "mlp_out", "x_out")  # bdh.hooks: blocks.{l}.{kind}
    embedding_params = ("wte", "wpe")  # token (= the tied output head) and position embeddings: AdamW under Muon
    # `bdh.tasks.task_run_config(model_type="gpt")`: about the size of task-tiny's BDH (ALiBi positions extrapolate)
    tiny_task_model = {"n_layer": 3, "n_embd": 64, "n_head": 4, "dropout": 0.0, "positions": "alibi"}

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT(config): expected a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)  # also the output projection (tied)
        self.wpe = nn.Embedding(c.block_size, c.n_embd) if c.positions == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(c.n_head)), persistent=False)  # (nh,)
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)  # (hd/2,) fp64
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2: residual projections scaled by 1/sqrt(2L)
            for p in (blk.attn_proj.weight, blk.mlp_proj.weight):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _apply(self, fn, recurse=True):  # keep the RoPE frequencies fp64 under .to(bf16)
        inv = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv.to(fn(inv).device)
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def max_positions(self) -> int | None:
        """The longest context (positions 0 .. max_positions - 1): block_size for learned position embeddings,
        None (no limit) for ALiBi and RoPE. Servers check a request against it before it joins a batch."""
        return self.config.block_size if self.config.positions == "learned" else None

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, context: int = 0) -> int:
        """Forward FLOPs (2 per multiply-add) for one token attending to `context` earlier tokens:
        `GPT.flops(config, context + 1, form="recurrent")`."""
        return int(self.flops(self.config, context + 1, form="recurrent").forward)

    @classmethod
    def flops(cls, config: GPTConfig, T: int, *, form: str = "auto", causal: bool = False):
        """The GPT's FLOP model: matmul FLOPs per token (2 per multiply-add) of T tokens (bdh.interface.TokenFlops).

            per layer:  2*(4*d^2 + 2*d*H)   qkv and output projections, MLP (H = mlp width)
                        + 2*2*K*d           scores and weighted values over K keys
            once:       + 2*d*V             the tied output head

        K = T ("auto": SDPA with an ALiBi / causal mask computes the full T x T product; "recurrent": one decode
        step at position T attends to T cached keys, itself included); `causal`: K = (T+1)/2, the keys a query
        attends to. Backward = 2 x forward.
        """
        from ..interface import TokenFlops

        d, L, V, H = config.n_embd, config.n_layer, config.vocab_size, config.hidden
        if form not in ("auto", "recurrent"):
            raise ValueError(f"form={form!r}: the GPT runs 'auto' (a sequence) or 'recurrent' (a decode step)")
        keys = (T + 1) / 2 if causal and form == "auto" else T
        fwd = L * (2 * (4 * d * d + 2 * d * H) + 2 * 2 * keys * d) + 2 * d * V
        return TokenFlops(fwd, 2 * fwd)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> GPTState:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        c, device = self.config, self.device if device is None else device
        empty = [torch.zeros(batch_size, c.n_head, 0, c.head_dim, device=device, dtype=self.dtype)
                 for _ in range(c.n_layer)]
        return GPTState(empty, [e.clone() for e in empty], 0, torch.zeros(batch_size, dtype=torch.long, device=device))

    def carry_state(self, state: GPTState) -> GPTState:
        """The state carried to the next training / evaluation window: the last `kv_window` slots, detached."""
        self._check_state(state)
        return state.detached(self.config.kv_window)

    def state_to_tensors(self, state: GPTState, prefix: str = "") -> dict[str, torch.Tensor]:
        """`{prefix}k.{l}` / `{prefix}v.{l}` (B, nh, S, hd) and `{prefix}pos` (B,): the cache as named tensors."""
        self._check_state(state)
        return state.to_tensors(prefix)

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], prefix: str = "", device=None) -> GPTState:
        """The inverse of `state_to_tensors`, checked against this model."""
        missing = [k for k in [f"{prefix}pos"] + [f"{prefix}{kv}.{l}" for l in range(self.config.n_layer)
                                                   for kv in "kv"] if k not in tensors]
        if missing:
            raise ValueError(f"GPT state: missing tensor(s) {missing} (expected a state of {self.config.n_layer} layers)")
        state = GPTState.from_tensors(tensors, self.config.n_layer, prefix, device=device)
        self._check_state(state, state.batch_size)
        return state

    # ------------------------------------------------------------------ the function
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, form: str = "auto",
                detach_kv: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and the mean cross-entropy if `targets`; `form` and `detach_kv` exist for BDH's interface."""
        idx = self._check_ids(idx, "idx", 2)
        self._check_form(form, detach_kv)
        logits, _ = self._run(idx, None, False)
        return logits, self._loss(logits, idx, targets)

    def prefill(self, idx: torch.Tensor, state: GPTState | None = None, *, form: str = "auto",
                detach_kv: bool = False) -> tuple[torch.Tensor, GPTState]:
        """Run (B, T) tokens after `state` (empty when None): logits (B, T, V) and the extended cache."""
        idx = self._check_ids(idx, "idx", 2)
        self._check_form(form, detach_kv)
        state = self.init_state(idx.shape[0]) if state is None else state
        self._check_state(state, idx.shape[0])
        return self._run(idx, state, False)

    def step(self, token_ids: torch.Tensor, state: GPTState, *, inplace: bool = False,
             sparse: bool | str = "auto", check_ids: bool = True) -> tuple[torch.Tensor, GPTState]:
        """One token per row (B,): logits (B, V) and the cache with one more slot (appended in place if `inplace`).

        `check_ids=False` skips the id range check (a device->host sync) for ids the caller produced itself.
        `sparse` is accepted for callers that pass it to every model: "auto" and False are this dense step; True
        is an error (no "sparse_decode" capability)."""
        if sparse is True:
            raise ValueError("sparse=True: sparse decode is a BDH option; GPT has none (use False or 'auto')")
        if sparse not in (False, "auto"):
            raise ValueError(f"sparse={sparse!r}: expected True, False or 'auto'")
        token_ids = self._check_ids(token_ids, "token_ids", 1, values=check_ids)
        self._check_state(state, token_ids.shape[0])
        logits, state = self._run(token_ids.view(-1, 1), state, inplace)
        return logits[:, 0], state

    def _run(self, idx: torch.Tensor, state: GPTState | None, inplace: bool):
        B, T = idx.shape
        c, dev = self.config, idx.device
        S = 0 if state is None else state.length  # slots before these tokens
        pos0 = torch.zeros(B, dtype=torch.long, device=dev) if state is None else state.pos
        positions = pos0.view(B, 1) + torch.arange(T, device=dev)  # (B, T): each row's own positions
        if c.positions == "learned" and int(positions.max()) >= c.block_size:
            raise ValueError(f"position {int(positions.max())} is beyond block_size={c.block_size} of the learned "
                             "position embedding (use positions='alibi' or 'rope' for longer contexts)")
        x = self.wte(idx)  # (B, T, d)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        rope = self._rope(positions, x.dtype) if c.positions == "rope" else None
        bias = self._mask(S, T, S - pos0, x.dtype, dev) if state is not None or c.positions == "alibi" else None
        if state is not None:  # the cache that receives the T new slots: this one (in place) or a copy
            if inplace:
                state.writable_().reserve(S + T)
            else:
                state = state.extended(T)
        emit = self._emitter(pos0)
        for l, blk in enumerate(self.blocks):
            if emit:
                x = emit(f"blocks.{l}.x_in", x)
            q, k, v = blk.c_attn(blk.ln_1(x)).view(B, T, 3, c.n_head, c.head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, T, hd)
            if rope is not None:  # (cast: under autocast q and k are bf16)
                cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            if state is not None:  # write the new slots, attend over all S + T (no copy of the cache)
                state.k_buf[l][:, :, S : S + T] = k
                state.v_buf[l][:, :, S : S + T] = v
                k, v = state.k_buf[l][:, :, : S + T].to(q.dtype), state.v_buf[l][:, :, : S + T].to(q.dtype)
            p = c.dropout if self.training else 0.0
            if emit and self.hooked(f"blocks.{l}.attn_probs"):  # explicit weights, for the hook to read or replace
                probs = emit(f"blocks.{l}.attn_probs", _attention_probs(q, k, bias))  # (B, nh, T, S + T)
                y = F.dropout(probs, p, self.training) @ v  # (B, nh, T, hd)
            elif bias is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
            a = blk.drop(blk.attn_proj(y.transpose(1, 2).reshape(B, T, c.n_embd)))  # (B, T, d)
            if emit:
                a = emit(f"blocks.{l}.attn_out", a)
            x = x + a
            m = blk.drop(blk.mlp_proj(F.gelu(blk.c_fc(blk.ln_2(x)))))  # (B, T, d)
            if emit:
                m = emit(f"blocks.{l}.mlp_out", m)
            x = x + m
            if emit:
                x = emit(f"blocks.{l}.x_out", x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V), tied
        if emit:
            logits = emit("logits", logits)
        if state is None:
            return logits, None
        state.length = S + T
        state.pos += T  # (a fresh tensor when not in place: `extended` cloned it)
        return logits, state

    def _mask(self, S: int, T: int, valid_from: torch.Tensor, dtype, device) -> torch.Tensor:
        """Additive attention bias (B or 1, nh or 1, T, S + T): causal, padding (slots before `valid_from`), ALiBi."""
        q_slot = S + torch.arange(T, device=device).view(T, 1)  # (T, 1)
        k_slot = torch.arange(S + T, device=device).view(1, S + T)  # (1, S+T)
        dist = (q_slot - k_slot).to(dtype)  # (T, S+T): the same in every row (left-padded cache)
        allowed = (k_slot <= q_slot).unsqueeze(0)  # (1, T, S+T)
        if S > 0 and bool((valid_from > 0).any()):
            allowed = allowed & (k_slot.unsqueeze(0) >= valid_from.view(-1, 1, 1))  # (B, T, S+T)
        allowed = allowed.unsqueeze(1)  # (B or 1, 1, T, S+T)
        if self.config.positions == "alibi":
            bias = -self.slopes.to(dtype).view(1, -1, 1, 1) * dist  # (1, nh, T, S+T)
        else:
            bias = torch.zeros((), dtype=dtype, device=device)
        return bias.masked_fill(~allowed, float("-inf"))

    def _rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        ang = positions.double().unsqueeze(-1) * self.inv_freq  # (B, T, hd/2) fp64
        return ang.cos().to(dtype).unsqueeze(1), ang.sin().to(dtype).unsqueeze(1)  # (B, 1, T, hd/2)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_form(form: str, detach_kv: bool) -> None:
        if form not in ("auto", "parallel"):
            raise ValueError(f"form={form!r}: the GPT baseline has one form; expected 'auto' or 'parallel'")
        if detach_kv:
            raise ValueError("detach_kv=True is a BDH training option; the GPT baseline does not support it")

    def _check_state(self, state: GPTState, batch_size: int | None = None) -> None:
        if not isinstance(state, GPTState):
            raise TypeError(f"state: expected a GPTState (from model.init_state or prefill), got {type(state).__name__}")
        c = self.config
        if state.n_layer != c.n_layer or state.k_buf[0].shape[1] != c.n_head or state.k_buf[0].shape[3] != c.head_dim:
            raise ValueError(f"state: a KV cache of shape {tuple(state.k_buf[0].shape)} x {state.n_layer} layers does not "
                             f"belong to this model (n_layer={c.n_layer}, n_head={c.n_head}, head_dim={c.head_dim})")
        if batch_size is not None and state.batch_size != batch_size:
            raise ValueError(f"input has batch size {batch_size}, the state has batch size {state.batch_size}")

    def extra_repr(self) -> str:
        c = self.config
        return (f"L={c.n_layer}, d={c.n_embd}, h={c.n_head}, mlp={c.hidden}, positions={c.positions}, "
                f"V={c.vocab_size}, params={self.num_params():,}")


def _attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias), the weights `F.scaled_dot_product_attention` applies; causal when bias is
    None. q (B, nh, T, hd), k (B, nh, S + T, hd) -> (B, nh, T, S + T), in q's dtype (softmax in fp32)."""
    s = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if bias is None:
        T, ST = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, ST, dtype=torch.bool, device=s.device).triu(ST - T + 1), float("-inf"))
    else:
        s = s + bias.float()
    return torch.softmax(s, -1).to(q.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on pairs (2i, 2i+1) of the head dimension; x (B, nh, T, hd), cos/sin (B, 1, T, hd/2)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2)


register_model_type("gpt", GPTConfig, GPT)
