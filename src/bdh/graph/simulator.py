"""The BDH graph model (Def. 3) and its scheduler (Table 1(b)), run round by round on the engine.

n neurons with variables X, Y, A and integrators X^e, X^i, Y^e, Y^i; five non-negative graphs G_x^e, G_x^i,
G_y^e, G_y^i, G_s; on every edge (i, j) of G_s one synapse sigma_l(i, j) per layer l and a retention u(i, j).
Layer l (0-based) runs rounds 4l .. 4l+3; a token takes 4L rounds.

| round | communication (edge rules)                               | computation (node / edge rules)         |
|-------|----------------------------------------------------------|-----------------------------------------|
| 4l    | X(j), sigma_l(i,j) -> A(i)                       [gap 1] | X^e ↓, X^i ↓                            |
| 4l+1  | Y(i), X(j) ->^{G_s(i,j)} sigma_l(i,j)                    | Y, Y^e, Y^i ↓; sigma_l ↓_{1-u}  [gap 2] |
| 4l+2  | A(i) ->^{G_y^e(i,j)} Y^e(j); A(i) ->^{G_y^i(i,j)} Y^i(j) | (Y^e - Y^i)^+, X -> Y; A ↓      [gap 3] |
| 4l+3  | Y(i) ->^{G_x^e(i,j)} X^e(j); Y(i) ->^{G_x^i(i,j)} X^i(j) | (X^e - X^i)^+ -> X              [gap 3] |

The three gaps of the spec (§1), resolved here and tested in tests/test_graph_equivalence.py:

1. **sigma orientation.** Table 1 writes sigma(i,j) += Y(i)X(j) and reads A(j) += X(i)sigma(i,j); these two are
   transposed relative to eq. 6 (the read would give x_old (y_old . x), not y_old (x_old . x)). We keep the
   write and reverse the read: A(i) += sum_j sigma(i,j) X(j) (a message sent backwards along edge (i, j),
   still one edge and its endpoints). Then sigma is eq. 6's matrix, sigma[i, j] = sigma(i, j).
   `orientation="table1"` runs the literal read (tested to equal eq. 6 with sigma^T in the read, and to
   differ from eq. 6).
2. **Order and reset.** (a) The decay sigma ↓_{1-u} sits in round 4l+1 *after* the Hebbian write (computation
   follows communication), so sigma_{t,l} = (sigma_{t-1,l} + (y x^T) ⊙ G_s) ⊙ u, exactly eq. 6 with diagonal U
   (u(i,j) = u_j), and generally a per-edge retention. Table 1 lists the decay in round 4l
   (`decay_round="4l"`): that stores sigma' with u ⊙ sigma' = sigma, i.e. token t reads sigma'_{t-1} =
   sigma_{t-1} / u (one factor of u less damping); identical when u = 1 (tested). (b) Between tokens: the
   token enters by *overwriting* X with its input pattern x_in(token) (X held the previous readout) and Y
   with a value pattern y_in(token) (default y_in = x_in: the token's pattern is its own first-layer value,
   as v*_{t,0} is in BDH-GPU). A and the integrators need no reset (their ↓ rules clear them before every
   use). Y cannot simply be carried over from the previous token (or reset): from the empty state sigma_1 is
   then never written, so y_1 = 0, so every later sigma and y stay 0 (tested): the model is dead.
3. **Threshold primitive.** (A - B)^+ is an exact comparator on the two integrators of one node
   (`threshold`), a node rule: it reads only that node's X^e, X^i (Y^e, Y^i). In spiking mode the
   integrators count spikes and the comparator acts on the counts (integrate-and-fire with threshold 0,
   reset by the ↓ rules).

Vector form (`vector_form.eq6_run`, tested equal to 1e-9): with x_{t,1} = x_in(token t), y_{t,0} = y_in(token t),
for l = 1..L

    y_{t,l}      = ((G_y^e - G_y^i) sigma_{t-1,l} x_{t,l})^+ ⊙ x_{t,l}
    sigma_{t,l}  = (sigma_{t-1,l} + (y_{t,l-1} x_{t,l}^T) ⊙ G_s) ⊙ u
    x_{t,l+1}    = x_{t,l} + ((G_x^e - G_x^i) y_{t,l})^+

and the readout is X = x_{t,L+1} after round 4L-1 (eq. 6 with its x-update written at the end of a layer).
"""

from __future__ import annotations

import torch

from .engine import DST, EDGE, SRC, EdgeRule, EdgeUpdate, Engine, GraphState, NodeRule, Round, damp
from .graphs import Graph, TwoHop

ORIENTATIONS = ("eq6", "table1")
DECAY_ROUNDS = ("4l+1", "4l")
GRAPH_NAMES = ("Gx_e", "Gx_i", "Gy_e", "Gy_i", "Gs")
NODE_VARS = ("X", "Y", "A", "Xe", "Xi", "Ye", "Yi")


