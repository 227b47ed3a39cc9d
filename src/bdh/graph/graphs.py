"""Sparse graphs on neurons: edge lists with O(edges) memory, and the constructions the paper uses.

Convention (spec §1): H(i, j) is the weight of the edge **from i to j**, so (H v)_j = sum_i H(i, j) v_i.
A `Graph` stores the edge list (src i, dst j, weight H(i, j)) of a graph from `n_src` nodes to `n_dst` nodes;
`Graph.matvec(v)` is H v (a transmission "v(i) -> H(i,j) -> out(j)"), computed by a CSR product.

Constructions:

- `sign_split(M)`: M = G^e - G^i with G^e = (M)^+ and G^i = (-M)^+ (non-negative, disjoint supports).
- `claim3_hubs(D, E)`: the paper's Claim 3 (App. C.3): D E = G^e - G^i where G^e, G^i are two-hop graphs
  through 2d hub nodes, E' = [(E)^+; (-E)^+], D^e = [(D)^+, (-D)^+], D^i = [(-D)^+, (D)^+]:
  D^e E' - D^i E' = D E, with at most 2 nnz(E) + 2 nnz(D) edges (O(nd)), never forming D E.
- `top_edges_lowrank(D, E, m)`: the m strongest entries |(D E)(i, j)| of an n x n low-rank product, computed
  block by block (memory O(block * n + m): the n x n matrix is never materialised).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch


def _to_csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" / invariant-check notices
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape).coalesce().to_sparse_csr()


def _check_nonneg(name: str, w: torch.Tensor) -> None:
    if w.numel() and float(w.min()) < 0:
        raise ValueError(f"graph {name}: weight {float(w.min()):g} < 0; BDH graphs are non-negative (Def. 3)")


@dataclasses.dataclass
class Graph:
    """Edges i -> j with weights H(i, j): `src` (m,) int64, `dst` (m,) int64, `weight` (m,) float."""

    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor
    n_src: int
    n_dst: int
    name: str = "G"

    def __post_init__(self) -> None:
        self.src = torch.as_tensor(self.src, dtype=torch.long)
        self.dst = torch.as_tensor(self.dst, dtype=torch.long)
        self.weight = torch.as_tensor(self.weight)
        if not (self.src.dim() == self.dst.dim() == self.weight.dim() == 1):
            raise ValueError(f"graph {self.name}: src, dst and weight must be 1-D edge lists")
        if not (len(self.src) == len(self.dst) == len(self.weight)):
            raise ValueError(
                f"graph {self.name}: src ({len(self.src)}), dst ({len(self.dst)}) and weight ({len(self.weight)}) "
                "have different lengths"
            )
        for what, idx, lim in (("src", self.src, self.n_src), ("dst", self.dst, self.n_dst)):
            if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= lim):
                bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
                raise ValueError(f"graph {self.name}: {what} index {bad} outside [0, {lim})")
        self._csr_dst = None  # rows = dst: H as an (n_dst, n_src) matrix, for H v
        self._csr_src = None  # rows = src: H^T as an (n_src, n_dst) matrix, for H^T v
        self._pattern_src = None

    # ------------------------------------------------------------------ sizes
    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.src, self.dst, self.weight))

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def to(self, dtype: torch.dtype) -> "Graph":
        return Graph(self.src, self.dst, self.weight.to(dtype), self.n_src, self.n_dst, self.name)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, H: torch.Tensor, name: str = "G", nonneg: bool = False) -> "Graph":
        """From a dense matrix in the paper's convention: M[j, i] = H(i, j) (so H v = M @ v). Zeros are dropped."""
        if H.dim() != 2:
            raise ValueError(f"graph {name}: expected a 2-D matrix, got shape {tuple(H.shape)}")
        dst, src = torch.nonzero(H, as_tuple=True)
        g = cls(src, dst, H[dst, src], H.shape[1], H.shape[0], name)
        if nonneg:
            _check_nonneg(name, g.weight)
        return g

    @classmethod
    def random(
        cls, n: int, m: int, generator: torch.Generator | None = None, dtype=torch.float64, name: str = "G",
        n_dst: int | None = None, scale: float = 1.0,
    ) -> "Graph":
        """About m distinct random edges (duplicates removed) with uniform (0, scale] weights; never forms n x n."""
        n_dst = n if n_dst is None else n_dst
        if m < 0 or n < 1 or n_dst < 1:
            raise ValueError(f"Graph.random: n={n}, n_dst={n_dst}, m={m}: expected n, n_dst >= 1 and m >= 0")
        key = torch.randint(0, n * n_dst, (m,), generator=generator).unique()
        src, dst = key // n_dst, key % n_dst
        w = (1.0 - torch.rand(len(key), generator=generator, dtype=dtype)) * scale
        return cls(src, dst, w, n, n_dst, name)

    def dense(self) -> torch.Tensor:
        """The (n_dst, n_src) matrix M with M[j, i] = H(i, j). For tests and small graphs only."""
        M = torch.zeros(self.n_dst, self.n_src, dtype=self.weight.dtype)
        M.index_put_((self.dst, self.src), self.weight, accumulate=True)
        return M

    # ------------------------------------------------------------------ products
    def _csr(self, by: str) -> torch.Tensor:
        if by == "dst":
            if self._csr_dst is None:
                self._csr_dst = _to_csr(self.dst, self.src, self.weight, (self.n_dst, self.n_src))
            return self._csr_dst
        if self._csr_src is None:
            self._csr_src = _to_csr(self.src, self.dst, self.weight, (self.n_src, self.n_dst))
        return self._csr_src

    def src_pattern(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSR row pointers and columns of H^T (rows = src), and the permutation of the edges into that order
        (None when the edges are already sorted by (src, dst), as every constructor here leaves them)."""
        if self._pattern_src is None:
            key = self.src * self.n_dst + self.dst
            perm = None if bool((key[1:] >= key[:-1]).all()) else torch.argsort(key)
            crow = torch.zeros(self.n_src + 1, dtype=torch.long)
            crow[1:] = torch.cumsum(torch.bincount(self.src, minlength=self.n_src), 0)
            self._pattern_src = (crow, (self.dst if perm is None else self.dst[perm]).contiguous(), perm)
        return self._pattern_src

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a batch of node vectors v (B, n_src) -> (B, n_dst): out(j) = sum_i H(i, j) v(i)."""
        v = v.to(self.weight.dtype)
        if v.shape[0] == 1:
            return torch.mv(self._csr("dst"), v[0]).unsqueeze(0)
        return torch.sparse.mm(self._csr("dst"), v.T.contiguous()).T

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor:
        """H^T v (B, n_dst) -> (B, n_src): out(i) = sum_j H(i, j) v(j) (messages sent backwards along edges)."""
        v = v.to(self.weight.dtype)
        if v.shape[0] == 1:
            return torch.mv(self._csr("src"), v[0]).unsqueeze(0)
        return torch.sparse.mm(self._csr("src"), v.T.contiguous()).T

    def matvec_reference(self, v: torch.Tensor) -> torch.Tensor:
        """The readable reference of `matvec`: one message per edge, scatter-added at its target."""
        out = v.new_zeros(v.shape[0], self.n_dst, dtype=self.weight.dtype)
        return out.index_add_(1, self.dst, self.weight * v[:, self.src])


def sampled_blocks(n: int, block: int, k: int, generator: torch.Generator | None = None, dtype=torch.float64,
                   name: str = "G_s") -> Graph:
    """Each node i keeps k distinct random partners j inside its group of `block` consecutive nodes, with weight
    block / k: a sparse, unbiased stand-in for `BlockGraph` (sum_{j in S_i} (block/k) f(j) estimates
    sum_j f(j)). n k edges, sorted by (i, j); k = block gives the full blocks with weight 1."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= block:
        raise ValueError(f"synapses per neuron k={k!r}: expected an integer in [1, {block}]")
    if block < 1 or n % block:
        raise ValueError(f"sampled_blocks: n={n} is not a multiple of the block size {block}")
    rows = max(1, 2**22 // block)
    dst = []
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        pick = torch.rand(r1 - r0, block, generator=generator).topk(k, dim=1).indices.sort(dim=1).values
        dst.append(pick + (torch.arange(r0, r1) // block * block).view(-1, 1))
    dst = torch.cat(dst).reshape(-1)
    src = torch.arange(n).repeat_interleave(k)
    return Graph(src, dst, torch.full((n * k,), block / k, dtype=dtype), n, n, name)


class BlockGraph(Graph):
    """All ordered pairs (i, j) inside consecutive groups of `block` nodes (e.g. heads), edges in row-major order
    (group, i, j), weights `weight` (default 1). Edge variables of shape (B, m) then view as (B, groups, block,
    block) without a copy, so the engine's fast path uses batched dense products on them."""

    def __init__(self, n: int, block: int, weight: torch.Tensor | None = None, dtype=torch.float64, name: str = "G_s"):
        if block < 1 or n % block:
            raise ValueError(f"BlockGraph: n={n} is not a multiple of the block size {block}")
        groups = n // block
        i = torch.arange(block).repeat_interleave(block)
        j = torch.arange(block).repeat(block)
        off = (torch.arange(groups) * block).repeat_interleave(block * block)
        w = torch.ones(groups * block * block, dtype=dtype) if weight is None else weight
        super().__init__(i.repeat(groups) + off, j.repeat(groups) + off, w, n, n, name)
        self.block, self.groups = block, groups

    def to(self, dtype: torch.dtype) -> "BlockGraph":
        return BlockGraph(self.n_src, self.block, self.weight.to(dtype), name=self.name)


@dataclasses.dataclass
class TwoHop:
    """A two-hop graph i -> hub k -> j (the class G^2 of Claim 3): H = second . first (apply `first` first).

    Hub nodes only relay: in one communication sub-round a message goes i -> k -> j.
    """

    first: Graph  # n_src -> n_hub
    second: Graph  # n_hub -> n_dst
    name: str = "G"

    def __post_init__(self) -> None:
        if self.first.n_dst != self.second.n_src:
            raise ValueError(
                f"two-hop graph {self.name}: first hop ends on {self.first.n_dst} hubs, second starts on "
                f"{self.second.n_src}"
            )

    @property
    def n_src(self) -> int:
        return self.first.n_src

    @property
    def n_dst(self) -> int:
        return self.second.n_dst

    @property
    def num_edges(self) -> int:
        return self.first.num_edges + self.second.num_edges

    @property
    def dtype(self) -> torch.dtype:
        return self.second.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.second.matvec(self.first.matvec(v))

    def matvec_reference(self, v: torch.Tensor) -> torch.Tensor:
        return self.second.matvec_reference(self.first.matvec_reference(v))

    def dense(self) -> torch.Tensor:
        return self.second.dense() @ self.first.dense()


# ----------------------------------------------------------------------------- constructions
def sign_split(M: torch.Tensor, name: str = "G") -> tuple[Graph, Graph]:
    """M (n_dst, n_src) = G^e - G^i with G^e = (M)^+, G^i = (-M)^+ as non-negative graphs (M[j, i] = G(i, j))."""
    return Graph.from_dense(torch.relu(M), name + "^e"), Graph.from_dense(torch.relu(-M), name + "^i")


def claim3_hubs(
    D: torch.Tensor, E: torch.Tensor, name: str = "G", shared_first: Graph | None = None
) -> tuple[TwoHop, TwoHop]:
    """Claim 3: D E = G^e - G^i with two-hop non-negative graphs through 2d hubs, never forming D E.

    D (n_dst, d), E (d, n_src). Hubs k = 0..d-1 carry (E)^+ v, hubs d..2d-1 carry (-E)^+ v (both >= 0 for v >= 0).
    E' = [(E)^+; (-E)^+] (2d, n_src); D^e = [(D)^+, (-D)^+], D^i = [(-D)^+, (D)^+] (n_dst, 2d).
    `shared_first`: reuse an E' hop already built (G_x and G_y share E).
    """
    if D.dim() != 2 or E.dim() != 2 or D.shape[1] != E.shape[0]:
        raise ValueError(f"claim3_hubs: D {tuple(D.shape)} and E {tuple(E.shape)} are not (n, d) and (d, n')")
    Ep = shared_first
    if Ep is None:
        Ep = Graph.from_dense(torch.cat([torch.relu(E), torch.relu(-E)], 0), "E'")
    De = Graph.from_dense(torch.cat([torch.relu(D), torch.relu(-D)], 1), name + "^e hubs->neurons")
    Di = Graph.from_dense(torch.cat([torch.relu(-D), torch.relu(D)], 1), name + "^i hubs->neurons")
    return TwoHop(Ep, De, name + "^e"), TwoHop(Ep, Di, name + "^i")


def top_edges_lowrank(
    D: torch.Tensor, E: torch.Tensor, m: int, block_rows: int | None = None, within: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The m entries of M = D E (n_dst, n_src) with the largest |M[j, i]|, as (src i, dst j, value M[j, i]),
    sorted by (dst, src).

    D (n_dst, d), E (d, n_src). Rows of M are formed `block_rows` at a time (default: about 2^22 entries per
    block) and merged into a running top-m, so memory is O(block_rows * n_src + m). `within` (n,) optional
    group labels: keep only entries with within[i] == within[j] (e.g. heads).
    """
    n_dst, n_src = D.shape[0], E.shape[1]
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"edge budget m={m!r}: expected a non-negative integer")
    block_rows = max(1, 2**22 // max(n_src, 1)) if block_rows is None else block_rows
    m = min(m, n_dst * n_src)
    empty = torch.empty(0, dtype=torch.long)
    if m == 0:
        return empty, empty, torch.empty(0, dtype=D.dtype)
    vals, keys = [], []  # candidate pool: every entry with |value| >= tau
    pool, tau = 0, -1.0  # tau: a lower bound of the m-th largest |value| (once m candidates were seen)
    for r0 in range(0, n_dst, block_rows):
        r1 = min(r0 + block_rows, n_dst)
        blk = D[r0:r1] @ E  # (rows, n_src)
        if within is not None:
            blk = blk * (within[r0:r1].view(-1, 1) == within.view(1, -1))
        flat = blk.reshape(-1)
        idx = torch.nonzero(flat.abs() >= tau).squeeze(1) if tau >= 0 else torch.arange(flat.numel())
        if len(idx) > m:
            idx = idx[torch.topk(flat[idx].abs(), m, sorted=False).indices]
        vals.append(flat[idx])
        keys.append(idx + r0 * n_src)
        pool += len(idx)
        if pool >= 2 * m or r1 == n_dst:  # prune the pool to its top m (amortised)
            v, k = torch.cat(vals), torch.cat(keys)
            if len(v) > m:
                keep = torch.topk(v.abs(), m, sorted=False).indices
                v, k = v[keep], k[keep]
            if len(v) == m:
                tau = float(v.abs().min())
            vals, keys, pool = [v], [k], len(v)
    best_v, best_k = vals[0], keys[0]
    keep = best_v != 0
    best_v, best_k = best_v[keep], best_k[keep]
    order = torch.argsort(best_k)
    best_v, best_k = best_v[order], best_k[order]
    return best_k % n_src, best_k // n_src, best_v
