"""Holonomic distance constraints the RATTLE way, for exact mode's shear map on a manifold.

Constraints g_c(x) = (|x_i - x_j|^2 - d_c^2) / 2 = 0 (c = 1..C, e.g. OpenMM's HBonds), masses M.

* :meth:`DistanceConstraints.positions` -- the SHAKE half of RATTLE: x' = y + M^-1 G(x)^T lam
  with lam solved (Newton) so that g(x') = 0, where G(x) holds the constraint gradients at the
  drift's START x (not at y). With that choice the constrained drift
  (x, v) -> (x', P(x') (x' - x)/h) is RATTLE with zero force: symplectic and time-reversible on
  the manifold's phase space (Leimkuhler & Skeel 1994), so it preserves the Liouville measure.
* :meth:`DistanceConstraints.velocities` -- the velocity half: v -> P(x) v, the M-orthogonal
  projection onto the tangent space {G(x) v = 0}.
* A kick v -> P(x)(v + g(x)) translates the tangent fibre by P(x) g(x), a function of x only:
  measure-preserving and reversible.

Why our own code and not OpenMM's ``applyConstraints``: OpenMM projects along the gradients
at the positions it is handed (the end point), which is not the RATTLE map, so the
composition would not be exactly reversible and the Metropolis test would not be exact. The
Newton solve can fail or (rarely) find a different root; exact mode therefore checks every
constrained proposal for reversibility (Lelievre, Rousset & Stoltz, Math. Comp. 2019).

Torch, float64 intended; batches of G copies of one molecule flattened to (G*N, 3) as in
:class:`mdkstep.model.graph.GraphBatch`. Units: nm, nm/ps, amu.
"""
from __future__ import annotations

import numpy as np
import torch

#: Newton stops when every |r^2 - d^2| / d^2 is below this
SHAKE_TOL = 1e-13
SHAKE_MAX_ITER = 50


class ConstraintFailure(RuntimeError):
    """The SHAKE solve did not converge (the drift left the manifold's reach)."""


class DistanceConstraints:
    """C distance constraints of one molecule of N atoms.

    Args:
        pairs: (C, 2) atom indices; lengths: (C,) nm; masses: (N,) amu.
    """

    def __init__(self, pairs: np.ndarray, lengths: np.ndarray, masses: np.ndarray):
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.lengths = np.asarray(lengths, dtype=float).reshape(-1)
        self.masses = np.asarray(masses, dtype=float).reshape(-1)
        if len(self.lengths) != len(self.pairs):
            raise ValueError(f"{len(self.pairs)} constraint pairs but {len(self.lengths)} lengths")
        if len(self.pairs) and (self.pairs.min() < 0 or self.pairs.max() >= len(self.masses)):
            raise ValueError("constraint pair index outside the molecule")
        if np.any(self.lengths <= 0):
            raise ValueError("constraint lengths must be > 0")
        self.n_atoms = len(self.masses)
        # incidence D (C, N): +1 at i, -1 at j; K = D M^-1 D^T couples constraints sharing an atom
        d = np.zeros((len(self.pairs), self.n_atoms))
        d[np.arange(len(self.pairs)), self.pairs[:, 0]] = 1.0
        d[np.arange(len(self.pairs)), self.pairs[:, 1]] = -1.0
        self._d = d
        self._k = d @ (d / self.masses[None, :]).T

    @classmethod
    def from_engine(cls, engine) -> "DistanceConstraints | None":
        """The engine's constraints (None without any)."""
        if not engine.n_constraints:
            return None
        return cls(engine.constraint_pairs(), engine.constraint_lengths(), engine.masses)

    def __len__(self) -> int:
        return len(self.pairs)

    # -- tensors -------------------------------------------------------------
    def _t(self, a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(a, dtype=like.dtype, device=like.device)

    def _bonds(self, x: torch.Tensor) -> torch.Tensor:
        """r_c = x_i - x_j (G, C, 3) of flattened x (G*N, 3)."""
        xg = x.reshape(-1, self.n_atoms, 3)
        return xg[:, self.pairs[:, 0]] - xg[:, self.pairs[:, 1]]

    def _spread(self, coef: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """M^-1 D^T (coef_c r_c): the displacement (G*N, 3) of coefficients (G, C) along r (G, C, 3)."""
        d_over_m = self._t(self._d / self.masses[None, :], r)  # (C, N)
        return torch.einsum("cn,gc,gcd->gnd", d_over_m, coef, r).reshape(-1, 3)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(|r_c|^2 - d_c^2) / d_c^2 (G, C) at flattened positions x."""
        d2 = self._t(self.lengths**2, x)
        return ((self._bonds(x) ** 2).sum(-1) - d2) / d2

    # -- RATTLE ----------------------------------------------------------------
    def positions(self, x_ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x' = y + M^-1 G(x_ref)^T lam on the manifold (flattened (G*N, 3) nm).

        Differentiable (unrolled Newton). Raises :class:`ConstraintFailure` when it does not
        converge within SHAKE_MAX_ITER iterations."""
        if not len(self):
            return y
        r_ref = self._bonds(x_ref)
        k = self._t(self._k, y)
        d2 = self._t(self.lengths**2, y)
        lam = torch.zeros(r_ref.shape[:2], dtype=y.dtype, device=y.device)
        x = y
        for _ in range(SHAKE_MAX_ITER):
            r = self._bonds(x)
            g = 0.5 * ((r**2).sum(-1) - d2)
            if float((g.detach().abs() / d2).max()) < SHAKE_TOL:
                return x
            jac = k.unsqueeze(0) * torch.einsum("gcd,ged->gce", r, r_ref)
            lam = lam - torch.linalg.solve(jac, g.unsqueeze(-1)).squeeze(-1)
            x = y + self._spread(lam, r_ref)
        if float((self.residual(x).detach().abs()).max()) < 2 * SHAKE_TOL:
            return x
        raise ConstraintFailure(f"SHAKE did not converge in {SHAKE_MAX_ITER} Newton iterations")

    def velocities(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """P(x) v: v minus its M-orthogonal component along the constraint gradients at x."""
        if not len(self):
            return v
        r = self._bonds(x)
        vg = v.reshape(-1, self.n_atoms, 3)
        dv = vg[:, self.pairs[:, 0]] - vg[:, self.pairs[:, 1]]
        b = (r * dv).sum(-1)
        a = self._t(self._k, v).unsqueeze(0) * torch.einsum("gcd,ged->gce", r, r)
        mu = torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
        return v - self._spread(mu, r)

    def project_state(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A start state on the manifold: positions projected (along their own gradients),
        velocities onto the tangent space there."""
        x = self.positions(x, x)
        return x, self.velocities(x, v)


__all__ = ["DistanceConstraints", "ConstraintFailure", "SHAKE_TOL"]
