"""The round engine: a program is a list of rounds; each rule touches one node, or one edge and its two endpoints.

Def. 2 (edge-reweighting kernel) allows two kinds of rules, and the engine only offers those two (plus one
explicitly non-local kind, used only by the LayerNorm of the BDH-GPU graph form):

- `EdgeRule` (communication): on every edge (i, j) of one graph, a message computed from node variables of
  i (`src`), node variables of j (`dst`) and that edge's own variables (`edge`; "w" is the graph weight) is
  added to one variable of i, of j, or of the edge. The engine gathers exactly those values per edge, calls
  the rule, and scatter-adds: a rule cannot see anything else.
- `NodeRule` and `EdgeUpdate` (computation): a variable of one node (or one edge) is recomputed from that
  node's (edge's) own variables, elementwise.
- `GainRule` (NOT local): reads whole node vectors and writes a few global or per-group scalars. Only the
  BDH-GPU graph form uses it, for LayerNorm (spec §5): see `from_gpu.py`.

A round = a communication sub-round, then (gain rules, then) a computation sub-round. Sub-rounds are
synchronous: every rule reads the state at the start of its sub-round; communication increments are summed
(Def. 1: q'_k = (1 - d_k) q_k + sum r q_i q_j), computation results are assigned together.

The default message of an `EdgeRule` is the Def. 1 product of everything it reads (e.g. `Y(i), X(j) ->^{G_s(i,j)}
sigma(i,j)` is w * Y[i] * X[j]). Fast paths (`fast=True`, the default) recognise two common shapes and use a
CSR product instead of gather/scatter: a transmission `v(i) ->^{H(i,j)} out(j)` is `H v`; a read
`out(i) += s(i,j) v(j)` with an edge variable s is a CSR product with values s (one per batch row). On a
`BlockGraph` (all pairs inside groups, e.g. G_s on heads) reads and Hebbian writes are batched dense
block products on a view of the same edge arrays. `fast=False` runs the readable gather -> message ->
scatter-add reference for every rule.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Sequence

import torch

from .graphs import BlockGraph, Graph, TwoHop

SRC, DST, EDGE = "src", "dst", "edge"


def _product(*vals: torch.Tensor) -> torch.Tensor:
    out = vals[0]
    for v in vals[1:]:
        out = out * v
    return out


# ----------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class EdgeRule:
    """Communication on every edge (i, j) of `graph`: target += fn(src vars of i, dst vars of j, edge vars)."""

    name: str
    graph: str
    target: tuple[str, str]  # (SRC | DST | EDGE, variable)
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    edge: tuple[str, ...] = ("w",)
    fn: Callable[..., torch.Tensor] | None = None  # None: the product of all read values (Def. 1)

    def __post_init__(self) -> None:
        if self.target[0] not in (SRC, DST, EDGE):
            raise ValueError(f"rule {self.name!r}: target {self.target!r} must be on src, dst or edge")
        if not (self.src or self.dst or self.edge):
            raise ValueError(f"rule {self.name!r}: reads nothing")


@dataclasses.dataclass(frozen=True)
class NodeRule:
    """Computation on one node: `writes` <- fn(*reads), elementwise (reads: that node's variables/parameters, "t")."""

    name: str
    writes: str
    reads: tuple[str, ...]
    fn: Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class EdgeUpdate:
    """Computation on one edge of `graph`: edge variable `writes` <- fn(*reads) (reads: that edge's variables)."""

    name: str
    graph: str
    writes: str
    reads: tuple[str, ...]
    fn: Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class GainRule:
    """NOT local (LayerNorm only, spec §5): scalars `writes` <- fn(state, params), from whole node vectors."""

    name: str
    writes: tuple[str, ...]
    fn: Callable[["GraphState", dict], dict[str, torch.Tensor]]


def damp(var: str, rate: float = 1.0) -> NodeRule:
    """`var ↓_rate`: var <- (1 - rate) var (rate 1 resets it to 0)."""
    if rate == 1.0:
        return NodeRule(f"{var}↓", var, (var,), torch.zeros_like)
    return NodeRule(f"{var}↓{rate:g}", var, (var,), lambda q: (1.0 - rate) * q)


@dataclasses.dataclass(frozen=True)
class Round:
    name: str
    comm: tuple[EdgeRule, ...] = ()
    comp: tuple[NodeRule | EdgeUpdate, ...] = ()
    gain: tuple[GainRule, ...] = ()

    def __post_init__(self) -> None:
        writes = [r.writes for r in self.comp]
        dup = {w for w in writes if writes.count(w) > 1}
        if dup:
            raise ValueError(f"round {self.name!r}: variables {sorted(dup)} written by two computation rules")


# ----------------------------------------------------------------------------- state
@dataclasses.dataclass
class GraphState:
    """Node variables (B, n_set) and edge variables (B, m) by name; `t` the token position (the global clock);
    `scalars`: values broadcast by gain rules (and the layer counter of the BDH-GPU graph form)."""

    nodes: dict[str, torch.Tensor]
    edges: dict[str, torch.Tensor]
    t: int = 0
    scalars: dict = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return next(iter(self.nodes.values())).shape[0]

    def clone(self) -> "GraphState":
        return GraphState(
            {k: v.clone() for k, v in self.nodes.items()},
            {k: v.clone() for k, v in self.edges.items()},
            self.t,
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.scalars.items()},
        )

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for d in (self.nodes, self.edges) for v in d.values())


