"""The graph form of a trained BDH-GPU model: n neurons, parameter graphs G_x ~ D_x E and G_y ~ D_y E,
synapses sigma on G_s, and LayerNorm as divisive gain control.

**The identity** (`nspace_reference`, tested equal to BDH-GPU to 1e-10 in float64). BDH-GPU keeps its
residual stream v* in d-space (spec §2.1 (a)): x_l = (D_x v_{l-1})^+, v_l = LN(v_{l-1} + LN(E y_l)). Seen
through each neuron's input weights, Z_x = D_x v and Z_y = D_y v are n-vectors (a "membrane potential" of
X and a "value potential" of Y), and since every LN'd vector has mean 0 the whole layer is, exactly,

    X        = (Z_x)^+                                                # the threshold of X's integrator
    Q        = RoPE_t(X)                                              # neuron pairs (2m, 2m+1) exchange X
    A(i)     = sum_j sigma_l(i, j) Q(j)                               # read, j in i's head (gap 1 orientation)
    Y        = ((A - mu_a b_y) g_a)^+ ⊙ X                             # g_a = 1/std(a_h): LN of the read
    sigma_l  = (sigma_l + Z_y Q^T ⊙ G_s) ⊙ u                         # Hebbian write, u = damping gamma_h
    Z_x      = g_2 (Z_x + g_z (G_x^e - G_x^i) Y - mu_2 b_x)           # G_x = D_x E_c, g_z = 1/std(E y)
    Z_y      = g_2 (Z_y + g_z (G_y^e - G_y^i) Y - mu_2 b_y)           # G_y = D_y E_c

with E_c = E - mean_d(E) (LN's mean subtraction folded into the graph), b = D 1 (per-neuron biases), G_s the
per-head blocks (all ones), and logits = lm_head^T v_L, v_L read from Z_x. The token enters through X: Z_x
<- D_x LN(f_e(token)), Z_y <- D_y LN(f_e(token)) (an input table), X <- (Z_x)^+.

The synapse state here is sigma(i, j) = sum_{tau<t} gamma^{t-tau} Z_y,tau(i) Q_tau(j) = (D_y rho)(i, j) in the
rotated-key basis: BDH-GPU's rho (eq. 5), seen through D_y. In the Normfree model this is G_y sigma_paper
(eq. 16): G_y is applied when the value is written (Z_y is kept up to date by the G_y transmissions of round
4l+2) instead of after the read (Table 1's round 4l+2), which is the same for linear maps. With RoPE sigma
is signed (the paper drops the negative, RoPE-induced entries for its Fig. 11); so are Z_x, Z_y, Q, A.

Rounds of layer l (the four Table 1 kernels, with RoPE added):
4l   pair edge X(partner) -> P; node rule Q = RoPE_t(X, P)
4l+1 sigma read Q(j), sigma(i,j) -> A(i) and Hebbian write Z_y(i), Q(j) -> sigma(i,j); [gain: g_a];
     Y = ((A - mu_a b_y) g_a)^+ ⊙ X; A ↓; sigma ↓_{1-u}
4l+2 transmissions Y -> G_x^{e,i} -> X^e, X^i and Y -> G_y^{e,i} -> Y^e, Y^i; [gain: g_z, g_2, mu_2];
     Z_x, Z_y integrate them; integrators ↓
4l+3 threshold X = (Z_x)^+; Y ↓

**LayerNorm and exactness (spec §5).** The paper's equivalence BDH <-> BDH-GPU holds "up to LN placement"
and exactly only for BDH-Normfree (tested in test_graph_equivalence.py). A Def. 2-local graph cannot compute
LN: its statistics are global quadratic functions. What we compare is therefore always the trained model
itself (its own LN placement) against a graph form that either keeps one explicitly non-local primitive
(exact, KL ~ 1e-13) or replaces it by local constants (the measured gap):

**What is not local.** Everything above is a node rule or an edge rule *except* the gains
g_a (per head), g_z, g_2 and the means mu_a, mu_2 (~0): they are LayerNorm statistics, global quadratic
functions of d-space vectors. Here they are computed by d "gain hubs" that read the neurons through fixed
dense edges (a_h = pinv(D_y^h) A_h, E_c Y, v = pinv(D_x) Z_x: 3nd edges), take mean and variance over d
(one non-local step per LN) and broadcast 1/std back: `gains="exact"`. This is the only place where the
graph form is not Def. 2-local. Two stand-ins, fitted by `calibrate` on other text, measure what LN's
non-locality costs:

- `gains="meanfield"`: no d-space at all. Each gain is 1/sqrt((RMS/kappa)^2 + eps) of an n-space quantity
  the neurons hold (A_h = D_y^h a_h, X^e - X^i = D_x E_c y, Z_x + g_z (X^e - X^i) = D_x (v + u)), whose RMS
  over neurons tracks the d-space std: one global sum of squares per LN (a mean-field "gain pool"), with
  one calibrated kappa per layer (and head).
- `gains="calibrated"`: clock-dependent constants (per layer and head) and zero means: a fully local graph
  model. Constant gains cannot stop the feedback through sigma (a louder token writes louder values, which
  are read louder...), and on trained models this diverges within a few tokens (measured): LN is feedback
  gain control, not a fixed rescaling.

The readout (logits = lm_head^T pinv(D_x) Z_x) is a fixed linear transmission from the neurons'
X-integrators to V output nodes (V n edges, or n d + d V through d relay nodes): local.

**Routing of G_x Y and G_y Y.**

- `budget=None` ("hubs", exact): Claim 3, two-hop graphs through 2d relay hubs, E' = [(E_c)^+; (-E_c)^+],
  D^e = [(D)^+, (-D)^+], D^i = [(-D)^+, (D)^+]: D^e E' - D^i E' = D E_c exactly, O(nd) edges.
- `budget=m`: direct neuron-to-neuron edges, the m strongest entries |D_x E_c (i, j)| (and m of D_y E_c),
  split by sign into G^e (positive) and G^i (negative); everything else as in the exact form.

Both share the synapses sigma (exact attention on G_s = head blocks, h N^2 edges per layer; or, with
`synapses=k`, k random partners per neuron inside its head with rate N/k: a sparse unbiased read for large
N), RoPE (a partner edge per neuron pair and a node-local phase t * freq_i from the global clock), and the
gains.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .engine import DST, EDGE, SRC, EdgeRule, EdgeUpdate, Engine, GainRule, GraphState, NodeRule, Round, damp
from .graphs import BlockGraph, Graph, TwoHop, claim3_hubs, sampled_blocks, top_edges_lowrank

GAINS = ("exact", "meanfield", "calibrated")
MAX_BLOCK_SYNAPSES = 2**27  # full head blocks beyond this many synapses per layer: use `synapses=k`


# ----------------------------------------------------------------------------- weights
@dataclasses.dataclass
class GPUWeights:
    """A BDH-GPU model's tensors in the paper's notation (dtype chosen here; float64 for exactness tests)."""

    D_x: torch.Tensor  # (n, d) = encoder per head
    D_y: torch.Tensor  # (n, d) = encoder_v per head
    E: torch.Tensor  # (d, n) = decoder^T
    v0: torch.Tensor  # (V, d) = LN(f_e(token)): the input v*_{t,0} of every token
    lm_head: torch.Tensor  # (d, V) = f_d
    freqs: torch.Tensor  # (n,) float64, RoPE turns per position of every neuron
    gamma: torch.Tensor  # (h,) per-head retention (1 when damping is off)
    eps: float
    n_head: int
    n_layer: int

    @classmethod
    def from_model(cls, model, dtype: torch.dtype = torch.float64) -> "GPUWeights":
        c = model.config
        h, d, N = c.n_head, c.n_embd, c.N
        n = h * N
        with torch.no_grad():
            D_x = model.encoder.detach().to(dtype).permute(0, 2, 1).reshape(n, d)
            D_y = model.encoder_v.detach().to(dtype).permute(0, 2, 1).reshape(n, d)
            E = model.decoder.detach().to(dtype).T.contiguous()
            emb = model.embed.weight.detach().to(dtype)
            v0 = torch.nn.functional.layer_norm(emb, (d,), eps=model.ln.eps)
            lm = model.lm_head.detach().to(dtype)
        lg = getattr(model, "log_gamma", None)  # (h,): fixed or learned per-head damping
        if lg is not None and lg.dim() != 1:
            raise ValueError(f"damping={c.damping!r}: the graph form decays the synapses of a head by one gamma_h; "
                             "a per-neuron damping has no graph form here (use None, 'alibi', a list or 'learned')")
        gamma = torch.ones(h, dtype=torch.float64) if lg is None else lg.detach().to(torch.float64).exp()
        freqs = model.freqs.detach().to(torch.float64).repeat(h)
        return cls(D_x, D_y, E, v0, lm, freqs, gamma, float(model.ln.eps), h, c.n_layer)

    @property
    def n(self) -> int:
        return self.D_x.shape[0]

    @property
    def d(self) -> int:
        return self.D_x.shape[1]

    @property
    def N(self) -> int:
        return self.n // self.n_head

    @property
    def vocab_size(self) -> int:
        return self.v0.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.D_x.dtype

    @property
    def E_c(self) -> torch.Tensor:
        """E with its mean over d removed: LN's mean subtraction folded into the graph, (d, n)."""
        return self.E - self.E.mean(0, keepdim=True)

    def head_of(self) -> torch.Tensor:
        return torch.arange(self.n) // self.N


