"""Pieces shared by the k-step models: edge gather/scatter, radial basis, attention softmax,
the base model (embeddings, geometry features, equivariant vector update, output head),
conservation projections and smooth clamps.

Units: positions nm, velocities nm/ps, forces kJ/(mol nm), masses amu.

Equivariance by construction: every vector a model emits is a sum of the equivariant
vectors r_ij = x_i - x_j, v_i and F_i times invariant coefficients (no cross products in the
network), so outputs rotate and reflect with the input, ignore translations, and follow
permutations of the atoms. Only the optional angular-momentum projection uses cross
products, in pairs (omega x x with omega a pseudovector), which is reflection-safe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mdkstep.model.config import ModelConfig
from mdkstep.model.graph import GraphBatch

#: Softening length (nm) of the direction vectors r_ij / (|r_ij| + DELTA).
DIR_SOFTENING_NM = 0.02
#: The clamps bound |dx_i|, |dv_i| by max * (1 - CLAMP_MARGIN), strictly inside max.
CLAMP_MARGIN = 1e-6


# ---------------------------------------------------------------- segment ops
def segment_sum(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum rows of ``x`` into ``n`` segments given by ``index`` (len x.shape[0])."""
    return x.new_zeros((n,) + tuple(x.shape[1:])).index_add_(0, index, x)


class Edges:
    """Gather/scatter over one edge set (sender ``src`` j -> receiver ``dst`` i) of ``n_nodes``.

    ``env`` (E,) is the cutoff envelope (None: all weights 1); ``mean_weight`` (E,) =
    env / max(1, sum_j env) at the receiver, for mean aggregation that stays smooth as the
    last neighbour leaves the cutoff.
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_nodes: int, env: torch.Tensor | None,
                 dtype: torch.dtype) -> None:
        self.src, self.dst, self.n_nodes = src, dst, n_nodes
        if env is None:
            counts = torch.bincount(dst, minlength=n_nodes).clamp_min_(1).to(dtype)
            self.mean_weight = counts.reciprocal_().index_select(0, dst)
        else:
            self.mean_weight = env / self.sum_in(env).clamp_min(1.0).index_select(0, dst)

    def sum_in(self, m: torch.Tensor) -> torch.Tensor:
        """sum_j m_ij at each receiver i: (E, ...) -> (N, ...)."""
        return segment_sum(m, self.dst, self.n_nodes)

    def mean_in(self, m: torch.Tensor) -> torch.Tensor:
        """Envelope-weighted mean sum_j w_ij m_ij / max(1, sum_j w_ij): (E, ...) -> (N, ...)."""
        w = self.mean_weight.view((-1,) + (1,) * (m.dim() - 1))
        return segment_sum(m * w, self.dst, self.n_nodes)

    def at_dst(self, x: torch.Tensor) -> torch.Tensor:
        """x_i for every edge: (N, ...) -> (E, ...)."""
        return x.index_select(0, self.dst)

    def at_src(self, x: torch.Tensor) -> torch.Tensor:
        """x_j for every edge: (N, ...) -> (E, ...)."""
        return x.index_select(0, self.src)


def edge_softmax(logits: torch.Tensor, edges: Edges, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights (E,H) over the incoming edges of each receiving atom.

    alpha_ij = w_ij exp(l_ij) / (1 + sum_j w_ij exp(l_ij)): a softmax with an extra "sink"
    of logit 0 and zero value, weighted by ``weight`` (E,) >= 0 (default 1). An edge whose
    weight goes smoothly to 0 at the distance cutoff leaves the attention smoothly, even
    when it is the last neighbour. sum_j alpha_ij <= 1.
    """
    idx = edges.dst.unsqueeze(-1).expand_as(logits)
    mx = logits.new_zeros((edges.n_nodes, logits.shape[1]))
    mx = mx.scatter_reduce_(0, idx, logits.detach(), "amax", include_self=True)  # >= 0 (sink)
    e = torch.exp(logits - edges.at_dst(mx))
    if weight is not None:
        e = e * weight.unsqueeze(-1)
    den = edges.sum_in(e) + torch.exp(-mx)
    return e / edges.at_dst(den)


