"""Parameter-matched BDH / GPT ladders for the scaling comparison (paper Fig. 7, spec §3).

BDH scales only n (d, L, h fixed, as in the paper); GPT scales depth and width. Each rung pairs the two with
parameter counts within 5% of each other at vocab_size 256 (bytes, the paper's setting).

| ladder | BDH fixed | BDH n | GPT shapes |
|---|---|---|---|
| `cpu` | d=64, L=2, h=4 | 4096 ... 131072 (0.8M ... 25M) | L=4, d=128 ... L=12, d=416 |
| `gpu` | d=256, L=8, h=4 (the paper) | 32768 ... 1048576 (25M ... 805M) | the paper's GPTXL table |

The paper's GPTXL 50M (embed 576) and 100M (embed 768) shapes sit 5.1% and 5.4% from BDH's 3nd + 2Vd; we
widen/narrow them to 588 and 744 (same layers and heads) to stay within 5%.
"""

from __future__ import annotations

import dataclasses

from ..config import BDHConfig
from .gpt import GPTConfig

MAX_PARAM_GAP = 0.05


@dataclasses.dataclass(frozen=True)
class Rung:
    name: str  # nominal size, e.g. "3M"
    bdh: dict  # BDHConfig fields
    gpt: dict  # GPTConfig fields

    def configs(self, vocab_size: int = 256) -> tuple[BDHConfig, GPTConfig]:
        return BDHConfig(**self.bdh, vocab_size=vocab_size), GPTConfig(**self.gpt, vocab_size=vocab_size)

    def params(self, vocab_size: int = 256) -> tuple[int, int]:
        b, g = self.configs(vocab_size)
        return b.num_params(), g.num_params()

    def training_flops_per_token(self, T: int, vocab_size: int = 256, form: str = "auto") -> tuple[float, float]:
        """(BDH, GPT) model FLOPs of one training token in sequences of T tokens:
        `bdh.interface.token_flops(config, T).training` (3 x forward matmul FLOPs; BDH in `form`)."""
        from ..interface import token_flops

        b, g = self.configs(vocab_size)
        return token_flops(b, T, form=form).training, token_flops(g, T).training


def _bdh(d: int, L: int, h: int, n: int) -> dict:
    return {"n_embd": d, "n_layer": L, "n_head": h, "mlp_internal_dim_multiplier": n // d, "dropout": 0.0}


def _gpt(L: int, d: int, h: int, dropout: float = 0.0) -> dict:
    return {"n_layer": L, "n_embd": d, "n_head": h, "dropout": dropout, "positions": "alibi"}


CPU_LADDER = [
    Rung("0.8M", _bdh(64, 2, 4, 4096), _gpt(4, 128, 4)),
    Rung("1.6M", _bdh(64, 2, 4, 8192), _gpt(5, 160, 5)),
    Rung("3.2M", _bdh(64, 2, 4, 16384), _gpt(6, 208, 4)),
    Rung("6.3M", _bdh(64, 2, 4, 32768), _gpt(8, 256, 4)),
    Rung("12.6M", _bdh(64, 2, 4, 65536), _gpt(10, 320, 5)),
    Rung("25M", _bdh(64, 2, 4, 131072), _gpt(12, 416, 8)),
]

GPU_LADDER = [  # BDH: the paper's d=256, L=8, h=4; GPT: the paper's GPTXL table (dropout as listed)
    Rung("25M", _bdh(256, 8, 4, 32768), _gpt(9, 480, 5, 0.01)),
    Rung("50M", _bdh(256, 8, 4, 65536), _gpt(12, 588, 6, 0.02)),  # paper: embed 576
    Rung("100M", _bdh(256, 8, 4, 131072), _gpt(15, 744, 8, 0.02)),  # paper: embed 768
    Rung("200M", _bdh(256, 8, 4, 262144), _gpt(18, 960, 10, 0.002)),
    Rung("400M", _bdh(256, 8, 4, 524288), _gpt(25, 1152, 12, 0.005)),
    Rung("800M", _bdh(256, 8, 4, 1048576), _gpt(28, 1536, 16, 0.005)),  # paper's dropout cut off; 0.005 assumed
]

LADDERS = {"cpu": CPU_LADDER, "gpu": GPU_LADDER}


def get_ladder(name: str) -> list[Rung]:
    if name not in LADDERS:
        raise ValueError(f"ladder {name!r}: expected one of {', '.join(LADDERS)}")
    return LADDERS[name]


def param_gap(rung: Rung, vocab_size: int = 256) -> float:
    """|P_gpt - P_bdh| / P_bdh."""
    b, g = rung.params(vocab_size)
    return abs(g - b) / b


def param_table(name: str, vocab_size: int = 256, T: int | None = None) -> str:
    """A markdown table of both parameter counts per rung (and, with T, the training FLOPs per token of each at
    sequence length T and their ratio)."""
    head = "| rung | BDH | BDH params | GPT | GPT params | gap |"
    if T is not None:
        head += f" BDH FLOPs/token (T={T}) | GPT FLOPs/token | BDH/GPT |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in get_ladder(name):
        b, g = r.configs(vocab_size)
        row = (f"| {r.name} | d={b.n_embd} L={b.n_layer} h={b.n_head} n={b.n} | {b.num_params():,} | "
               f"L={g.n_layer} d={g.n_embd} h={g.n_head} | {g.num_params():,} | {param_gap(r, vocab_size):.1%} |")
        if T is not None:
            fb, fg = r.training_flops_per_token(T, vocab_size)
            row += f" {fb:,.0f} | {fg:,.0f} | {fb / fg:.2f} |"
        rows.append(row)
    return "\n".join(rows)
