"""Export graphs and synapse (sigma) snapshots for external tools: CSV edge lists and GraphML.

Files written by `export_graph` into a directory:

- `nodes.csv`: id, kind (neuron / hub / relay), head, and the node variables of batch row 0 (X, Y, ...);
- `<graph>.csv` for every parameter graph: src, dst, weight (the edge i -> j with weight G(i, j)); two-hop
  (hub) graphs are written as their two hops, `<graph>.hop1.csv` (neurons -> hubs) and `<graph>.hop2.csv`;
- `sigma_<l>.csv`: src, dst, sigma for the synapses of layer l (the strongest `sigma_top` by |sigma|, or all);
- `graph.graphml` (format "graphml" or "both"): one directed multigraph with node attributes (kind, head,
  variables) and edge attributes `graph` (which graph or sigma layer) and `weight`;
- `meta.json`: sizes, edge counts, token position.

Node ids: neurons are `0..n-1`; relay hubs of two-hop graphs are `h0..h{2d-1}` in GraphML and CSV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable
from xml.sax.saxutils import quoteattr

import torch

from ..io import atomic_path, atomic_write_json
from .engine import GraphState
from .graphs import Graph, TwoHop

FORMATS = ("csv", "graphml", "both")


def _edges(graph: Graph, values: torch.Tensor | None = None, top: int | None = None):
    """(src, dst, value) of a graph, optionally with per-edge `values` and only the `top` largest |value|."""
    v = graph.weight if values is None else values
    src, dst = graph.src, graph.dst
    if top is not None and top < len(v):
        keep = torch.topk(v.abs(), top, sorted=False).indices.sort().values
        src, dst, v = src[keep], dst[keep], v[keep]
    return src.tolist(), dst.tolist(), v.double().tolist()


def write_edge_list(path: str | os.PathLike, src: Iterable[int], dst: Iterable, val: Iterable[float],
                    header: str = "src,dst,weight", src_prefix: str = "", dst_prefix: str = "") -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for i, j, w in zip(src, dst, val):
            f.write(f"{src_prefix}{i},{dst_prefix}{j},{w:.9g}\n")
    return path


def export_graph(
    out_dir: str | os.PathLike,
    graphs: dict[str, Graph | TwoHop],
    state: GraphState | None = None,
    n: int | None = None,
    head: torch.Tensor | None = None,
    sigma_graph: str = "Gs",
    sigma_top: int | None = 10000,
    fmt: str = "csv",
    meta: dict | None = None,
) -> list[Path]:
    """Write `graphs` (and the sigma snapshot of `state`, batch row 0) under `out_dir`; returns the files."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}")
    if sigma_top is not None and (isinstance(sigma_top, bool) or not isinstance(sigma_top, int) or sigma_top < 0):
        raise ValueError(f"sigma_top={sigma_top!r}: expected a non-negative integer or None (all synapses)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = n if n is not None else graphs[sigma_graph].n_src
    files: list[Path] = []
    # edge sets: (label, src, dst, values, src is hub, dst is hub)
    sets = []
    n_hubs = 0
    for name, g in graphs.items():
        if isinstance(g, TwoHop):
            n_hubs = max(n_hubs, g.first.n_dst)
            s1, d1, w1 = _edges(g.first)
            s2, d2, w2 = _edges(g.second)
            if not any(lbl == "E' (hop 1)" for lbl, *_ in sets):  # a relay hop shared by several graphs
                sets.append(("E' (hop 1)", s1, d1, w1, False, True))
            sets.append((name + " (hop 2)", s2, d2, w2, True, False))
        else:
            sets.append((name, *_edges(g), False, False))
    if state is not None:
        for key in sorted(k for k in state.edges if k.startswith("sigma_")):
            sets.append((key, *_edges(graphs[sigma_graph], state.edges[key][0], sigma_top), False, False))
    if fmt in ("csv", "both"):
        for label, s, d, w, sh, dh in sets:
            fname = label.replace("'", "p").replace(" (hop 1)", ".hop1").replace(" (hop 2)", ".hop2").replace(" ", "_")
            header = "src,dst,sigma" if label.startswith("sigma_") else "src,dst,weight"
            files.append(write_edge_list(out / f"{fname}.csv", s, d, w, header, "h" if sh else "", "h" if dh else ""))
        files.append(_write_nodes_csv(out / "nodes.csv", n, n_hubs, head, state))
    if fmt in ("graphml", "both"):
        files.append(_write_graphml(out / "graph.graphml", n, n_hubs, head, state, sets))
    info = {
        "n": n,
        "relay_hubs": n_hubs,
        "edges": {label: len(s) for label, s, *_ in sets},
        "t": None if state is None else state.t,
        **(meta or {}),
    }
    atomic_write_json(out / "meta.json", info)
    files.append(out / "meta.json")
    return files


def _node_vars(state: GraphState | None, n: int) -> dict[str, list[float]]:
    if state is None:
        return {}
    return {k: v[0].double().tolist() for k, v in state.nodes.items() if v.shape[-1] == n}


def _write_nodes_csv(path: Path, n: int, n_hubs: int, head, state) -> Path:
    vars_ = _node_vars(state, n)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(",".join(["id", "kind", "head", *vars_]) + "\n")
        for i in range(n):
            h = "" if head is None else int(head[i])
            f.write(",".join([str(i), "neuron", str(h), *(f"{vars_[k][i]:.9g}" for k in vars_)]) + "\n")
        for k in range(n_hubs):
            f.write(",".join([f"h{k}", "hub", "", *("" for _ in vars_)]) + "\n")
    return path


def _write_graphml(path: Path, n: int, n_hubs: int, head, state, sets) -> Path:
    vars_ = _node_vars(state, n)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        f.write('<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n')
        f.write('  <key id="kind" for="node" attr.name="kind" attr.type="string"/>\n')
        f.write('  <key id="head" for="node" attr.name="head" attr.type="int"/>\n')
        for k in vars_:
            f.write(f'  <key id="v_{k}" for="node" attr.name="{k}" attr.type="double"/>\n')
        f.write('  <key id="graph" for="edge" attr.name="graph" attr.type="string"/>\n')
        f.write('  <key id="weight" for="edge" attr.name="weight" attr.type="double"/>\n')
        f.write('  <graph id="BDH" edgedefault="directed">\n')
        for i in range(n):
            data = '<data key="kind">neuron</data>'
            if head is not None:
                data += f'<data key="head">{int(head[i])}</data>'
            data += "".join(f'<data key="v_{k}">{vars_[k][i]:.9g}</data>' for k in vars_)
            f.write(f'    <node id="n{i}">{data}</node>\n')
        for k in range(n_hubs):
            f.write(f'    <node id="h{k}"><data key="kind">hub</data></node>\n')
        for label, s, d, w, sh, dh in sets:
            lab = quoteattr(label)[1:-1]
            ps, pd = ("h" if sh else "n"), ("h" if dh else "n")
            for i, j, x in zip(s, d, w):
                f.write(f'    <edge source="{ps}{i}" target="{pd}{j}"><data key="graph">{lab}</data>'
                        f'<data key="weight">{x:.9g}</data></edge>\n')
        f.write("  </graph>\n</graphml>\n")
    return path
