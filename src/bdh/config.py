"""`BDHConfig`: the reference's hyperparameters plus the options this package adds.

Field names follow the reference `bdh.py` (`n_layer`, `n_embd`, `n_head`, `mlp_internal_dim_multiplier`,
`vocab_size`, `dropout`). In the paper's notation: d = `n_embd`, h = `n_head`,
N = `mlp_internal_dim_multiplier * n_embd // n_head` neurons per head, n = h * N neurons in all.
The added fields default to values that reproduce the reference function exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from ._version import __version__
from .io import atomic_write_json

FORMS = ("parallel", "chunked", "recurrent", "auto")
# damping values whose retention gamma is a trained parameter of the model (BDH.log_decay_rate)
LEARNED_DAMPING = ("learned", "learned-neuron")


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi's head slopes m_h (Press et al. 2022): 2^(-8(h+1)/n_head) for a power-of-two head count, else their
    rule (the slopes of the next lower power of two, then every other slope of the power above). The one
    definition: BDH's damping="alibi" (gamma_h = exp(-m_h)) and the GPT baseline's ALiBi bias both use it."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_2(n_head)
    c = 2 ** math.floor(math.log2(n_head))
    return power_of_2(c) + power_of_2(2 * c)[0::2][: n_head - c]
# Hugging Face fields a config.json may carry beside the model's own (written by `bdh.checkpoint.save_pretrained`
# so that transformers can load the directory; ignored when the config is read)
HF_KEYS = ("architectures", "auto_map", "transformers_version")


class JSONConfig:
    """`config.json` (de)serialisation of a dataclass config, tagged with its `model_type` (BDH, the GPT baseline)."""

    MODEL_TYPE = "bdh"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        name = cls.__name__
        if not isinstance(d, dict):
            raise ValueError(f"{name}: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type", cls.MODEL_TYPE) != cls.MODEL_TYPE:
            raise ValueError(f"config has model_type {d['model_type']!r}, not {cls.MODEL_TYPE!r} (load it with bdh.load_model)")
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in ("model_type", "bdh_version", *HF_KEYS)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{name}: unknown field(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """`config.json`: the fields tagged with `model_type` and `bdh_version` (and `extra`, e.g. the Hugging Face
        fields of `bdh.checkpoint.hf_fields`), written atomically."""
        atomic_write_json(path, {"model_type": self.MODEL_TYPE, "bdh_version": __version__, **self.to_dict(),
                                 **(extra or {})})

    def check_training(self, *, batching: str) -> None:
        """Raise ValueError naming the setting when this model cannot be trained with these data options.

        The default accepts every option; a model type overrides it (e.g. GPT: learned positions end at
        block_size, so no TBPTT)."""

    @classmethod
    def load(cls, path: str | os.PathLike):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d)


@dataclasses.dataclass
class BDHConfig(JSONConfig):
    # --- reference fields (same names and defaults as the reference bdh.py) ---
    n_layer: int = 6
    n_embd: int = 256
    dropout: float = 0.1
    n_head: int = 4
    mlp_internal_dim_multiplier: int = 128
    vocab_size: int = 256
    # --- additions; defaults reproduce the reference ---
    rope_theta: float = 2.0**16
    # Per-head multiplicative decay of the attention state (ALiBi-style damping, U = diag(gamma) * RoPE).
    # None: off (the reference). "alibi": gamma_h = exp(-m_h) with ALiBi's slopes (`alibi_slopes`: m_h =
    # 2^(-8(h+1)/n_head) for a power-of-two n_head, ALiBi's own rule otherwise).
    # A list of n_head floats in (0, 1]: gamma_h given directly.
    # "learned": one trained gamma_h per head; "learned-neuron": one trained gamma_{h,i} per neuron i of each head
    # (rho's rows decay at their own rates: rho_t = diag(gamma_h) (rho_{t-1} + k_t v_t^T), the same write-then-decay
    # order as the fixed damping). Parametrised as gamma = exp(-exp(w)) with w = `BDH.log_decay_rate` (the log of
    # the decay rate -ln gamma), so gamma stays in (0, 1) and Adam moves timescales multiplicatively.
    damping: str | list[float] | None = None
    # Chunk length C of the chunked (linear-time) form; form="auto" uses the parallel form up to C tokens.
    chunk_size: int = 128
    # Initial spread of a learned damping: [min, max] half-life in tokens (gamma^half_life = 1/2), spread
    # geometrically from min (head 0, or neuron 0 of every head) to max (the last head / neuron; one head or
    # neuron: the geometric mean). None: ALiBi's slopes per head ("learned"), or per neuron of every head the
    # geometric spread between ALiBi's largest and smallest slope ("learned-neuron"). Only with a learned damping.
    damping_init_range: list[float] | None = None
    # Fraction of each head's neurons that RoPE rotates: the first n_rope = 2*round(rope_fraction*N/2) neurons
    # (whole RoPE pairs, rounded half up) keep their frequencies theta^(-2 floor(i/2)/N) (the highest ones, as in
    # p-RoPE), the others have frequency 0 (not rotated). 1.0: every neuron (the reference); 0.0: no positional
    # signal at all (NoPE).
    rope_fraction: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.damping, tuple):
            self.damping = list(self.damping)
        if isinstance(self.damping_init_range, tuple):
            self.damping_init_range = list(self.damping_init_range)
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def N(self) -> int:
        """Neurons per head."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head

    @property
    def n(self) -> int:
        """Neurons in all (n = h * N)."""
        return self.N * self.n_head

    @property
    def D(self) -> int:
        """The low-rank dimension d (`n_embd`)."""
        return self.n_embd

    @property
    def n_rope(self) -> int:
        """Neurons per head that RoPE rotates: the first 2*round(rope_fraction*N/2) (whole pairs, half up)."""
        return 2 * math.floor(self.rope_fraction * self.N / 2 + 0.5)

    @property
    def learned_damping(self) -> bool:
        """Whether the retention gamma is a trained parameter (damping "learned" or "learned-neuron")."""
        return isinstance(self.damping, str) and self.damping in LEARNED_DAMPING

    def num_params(self) -> int:
        """The paper's count 3nd + 2Vd (encoder, encoder_v, decoder; embedding, lm_head)."""
        return 3 * self.n * self.D + 2 * self.vocab_size * self.D

    def decay(self) -> list[float] | None:
        """Per-head retention gamma_h in (0, 1], or None when damping is off.

        A learned damping has no fixed retention (ValueError): it is the model's `log_gamma`, from its trained
        `log_decay_rate`; `decay_init_rates` gives its initial value."""
        if self.damping is None:
            return None
        if self.learned_damping:
            raise ValueError(f"BDHConfig.damping={self.damping!r}: the retention is a trained parameter, not a "
                             "config value; read it from the model (model.log_gamma)")
        if self.damping == "alibi":
            return [math.exp(-m) for m in alibi_slopes(self.n_head)]
        return [float(g) for g in self.damping]

    def decay_init_rates(self) -> list[float]:
        """The initial decay rates m = -ln gamma of a learned damping: n_head values ("learned"), or N values
        ("learned-neuron", neuron i of every head). See `damping_init_range`."""
        if not self.learned_damping:
            raise ValueError(f"BDHConfig.damping={self.damping!r}: decay_init_rates is for a learned damping "
                             f"({' or '.join(map(repr, LEARNED_DAMPING))})")
        K = self.n_head if self.damping == "learned" else self.N
        if self.damping_init_range is None:
            slopes = alibi_slopes(self.n_head)
            if self.damping == "learned":
                return slopes
            lo, hi = max(slopes), min(slopes)  # rates from the fastest (neuron 0) to the slowest (neuron N-1)
        else:
            lo, hi = (math.log(2.0) / h for h in self.damping_init_range)  # rate = ln 2 / half-life
        return [lo * (hi / lo) ** (i / (K - 1) if K > 1 else 0.5) for i in range(K)]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(field: str, constraint: str) -> ValueError:
            return ValueError(f"BDHConfig.{field}={getattr(self, field)!r}: expected {constraint}")

        for f in ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier", "vocab_size", "chunk_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f, "a positive integer")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a float in [0, 1)")
        if not isinstance(self.rope_theta, (int, float)) or isinstance(self.rope_theta, bool) or not self.rope_theta > 1.0:
            raise bad("rope_theta", "a number > 1")
        if (self.mlp_internal_dim_multiplier * self.n_embd) % self.n_head:
            raise bad(
                "mlp_internal_dim_multiplier",
                f"mlp_internal_dim_multiplier * n_embd ({self.mlp_internal_dim_multiplier * self.n_embd}) "
                f"divisible by n_head ({self.n_head})",
            )
        if self.N % 2:
            raise bad("mlp_internal_dim_multiplier", f"an even number of neurons per head for RoPE pairs (N={self.N})")
        f = self.rope_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise bad("rope_fraction", "a number in [0, 1] (the fraction of each head's neurons that RoPE rotates)")
        d = self.damping
        if d is not None and d != "alibi" and not self.learned_damping:
            if not isinstance(d, list) or len(d) != self.n_head:
                raise bad("damping", f'None, "alibi", "learned", "learned-neuron", or a list of {self.n_head} '
                                     "per-head retention factors")
            for g in d:
                if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 < g <= 1.0:
                    raise bad("damping", "per-head retention factors in (0, 1]")
        r = self.damping_init_range
        if r is not None:
            if not self.learned_damping:
                raise bad("damping_init_range", f"None unless damping is {' or '.join(map(repr, LEARNED_DAMPING))} "
                                                f"(damping={d!r} has no trained initial value)")
            if (not isinstance(r, list) or len(r) != 2
                    or any(isinstance(h, bool) or not isinstance(h, (int, float)) or not 0.0 < h < math.inf for h in r)
                    or r[0] > r[1]):
                raise bad("damping_init_range", "None or [min, max]: two finite half-lives in tokens, 0 < min <= max")
