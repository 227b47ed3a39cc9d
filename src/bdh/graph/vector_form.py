"""Dense references: eq. 6 (BDH vector form), eq. 7 (BDH-Normfree, sigma form) and its rho = E sigma form.

Small n only (n x n matrices); they exist to test the graph simulator. Conventions, batch first:

- Parameter graphs as matrices acting on columns, M[j, i] = G(i, j) (so G v = M v): `Graph.dense()`.
- sigma, G_s and u as [i, j] = value on edge (i, j): `Graph.dense().T` for G_s.
- Token boundary (gap 2, see simulator.py): x_{t,1} = x_in[t], y_{t,0} = y_in[t] (default y_in = x_in).
"""

from __future__ import annotations

import torch


def eq6_run(
    Gx: torch.Tensor,
    Gy: torch.Tensor,
    Gs: torch.Tensor,
    u: torch.Tensor,
    x_in: torch.Tensor,
    n_layer: int,
    orientation: str = "eq6",
    decay_round: str = "4l+1",
    y_in: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Eq. 6. Gx = G_x^e - G_x^i, Gy = G_y^e - G_y^i (n, n) [j, i]; Gs, u (n, n) [i, j]; x_in, y_in (B, T, n).

    Returns readouts x_{t,L+1} (B, T, n), the final sigma_l (B, n, n) [i, j] per layer, and the last y.
    `orientation="table1"` reads A = sigma^T x; `decay_round="4l"` decays before the write (Table 1 literal).
    """
    B, T, n = x_in.shape
    sigma = [x_in.new_zeros(B, n, n) for _ in range(n_layer)]
    y_in = x_in if y_in is None else y_in
    outs = []
    for t in range(T):
        x, y_prev = x_in[:, t], y_in[:, t]  # x_{t,1}, y_{t,0}
        for l in range(n_layer):
            s = sigma[l]
            a = (s @ x.unsqueeze(-1)).squeeze(-1) if orientation == "eq6" else (s.mT @ x.unsqueeze(-1)).squeeze(-1)
            y = torch.relu(a @ Gy.T) * x  # y_{t,l} = (G_y sigma_{t-1,l} x_{t,l})^+ ⊙ x_{t,l}
            W = y_prev.unsqueeze(-1) * x.unsqueeze(-2) * Gs  # (y_{t,l-1} x_{t,l}^T) ⊙ G_s
            sigma[l] = (s + W) * u if decay_round == "4l+1" else s * u + W
            x = x + torch.relu(y @ Gx.T)  # x_{t,l+1}
            y_prev = y
        outs.append(x)
    return torch.stack(outs, 1), sigma, y_prev


def normfree_sigma_run(
    D_x: torch.Tensor, D_y: torch.Tensor, E: torch.Tensor, u: torch.Tensor, x_in: torch.Tensor, n_layer: int,
    y_in: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """BDH-Normfree, eq. 7: D_x, D_y (n, d), E (d, n), U = diag(u) (n,).

        sigma_{t,l} = (sigma_{t-1,l} + y_{t,l-1} x_{t,l}^T) U
        x_{t,l+1}   = x_{t,l} + (D_x E y_{t,l})^+
        y_{t,l}     = (D_y E sigma_{t-1,l} x_{t,l})^+ ⊙ x_{t,l}

    Returns readouts (B, T, n) and sigma_{t,l} (B, n, n) for every token t and layer l.
    """
    B, T, n = x_in.shape
    sigma = [x_in.new_zeros(B, n, n) for _ in range(n_layer)]
    y_in = x_in if y_in is None else y_in
    outs, history = [], []
    for t in range(T):
        x, y_prev = x_in[:, t], y_in[:, t]  # x_{t,1}, y_{t,0}
        for l in range(n_layer):
            a = (sigma[l] @ x.unsqueeze(-1)).squeeze(-1)  # sigma_{t-1,l} x_{t,l}  (B, n)
            y = torch.relu((a @ E.T) @ D_y.T) * x
            sigma[l] = (sigma[l] + y_prev.unsqueeze(-1) * x.unsqueeze(-2)) * u  # (...) U, U diagonal
            x = x + torch.relu((y @ E.T) @ D_x.T)
            y_prev = y
        outs.append(x)
        history.append([s.clone() for s in sigma])
    return torch.stack(outs, 1), history


def normfree_rho_run(
    D_x: torch.Tensor, D_y: torch.Tensor, E: torch.Tensor, u: torch.Tensor, x_in: torch.Tensor, n_layer: int,
    y_in: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """BDH-GPU without LayerNorm (eq. 8 with LN removed): the attention state rho (d, n), never sigma.

        rho_{t,l} = (rho_{t-1,l} + E y_{t,l-1} x_{t,l}^T) U
        y_{t,l}   = (D_y rho_{t-1,l} x_{t,l})^+ ⊙ x_{t,l}

    Returns readouts (B, T, n) and rho_{t,l} (B, d, n) for every t, l (eq. 9 / Obs. 4: rho = E sigma).
    """
    B, T, n = x_in.shape
    d = E.shape[0]
    rho = [x_in.new_zeros(B, d, n) for _ in range(n_layer)]
    y_in = x_in if y_in is None else y_in
    outs, history = [], []
    for t in range(T):
        x, y_prev = x_in[:, t], y_in[:, t]  # x_{t,1}, y_{t,0}
        for l in range(n_layer):
            a = (rho[l] @ x.unsqueeze(-1)).squeeze(-1)  # (B, d): linear attention read, rho_{t-1,l} x_{t,l}
            y = torch.relu(a @ D_y.T) * x
            rho[l] = (rho[l] + (y_prev @ E.T).unsqueeze(-1) * x.unsqueeze(-2)) * u
            x = x + torch.relu((y @ E.T) @ D_x.T)
            y_prev = y
        outs.append(x)
        history.append([r.clone() for r in rho])
    return torch.stack(outs, 1), history
