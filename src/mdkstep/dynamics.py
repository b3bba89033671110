"""The ground floor of the physics: one MD step and the quantities every run reports.

Everything that integrates, thermostats or measures temperature uses these functions: the
hybrid integrator and its physics fallback, the plain-MD segments (``mdkstep.baselines.plain``), the
benchmark and the metrics. Units: positions nm, velocities nm/ps, forces kJ/(mol nm),
energies kJ/mol, masses amu, time ps, temperature K.

- degrees of freedom: :func:`n_dof` (total), :func:`atom_dof` (per atom, exact for the given
  constraints and centre-of-mass removal), :func:`per_element_temperature`;
- kinetic energy / temperature: :func:`kinetic_energy`, :func:`temperature`;
- thermostats: :func:`ou_step` (exact Ornstein-Uhlenbeck O-step, per atom = local) and
  :func:`csvr_factor` (Bussi stochastic velocity rescaling, global);
- the step: :func:`velocity_verlet_step` (RATTLE form: "V R V" with constraints projected the
  way OpenMM's CustomIntegrator of :func:`mdkstep.engines.openmm_setup.make_integrator` does), one force call;
- :func:`linear_drift`: NVE drift as the slope of a linear fit of U + K vs time.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from mdkstep.utils import KB_KJ_PER_MOL_K, MdkstepError, element_symbol


class UnstableStep(MdkstepError):
    """A step produced non-finite positions or velocities (raised before any force call)."""


class Constrainer(Protocol):
    """What a step needs of an engine: forces and constraint projections (see ForceEngine)."""

    n_constraints: int

    def compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]: ...

    def constrain_positions(self, positions_nm: np.ndarray) -> np.ndarray: ...

    def constrain_velocities(self, positions_nm: np.ndarray, velocities: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------- degrees of freedom

def n_dof(n_atoms: int, n_constraints: int = 0, com_removed: bool = True) -> int:
    """Degrees of freedom for the temperature: 3N - constraints - 3 (COM motion removed), >= 1."""
    return max(1, 3 * n_atoms - n_constraints - (3 if com_removed else 0))


def atom_dof(masses: np.ndarray, positions_nm: np.ndarray | None = None,
             constraint_pairs: np.ndarray | None = None, com_removed: bool = True) -> np.ndarray:
    """Degrees of freedom per atom (N,), summing to :func:`n_dof`.

    Exact for distance constraints between ``constraint_pairs`` (M, 2) at ``positions_nm``
    (N, 3): in mass-weighted coordinates the removed directions are the constraint gradients
    and (``com_removed``) the three uniform translations; atom i keeps 3 minus the diagonal
    of the projector onto them over its three coordinates. Without constraints this is
    3 (1 - m_i / M): removing the centre-of-mass motion takes m_i / M x 3 from atom i, which is
    what a heavy atom in a small molecule notices most (oxygen in ethanol: 6 % of its dof).
    """
    m = np.asarray(masses, dtype=float)
    n = len(m)
    pairs = np.zeros((0, 2), dtype=int) if constraint_pairs is None else np.asarray(constraint_pairs, dtype=int).reshape(-1, 2)
    if len(pairs) and positions_nm is None:
        raise MdkstepError("atom_dof: positions are needed to place the constraints")
    cols = []
    sq = np.sqrt(m)
    if com_removed:
        for a in range(3):
            t = np.zeros((n, 3))
            t[:, a] = sq
            cols.append(t.ravel())
    if len(pairs):
        x = np.asarray(positions_nm, dtype=float).reshape(n, 3)
        for i, j in pairs:
            e = x[i] - x[j]
            e = e / np.linalg.norm(e)
            g = np.zeros((n, 3))
            g[i], g[j] = e / sq[i], -e / sq[j]
            cols.append(g.ravel())
    if not cols:
        return np.full(n, 3.0)
    a = np.stack(cols, axis=1)  # (3N, c)
    q, _ = np.linalg.qr(a)  # orthonormal basis of the removed directions
    removed = np.sum(q * q, axis=1).reshape(n, 3).sum(axis=1)
    return 3.0 - removed


def per_element_temperature(velocities: np.ndarray, masses: np.ndarray, atomic_numbers: np.ndarray,
                            dof_per_atom: np.ndarray) -> dict[str, float]:
    """Mean kinetic temperature per element symbol, K: sum over its atoms and frames of m v^2
    divided by k_B x its degrees of freedom (equipartition check). ``velocities`` (F, N, 3)
    must already be in the frame the dof describe (COM-free when ``atom_dof`` removed it)."""
    v = np.asarray(velocities, dtype=float).reshape(-1, len(masses), 3)
    mv2 = np.asarray(masses)[None, :] * np.sum(v * v, axis=-1)  # (F, N), 2 x kinetic energy
    z = np.asarray(atomic_numbers, dtype=int)
    out = {}
    for zval in np.unique(z):
        sel = z == zval
        dof = float(np.asarray(dof_per_atom)[sel].sum())
        if dof > 0:
            out[element_symbol(int(zval))] = float(mv2[:, sel].sum(axis=1).mean() / (dof * KB_KJ_PER_MOL_K))
    return out


# ----------------------------------------------------------------- kinetic energy

def kinetic_energy(v: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Kinetic energy, kJ/mol, over the last two axes (..., N, 3)."""
    return 0.5 * np.sum(np.asarray(masses)[:, None] * np.asarray(v) ** 2, axis=(-2, -1))


