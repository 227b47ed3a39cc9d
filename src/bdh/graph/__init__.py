"""The BDH graph form: a simulator of locally-interacting neuron particles with Hebbian synapses (paper §2).

    from bdh.graph import BDHGraph, Graph, random_bdh_graph
    model = random_bdh_graph(n=1000, m=20000, n_layer=4)         # Def. 3 with five random graphs
    readouts, state = model.run(x_in)                             # x_in (B, T, n) >= 0; 4L rounds per token

    from bdh.graph.from_gpu import build_graph_form
    g = build_graph_form(bdh_gpu_model)                          # exact: Claim 3 hubs (KL ~ 1e-13)
    g = build_graph_form(bdh_gpu_model, budget=100_000)          # the strongest edges of D_x E, D_y E
    logits, state = g.run(idx)                                    # token ids (B, T) -> (B, T, V)

Command line: `bdh graph kl|run|info` (see `bdh.graph.cli`). Modules:

- `graphs`: sparse edge lists (O(edges) memory), sign splitting, Claim 3's hub construction, blocked top-m
  of a low-rank product (never forming n x n), per-head blocks and sampled blocks for G_s.
- `engine`: rounds of node rules and edge rules (Def. 2 locality made structural: a rule only ever receives
  the values of one node, or of one edge and its two endpoints), fast CSR / block paths next to the
  gather/scatter reference.
- `simulator`: Def. 3 / Table 1(b) (`BDHGraph`), with the spec's three gaps resolved (see its docstring):
  (1) sigma is read backwards along its edge, A(i) += sigma(i,j) X(j), so sigma is eq. 6's matrix;
  (2) sigma decays after the Hebbian write (round 4l+1), so the stored sigma is eq. 6's; a token overwrites
  X with its input pattern and Y with its value pattern (default the same; carrying Y over is dead);
  (3) the threshold (A - B)^+ is an exact comparator on one node's two integrators.
- `vector_form`: dense references, eq. 6, eq. 7 (BDH-Normfree) and its rho = E sigma form.
- `spiking`: Bernoulli spikes whose AND gate has the product rule's expectation (Def. 1).
- `from_gpu`: the graph form of a trained BDH-GPU checkpoint, exact through hubs (with LayerNorm as an
  explicitly non-local gain control) or under an edge budget; `kl`: KL per token vs the edge budget.
- `export`: CSV edge lists / GraphML of the graphs and sigma snapshots.
"""

from .engine import EdgeRule, EdgeUpdate, Engine, GainRule, GraphState, NodeRule, Round
from .graphs import BlockGraph, Graph, TwoHop, claim3_hubs, sampled_blocks, sign_split, top_edges_lowrank
from .simulator import BDHGraph, random_bdh_graph, table1_program

__all__ = [
    "BDHGraph", "BlockGraph", "EdgeRule", "EdgeUpdate", "Engine", "GainRule", "Graph", "GraphState", "NodeRule",
    "Round", "TwoHop", "claim3_hubs", "random_bdh_graph", "sampled_blocks", "sign_split", "table1_program",
    "top_edges_lowrank",
]