# ---------------------------------------------------------------- featurisers
class GaussianRBF(nn.Module):
    """exp(-((d - c_k)/w)^2) for ``n_rbf`` centres c_k evenly spaced on [0, r_max] nm."""

    def __init__(self, n_rbf: int, r_max: float) -> None:
        super().__init__()
        self.inv_width = (n_rbf - 1) / r_max
        self.register_buffer("neg_scaled_centers", torch.linspace(0.0, -r_max, n_rbf) * self.inv_width,
                             persistent=False)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """d (E,) nm -> (E, n_rbf). The exponent is capped at 80 (values < 2e-35 are not
        resolved), which avoids the slow underflow path of exp on CPU."""
        t = torch.add(self.neg_scaled_centers, d.unsqueeze(-1), alpha=self.inv_width)
        return torch.exp((t * t).clamp_(max=80.0).neg_())


def cosine_envelope(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / cutoff) + 1) for d < cutoff, else 0; C1-smooth at the cutoff."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(d * (math.pi / cutoff)) + 1.0), torch.zeros_like(d))


@dataclass
class Prepared:
    """Per-forward quantities shared by all layers (built by :meth:`KStepModel.prepare`)."""

    pos: torch.Tensor  # (N,3) nm, input positions
    node_vecs: torch.Tensor  # (N,K,3) normalized input vectors: v/v_scale [, F/f_scale]
    pair_vecs: torch.Tensor  # (E,2K,3) node_vecs of receiver i then sender j
    edges: Edges  # the edge set after the cutoff, with its gather/scatter operators
    env: torch.Tensor | None  # (E,) cutoff envelope, None for the full graph
    h0: torch.Tensor  # (N,hidden) initial invariant features
    static: torch.Tensor  # (E,n_static) pair invariants fixed during a forward: v_i.v_j [, F..], one-hot hops
    masses: torch.Tensor  # (N,) amu
    batch: torch.Tensor  # (N,) molecule id
    n_graphs: int
    total_mass: torch.Tensor  # (G,) amu

    @property
    def n_nodes(self) -> int:
        return int(self.pos.shape[0])