def _rope_nodes(x: torch.Tensor, partner_x: torch.Tensor, t: int, freqs: torch.Tensor, sgn: torch.Tensor
                ) -> torch.Tensor:
    """RoPE as a node rule: Q(i) = cos(theta_i t) X(i) + s_i sin(theta_i t) X(partner(i)), s = -1 (even i), +1 (odd).

    Phases in float64, reduced modulo one turn (as `bdh.attention.rope_cos_sin`)."""
    ang = torch.frac(float(t) * freqs) * (2 * math.pi)
    return torch.cos(ang).to(x.dtype) * x + (sgn * torch.sin(ang)).to(x.dtype) * partner_x


def _integrate(z, e, i, g_z, g_2, mu, b):
    """The residual integrator of one neuron: g_2 (Z + g_z (e - i) - mu_2 b) (LN(v + LN(E y)) seen through D)."""
    return g_2 * (z + g_z * (e - i) - mu * b)


# ----------------------------------------------------------------------------- reference
def nspace_reference(W: GPUWeights, idx: torch.Tensor) -> torch.Tensor:
    """The readable dense reference of the graph form (exact gains, G = D E_c, full head blocks): logits (B, T, V).

    Equals BDH-GPU's logits (same LN placement as the model: the identity in the module docstring).
    """
    B, T = idx.shape
    h, N, n, eps = W.n_head, W.N, W.n, W.eps
    Ec = W.E_c
    Gx, Gy = W.D_x @ Ec, W.D_y @ Ec  # (n, n) [j, i]
    bx, by = W.D_x.sum(1), W.D_y.sum(1)
    Px = torch.linalg.pinv(W.D_x)  # (d, n)
    Py = torch.stack([torch.linalg.pinv(W.D_y[k * N:(k + 1) * N]) for k in range(h)])  # (h, d, N)
    sgn = torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(n // 2)
    partner = torch.arange(n) ^ 1
    sigma = [torch.zeros(B, h, N, N, dtype=W.dtype) for _ in range(W.n_layer)]  # [i, j] within a head
    out = []
    for t in range(T):
        Zx, Zy = W.v0[idx[:, t]] @ W.D_x.T, W.v0[idx[:, t]] @ W.D_y.T  # (B, n): the token enters
        for l in range(W.n_layer):
            X = torch.relu(Zx)
            Q = _rope_nodes(X, X[:, partner], t, W.freqs, sgn).view(B, h, N)
            A = (sigma[l] @ Q.unsqueeze(-1)).squeeze(-1)  # (B, h, N)
            a = torch.einsum("hdn,bhn->bhd", Py, A)  # (B, h, d): the d-space read, for LN only
            g_a = 1.0 / torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + eps)
            Y = (torch.relu((A - a.mean(-1, keepdim=True) * by.view(h, N)) * g_a) * X.view(B, h, N)).reshape(B, n)
            sigma[l] = (sigma[l] + Zy.view(B, h, N, 1) * Q.view(B, h, 1, N)) * W.gamma.to(W.dtype).view(1, h, 1, 1)
            Ey = Y @ Ec.T  # (B, d)
            g_z = 1.0 / torch.sqrt((Ey * Ey).mean(-1, keepdim=True) + eps)
            w = Zx @ Px.T + g_z * Ey  # v_{l-1} + LN(E y_l)
            mu2, g2 = w.mean(-1, keepdim=True), 1.0 / torch.sqrt(w.var(-1, unbiased=False, keepdim=True) + eps)
            Zx = g2 * (Zx + g_z * (Y @ Gx.T) - mu2 * bx)
            Zy = g2 * (Zy + g_z * (Y @ Gy.T) - mu2 * by)
        out.append((Zx @ Px.T) @ W.lm_head)
    return torch.stack(out, 1)


