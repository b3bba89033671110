"""EGNN k-step model (Satorras, Hoogeboom & Welling 2021, the variant with velocities).

Each layer l computes invariant edge messages m_ij from h_i, h_j, static pair invariants
(one-hot bond-hop distance, v_i.v_j, ...) and the geometry of the running jumped positions
x^l = x + dx_scale * u^l (RBF(|r_ij|), r_ij.v_i, r_ij.v_j, ...); updates h_i with the mean
message; and adds to the vector channels u (dx/dx_scale), w (dv/dv_scale) [, F/f_scale]
  mean_j phi(m_ij) r_ij/(|r_ij|+delta)  +  psi(h_i) v_i [+ chi(h_i) F_i],
the means weighted by the cutoff envelope: sum_j w_ij (.) / max(1, sum_j w_ij).
Units: nm, ps, kJ/mol, amu.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mdkstep.model.common import KStepModel, Prepared, narrow_linear, small_init_
from mdkstep.model.config import ModelConfig


class EGNNLayer(nn.Module):
    """One E(n)-equivariant message-passing layer acting on (h, vector channels)."""

    def __init__(self, hidden: int, n_geom: int, n_vec_out: int, n_vec_in: int) -> None:
        super().__init__()
        self.node_pair = nn.Linear(hidden, 2 * hidden)  # h_i and h_j parts of the first edge linear
        self.geom_in = nn.Linear(n_geom, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.coef_edge = small_init_(nn.Linear(hidden, n_vec_out))
        self.coef_node = small_init_(nn.Linear(hidden, n_vec_out * n_vec_in))

    def forward(self, h: torch.Tensor, geom: torch.Tensor,
                p: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (N,hidden), edge invariants geom (E,n_geom) -> (new h, edge coefficients (E,C),
        node coefficients (N,C*K))."""
        a_i, a_j = self.node_pair(h).chunk(2, dim=-1)
        z = self.geom_in(geom)
        z = z.add_(p.edges.at_dst(a_i)).add_(p.edges.at_src(a_j))
        m = F.silu(self.edge_out(F.silu(z)))
        h = h + self.node_mlp(torch.cat([h, p.edges.mean_in(m)], dim=-1))
        return h, narrow_linear(self.coef_edge, m), self.coef_node(h)  # edge terms: mean-aggregated


class EGNN(KStepModel):
    """EGNN predicting the k-step jump (dx nm, dv nm/ps); see :class:`KStepModel`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.layers = nn.ModuleList(
            EGNNLayer(cfg.hidden, self.n_geom, self.n_vec_out, self.n_vec_in) for _ in range(cfg.n_layers)
        )