# ---------------------------------------------------------------- projections
def graph_sum(x: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-molecule sums (G, ...) of per-atom values x (N, ...)."""
    if n_graphs == 1:
        return x.sum(0, keepdim=True)
    return segment_sum(x, batch, n_graphs)


def graph_expand(y: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-molecule values y (G, ...) for every atom: (N, ...), or (1, ...) broadcastable
    when there is one molecule."""
    return y if n_graphs == 1 else y.index_select(0, batch)


def remove_mass_weighted_mean(u: torch.Tensor, masses: torch.Tensor, batch: torch.Tensor, n_graphs: int,
                              total_mass: torch.Tensor) -> torch.Tensor:
    """u (N,3) minus its mass-weighted mean over each molecule (centre of mass frame)."""
    mean = graph_sum(masses.unsqueeze(-1) * u, batch, n_graphs) / total_mass.unsqueeze(-1)
    return u - graph_expand(mean, batch, n_graphs)


def remove_mean(u: torch.Tensor, batch: torch.Tensor, n_graphs: int, counts: torch.Tensor) -> torch.Tensor:
    """u (N,3) minus its plain mean over each molecule (e.g. zero net force)."""
    return u - graph_expand(graph_sum(u, batch, n_graphs) / counts.unsqueeze(-1), batch, n_graphs)


def remove_angular_momentum(dv: torch.Tensor, pos: torch.Tensor, masses: torch.Tensor, batch: torch.Tensor,
                            n_graphs: int, total_mass: torch.Tensor) -> torch.Tensor:
    """Project dv (N,3) nm/ps so that sum_i m_i (x_i - x_com) x dv_i = 0 per molecule.

    Removes the rigid rotation omega x (x_i - x_com) with I omega = L (I: inertia tensor,
    L: angular momentum of m dv). Linear momentum sum_i m_i dv_i is unchanged. A tiny
    relative ridge (10 eps tr I) keeps linear molecules and single atoms finite.
    """
    xc = remove_mass_weighted_mean(pos, masses, batch, n_graphs, total_mass)
    m = masses.unsqueeze(-1)
    ang = graph_sum(m * torch.linalg.cross(xc, dv), batch, n_graphs)  # (G,3)
    eye = torch.eye(3, dtype=dv.dtype, device=dv.device)
    r2 = (xc * xc).sum(-1)
    inertia_i = m.unsqueeze(-1) * (r2[:, None, None] * eye - xc.unsqueeze(-1) * xc.unsqueeze(-2))
    inertia = graph_sum(inertia_i, batch, n_graphs)  # (G,3,3)
    trace = inertia.diagonal(dim1=-2, dim2=-1).sum(-1)
    ridge = 10.0 * torch.finfo(dv.dtype).eps * trace + 1e-20
    omega = torch.linalg.solve(inertia + ridge[:, None, None] * eye, ang.unsqueeze(-1)).squeeze(-1)
    return dv - torch.linalg.cross(graph_expand(omega, batch, n_graphs).expand_as(xc), xc)


def smooth_clamp(u: torch.Tensor, batch: torch.Tensor, n_graphs: int, max_norm: float) -> torch.Tensor:
    """Scale each molecule's u (N,3) by s = tanh(r)/r with r = max_i |u_i| / max_norm.

    Then |u_i| <= tanh(r) max_norm < max_norm for every atom, and because the scaling is
    uniform within a molecule, zero (mass-weighted) sums and zero angular momentum survive.
    Near r = 0 the map is the identity up to O(r^2); it is monotone, hence invertible.

    Overflow-safe: u is divided by its largest |component| a before any norm (a float32 norm
    of components above ~1e19 is inf, which used to turn the output into exactly zero), and
    the result is (u / a) / n * tanh(r) * max_norm with n = max_i |u_i / a| in [1, sqrt 3].
    """
    a = _graph_amax(u.detach().abs().amax(-1), batch, n_graphs).clamp_min(torch.finfo(u.dtype).tiny)
    w = u / graph_expand(a, batch, n_graphs).unsqueeze(-1)  # every component in [-1, 1]
    n = _graph_amax(torch.linalg.vector_norm(w, dim=-1), batch, n_graphs).clamp_min(1.0)
    r = (a / max_norm) * n  # = max_i |u_i| / max_norm; may be inf, tanh(inf) = 1
    scale = torch.tanh(r) * max_norm / n
    return w * graph_expand(scale, batch, n_graphs).unsqueeze(-1)


def _graph_amax(x: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-molecule maxima (G,) of per-atom values x (N,) >= 0."""
    if n_graphs == 1:
        return x.amax(0, keepdim=True)
    return x.new_zeros(n_graphs).scatter_reduce(0, batch, x, "amax", include_self=True)


# ---------------------------------------------------------------- base model
class KStepModel(nn.Module):
    """Base of the k-step jump models: input normalization, embeddings, geometry features,
    the equivariant vector update and the constrained output head.

    Subclasses build ``self.layers`` (nn.ModuleList, one entry per layer, see :meth:`trunk`).
    The trunk yields normalized vector channels (N, C, 3): channel 0 the jump dx / dx_scale
    (it also moves the geometry the next layer sees), channel 1 dv / dv_scale, channel 2
    (force head) F / f_scale.
    """

    #: aggregate the edge terms of the vector update as a mean (True) or a plain sum (False)
    edge_mean: bool = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        for name in ("v_scale", "f_scale", "dx_scale", "dv_scale"):
            self.register_buffer(name, torch.tensor(1.0))
        h = cfg.hidden
        self.n_vec_in = 2 if cfg.use_forces else 1  # K: v [, F]
        self.n_vec_out = 3 if cfg.force_head else 2  # C: dx, dv [, F]
        # edge invariants per layer: RBF(d), d/r_max, r.v_i, r.v_j [, r.F_i, r.F_j],
        # then the static block: pair Gram matrix (K^2) and the one-hot bond-hop distance
        # (a learned hop encoding once multiplied by each layer's input weights).
        self.n_geom = cfg.n_rbf + 1 + 2 * self.n_vec_in + self.n_vec_in**2 + cfg.max_hops + 1
        self.atom_embed = nn.Embedding(cfg.max_z + 1, h)
        self.node_in = nn.Linear(1 + self.n_vec_in**2, h)
        self.rbf = GaussianRBF(cfg.n_rbf, cfg.rbf_range_nm)
        self.rbf_range = cfg.rbf_range_nm
        self.register_buffer("hop_values", torch.arange(cfg.max_hops + 1), persistent=False)
        self.layers = nn.ModuleList()

    # -- normalization ---------------------------------------------------------------
    @torch.no_grad()
    def set_normalization(self, v_scale: float | None = None, f_scale: float | None = None,
                          dx_scale: float | None = None, dv_scale: float | None = None) -> None:
        """Set input scales v_scale (nm/ps), f_scale (kJ/mol/nm) and output scales
        dx_scale (nm), dv_scale (nm/ps); None keeps a value. Stored in the state_dict."""
        for name, val in (("v_scale", v_scale), ("f_scale", f_scale), ("dx_scale", dx_scale), ("dv_scale", dv_scale)):
            if val is None:
                continue
            val = float(val)
            if not (val > 0 and math.isfinite(val)):
                raise ValueError(f"{name} must be finite and > 0, got {val}")
            getattr(self, name).fill_(val)

    def normalization(self) -> dict[str, float]:
        """Current scales as plain floats."""
        return {n: float(getattr(self, n)) for n in ("v_scale", "f_scale", "dx_scale", "dv_scale")}

    # -- per-forward preparation -----------------------------------------------------
    def prepare(self, b: GraphBatch) -> Prepared:
        """Normalize inputs, apply the distance cutoff, embed atoms and static pair features."""
        cfg = self.config
        n = b.n_atoms
        if cfg.use_forces:
            if b.forces is None:
                raise ValueError("model uses forces as input (use_forces) but the batch has none")
            node_vecs = torch.stack([b.vel / self.v_scale, b.forces / self.f_scale], dim=1)  # (N,K,3)
        else:
            node_vecs = (b.vel / self.v_scale).unsqueeze(1)
        src, dst = b.edge_index[0], b.edge_index[1]
        hops = b.edge_hops.clamp(max=cfg.max_hops)
        env = None
        if cfg.cutoff_nm is not None:
            d0 = torch.linalg.vector_norm(b.pos.index_select(0, dst) - b.pos.index_select(0, src), dim=-1)
            keep = torch.nonzero(d0 < cfg.cutoff_nm).squeeze(-1)
            src, dst, hops = src.index_select(0, keep), dst.index_select(0, keep), hops.index_select(0, keep)
            env = cosine_envelope(d0.index_select(0, keep), cfg.cutoff_nm)
        pair_vecs = torch.cat([node_vecs.index_select(0, dst), node_vecs.index_select(0, src)], dim=1)  # (E,2K,3)
        k = self.n_vec_in
        gram = (node_vecs.unsqueeze(2) * node_vecs.unsqueeze(1)).sum(-1).reshape(n, k * k)
        h0 = self.atom_embed(b.z) + self.node_in(torch.cat([torch.log(b.masses).unsqueeze(-1), gram], -1))
        pair_gram = (pair_vecs[:, :k].unsqueeze(2) * pair_vecs[:, k:].unsqueeze(1)).sum(-1).reshape(-1, k * k)
        one_hot = (hops.unsqueeze(-1) == self.hop_values).to(pair_gram.dtype)
        static = torch.cat([pair_gram, one_hot], dim=-1)
        total_mass = graph_sum(b.masses, b.batch, b.n_graphs)
        edges = Edges(src, dst, n, env, b.pos.dtype)
        return Prepared(b.pos, node_vecs, pair_vecs, edges, env, h0, static,
                        b.masses, b.batch, b.n_graphs, total_mass)

    def geometry(self, x: torch.Tensor, p: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge directions r_ij/(|r_ij|+delta) (E,3) and invariant features (E, n_geom) at
        positions x (N,3) nm: RBF(|r_ij|), |r_ij|/r_max, r_hat.v_i, r_hat.v_j [, r_hat.F_i,
        r_hat.F_j], then ``p.static``."""
        r = p.edges.at_dst(x) - p.edges.at_src(x)
        d = torch.linalg.vector_norm(r, dim=-1)
        r_hat = r / (d + DIR_SOFTENING_NM).unsqueeze(-1)
        dots = (p.pair_vecs * r_hat.unsqueeze(1)).sum(-1)  # (E,2K)
        geom = torch.cat([self.rbf(d), (d / self.rbf_range).unsqueeze(-1), dots, p.static], dim=-1)
        return r_hat, geom

    def vector_update(self, r_hat: torch.Tensor, edge_coef: torch.Tensor, node_coef: torch.Tensor,
                      p: Prepared) -> torch.Tensor:
        """Equivariant update (N,C,3) = AGG_j edge_coef_ij (E,C) r_hat_ij + node_coef (N,C*K) . node_vecs,
        AGG the envelope-weighted mean (``edge_mean``) or the sum over incoming edges."""
        ev = edge_coef.unsqueeze(-1) * r_hat.unsqueeze(1)
        out = p.edges.mean_in(ev) if self.edge_mean else p.edges.sum_in(ev)
        if self.n_vec_in == 1:
            return out + node_coef.unsqueeze(-1) * p.node_vecs  # (N,C,1) * (N,1,3)
        nc = node_coef.view(p.n_nodes, self.n_vec_out, self.n_vec_in, 1)
        return out + (nc * p.node_vecs.unsqueeze(1)).sum(2)

    def trunk(self, p: Prepared) -> torch.Tensor:
        """Run ``self.layers``; returns the normalized vector channels (N, C, 3).

        Each layer is called as ``layer(h, geom, p) -> (h, edge_coef (E,C),
        node_coef (N,C*K))`` with the pair geometry of the running jumped positions
        x + dx_scale * vec[:, 0] (``update_geometry``) or of the input positions.
        """
        update = self.config.update_geometry
        h = p.h0
        r_hat, geom = self.geometry(p.pos, p)
        vec = None
        for l, layer in enumerate(self.layers):
            if update and l > 0:
                r_hat, geom = self.geometry(self.jumped_positions(vec, p), p)
            h, c_edge, c_node = layer(h, geom, p)
            upd = self.vector_update(r_hat, c_edge, c_node, p)
            vec = upd if vec is None else vec + upd
        return vec

    # -- outputs ---------------------------------------------------------------------
    def head(self, vec: torch.Tensor, p: Prepared) -> dict[str, torch.Tensor]:
        """Scale, project (momentum) and clamp the raw channels into the output dict."""
        cfg = self.config
        vec = vec.to(p.pos.dtype)  # exact projections in the model's dtype, also under autocast
        dx = remove_mass_weighted_mean(vec[:, 0] * self.dx_scale, p.masses, p.batch, p.n_graphs, p.total_mass)
        dx = smooth_clamp(dx, p.batch, p.n_graphs, cfg.max_disp_nm * (1.0 - CLAMP_MARGIN))
        dv = remove_mass_weighted_mean(vec[:, 1] * self.dv_scale, p.masses, p.batch, p.n_graphs, p.total_mass)
        if cfg.conserve_angular_momentum:
            dv = remove_angular_momentum(dv, p.pos, p.masses, p.batch, p.n_graphs, p.total_mass)
        dv = smooth_clamp(dv, p.batch, p.n_graphs, cfg.max_dvel_nm_per_ps * (1.0 - CLAMP_MARGIN))
        out = {"dx": dx, "dv": dv, "dx_norm": dx / self.dx_scale, "dv_norm": dv / self.dv_scale}
        if cfg.force_head:
            counts = graph_sum(torch.ones_like(p.masses), p.batch, p.n_graphs)
            f = remove_mean(vec[:, 2], p.batch, p.n_graphs, counts)
            out["forces_norm"] = f
            out["forces"] = f * self.f_scale
        return out

    def forward(self, batch: GraphBatch) -> dict[str, torch.Tensor]:
        """Predict the k-step jump of a batch.

        Returns "dx" (N,3) nm and "dv" (N,3) nm/ps (exact: zero mass-weighted mean of dx and
        zero total momentum change per molecule; |dx_i| < max_disp_nm, |dv_i| <
        max_dvel_nm_per_ps), "dx_norm"/"dv_norm" (the same divided by dx_scale/dv_scale, for
        losses), and with the force head "forces" (N,3) kJ/mol/nm predicted at the jumped
        positions (zero net force) and "forces_norm" (divided by f_scale).
        """
        ref = self.v_scale
        if batch.pos.dtype != ref.dtype or batch.pos.device != ref.device:
            batch = batch.to(ref.device, ref.dtype)
        p = self.prepare(batch)
        return self.head(self.trunk(p), p)

    def jumped_positions(self, vec: torch.Tensor, p: Prepared) -> torch.Tensor:
        """Positions (N,3) nm after the running displacement channel vec[:,0] (normalized)."""
        return p.pos + self.dx_scale * vec[:, 0]

    def n_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(q.numel() for q in self.parameters() if q.requires_grad or not trainable_only)


def narrow_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a layer with few outputs, computed as (W x^T + b)^T (a transposed view):
    on CPU, MKL runs this shape about twice as fast as F.linear."""
    return torch.addmm(layer.bias.unsqueeze(1), layer.weight, x.T).T


def small_init_(layer: nn.Linear, gain: float = 1e-2) -> nn.Linear:
    """Xavier init scaled by ``gain`` and zero bias (output coefficient layers start near 0)."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def freeze_first_layers(model: KStepModel, n: int, include_embeddings: bool = True) -> int:
    """Freeze ``model.layers[:n]`` (and, when n > 0 and ``include_embeddings``, the atom
    embedding they read). Returns the number of frozen parameters."""
    if not 0 <= n <= len(model.layers):
        raise ValueError(f"cannot freeze {n} of {len(model.layers)} layers")
    modules: list[nn.Module] = list(model.layers[:n])
    if n > 0 and include_embeddings:
        modules += [model.atom_embed, model.node_in]
    frozen = 0
    for mod in modules:
        for q in mod.parameters():
            q.requires_grad_(False)
            frozen += q.numel()
    return frozen
