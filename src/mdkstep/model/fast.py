"""A fast inference path of :class:`~mdkstep.model.egnn.EGNN` for one molecule and R replicas
(what the hybrid integrator's :class:`~mdkstep.model.jumper.ModelJumper` calls once per cycle).

Same arithmetic as ``EGNN.forward`` (outputs equal to float32 rounding, ~1e-7 of their scale),
less of everything else. A forward of the reference on a small molecule is mostly per-op
overhead (~500 small aten calls); this path:

* works on the dense per-replica pair grid (R, N, N): the full intra-molecular graph that the
  reference builds as an edge list is every ordered pair, so gathers at the receiver/sender
  become broadcasts and the scatter-means become one batched matmul with a weight row per
  receiving atom. The diagonal (i = i) and the pairs beyond the cutoff stay in the grid with
  weight 0, which adds exact zeros (all their terms are finite);
* precomputes per molecule what does not depend on x, v, F: the atom embedding + log-mass
  rows of h0, every layer's bias + one-hot-hop part of its first edge linear, the weight
  splits, masses, the diagonal mask;
* folds the pair Gram invariants of all layers into one matmul per forward.

Only plain EGNN jump models (``kind: jump``, ``arch: egnn``, without the angular-momentum
projection) on molecules of at most ``MAX_DENSE_ATOMS`` atoms take it (:func:`supports`); the
dense grid costs N^2 per replica, which a large molecule with a cutoff would waste.
Units: nm, nm/ps, kJ/(mol nm), amu.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.nn import functional as F

from mdkstep.model.common import CLAMP_MARGIN, DIR_SOFTENING_NM
from mdkstep.model.egnn import EGNN
from mdkstep.model.graph import graph_hops

#: the dense pair grid is used up to this many atoms per molecule (the reference path beyond)
MAX_DENSE_ATOMS = 64


def supports(model: torch.nn.Module, n_atoms: int) -> bool:
    """Whether :class:`FastEGNN` reproduces ``model``'s forward for a molecule of ``n_atoms``."""
    if type(model) is not EGNN:
        return False
    cfg = model.config
    return (cfg.kind == "jump" and not cfg.conserve_angular_momentum and model.edge_mean
            and 1 <= n_atoms <= MAX_DENSE_ATOMS)