def threshold(e: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """The threshold primitive (gap 3): an exact comparator on one node's two integrators, (e - i)^+."""
    return torch.relu(e - i)


def table1_program(n_layer: int, orientation: str = "eq6", decay_round: str = "4l+1") -> list[Round]:
    """The 4L rounds of one token (Table 1(b)), as declared rules."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation={orientation!r}: expected one of {ORIENTATIONS}")
    if decay_round not in DECAY_ROUNDS:
        raise ValueError(f"decay_round={decay_round!r}: expected one of {DECAY_ROUNDS}")
    rounds = []
    for l in range(n_layer):
        s = f"sigma_{l}"
        if orientation == "eq6":
            read = EdgeRule("X(j), σ_l(i,j) → A(i)", "Gs", (SRC, "A"), dst=("X",), edge=(s,))
        else:
            read = EdgeRule("X(i), σ_l(i,j) → A(j)", "Gs", (DST, "A"), src=("X",), edge=(s,))
        decay = EdgeUpdate("σ_l(i,j) ↓_{1-u(i,j)}", "Gs", s, (s, "u"), torch.mul)
        rounds.append(Round(
            f"{4 * l}: inference from state",
            comm=(read,),
            comp=(damp("Xe"), damp("Xi")) + ((decay,) if decay_round == "4l" else ()),
        ))
        rounds.append(Round(
            f"{4 * l + 1}: reweighting of synapse state",
            comm=(EdgeRule("Y(i), X(j) →^{G_s(i,j)} σ_l(i,j)", "Gs", (EDGE, s), src=("Y",), dst=("X",)),),
            comp=(damp("Y"), damp("Ye"), damp("Yi")) + ((decay,) if decay_round == "4l+1" else ()),
        ))
        rounds.append(Round(
            f"{4 * l + 2}: neuron replicator dynamics + inference from parameters",
            comm=(
                EdgeRule("A(i) →^{G_y^e(i,j)} Y^e(j)", "Gy_e", (DST, "Ye"), src=("A",)),
                EdgeRule("A(i) →^{G_y^i(i,j)} Y^i(j)", "Gy_i", (DST, "Yi"), src=("A",)),
            ),
            comp=(
                NodeRule("(Y^e(i)-Y^i(i))^+, X(i) → Y(i)", "Y", ("Y", "Ye", "Yi", "X"),
                         lambda y, ye, yi, x: y + threshold(ye, yi) * x),
                damp("A"),
            ),
        ))
        rounds.append(Round(
            f"{4 * l + 3}: inference from parameters",
            comm=(
                EdgeRule("Y(i) →^{G_x^e(i,j)} X^e(j)", "Gx_e", (DST, "Xe"), src=("Y",)),
                EdgeRule("Y(i) →^{G_x^i(i,j)} X^i(j)", "Gx_i", (DST, "Xi"), src=("Y",)),
            ),
            comp=(NodeRule("(X^e(i)-X^i(i))^+ → X(i)", "X", ("X", "Xe", "Xi"),
                           lambda x, xe, xi: x + threshold(xe, xi)),),
        ))
    return rounds


class BDHGraph:
    """Def. 3: n neurons, graphs G_x^e, G_x^i, G_y^e, G_y^i (Graph, or TwoHop through hubs: Claim 3), G_s,
    retention u (m_s,) in (0, 1] on the edges of G_s (default 1), `n_layer` layers (one sigma_l each).

    Memory O(n + edges): node variables (B, n), synapses (B, |E(G_s)|) per layer.
    """

    def __init__(
        self,
        Gx_e: Graph | TwoHop,
        Gx_i: Graph | TwoHop,
        Gy_e: Graph | TwoHop,
        Gy_i: Graph | TwoHop,
        Gs: Graph,
        u: torch.Tensor | None = None,
        n_layer: int = 1,
        orientation: str = "eq6",
        decay_round: str = "4l+1",
        fast: bool = True,
        spiker=None,
    ):
        if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 1:
            raise ValueError(f"n_layer={n_layer!r}: expected a positive integer")
        graphs = dict(zip(GRAPH_NAMES, (Gx_e, Gx_i, Gy_e, Gy_i, Gs)))
        n = Gs.n_src
        for name, g in graphs.items():
            if g.n_src != n or g.n_dst != n:
                raise ValueError(f"graph {name} maps {g.n_src} -> {g.n_dst} nodes; expected {n} -> {n} (G_s has {n})")
            parts = (g.first, g.second) if isinstance(g, TwoHop) else (g,)
            for p in parts:
                if p.num_edges and float(p.weight.min()) < 0:
                    raise ValueError(f"graph {name}: weight {float(p.weight.min()):g} < 0; BDH graphs are non-negative")
        if not isinstance(Gs, Graph):
            raise ValueError("G_s must be a Graph (synapses live on its edges), not a two-hop graph")
        if u is None:
            u = torch.ones(Gs.num_edges, dtype=Gs.dtype)
        u = torch.as_tensor(u, dtype=Gs.dtype)
        if u.shape != (Gs.num_edges,):
            raise ValueError(f"retention u has shape {tuple(u.shape)}, expected ({Gs.num_edges},): one per edge of G_s")
        if u.numel() and (float(u.min()) <= 0 or float(u.max()) > 1):
            raise ValueError(f"retention u must lie in (0, 1]; got values in [{float(u.min()):g}, {float(u.max()):g}]")
        self.n, self.n_layer, self.graphs, self.u = n, n_layer, graphs, u
        self.program = table1_program(n_layer, orientation, decay_round)
        self.engine = Engine(graphs, edge_params={("Gs", "u"): u}, fast=fast, spiker=spiker)

    @property
    def dtype(self) -> torch.dtype:
        return self.graphs["Gs"].dtype

    @property
    def rounds_per_token(self) -> int:
        return 4 * self.n_layer

    def num_edges(self) -> dict[str, int]:
        return {k: g.num_edges for k, g in self.graphs.items()}

    def init_state(self, batch_size: int = 1) -> GraphState:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        z = lambda m: torch.zeros(batch_size, m, dtype=self.dtype)  # noqa: E731
        return GraphState(
            {v: z(self.n) for v in NODE_VARS},
            {f"sigma_{l}": z(self.graphs["Gs"].num_edges) for l in range(self.n_layer)},
        )

    def sigma_dense(self, state: GraphState, layer: int, row: int = 0) -> torch.Tensor:
        """sigma_l as an (n, n) matrix [i, j] = sigma(i, j) (eq. 6's sigma; tests and small n only)."""
        Gs = self.graphs["Gs"]
        M = torch.zeros(self.n, self.n, dtype=self.dtype)
        return M.index_put_((Gs.src, Gs.dst), state.edges[f"sigma_{layer}"][row], accumulate=True)

    def step(self, state: GraphState, x_in: torch.Tensor, y_in: torch.Tensor | None = None) -> torch.Tensor:
        """One token: X <- x_in, Y <- y_in (B, n) (>= 0; y_in defaults to x_in), 4L rounds, readout X (B, n).

        Updates `state` in place.
        """
        for name, v in (("x_in", x_in), ("y_in", y_in)):
            if v is None:
                continue
            if v.shape != (state.batch_size, self.n):
                raise ValueError(f"{name} has shape {tuple(v.shape)}, expected (B={state.batch_size}, n={self.n})")
            if v.numel() and float(v.min()) < 0:
                raise ValueError(f"{name} has a negative entry {float(v.min()):g}; neuron activities are >= 0")
        state.nodes["X"] = x_in.to(self.dtype).clone()  # the token enters through X (gap 2) ...
        state.nodes["Y"] = (x_in if y_in is None else y_in).to(self.dtype).clone()  # ... with its value in Y
        self.engine.run(self.program, state)
        state.t += 1
        return state.nodes["X"].clone()  # the readout through X

    def run(
        self, x_in: torch.Tensor, state: GraphState | None = None, y_in: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, GraphState]:
        """x_in, y_in (B, T, n): readouts (B, T, n) and the final state."""
        if x_in.dim() != 3 or x_in.shape[2] != self.n:
            raise ValueError(f"x_in has shape {tuple(x_in.shape)}, expected (B, T, n={self.n})")
        if y_in is not None and y_in.shape != x_in.shape:
            raise ValueError(f"y_in has shape {tuple(y_in.shape)}, expected {tuple(x_in.shape)} like x_in")
        state = self.init_state(x_in.shape[0]) if state is None else state
        outs = [self.step(state, x_in[:, t], None if y_in is None else y_in[:, t]) for t in range(x_in.shape[1])]
        return torch.stack(outs, 1), state


def random_bdh_graph(
    n: int, m: int, n_layer: int = 2, seed: int = 0, dtype=torch.float64, retention: tuple[float, float] = (0.5, 1.0),
    scale: float | None = None, **kw,
) -> BDHGraph:
    """A BDH graph with five random non-negative graphs of about m edges each and random retentions."""
    g = torch.Generator().manual_seed(seed)
    scale = min(1.0, 6.0 * n / max(m, 1)) if scale is None else scale  # keeps activity O(1) over a few layers
    gs = [Graph.random(n, m, g, dtype, name, scale=scale) for name in GRAPH_NAMES]
    lo, hi = retention
    u = lo + (hi - lo) * torch.rand(gs[4].num_edges, generator=g, dtype=dtype)
    return BDHGraph(*gs, u=u.clamp(min=1e-6), n_layer=n_layer, **kw)
