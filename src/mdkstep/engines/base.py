"""One force-engine interface for every backend (OpenMM, xTB, PySCF, any ASE calculator).

Contract: positions in nm -> (potential energy in kJ/mol, forces in kJ/(mol nm)).
Every call is counted and timed by the engine itself (DESIGN.md section 4); nothing else
may infer the count.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class EngineCounters:
    """Force calls and the wall time spent inside them."""

    calls: int = 0
    seconds: float = 0.0

    @property
    def ms_per_call(self) -> float:
        return 1000.0 * self.seconds / self.calls if self.calls else float("nan")


class ForceEngine(ABC):
    """Abstract force engine. Subclasses implement :meth:`_compute`.

    Optional hooks for constrained systems (MM): :meth:`constrain_positions` and
    :meth:`constrain_velocities`, and :attr:`n_constraints` for degrees of freedom.
    """

    name: str = "engine"

    def __init__(self, masses_amu: np.ndarray, atomic_numbers: np.ndarray):
        self.masses = np.asarray(masses_amu, dtype=float)
        self.atomic_numbers = np.asarray(atomic_numbers, dtype=int)
        self.counters = EngineCounters()

    @property
    def n_atoms(self) -> int:
        return int(self.masses.shape[0])

    @property
    def n_constraints(self) -> int:
        return 0

    def compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces (kJ/(mol nm), shape (n_atoms, 3)); one counted call."""
        x = np.asarray(positions_nm, dtype=float)
        if x.shape != (self.n_atoms, 3):
            raise ValueError(f"{self.name}: positions shape {x.shape}, expected ({self.n_atoms}, 3)")
        t0 = time.perf_counter()
        try:
            energy, forces = self._compute(x)
        finally:
            self.counters.calls += 1
            self.counters.seconds += time.perf_counter() - t0
        return float(energy), np.asarray(forces, dtype=float)

    @abstractmethod
    def _compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        """Backend-specific energy/forces in kJ/mol and kJ/(mol nm)."""

    def constrain_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        """Project positions onto the constraint manifold (no-op without constraints)."""
        return positions_nm

    def constrain_velocities(self, positions_nm: np.ndarray, velocities: np.ndarray) -> np.ndarray:
        """Remove velocity components along constraints (no-op without constraints)."""
        return velocities

    def constraint_pairs(self) -> np.ndarray:
        """Atom index pairs (n_constraints, 2) of the distance constraints (empty without)."""
        return np.zeros((0, 2), dtype=int)

    def describe(self) -> dict:
        """Metadata describing the engine (for trajectory metadata and reports)."""
        return {"engine": self.name}