# ----------------------------------------------------------------------------- the graph form
class BDHGPUGraph:
    """The graph form of a trained BDH-GPU (module docstring), run round by round on the engine.

    `budget`: None for the exact hub routing (Claim 3), or m: the m strongest entries of each of D_x E_c and
    D_y E_c as direct edges. `gains`: "exact" (LN by gain hubs, non-local), "meanfield" (LN from RMS over
    neurons) or "calibrated" (constants); the last two need `calibrate` first. `synapses`: None for G_s = the
    full head blocks (exact attention), or k: every neuron keeps k random partners in its head with rate N/k
    (an unbiased, sparse attention read, for large N where h N^2 synapses per layer do not fit).
    `fast=False` runs every rule through the gather/scatter reference.
    """

    def __init__(self, W: GPUWeights, budget: int | None = None, gains: str = "exact", fast: bool = True,
                 synapses: int | None = None, seed: int = 0):
        if gains not in GAINS:
            raise ValueError(f"gains={gains!r}: expected one of {GAINS}")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget={budget!r}: expected None (exact hubs) or a non-negative number of edges")
        if W.n % 2:
            raise ValueError(f"n={W.n}: RoPE needs an even number of neurons per head")
        self.W, self.budget, self.gains = W, budget, gains
        h, N, n, d = W.n_head, W.N, W.n, W.d
        Ec = W.E_c
        graphs: dict[str, Graph | TwoHop] = {}
        if budget is None:
            graphs["Gx_e"], graphs["Gx_i"] = claim3_hubs(W.D_x, Ec, "G_x")
            graphs["Gy_e"], graphs["Gy_i"] = claim3_hubs(W.D_y, Ec, "G_y", shared_first=graphs["Gx_e"].first)
        else:
            for name, D in (("Gx", W.D_x), ("Gy", W.D_y)):
                src, dst, val = top_edges_lowrank(D, Ec, budget)
                pos = val > 0
                graphs[name + "_e"] = Graph(src[pos], dst[pos], val[pos], n, n, name + "^e")
                graphs[name + "_i"] = Graph(src[~pos], dst[~pos], -val[~pos], n, n, name + "^i")
        head = W.head_of()
        if synapses is None:
            if h * N * N > MAX_BLOCK_SYNAPSES:
                raise ValueError(
                    f"full per-head synapse blocks need h N^2 = {h * N * N:,} synapses per layer (> "
                    f"{MAX_BLOCK_SYNAPSES:,}); pass synapses=k (k random partners per neuron) instead"
                )
            Gs = BlockGraph(n, N, dtype=W.dtype)  # every ordered pair (i, j) inside a head, all ones: h N^2 edges
        else:
            Gs = sampled_blocks(n, N, synapses, torch.Generator().manual_seed(seed), W.dtype)
        graphs["Gs"] = Gs
        partner = torch.arange(n) ^ 1
        graphs["pair"] = Graph(partner, torch.arange(n), torch.ones(n, dtype=W.dtype), n, n, "RoPE pairs")
        self.graphs = graphs
        self.node_params = {
            "freq": W.freqs,
            "sgn": torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(n // 2),
            "b_x": W.D_x.sum(1),
            "b_y": W.D_y.sum(1),
        }
        u = W.gamma.to(W.dtype)[head[Gs.src]]  # retention of sigma(i, j): the damping of i's head
        # gain hubs: fixed dense read-in edges (d-space views of the neurons), used only for LayerNorm
        self.P_x = torch.linalg.pinv(W.D_x)  # (d, n): v = P_x Z_x
        self.P_y = torch.stack([torch.linalg.pinv(W.D_y[k * N:(k + 1) * N]) for k in range(h)])  # (h, d, N)
        checks = [("D_x", self.P_x, W.D_x)]
        checks += [(f"D_y head {k}", self.P_y[k], W.D_y[k * N:(k + 1) * N]) for k in range(h)]
        for name, P, D in checks:
            err = float((P @ D - torch.eye(d, dtype=W.dtype)).abs().max())
            if err > (1e-6 if W.dtype == torch.float64 else 1e-2):
                raise ValueError(
                    f"{name} is (nearly) rank-deficient (|pinv(D) D - I| = {err:.2g}): the gain hubs cannot read "
                    "d-space exactly; use gains='calibrated'"
                )
        self.Ec = Ec
        self.calibration: dict[str, torch.Tensor] | None = None
        self._record: list | None = None
        self.engine = Engine(graphs, self.node_params, {("Gs", "u"): u}, fast=fast)
        self.program = self._program()

    # ------------------------------------------------------------------ sizes
    @property
    def n(self) -> int:
        return self.W.n

    def num_edges(self) -> dict[str, int]:
        """Edges of every graph, and the dense gain/readout hub edges (3nd + dV) when gains are exact."""
        out = {k: g.num_edges for k, g in self.graphs.items()}
        out["parameter graphs (G_x, G_y)"] = sum(out[k] for k in ("Gx_e", "Gx_i", "Gy_e", "Gy_i"))
        if self.budget is None:  # the shared E' hop was counted twice
            out["parameter graphs (G_x, G_y)"] -= 3 * self.graphs["Gx_e"].first.num_edges
        W = self.W
        out["gain hub read-ins (non-local LN)"] = 3 * W.n * W.d if self.gains == "exact" else 0
        out["mean-field sums over neurons per layer (non-local)"] = 2 * W.n if self.gains == "meanfield" else 0
        out["readout (pinv(D_x), lm_head)"] = W.n * W.d + W.d * W.vocab_size
        return out

    # ------------------------------------------------------------------ the program
    @staticmethod
    def _rms(v: torch.Tensor) -> torch.Tensor:
        return v.pow(2).mean(-1).sqrt()

    def _gain_attention(self, state: GraphState, params: dict) -> dict[str, torch.Tensor]:
        """LN of the attention read, per head (NOT local).

        exact: a_h = pinv(D_y^h) A_h at the gain hubs, mean and 1/std over d. meanfield: 1/std from the RMS of
        A_h over the head's N neurons (A_h = D_y^h a_h, so RMS_N(A_h) ~ std_d(a_h) / kappa). calibrated: c t^-p.
        """
        W = self.W
        B, l, h, N = state.batch_size, state.scalars["layer"], W.n_head, W.N
        if self.gains == "calibrated":
            g = self._clock_gain("g_a", l, state.t).to(W.dtype).repeat_interleave(N)  # (n,)
            return {"mu_a": torch.zeros(1, W.n, dtype=W.dtype), "g_a": g.unsqueeze(0)}
        A = state.nodes["A"].view(B, h, N)
        if self.gains == "meanfield":
            k = self.calibration["kappa_a"][l].to(W.dtype)  # (h,)
            g = 1.0 / torch.sqrt((self._rms(A) / k) ** 2 + W.eps)
            return {"mu_a": torch.zeros(1, W.n, dtype=W.dtype), "g_a": g.repeat_interleave(N, 1)}
        a = torch.einsum("hdn,bhn->bhd", self.P_y, A)
        mu = a.mean(-1)  # (B, h)
        g = 1.0 / torch.sqrt(a.var(-1, unbiased=False) + W.eps)
        if self._record is not None:
            self._record.append(("g_a", l, state.t, g, self._rms(A)))
        return {"mu_a": mu.repeat_interleave(N, 1), "g_a": g.repeat_interleave(N, 1)}

    def _gain_residual(self, state: GraphState, params: dict) -> dict[str, torch.Tensor]:
        """LN of E y and of the residual v + LN(E y) (NOT local).

        exact: E_c Y and v = pinv(D_x) Z_x at the gain hubs. meanfield: from the RMS over all n neurons of
        the integrator input X^e - X^i (= D_x E_c y) and of Z_x + g_z (X^e - X^i) (= D_x (v + u)).
        """
        W = self.W
        l = state.scalars["layer"]
        state.scalars["layer"] = l + 1
        z = torch.zeros(1, 1, dtype=W.dtype)
        if self.gains == "calibrated":
            g_z, g_2 = (self._clock_gain(k, l, state.t).to(W.dtype).view(1, 1) for k in ("g_z", "g_2"))
            return {"g_z": g_z, "g_2": g_2, "mu_2": z}
        dz = state.nodes["Xe"] - state.nodes["Xi"]  # (B, n): G_x y
        if self.gains == "meanfield":
            c = self.calibration
            g_z = 1.0 / torch.sqrt((self._rms(dz) / float(c["kappa_z"][l])) ** 2 + W.eps).unsqueeze(-1)
            pre = state.nodes["Zx"] + g_z * dz
            g_2 = 1.0 / torch.sqrt((self._rms(pre) / float(c["kappa_2"][l])) ** 2 + W.eps).unsqueeze(-1)
            return {"g_z": g_z, "g_2": g_2, "mu_2": z}
        Ey = state.nodes["Y"] @ self.Ec.T  # (B, d)
        g_z = 1.0 / torch.sqrt((Ey * Ey).mean(-1, keepdim=True) + W.eps)
        w = state.nodes["Zx"] @ self.P_x.T + g_z * Ey
        g_2 = 1.0 / torch.sqrt(w.var(-1, unbiased=False, keepdim=True) + W.eps)
        if self._record is not None:
            self._record.append(("g_z", l, state.t, g_z, self._rms(dz).unsqueeze(-1)))
            self._record.append(("g_2", l, state.t, g_2, self._rms(state.nodes["Zx"] + g_z * dz).unsqueeze(-1)))
        return {"g_z": g_z, "g_2": g_2, "mu_2": w.mean(-1, keepdim=True)}

    def _clock_gain(self, key: str, layer: int, t: int) -> torch.Tensor:
        """Calibrated gain at clock t: its t = 0 value, else c t^(-p) (fitted per layer and head)."""
        c = self.calibration
        if t == 0:
            return c[key + "@0"][layer]
        return torch.exp(c[key + "_logc"][layer] - c[key + "_p"][layer] * math.log(t))

    def _program(self) -> list[Round]:
        rounds = []
        for l in range(self.W.n_layer):
            s = f"sigma_{l}"
            rounds.append(Round(
                f"{4 * l}: RoPE (partner exchange, node-local phase)",
                comm=(EdgeRule("X(i) →^{pair(i,j)} P(j)", "pair", (DST, "P"), src=("X",)),),
                comp=(NodeRule("cos·X + s·sin·P → Q", "Q", ("X", "P", "t", "freq", "sgn"),
                               lambda x, p, t, f, sg: _rope_nodes(x, p, int(t), f, sg)), damp("P")),
            ))
            rounds.append(Round(
                f"{4 * l + 1}: inference from state + Hebbian write",
                comm=(
                    EdgeRule("Q(j), σ_l(i,j) → A(i)", "Gs", (SRC, "A"), dst=("Q",), edge=(s,)),
                    EdgeRule("Z_y(i), Q(j) →^{G_s(i,j)} σ_l(i,j)", "Gs", (EDGE, s), src=("Zy",), dst=("Q",)),
                ),
                gain=(GainRule("LN(a_h): gain hubs (non-local)", ("mu_a", "g_a"), self._gain_attention),),
                comp=(
                    NodeRule("((A - mu_a b_y) g_a)^+ ⊙ X → Y", "Y", ("A", "mu_a", "b_y", "g_a", "X"),
                             lambda a, mu, b, g, x: torch.relu((a - mu * b) * g) * x),
                    damp("A"),
                    EdgeUpdate("σ_l(i,j) ↓_{1-u(i,j)}", "Gs", s, (s, "u"), torch.mul),
                ),
            ))
            rounds.append(Round(
                f"{4 * l + 2}: inference from parameters (residual integrators)",
                comm=(
                    EdgeRule("Y(i) →^{G_x^e(i,j)} X^e(j)", "Gx_e", (DST, "Xe"), src=("Y",)),
                    EdgeRule("Y(i) →^{G_x^i(i,j)} X^i(j)", "Gx_i", (DST, "Xi"), src=("Y",)),
                    EdgeRule("Y(i) →^{G_y^e(i,j)} Y^e(j)", "Gy_e", (DST, "Ye"), src=("Y",)),
                    EdgeRule("Y(i) →^{G_y^i(i,j)} Y^i(j)", "Gy_i", (DST, "Yi"), src=("Y",)),
                ),
                gain=(GainRule("LN(E y), LN(v + u): gain hubs (non-local)", ("g_z", "g_2", "mu_2"),
                               self._gain_residual),),
                comp=(
                    NodeRule("g_2 (Z_x + g_z (X^e - X^i) - mu_2 b_x) → Z_x", "Zx",
                             ("Zx", "Xe", "Xi", "g_z", "g_2", "mu_2", "b_x"), _integrate),
                    NodeRule("g_2 (Z_y + g_z (Y^e - Y^i) - mu_2 b_y) → Z_y", "Zy",
                             ("Zy", "Ye", "Yi", "g_z", "g_2", "mu_2", "b_y"), _integrate),
                    damp("Xe"), damp("Xi"), damp("Ye"), damp("Yi"),
                ),
            ))
            rounds.append(Round(
                f"{4 * l + 3}: threshold",
                comp=(NodeRule("(Z_x)^+ → X", "X", ("Zx",), torch.relu), damp("Y")),
            ))
        return rounds

    # ------------------------------------------------------------------ running
    def init_state(self, batch_size: int = 1) -> GraphState:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        W = self.W
        z = lambda m: torch.zeros(batch_size, m, dtype=W.dtype)  # noqa: E731
        nodes = {v: z(W.n) for v in ("X", "P", "Q", "A", "Y", "Zx", "Zy", "Xe", "Xi", "Ye", "Yi")}
        edges = {f"sigma_{l}": z(self.graphs["Gs"].num_edges) for l in range(W.n_layer)}
        return GraphState(nodes, edges)

    def step(self, state: GraphState, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row (B,): the token enters through X; 4L rounds; logits (B, V) read from Z_x."""
        W = self.W
        if tokens.dim() != 1 or tokens.shape[0] != state.batch_size:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected (B={state.batch_size},)")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= W.vocab_size):
            raise ValueError(f"token id outside the vocabulary [0, {W.vocab_size})")
        if self.gains != "exact" and self.calibration is None:
            raise ValueError(f"gains={self.gains!r} needs calibrate(idx) first")
        v0 = W.v0[tokens]  # (B, d)
        state.nodes["Zx"] = v0 @ W.D_x.T  # the input table D_x LN(f_e(token))
        state.nodes["Zy"] = v0 @ W.D_y.T
        state.nodes["X"] = torch.relu(state.nodes["Zx"])
        state.scalars["layer"] = 0
        self.engine.run(self.program, state)
        state.t += 1
        return self.readout(state)

    def readout(self, state: GraphState) -> torch.Tensor:
        """logits = lm_head^T v_L with v_L = pinv(D_x) Z_x: the readout through X's integrator (B, V)."""
        return (state.nodes["Zx"] @ self.P_x.T) @ self.W.lm_head

    def run(self, idx: torch.Tensor, state: GraphState | None = None) -> tuple[torch.Tensor, GraphState]:
        """Token ids (B, T): logits (B, T, V) and the final state."""
        if idx.dim() != 2:
            raise ValueError(f"idx has shape {tuple(idx.shape)}, expected (B, T)")
        state = self.init_state(idx.shape[0]) if state is None else state
        return torch.stack([self.step(state, idx[:, t]) for t in range(idx.shape[1])], 1), state

    def calibrate(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fit the stand-ins for LN (`gains="meanfield"` and `"calibrated"`) on text `idx` (B, T >= 3), run with
        exact gains.

        meanfield: kappa = geometric mean over the calibration run of (exact gain) x (RMS over neurons of the
        potential it normalises), per layer (and head), so that g = 1 / sqrt((RMS / kappa)^2 + eps).
        calibrated: every gain (g_a per layer and head, g_z and g_2 per layer) becomes a function of the clock
        only: its mean at t = 0 (no context yet), and g(t) = c t^(-p) for t >= 1, a least-squares fit of
        log g against log t (the attention read grows with the number of past tokens). Neurons already know t
        (RoPE needs it), so the calibrated model is local apart from these constants.
        """
        if idx.dim() != 2 or idx.shape[1] < 3:
            raise ValueError(f"calibrate: idx has shape {tuple(idx.shape)}, expected (B, T) with T >= 3")
        saved, self.gains, self._record = self.gains, "exact", []
        try:
            self.run(idx)
            rec = self._record
        finally:
            self.gains, self._record = saved, None
        cal: dict[str, torch.Tensor] = {}
        L = self.W.n_layer
        for key, kap in (("g_a", "kappa_a"), ("g_z", "kappa_z"), ("g_2", "kappa_2")):
            rows = [(l, t, g.double(), r.double()) for k, l, t, g, r in rec if k == key]  # g, r: (B, width)
            width = rows[0][2].shape[-1]
            kappa = torch.zeros(L, width, dtype=torch.float64)
            for l in range(L):
                g = torch.cat([g for l2, t, g, r in rows if l2 == l and t > 0])
                r = torch.cat([r for l2, t, g, r in rows if l2 == l and t > 0])
                ok = r > 1e-12
                prod = torch.where(ok, (g * r).clamp_min(1e-300).log(), torch.zeros_like(g))
                kappa[l] = torch.exp(prod.sum(0) / ok.sum(0).clamp_min(1))
            cal[kap] = kappa
            cal[key + "@0"] = torch.stack([torch.cat([g for l2, t, g, r in rows if l2 == l and t == 0]).mean(0)
                                          for l in range(L)])  # (L, width)
            logc, p = torch.zeros(L, width, dtype=torch.float64), torch.zeros(L, width, dtype=torch.float64)
            for l in range(L):
                ts = torch.tensor([t for l2, t, g, r in rows if l2 == l and t > 0], dtype=torch.float64)
                lg = torch.stack([g.mean(0) for l2, t, g, r in rows if l2 == l and t > 0]).log()  # (T-1, width)
                X = torch.stack([torch.ones_like(ts), -ts.log()], 1)  # log g = log c - p log t
                coef = torch.linalg.lstsq(X, lg).solution  # (2, width)
                logc[l], p[l] = coef[0], coef[1]
            cal[key + "_logc"], cal[key + "_p"] = logc, p
            if width == 1:
                for k in ("@0", "_logc", "_p"):
                    cal[key + k] = cal[key + k][:, 0]
                cal[kap] = cal[kap][:, 0]
        self.calibration = cal
        return cal


def build_graph_form(model, budget: int | None = None, gains: str = "exact", dtype=torch.float64,
                     fast: bool = True, synapses: int | None = None) -> BDHGPUGraph:
    """The graph form of a BDH-GPU `model` (module docstring): exact hubs (budget None) or m direct edges."""
    return BDHGPUGraph(GPUWeights.from_model(model, dtype), budget=budget, gains=gains, fast=fast, synapses=synapses)


# ----------------------------------------------------------------------------- comparison
def kl_per_token(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) in nats for every position, from logits (..., V): sum_v p (log p - log q)."""
    lp = torch.log_softmax(logits_p.double(), -1)
    lq = torch.log_softmax(logits_q.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def gpu_logits(model, idx: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """BDH-GPU's logits for `idx` (B, T) from the empty state, computed in `dtype` (a copy of the model)."""
    import copy

    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        logits, _ = m(idx, form="auto")
    return logits