def temperature(v: np.ndarray, masses: np.ndarray, n_dof_: int) -> np.ndarray:
    """Instantaneous temperature, K, for ``n_dof_`` degrees of freedom."""
    return 2.0 * kinetic_energy(v, masses) / (n_dof_ * KB_KJ_PER_MOL_K)


# ----------------------------------------------------------------- thermostats

def ou_step(v: np.ndarray, masses: np.ndarray, friction_per_ps: float, duration_ps: float, kT: float,
            rng: np.random.Generator) -> np.ndarray:
    """Exact Ornstein-Uhlenbeck (Langevin "O") step of ``duration_ps`` on every atom (local:
    each atom exchanges heat with the bath on its own); kT in kJ/mol."""
    a = math.exp(-friction_per_ps * duration_ps)
    noise = rng.standard_normal(np.shape(v))
    return a * v + math.sqrt(1.0 - a * a) * np.sqrt(kT / np.asarray(masses, dtype=float))[:, None] * noise


def csvr_factor(kinetic: float, target: float, n_dof_: int, dt_over_tau: float, rng: np.random.Generator) -> float:
    """Bussi-Donadio-Parrinello (2007) stochastic velocity rescaling factor alpha (global).

    kinetic: current kinetic energy K (kJ/mol); target: n_dof kT/2; dt_over_tau: elapsed
    time / tau. Returns alpha with K' = alpha^2 K drawn exactly from the CSVR process (sign
    convention of the paper's appendix). A global rescaling cannot move heat between atoms.
    """
    if kinetic <= 0:
        return 1.0
    c = math.exp(-dt_over_tau)
    r1 = float(rng.standard_normal())
    s = float(rng.chisquare(n_dof_ - 1)) if n_dof_ > 1 else 0.0
    k_new = (kinetic + (1 - c) * (target * (s + r1 * r1) / n_dof_ - kinetic)
             + 2 * r1 * math.sqrt(kinetic * target / n_dof_ * (1 - c) * c))
    alpha = math.sqrt(max(k_new, 0.0) / kinetic)
    if c > 0 and r1 + math.sqrt(c * n_dof_ * kinetic / ((1 - c) * target)) < 0:
        alpha = -alpha
    return alpha


# ----------------------------------------------------------------- the step

def velocity_verlet_step(engine: Constrainer, x: np.ndarray, v: np.ndarray, f: np.ndarray, dt_ps: float,
                         masses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One velocity-Verlet step with constraints (RATTLE: half kick, drift, project positions
    and fold the projection into v, one force call, half kick, project velocities).

    Returns (x, v, F, U) at the new time. Raises :class:`UnstableStep` before the force call
    when the drifted state is non-finite; engine errors propagate.
    """
    m3 = np.asarray(masses, dtype=float)[:, None]
    v = engine.constrain_velocities(x, v + 0.5 * dt_ps * f / m3)
    x1 = x + dt_ps * v
    if engine.n_constraints:
        xc = engine.constrain_positions(x1)
        v = engine.constrain_velocities(xc, v + (xc - x1) / dt_ps)
        x1 = xc
    if not (np.all(np.isfinite(x1)) and np.all(np.isfinite(v))):
        raise UnstableStep("velocity Verlet: non-finite state")
    u, f = engine.compute(x1)
    v = engine.constrain_velocities(x1, v + 0.5 * dt_ps * f / m3)
    return x1, v, f, float(u)


def linear_drift(time_ps: np.ndarray, total_energy: np.ndarray) -> float:
    """NVE drift: slope (kJ/mol/ps) of a least-squares line through U + K vs time; NaN with
    fewer than three finite samples."""
    t, e = np.asarray(time_ps, dtype=float), np.asarray(total_energy, dtype=float)
    if len(e) < 3 or not np.all(np.isfinite(e)):
        return float("nan")
    return float(np.polyfit(t, e, 1)[0])
