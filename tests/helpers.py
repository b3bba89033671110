"""Shared test helpers (plain functions and classes; fixtures live in conftest.py). Test modules
import these from here, never from one another.

- An analytic harmonic engine for the hybrid integrator: :class:`HarmonicLattice` (with its exact
  propagator), :class:`Oracle` (an exact, optionally wrong, k-step jumper), :func:`start`,
  :func:`cfg`, :func:`run`. Units: nm, ps, kJ/mol, amu, K.
- Small molecules and models for the k-step networks: :func:`random_molecule`, :func:`batch_of`,
  :func:`make_model`, :func:`random_orthogonal`, :func:`rel_err`.
"""
from __future__ import annotations

import numpy as np
import torch

from mdkstep.engines.base import ForceEngine
from mdkstep.hybrid import HybridConfig, run_hybrid
from mdkstep.model import GraphBatch, ModelConfig, build_model, make_graph_batch
from mdkstep.utils import KB_KJ_PER_MOL_K

# ------------------------------------------------------------------ analytic harmonic engine

MASSES = np.array([12.0, 1.008, 15.999, 1.008])  # amu
Z = np.array([6, 1, 8, 1])
X_EQ = np.array([[0.0, 0.0, 0.0], [0.11, 0.0, 0.0], [-0.06, 0.12, 0.0], [-0.14, 0.16, 0.05]])  # nm
SPRINGS = [(0, 1, 3.0e4), (0, 2, 5.0e4), (2, 3, 3.0e4), (1, 2, 1.0e4), (0, 3, 5.0e3)]  # kJ/(mol nm^2)


class HarmonicLattice(ForceEngine):
    """U = 1/2 sum_ij k_ij |(x_i - x_j) - (x_eq_i - x_eq_j)|^2: linear forces, pairwise (momentum
    conserving), translation invariant, with an exact solution (:meth:`propagate`)."""

    name = "harmonic"

    def __init__(self):
        super().__init__(MASSES, Z)
        n = len(MASSES)
        k = np.zeros((n, n))
        for i, j, kij in SPRINGS:
            k[i, i] += kij
            k[j, j] += kij
            k[i, j] -= kij
            k[j, i] -= kij
        self.hessian = np.kron(k, np.eye(3))  # (3N, 3N)
        s = 1.0 / np.sqrt(np.repeat(MASSES, 3))
        w2, self.modes = np.linalg.eigh(s[:, None] * self.hessian * s[None, :])
        self.omega = np.sqrt(np.clip(w2, 0.0, None))  # 1/ps

    def _compute(self, x):
        d = (x - X_EQ).reshape(-1)
        g = self.hessian @ d
        return 0.5 * d @ g, -g.reshape(-1, 3)

    def propagate(self, x, v, t):
        """Exact state after time t (ps) from x (...,N,3), v (...,N,3)."""
        sq = np.sqrt(np.repeat(MASSES, 3))
        shape = x.shape
        q = ((x - X_EQ).reshape(-1, 3 * len(MASSES)) * sq) @ self.modes
        p = (v.reshape(-1, 3 * len(MASSES)) * sq) @ self.modes
        w = self.omega
        osc = w > 1e-6
        c, s = np.cos(w * t), np.sin(w * t)
        wsafe = np.where(osc, w, 1.0)
        q1 = np.where(osc, q * c + p * s / wsafe, q + p * t)
        p1 = np.where(osc, -q * wsafe * s + p * c, p)
        x1 = (q1 @ self.modes.T / sq).reshape(shape) + X_EQ
        v1 = (p1 @ self.modes.T / sq).reshape(shape)
        return x1, v1


class Oracle:
    """Exact k-step jump; ``scale`` != 1 makes it slightly wrong; raises at call ``fail_at``."""

    def __init__(self, eng, tau, scale=1.0, fail_at=None):
        self.eng, self.tau, self.scale, self.fail_at, self.calls = eng, tau, scale, fail_at, 0

    def __call__(self, x, v, f):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        x1, v1 = self.eng.propagate(x, v, self.tau)
        return self.scale * (x1 - x), self.scale * (v1 - v)


def start(n_rep, temp=300.0, seed=1, com_velocity=None):
    rng = np.random.default_rng(seed)
    x = X_EQ + rng.normal(scale=0.004, size=(n_rep, 4, 3))
    v = rng.normal(size=(n_rep, 4, 3)) * np.sqrt(KB_KJ_PER_MOL_K * temp / MASSES)[:, None]
    v -= (np.einsum("rij,i->rj", v, MASSES) / MASSES.sum())[:, None]
    if com_velocity is not None:
        v += np.asarray(com_velocity)
    return x, v


def cfg(**kw) -> HybridConfig:
    base = dict(k=4, dt_fs=0.5, ensemble="nve", energy_filter=False, chunk_frames=50, temperature_K=300.0)
    base.update(kw)
    c = HybridConfig(**base)
    c.validate()
    return c


def run(tmp_path, eng, jumper, c, x0, v0, n_cycles, name="h.npz", seed=0, **kw):
    return run_hybrid(eng, jumper, c, x0, v0, n_cycles, tmp_path / name, np.random.default_rng(seed), progress=False, **kw)


# ------------------------------------------------------------- molecules and models

MASS = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
F64 = torch.float64


def random_molecule(n: int, seed: int) -> dict[str, np.ndarray]:
    """A chain of n atoms (random walk, 0.15 nm steps) plus one ring bond; nm, nm/ps, kJ/mol/nm."""
    rng = np.random.default_rng(seed)
    z = rng.choice([1, 6, 7, 8], size=n)
    steps = rng.normal(size=(n, 3))
    steps *= 0.15 / np.linalg.norm(steps, axis=1, keepdims=True)
    pos = np.cumsum(steps, axis=0) + rng.normal(size=3)
    bonds = [[i, i + 1] for i in range(n - 1)] + ([[0, n - 1]] if n > 3 else [])
    return {
        "z": z,
        "masses": np.array([MASS[int(a)] for a in z]),
        "pos": pos,
        "vel": rng.normal(size=(n, 3)) * 0.8,
        "forces": rng.normal(size=(n, 3)) * 400.0,
        "bonds": np.array(bonds, dtype=np.int64).reshape(-1, 2),
    }


def batch_of(mols: list[dict], dtype: torch.dtype = F64) -> GraphBatch:
    return make_graph_batch([m["z"] for m in mols], [m["masses"] for m in mols], [m["pos"] for m in mols],
                            [m["vel"] for m in mols], [m["forces"] for m in mols], [m["bonds"] for m in mols],
                            dtype=dtype)


def make_model(arch: str, seed: int = 0, noise: float = 0.3, **kw) -> torch.nn.Module:
    """Small float64 model with perturbed weights, so that outputs are far from zero."""
    torch.manual_seed(seed)
    opts = dict(arch=arch, hidden=16, n_layers=2, n_heads=2, n_rbf=8, use_forces=True, force_head=True)
    opts.update(kw)
    model = build_model(ModelConfig(**opts)).to(F64)
    model.set_normalization(v_scale=0.7, f_scale=300.0, dx_scale=0.05, dv_scale=1.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def random_orthogonal(seed: int, det: float) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.sign(np.linalg.det(q)) != det:
        q[:, 0] *= -1.0
    return q


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
