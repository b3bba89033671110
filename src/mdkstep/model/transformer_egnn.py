"""Transformer-EGNN k-step model: multi-head attention over the atoms of each molecule,
with equivariant EGNN-style updates of the vector channels.

Attention logits l_ij^h = q_i.k_j / sqrt(d) + b^h(e_ij), where the edge encoding e_ij
carries RBF(|r_ij|) of the running jumped geometry, the learned bond-hop encoding and
velocity (force) dot products; atom types enter through the embedded h. Values are gated
by e_ij. The vector channels get sum_j (sum_h alpha_ij^h c^h_ij / H) r_ij/(|r_ij|+delta)
+ psi(h_i) v_i [+ chi(h_i) F_i]. Attention runs over the same edge set as the EGNN (the
full graph or the distance cutoff, whose envelope weights the attention smoothly).
Units: nm, ps, kJ/mol, amu.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mdkstep.model.common import KStepModel, Prepared, edge_softmax, small_init_
from mdkstep.model.config import ModelConfig


class TransformerEGNNLayer(nn.Module):
    """Pre-LayerNorm attention block + feed-forward + equivariant vector coefficients."""

    def __init__(self, hidden: int, n_heads: int, n_geom: int, n_vec_out: int, n_vec_in: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, hidden // n_heads
        self.n_vec_out = n_vec_out
        self.ln_att = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.geom_in = nn.Linear(n_geom, hidden)
        self.edge_bias = nn.Linear(hidden, n_heads)  # distance/hop-aware attention bias
        self.edge_gate = nn.Linear(hidden, hidden)
        self.att_out = nn.Linear(hidden, hidden)
        self.ln_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        self.coef_edge = small_init_(nn.Linear(hidden, n_heads * n_vec_out))
        self.coef_node = small_init_(nn.Linear(hidden, n_vec_out * n_vec_in))

    def forward(self, h: torch.Tensor, geom: torch.Tensor,
                p: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (N,hidden), edge invariants geom (E,n_geom) -> (new h, edge coefficients (E,C),
        node coefficients (N,C*K))."""
        n_e, n_h, d_h = geom.shape[0], self.n_heads, self.d_head
        q, k, v = self.qkv(self.ln_att(h)).chunk(3, dim=-1)
        e = F.silu(self.geom_in(geom))  # (E,hidden) edge encoding: distance, hops, dot products
        qk = p.edges.at_dst(q * (1.0 / math.sqrt(d_h))) * p.edges.at_src(k)
        logits = qk.view(n_e, n_h, d_h).sum(-1) + self.edge_bias(e)
        alpha = edge_softmax(logits, p.edges, p.env)  # (E,H)
        vals = (p.edges.at_src(v) * self.edge_gate(e)).view(n_e, n_h, d_h)
        msg = (alpha.unsqueeze(-1) * vals).view(n_e, n_h * d_h)
        h = h + self.att_out(p.edges.sum_in(msg))
        h = h + self.ffn(self.ln_ffn(h))
        coef = self.coef_edge(F.silu(vals.view(n_e, n_h * d_h))).view(n_e, n_h, self.n_vec_out)
        c_edge = (alpha.unsqueeze(-1) * coef).sum(1) * (1.0 / n_h)
        return h, c_edge, self.coef_node(h)


class TransformerEGNN(KStepModel):
    """Transformer-EGNN predicting the k-step jump (dx nm, dv nm/ps); see :class:`KStepModel`."""

    edge_mean = False  # edge coefficients already carry the attention weights (sum_j alpha_ij <= 1)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.layers = nn.ModuleList(
            TransformerEGNNLayer(cfg.hidden, cfg.n_heads, self.n_geom, self.n_vec_out, self.n_vec_in)
            for _ in range(cfg.n_layers)
        )