class FastEGNN:
    """``model``'s forward for R replicas of one molecule (z, masses amu, bonds), from NumPy
    (R,N,3) positions nm, velocities nm/ps, forces kJ/(mol nm) to NumPy float64 dx nm,
    dv nm/ps [, forces kJ/(mol nm)] (R,N,3), with the jumper's input preparation (COM-centred
    positions, COM-free velocities) included. Weights are read at construction: build a new
    one after changing the model."""

    def __init__(self, model: EGNN, z: np.ndarray, masses: np.ndarray, bonds: np.ndarray, n_rep: int,
                 trace: bool = True) -> None:
        if not supports(model, len(z)):
            raise ValueError("FastEGNN: unsupported model or molecule (see mdkstep.model.fast.supports)")
        cfg = model.config
        p0 = next(model.parameters())
        self.dtype, self.device = p0.dtype, p0.device
        dd = {"dtype": self.dtype, "device": self.device}
        self.cfg = cfg
        self.R, self.N = int(n_rep), len(z)
        R, N, H = self.R, self.N, cfg.hidden
        self.K, self.C = model.n_vec_in, model.n_vec_out
        K = self.K
        self.use_forces, self.force_head = cfg.use_forces, cfg.force_head
        self.cutoff = cfg.cutoff_nm
        self.update_geometry = cfg.update_geometry
        norm = model.normalization()
        # python floats (exactly the float32 buffers): no 0-dim tensor conversions per op
        self.v_scale, self.f_scale, self.dx_scale, self.dv_scale = (
            norm["v_scale"], norm["f_scale"], norm["dx_scale"], norm["dv_scale"])
        self.rbf_centers, self.rbf_inv_width = model.rbf.neg_scaled_centers, model.rbf.inv_width
        self.rbf_range = model.rbf_range
        self.max_dx = cfg.max_disp_nm * (1.0 - CLAMP_MARGIN)
        self.max_dv = cfg.max_dvel_nm_per_ps * (1.0 - CLAMP_MARGIN)

        m64 = np.asarray(masses, dtype=np.float64)
        self.mw64 = m64 / m64.sum()  # COM weights of the (float64) input centring
        m = torch.as_tensor(m64, **dd)
        self.masses = m.view(1, N, 1)
        self.total_mass = float(m.sum())
        self.offdiag = (1.0 - torch.eye(N, **dd)).expand(R, N, N)  # pair weights are 0 on i == i

        with torch.no_grad():
            # h0 = atom_embed(z) + node_in([log m, gram]): all but the gram part is per molecule
            w_in, b_in = model.node_in.weight.detach(), model.node_in.bias.detach()
            zt = torch.as_tensor(np.asarray(z, dtype=np.int64), device=self.device)
            h0c = model.atom_embed.weight.detach().index_select(0, zt) + torch.log(m).unsqueeze(-1) * w_in[:, 0] + b_in
            self.h0_const = h0c.repeat(R, 1).contiguous()  # (RN,H)
            self.w_gram = w_in[:, 1:].T.contiguous()  # (K^2,H)
            # geom = [rbf, d/r, r.vecs_i (K), r.vecs_j (K) | pair gram (K^2), one-hot hop]. The one-hot
            # has exactly one 1 per row, so geom_in's bias is folded into the hop weights (no bias
            # broadcast copy); r_hat_ij.vecs_j = -(r_hat_ji.vecs_j) is read as the transposed
            # r_hat.vecs_i, with the sign folded into those weights (negation is exact)
            n_dyn = cfg.n_rbf + 1 + 2 * K
            hops = torch.as_tensor(graph_hops(N, np.asarray(bonds, dtype=np.int64).reshape(-1, 2), cfg.max_hops),
                                   device=self.device)  # (N,N), already clipped to max_hops
            one_hot = (hops.unsqueeze(-1) == torch.arange(cfg.max_hops + 1, device=self.device)).to(self.dtype)
            self.one_hot = one_hot.view(1, N, N, -1).expand(R, N, N, -1)
            self.layers = []
            for layer in model.layers:
                w = layer.geom_in.weight.detach().T.clone()  # (n_geom,H)
                w[n_dyn - K:n_dyn] *= -1.0
                w[n_dyn + K * K:] += layer.geom_in.bias.detach()
                self.layers.append(_FastLayer(layer, w.contiguous()))
        self.H, self.L = H, len(self.layers)
        self.traced = False
        if trace:
            self._trace()

    def _trace(self) -> None:
        """Replace :meth:`_core` by its TorchScript trace, frozen: the same aten ops without the
        Python between them (~0.3 ms of a ~1.4 ms eager forward on aspirin). The trace is exact
        (no fusion: the CPU fuser needs LLVM, absent from the wheels) and valid for this (R, N):
        the core has no data-dependent Python control flow. Stays eager when tracing fails."""
        R, N, K = self.R, self.N, self.K
        gen = torch.Generator(device="cpu").manual_seed(0)
        pos = (0.3 * torch.randn(R, N, 3, generator=gen)).to(self.device, self.dtype)
        nv = torch.randn(R, N, K, 3, generator=gen).to(self.device, self.dtype)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                core = torch.jit.freeze(torch.jit.trace(_Core(self), (pos, nv), check_trace=False).eval())
        except Exception:  # noqa: BLE001 -- any tracing failure: the eager core is the same arithmetic
            return
        self._core = core
        self.traced = True

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def __call__(self, x: np.ndarray, v: np.ndarray, f: np.ndarray | None) -> tuple:
        R, N = self.R, self.N
        # the jumper's input preparation: COM-centred x, COM-free v (in float64), then the model dtype
        inp = np.stack([x, v, f] if self.use_forces else [x, v]).astype(np.float64, copy=False).reshape(-1, R, N, 3)
        inp[:2] -= (self.mw64 @ inp[:2])[:, :, None]
        inp = torch.from_numpy(inp).to(self.device, self.dtype)
        pos = inp[0]  # (R,N,3)
        if self.use_forces:
            nv = torch.stack([inp[1] / self.v_scale, inp[2] / self.f_scale], dim=2)  # (R,N,K,3)
        else:
            nv = (inp[1] / self.v_scale).unsqueeze(2)
        out = self._core(pos, nv).to("cpu", torch.float64).numpy()  # (C,R,N,3)
        return out[0], out[1], (out[2] if self.force_head else None)

    def _core(self, pos: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
        return self._head(self._trunk(pos, nv))

    def _geometry(self, x: torch.Tensor, nvt: torch.Tensor, static: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Directions r_ij/(|r_ij|+delta) (R,N,N,3) and the edge invariants (R*N*N, n_geom)."""
        R, N = self.R, self.N
        r = x.unsqueeze(2) - x.unsqueeze(1)  # r_ij = x_i - x_j
        d = torch.linalg.vector_norm(r, dim=-1)
        r_hat = r / (d + DIR_SOFTENING_NM).unsqueeze(-1)
        dots = torch.bmm(r_hat.view(R * N, N, 3), nvt).view(R, N, N, -1)  # r_hat_ij.vecs_i
        geom = torch.cat([self._rbf(d), (d / self.rbf_range).unsqueeze(-1), dots, dots.transpose(1, 2), static],
                         dim=-1)
        return r_hat, geom.view(R * N * N, -1)

    def _rbf(self, d: torch.Tensor) -> torch.Tensor:
        """GaussianRBF with the exponent capped at 60 instead of 80: values below e^-60 ~ 1e-26
        then never meet the weights, whose products would be float32 denormals (a ~2.5x slower
        matmul on x86). Differs from the reference by < 1e-26 per feature."""
        t = torch.add(self.rbf_centers, d.unsqueeze(-1), alpha=self.rbf_inv_width)
        return torch.exp((t * t).clamp_(max=60.0).neg_())

    def _trunk(self, pos: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
        R, N, K = self.R, self.N, self.K
        RN = R * N
        # envelope-weighted mean weights w_ij (R,N,N), 0 on the diagonal and beyond the cutoff
        if self.cutoff is not None:
            d0 = torch.linalg.vector_norm(pos.unsqueeze(2) - pos.unsqueeze(1), dim=-1)
            env = torch.where(d0 < self.cutoff, 0.5 * (torch.cos(d0 * (np.pi / self.cutoff)) + 1.0),
                              0.0).mul_(self.offdiag)
            wgt = env / env.sum(-1, keepdim=True).clamp_min(1.0)
        else:
            wgt = self.offdiag / max(N - 1, 1)
        wrow = wgt.view(RN, 1, N)
        # per-node gram -> h0; pair gram vecs_i.vecs_j (R,N,N,K,K) + one-hot hops: the static columns
        nvf = nv.reshape(RN, K, 3)
        nvt = nvf.transpose(1, 2)
        h = torch.addmm(self.h0_const, torch.bmm(nvf, nvt).view(RN, K * K), self.w_gram)
        nvr = nv.reshape(R, N * K, 3)
        pgram = torch.bmm(nvr, nvr.transpose(1, 2)).view(R, N, K, N, K).transpose(2, 3).reshape(R, N, N, K * K)
        static = torch.cat([pgram, self.one_hot], dim=-1)

        r_hat, geom = self._geometry(pos, nvt, static)
        vec = None
        for l, layer in enumerate(self.layers):
            if self.update_geometry and l > 0:
                r_hat, geom = self._geometry(pos + self.dx_scale * vec[:, :, 0], nvt, static)
            h, c_edge, c_node = layer(h, geom, wrow, R, N)
            # sum_j w_ij c_ij r_hat_ij as one batched matmul per receiving atom
            wr = (wgt.unsqueeze(-1) * r_hat).view(RN, N, 3)
            upd = torch.baddbmm(torch.bmm(c_node, nvf), c_edge, wr).view(R, N, -1, 3)  # (RN,C,3)
            vec = upd if vec is None else vec + upd
        return vec

    def _head(self, vec: torch.Tensor) -> torch.Tensor:
        """The reference head for R molecules at once; (C,R,N,3) dx, dv [, forces]."""
        m, M = self.masses, self.total_mass
        dx = vec[:, :, 0] * self.dx_scale
        dx = _smooth_clamp(dx - (m * dx).sum(1, keepdim=True) / M, self.max_dx)
        dv = vec[:, :, 1] * self.dv_scale
        dv = _smooth_clamp(dv - (m * dv).sum(1, keepdim=True) / M, self.max_dv)
        outs = [dx, dv]
        if self.force_head:
            fr = vec[:, :, 2]
            outs.append((fr - fr.mean(1, keepdim=True)) * self.f_scale)
        return torch.stack(outs)


class _Core(torch.nn.Module):
    """FastEGNN's core (pos, normalized vectors) -> (C,R,N,3) as a module, for tracing."""

    def __init__(self, fast: FastEGNN) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, pos: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
        return self.fast._core(pos, nv)


class _FastLayer:
    """One EGNN layer on the dense pair grid (weights shared with the module, views only)."""

    def __init__(self, layer, w_geom: torch.Tensor) -> None:
        self.w_geom = w_geom  # (n_geom,H): geom_in with its bias folded into the one-hot rows
        self.w_np, self.b_np = layer.node_pair.weight.detach().T, layer.node_pair.bias.detach()
        self.w_eo, self.b_eo = layer.edge_out.weight.detach().T, layer.edge_out.bias.detach()
        lin1, lin2 = layer.node_mlp[0], layer.node_mlp[2]
        self.w_n1, self.b_n1 = lin1.weight.detach().T, lin1.bias.detach()
        self.w_n2, self.b_n2 = lin2.weight.detach().T, lin2.bias.detach()
        self.w_ce, self.b_ce = layer.coef_edge.weight.detach(), layer.coef_edge.bias.detach().unsqueeze(1)
        self.w_cn, self.b_cn = layer.coef_node.weight.detach().T, layer.coef_node.bias.detach()
        self.C = layer.coef_edge.out_features
        self.K = layer.coef_node.out_features // self.C

    def __call__(self, h, geom, wrow, R, N):
        RN, H = h.shape
        a = torch.addmm(self.b_np, h, self.w_np)  # [a_i | a_j] (RN,2H)
        z = torch.mm(geom, self.w_geom).view(R, N, N, H)
        z.add_(a[:, :H].view(R, N, 1, H)).add_(a[:, H:].view(R, 1, N, H))  # + a_i (receiver) + a_j (sender)
        m = F.silu(torch.addmm(self.b_eo, F.silu(z.view(-1, H), inplace=True), self.w_eo), inplace=True)
        agg = torch.bmm(wrow, m.view(RN, N, H)).view(RN, H)  # envelope-weighted mean over senders j
        h = h + torch.addmm(self.b_n2, F.silu(torch.addmm(self.b_n1, torch.cat([h, agg], dim=-1), self.w_n1)),
                            self.w_n2)
        # edge coefficients as (W m^T + b): MKL runs the narrow output this way round faster
        c_edge = torch.addmm(self.b_ce, self.w_ce, m.T).view(self.C, RN, N).transpose(0, 1)  # (RN,C,N)
        c_node = torch.addmm(self.b_cn, h, self.w_cn).view(RN, self.C, self.K)
        return h, c_edge, c_node


def _smooth_clamp(u: torch.Tensor, max_norm: float) -> torch.Tensor:
    """:func:`mdkstep.model.common.smooth_clamp` for (R,N,3): one molecule per replica."""
    a = u.abs().amax(-1).amax(-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)  # (R,1)
    w = u / a.unsqueeze(-1)
    n = torch.linalg.vector_norm(w, dim=-1).amax(-1, keepdim=True).clamp_min(1.0)
    scale = torch.tanh((a / max_norm) * n) * max_norm / n
    return w * scale.unsqueeze(-1)
