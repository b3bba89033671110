"""Learned shear kicks for exact mode: a reversible, volume-preserving k-step jump.

One stride of length tau = k dt is the palindromic composition of shears

    v += a(x); x += h v; v += b(x); x += h v; [one force call U(x'), F(x')]; v += a(x')

with h = tau/2 (``n_inner`` = 1). With ``n_inner`` = L the inner part is
D k_1 D k_2 ... D k_L D ... k_2 D k_1 D, 2L drifts of h = tau/(2L) and 2L-1 inner kicks.

* a(x) = (tau/2) F(x)/m + delta_a(x, F(x)), the outer kick; F(x) is a function of x, so
  delta_a is a function of positions only. b, c, ... = delta_b(x), ... (no real force:
  that would be a second call).
* Every kick is a shear v -> v + g(x) and every drift a shear x -> x + h v: each has unit
  Jacobian, so the map is volume-preserving. The sequence is a palindrome and
  R (v -> -v) inverts every shear (R K_g R = K_g^{-1}, R D_h R = D_h^{-1}), so
  Phi R Phi = R: the map is time-reversible. Both hold for ANY functions delta(x); this is
  what makes a Metropolis test on H = U + K exact (mdkstep.exact.sampler).
* The deltas come from the EGNN's velocity-update channel: zero mass-weighted sum per
  molecule (linear momentum is then conserved exactly by every stride, as far as the
  engine's forces sum to zero), optionally zero torque (a projection that depends on x
  only), smoothly bounded. The networks never see velocities: the outer net's single input
  vector channel carries F(x), the inner nets' carries zeros.
* The output coefficient layers start at zero, so delta = 0 exactly and the stride is one
  velocity-Verlet step of tau: the model is the correction that lets Verlet take a stride
  it cannot take alone.
* a(x') is reused as the next stride's first kick: a stride costs 2L model forwards and one
  force call.

With distance constraints (MM, HBonds) every drift is RATTLE's (SHAKE along the gradients at
the drift's start, velocities onto the tangent space at its end) and every kick is projected
onto the tangent space (mdkstep.constraints): each piece is then measure-preserving and
reversible on the constraint manifold's phase space, so the composition keeps both
properties (up to the Newton solve, which exact mode checks). Units: nm, ps, kJ/mol, amu;
forces kJ/(mol nm), kicks nm/ps.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from mdkstep.constraints import DistanceConstraints
from mdkstep.model.common import KStepModel
from mdkstep.model.config import ModelConfig
from mdkstep.model.graph import GraphBatch, make_graph_batch
from mdkstep.model.networks import build_network

#: (positions (N,3) nm) -> (potential energies (G,) kJ/mol, forces (N,3) kJ/(mol nm))
ForceFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: default dx_scale (nm) of the sub-networks: only moves the geometry their later layers see
GEOMETRY_SCALE_NM = 0.005


def zero_kick_heads_(model: KStepModel) -> KStepModel:
    """Zero the output coefficient layers of every layer, so the model's outputs are exactly
    0 (its gradients are not: they are features times the upstream gradient)."""
    for layer in model.layers:
        for name in ("coef_edge", "coef_node"):
            lin = getattr(layer, name)
            nn.init.zeros_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
    return model


def randomize_kick_heads_(model: nn.Module, gain: float = 1.0, generator: torch.Generator | None = None) -> nn.Module:
    """Give every output coefficient layer random weights (std ``gain``/sqrt(fan_in)) and
    zero bias: a deliberately non-zero correction, for tests and ablations."""
    with torch.no_grad():
        for mod in model.modules():
            for name in ("coef_edge", "coef_node"):
                lin = getattr(mod, name, None)
                if isinstance(lin, nn.Linear):
                    w = torch.randn(lin.weight.shape, generator=generator, dtype=lin.weight.dtype)
                    lin.weight.copy_(w * gain / lin.weight.shape[1] ** 0.5)
                    if lin.bias is not None:
                        lin.bias.zero_()
    return model


class ShearKicks(nn.Module):
    """The learned corrections of one stride: ``outer`` (delta_a, input x and F(x)) and
    ``inner[l]`` (delta_b, delta_c, ..., input x only), each an E(3)-equivariant k-step
    model (mdkstep.model) whose "dv" output is the kick (nm/ps).

    Args:
        cfg: architecture of each sub-network; ``use_forces`` and ``force_head`` are ignored
            (the outer net always sees F(x) in its vector channel, the inner nets zeros).
        n_inner: L, the number of distinct inner kick functions (L = 1: a b a).
        members: M, networks summed in every kick (``outer_more``, ``inner_more``: the M - 1
            beyond the first, so that a grown model loads its parent's weights unchanged).
    """

    def __init__(self, cfg: ModelConfig, n_inner: int = 1, members: int = 1) -> None:
        super().__init__()
        if n_inner < 1 or members < 1:
            raise ValueError(f"n_inner and members must be >= 1, got {n_inner}, {members}")
        sub = replace(cfg, kind="jump", n_inner=1, members=1, use_forces=False, force_head=False)
        self.config = sub  #: each sub-network's architecture
        #: what a checkpoint stores
        self.model_config = replace(cfg, kind="shear", n_inner=int(n_inner), members=int(members))
        self.n_inner, self.members = int(n_inner), int(members)
        self.outer = zero_kick_heads_(build_network(sub))
        self.inner = nn.ModuleList(zero_kick_heads_(build_network(sub)) for _ in range(n_inner))
        self.outer_more = nn.ModuleList(zero_kick_heads_(build_network(sub)) for _ in range(members - 1))
        self.inner_more = nn.ModuleList(nn.ModuleList(zero_kick_heads_(build_network(sub)) for _ in range(n_inner))
                                        for _ in range(members - 1))
        self.set_scales(f_scale=1.0, kick_scale=1.0)

    @torch.no_grad()
    def set_scales(self, f_scale: float, kick_scale: float, geometry_scale: float = GEOMETRY_SCALE_NM) -> None:
        """Input force scale (kJ/(mol nm)), kick scale (nm/ps: the deltas are O(1) times it)
        and the running-geometry scale (nm) of every sub-network."""
        for net in self.outer_nets():
            net.set_normalization(v_scale=f_scale, dv_scale=kick_scale, dx_scale=geometry_scale)
        for level in range(self.n_inner):
            for net in self.inner_nets(level):
                net.set_normalization(v_scale=1.0, dv_scale=kick_scale, dx_scale=geometry_scale)

    def outer_nets(self) -> list[KStepModel]:
        """The networks whose outputs sum to delta_a."""
        return [self.outer, *self.outer_more]

    def inner_nets(self, level: int) -> list[KStepModel]:
        """The networks whose outputs sum to inner kick ``level``."""
        return [self.inner[level], *(more[level] for more in self.inner_more)]

    @property
    def palindrome(self) -> list[int]:
        """Inner kick levels in order: [0] for L = 1, [0, 1, 0] for L = 2, ..."""
        up = list(range(self.n_inner))
        return up + up[-2::-1]

    def delta_outer(self, tmpl: GraphBatch, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """delta_a(x, F(x)) (N,3) nm/ps at positions x (N,3) nm with forces f (N,3)."""
        g = replace(tmpl, pos=x, vel=f, forces=None)
        return sum(net(g)["dv"] for net in self.outer_nets())

    def delta_inner(self, level: int, tmpl: GraphBatch, x: torch.Tensor) -> torch.Tensor:
        """delta of inner kick ``level`` (N,3) nm/ps at positions x (N,3) nm."""
        g = replace(tmpl, pos=x, vel=torch.zeros_like(x), forces=None)
        return sum(net(g)["dv"] for net in self.inner_nets(level))


# ------------------------------------------------------------------------- the map

def graph_template(z: np.ndarray, masses: np.ndarray, bonds: np.ndarray, n_copies: int = 1,
                   max_hops: int = 8, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> GraphBatch:
    """A GraphBatch of ``n_copies`` copies of one molecule with zero positions/velocities;
    the map replaces pos and vel at every kick (topology built once)."""
    n = len(z)
    zeros = np.zeros((n, 3))
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    return make_graph_batch([z] * n_copies, [masses] * n_copies, [zeros] * n_copies, [zeros] * n_copies, None,
                            [bonds] * n_copies, max_hops=max_hops, dtype=dtype, device=device)


def outer_kick(kicks: ShearKicks, tmpl: GraphBatch, x: torch.Tensor, f: torch.Tensor, tau: float,
               cons: DistanceConstraints | None = None) -> torch.Tensor:
    """a(x) = (tau/2) F(x)/m + delta_a(x, F(x)) (N,3) nm/ps; tau ps, f kJ/(mol nm). With
    constraints, its projection P(x) a(x) onto the tangent space (the RATTLE kick)."""
    a = (0.5 * tau) * f / tmpl.masses.unsqueeze(-1) + kicks.delta_outer(tmpl, x, f)
    return a if cons is None else cons.velocities(x, a)


def drift(x: torch.Tensor, v: torch.Tensor, h: float,
          cons: DistanceConstraints | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x += h v; with constraints the RATTLE drift: SHAKE along the gradients at x, then
    v = P(x') (x' - x)/h (mdkstep.constraints)."""
    if cons is None:
        return x + h * v, v
    x1 = cons.positions(x, x + h * v)
    return x1, cons.velocities(x1, (x1 - x) / h)


def inner_path(kicks: ShearKicks, tmpl: GraphBatch, x: torch.Tensor, v: torch.Tensor,
               tau: float, cons: DistanceConstraints | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Drifts and inner kicks between the two outer kicks: D k_1 D ... k_L ... D k_1 D
    (constrained: every drift RATTLE's, every kick projected onto the tangent space)."""
    h = tau / (2 * kicks.n_inner)
    for level in kicks.palindrome:
        x, v = drift(x, v, h, cons)
        v = v + kicks.delta_inner(level, tmpl, x)
        if cons is not None:
            v = cons.velocities(x, v)
    return drift(x, v, h, cons)


def stride(kicks: ShearKicks, tmpl: GraphBatch, x: torch.Tensor, v: torch.Tensor, a0: torch.Tensor, tau: float,
           force_fn: ForceFn, cons: DistanceConstraints | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stride from (x nm, v nm/ps) with the cached first kick a0 = a(x) (nm/ps).

    Calls ``force_fn`` once, at x'. Returns (x', v', U(x') (G,) kJ/mol, F(x') kJ/(mol nm),
    a(x') nm/ps: the next stride's first kick). With constraints, x and v must lie on the
    manifold and its tangent space (a0 projected: :func:`outer_kick` with ``cons``)."""
    x1, v1 = inner_path(kicks, tmpl, x, v + a0, tau, cons)
    u1, f1 = force_fn(x1)
    a1 = outer_kick(kicks, tmpl, x1, f1, tau, cons)
    return x1, v1 + a1, u1, f1, a1


def shear_map(kicks: ShearKicks, tmpl: GraphBatch, x: torch.Tensor, v: torch.Tensor, tau: float,
              force_fn: ForceFn, cons: DistanceConstraints | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi(x, v) as a function of (x, v) alone (computes F(x) and a(x) itself: two force
    calls); differentiable when ``force_fn`` is, e.g. for Jacobians."""
    _, f0 = force_fn(x)
    x1, v1, _, _, _ = stride(kicks, tmpl, x, v, outer_kick(kicks, tmpl, x, f0, tau, cons), tau, force_fn, cons)
    return x1, v1


def n_forwards_per_stride(kicks: ShearKicks) -> int:
    """Model forwards per stride: (2L - 1 inner kicks plus a(x')) times the members M."""
    return (len(kicks.palindrome) + 1) * kicks.members


def untrained_shear_kicks(dtype: torch.dtype = torch.float64) -> ShearKicks:
    """delta = 0 exactly: the stride is one velocity-Verlet step of tau, so with the Metropolis
    test this is Metropolized velocity Verlet (exact mode's honest peer). A tiny network: its
    size does not matter when every output layer is zero."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind="shear", hidden=8, n_layers=1, n_rbf=4, max_hops=3, cutoff_nm=None)
    cfg.validate()
    return ShearKicks(cfg, n_inner=cfg.n_inner, members=cfg.members).to(dtype)
