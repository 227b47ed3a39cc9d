"""Spiking mode: stochastic spikes whose AND gate has the expectation of the product rule (Def. 1).

A variable with value q >= 0 emits, per communication sub-round, a spike count S with E[S] = q: with spike
quantum c, q / c = k + f (k integer, 0 <= f < 1), the neuron emits k spikes surely and one more with
probability f (a Bernoulli spike; q <= c gives a single Bernoulli(q / c) spike of size c). S is averaged over
a population of `samples` independent copies (K): S = c (k + Binomial(K, f) / K), still E[S] = q, and
Var[S] = c^2 f (1 - f) / K -> 0.

Independent variables spike independently, so for a Hebbian rule Y(i), X(j) -> sigma(i, j) the AND gate of the
two spikes has E[S_Y(i) S_X(j)] = Y(i) X(j): the product rule in expectation (tested). A one-round update
linear in each spiking factor is therefore unbiased; the thresholds (A - B)^+ are not linear, so whole
trajectories are only asymptotically unbiased: as K grows they converge to the deterministic dynamics
(tested, error ~ 1/sqrt(K)).

Usage: `BDHGraph(..., spiker=Spiker(("X", "Y", "A"), samples=K, seed=0))`: communication rules then read
spike counts of X, Y, A instead of their values (one draw per variable and sub-round, seen by every synapse).
"""

from __future__ import annotations

import torch


class Spiker:
    """Spike sampler for the node variables `vars` (read by communication rules)."""

    def __init__(self, vars=("X", "Y", "A"), samples: int = 1, quantum: float = 1.0, seed: int = 0):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples={samples!r}: expected a positive integer (population size K)")
        if not quantum > 0:
            raise ValueError(f"quantum={quantum!r}: expected a spike size > 0")
        self.vars = frozenset(vars)
        self.samples = samples
        self.quantum = float(quantum)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, q: torch.Tensor) -> torch.Tensor:
        """A spike count with expectation q (q >= 0), averaged over K independent copies."""
        if q.numel() and float(q.min()) < 0:
            raise ValueError(f"spiking: value {float(q.min()):g} < 0; only non-negative variables can spike")
        r = q / self.quantum
        k = torch.floor(r)
        f = (r - k).clamp(0.0, 1.0)
        if self.samples == 1:
            extra = torch.bernoulli(f, generator=self.generator)
        else:
            count = torch.full_like(f, float(self.samples))
            extra = torch.binomial(count, f, generator=self.generator) / self.samples
        return (k + extra) * self.quantum