# ----------------------------------------------------------------------------- engine
class Engine:
    """Runs rounds over named graphs. `graphs`: name -> Graph/TwoHop; `node_params`: name -> (n,) constants;
    `edge_params`: (graph, name) -> (m,) constants (per-edge retention u, ...); "w" is always the graph weight.

    `spiker` (see `spiking.py`): when set, communication rules read spike samples of its variables instead of
    their values (one sample per variable and sub-round, shared by all rules that read it).
    """

    def __init__(
        self,
        graphs: dict[str, Graph | TwoHop],
        node_params: dict[str, torch.Tensor] | None = None,
        edge_params: dict[tuple[str, str], torch.Tensor] | None = None,
        fast: bool = True,
        spiker=None,
    ):
        self.graphs = graphs
        self.node_params = dict(node_params or {})
        self.edge_params = dict(edge_params or {})
        self.fast = fast
        self.spiker = spiker
        self._relay: dict = {}  # first-hop results of relay hubs, per sub-round

    # ---------------------------------------------------------------- reads
    def _node(self, state: GraphState, name: str, spikes: dict | None) -> torch.Tensor:
        if spikes is not None and self.spiker is not None and name in self.spiker.vars:
            if name not in spikes:
                spikes[name] = self.spiker.sample(state.nodes[name])
            return spikes[name]
        if name in state.nodes:
            return state.nodes[name]
        if name in self.node_params:
            return self.node_params[name].unsqueeze(0)
        if name in state.scalars:
            return state.scalars[name]
        if name == "t":
            return torch.tensor(float(state.t), dtype=torch.float64)
        raise KeyError(f"no node variable or parameter {name!r}")

    def _edge(self, state: GraphState, graph: str, name: str) -> torch.Tensor:
        if name == "w":
            return self.graphs[graph].weight.unsqueeze(0)
        if name in state.edges:
            return state.edges[name]
        if (graph, name) in self.edge_params:
            return self.edge_params[(graph, name)].unsqueeze(0)
        raise KeyError(f"no edge variable or parameter {name!r} on graph {graph!r}")

    # ---------------------------------------------------------------- communication
    def message_reference(self, rule: EdgeRule, state: GraphState, spikes: dict | None = None) -> torch.Tensor:
        """The readable form of every rule: gather the endpoint and edge values of each edge, compute the message
        (B, m). Nothing but these values reaches the rule."""
        g = self.graphs[rule.graph]
        if isinstance(g, TwoHop):
            raise ValueError(f"rule {rule.name!r}: a two-hop (hub) graph only supports transmissions v(i) -> out(j)")
        vals = [self._node(state, v, spikes).index_select(1, g.src) for v in rule.src]  # node i of each edge
        vals += [self._node(state, v, spikes).index_select(1, g.dst) for v in rule.dst]  # node j of each edge
        vals += [self._edge(state, rule.graph, e) for e in rule.edge]  # the edge itself
        return (rule.fn or _product)(*vals)

    def _apply_comm(self, rule: EdgeRule, state: GraphState, spikes: dict | None
                    ) -> tuple[tuple[str, str], torch.Tensor]:
        g = self.graphs[rule.graph]
        kind, var = rule.target
        if rule.fn is None and kind == DST and len(rule.src) == 1 and not rule.dst and rule.edge == ("w",):
            # transmission v(i) ->^{H(i,j)} out(j): out = H v
            v = self._node(state, rule.src[0], spikes)
            if isinstance(g, TwoHop) and self.fast:  # relay hubs: the first hop is shared by graphs that share it
                key = (id(g.first), rule.src[0])
                if key not in self._relay:
                    self._relay[key] = g.first.matvec(v)
                return rule.target, g.second.matvec(self._relay[key])
            return rule.target, (g.matvec(v) if self.fast else g.matvec_reference(v))
        if isinstance(g, TwoHop):
            raise ValueError(f"rule {rule.name!r}: a two-hop (hub) graph only supports transmissions v(i) -> out(j)")
        hebbian = kind == EDGE and rule.fn is None and len(rule.src) == 1 and len(rule.dst) == 1 and rule.edge == ("w",)
        if self.fast and hebbian:
            a, b = self._node(state, rule.src[0], spikes), self._node(state, rule.dst[0], spikes)
            if isinstance(g, BlockGraph):  # outer products per block: (B, groups, block, block)
                G, k = g.groups, g.block
                B = max(a.shape[0], b.shape[0])
                msg = a.reshape(-1, G, k, 1).expand(B, G, k, 1) * b.reshape(-1, G, 1, k)
                return rule.target, msg.reshape(B, -1).mul_(g.weight)
            # Hebbian product w(i,j) a(i) b(j), with one temporary per factor gathered
            msg = self._node(state, rule.src[0], spikes).index_select(1, g.src)
            msg.mul_(self._node(state, rule.dst[0], spikes).index_select(1, g.dst)).mul_(g.weight)
            return rule.target, msg
        msg = self.message_reference(rule, state, spikes)  # (B, m) or (1, m)
        if kind == EDGE:
            return rule.target, msg
        idx = g.src if kind == SRC else g.dst
        n = g.n_src if kind == SRC else g.n_dst
        B = max(state.batch_size, msg.shape[0])
        out = torch.zeros(B, n, dtype=msg.dtype)
        return rule.target, out.index_add_(1, idx, msg.expand(B, -1))

    def _read_fast(self, rule: EdgeRule, state: GraphState, spikes: dict | None):
        """out(i) += s(i,j) v(j) with one edge variable s: one CSR product with values s per batch row."""
        g = self.graphs[rule.graph]
        if not isinstance(g, Graph):
            return None
        s = self._edge(state, rule.graph, rule.edge[0])  # (B or 1, m)
        v = self._node(state, rule.dst[0], spikes).to(s.dtype)  # (B or 1, n_dst)
        B = max(s.shape[0], v.shape[0])
        if isinstance(g, BlockGraph):  # batched dense products per block
            G, k = g.groups, g.block
            out = s.reshape(-1, G, k, k) @ v.reshape(-1, G, k, 1)
            return rule.target, out.reshape(B, -1)
        crow, col, perm = g.src_pattern()
        rows = []
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            for b in range(B):
                vals = s[min(b, s.shape[0] - 1)]
                M = torch.sparse_csr_tensor(crow, col, vals if perm is None else vals[perm], (g.n_src, g.n_dst))
                rows.append(M @ v[min(b, v.shape[0] - 1)])
        return rule.target, torch.stack(rows, 0)

    # ---------------------------------------------------------------- rounds
    def run_round(self, rnd: Round, state: GraphState) -> GraphState:
        """One round: communication sub-round, gain rules, computation sub-round. Updates `state` in place."""
        spikes = {} if self.spiker is not None else None
        self._relay = {}
        incs: list[tuple[tuple[str, str], torch.Tensor]] = []
        for rule in rnd.comm:
            res = None
            if (
                self.fast and rule.fn is None and rule.target[0] == SRC and not rule.src
                and len(rule.dst) == 1 and len(rule.edge) == 1 and rule.edge[0] != "w"
            ):
                res = self._read_fast(rule, state, spikes)
            incs.append(res if res is not None else self._apply_comm(rule, state, spikes))
        for (kind, var), inc in incs:  # all messages were computed from the sub-round's start state
            store = state.edges if kind == EDGE else state.nodes
            cur = store[var]
            if kind == EDGE and cur.shape == inc.shape:
                cur.add_(inc)  # synapse arrays are large: update in place
            else:
                store[var] = cur + inc if cur.shape == inc.shape else cur.expand_as(inc) + inc
        for g in rnd.gain:
            state.scalars.update(g.fn(state, self.node_params))
        new: list[tuple[dict, str, torch.Tensor]] = []
        inplace: list[tuple[torch.Tensor, torch.Tensor]] = []
        for rule in rnd.comp:
            if isinstance(rule, NodeRule):
                vals = [self._node(state, v, None) for v in rule.reads]
                new.append((state.nodes, rule.writes, rule.fn(*vals)))
            elif rule.fn is torch.mul and rule.reads[0] == rule.writes and rule.writes in state.edges and self.fast:
                # decay sigma <- u sigma: nothing else in a computation sub-round reads an edge, so in place
                inplace.append((state.edges[rule.writes], self._edge(state, rule.graph, rule.reads[1])))
            else:
                vals = [self._edge(state, rule.graph, e) for e in rule.reads]
                new.append((state.edges, rule.writes, rule.fn(*vals)))
        for store, var, val in new:
            store[var] = val
        for arr, factor in inplace:
            arr.mul_(factor)
        return state

    def run(self, program: Sequence[Round], state: GraphState) -> GraphState:
        for rnd in program:
            self.run_round(rnd, state)
        return state
