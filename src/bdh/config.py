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
    damping: str | list[float] | None = None
    # Chunk length C of the chunked (linear-time) form; form="auto" uses the parallel form up to C tokens.
    chunk_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.damping, tuple):
            self.damping = list(self.damping)
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

    def num_params(self) -> int:
        """The paper's count 3nd + 2Vd (encoder, encoder_v, decoder; embedding, lm_head)."""
        return 3 * self.n * self.D + 2 * self.vocab_size * self.D

    def decay(self) -> list[float] | None:
        """Per-head retention gamma_h in (0, 1], or None when damping is off."""
        if self.damping is None:
            return None
        if self.damping == "alibi":
            return [math.exp(-m) for m in alibi_slopes(self.n_head)]
        return [float(g) for g in self.damping]

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
        d = self.damping
        if d is not None and d != "alibi":
            if not isinstance(d, list) or len(d) != self.n_head:
                raise bad("damping", f'None, "alibi", or a list of {self.n_head} per-head retention factors')
            for g in d:
                if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 < g <= 1.0:
                    raise bad("damping", "per-head retention factors in (0, 1]")
