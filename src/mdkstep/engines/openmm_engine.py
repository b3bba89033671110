"""OpenMM force engine: one Context, positions in, (energy, forces) out; constraints via
OpenMM's own ``applyConstraints`` / ``applyVelocityConstraints``."""
from __future__ import annotations

import numpy as np

from mdkstep.engines.base import ForceEngine
from mdkstep.engines.openmm_setup import choose_platform, system_masses


class OpenMMEngine(ForceEngine):
    """Wraps an OpenMM System (with any constraints already added)."""

    name = "openmm"

    def __init__(self, system, atomic_numbers: np.ndarray, platform: str = "auto",
                 constraint_tolerance: float = 1e-8):
        import openmm

        super().__init__(system_masses(system), atomic_numbers)
        self._unit = openmm.unit
        self.platform = choose_platform(platform, system.getNumParticles())
        integ = openmm.VerletIntegrator(0.001)
        integ.setConstraintTolerance(constraint_tolerance)
        self._tol = constraint_tolerance
        self.context = openmm.Context(system, integ, self.platform)
        self._n_constraints = system.getNumConstraints()
        self._pairs = np.array([system.getConstraintParameters(i)[:2] for i in range(self._n_constraints)],
                               dtype=int).reshape(-1, 2)
        self._lengths = np.array([system.getConstraintParameters(i)[2].value_in_unit(openmm.unit.nanometer)
                                  for i in range(self._n_constraints)], dtype=float)

    @property
    def n_constraints(self) -> int:
        return self._n_constraints

    def _compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        self.context.setPositions(positions_nm)
        st = self.context.getState(getEnergy=True, getForces=True)
        e = st.getPotentialEnergy().value_in_unit(self._unit.kilojoule_per_mole)
        f = st.getForces(asNumpy=True).value_in_unit(self._unit.kilojoule_per_mole / self._unit.nanometer)
        return e, np.asarray(f)

    def constraint_pairs(self) -> np.ndarray:
        return self._pairs.copy()

    def constraint_lengths(self) -> np.ndarray:
        return self._lengths.copy()

    def constrain_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        if not self._n_constraints:
            return positions_nm
        self.context.setPositions(positions_nm)
        self.context.applyConstraints(self._tol)
        st = self.context.getState(getPositions=True)
        return np.asarray(st.getPositions(asNumpy=True).value_in_unit(self._unit.nanometer))

    def constrain_velocities(self, positions_nm: np.ndarray, velocities: np.ndarray) -> np.ndarray:
        if not self._n_constraints:
            return velocities
        self.context.setPositions(positions_nm)
        self.context.setVelocities(velocities)
        self.context.applyVelocityConstraints(self._tol)
        st = self.context.getState(getVelocities=True)
        return np.asarray(st.getVelocities(asNumpy=True).value_in_unit(self._unit.nanometer / self._unit.picosecond))

    def describe(self) -> dict:
        return {"engine": self.name, "platform": self.platform.getName(), "n_constraints": self._n_constraints}
