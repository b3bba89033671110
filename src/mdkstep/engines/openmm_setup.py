"""OpenMM helpers shared by the MD baselines and the OpenMM force engine.

Units: nm, ps, kJ/mol, amu, K.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from mdkstep.utils import KB_KJ_PER_MOL_K, MdkstepError

Constraints = Literal["hbonds", "none"]


def apply_constraints_and_hmr(system, atomic_numbers: np.ndarray, constraints: str,
                              hydrogen_mass_amu: float | None = None):
    """Add X-H bond constraints (at the harmonic bond's r0) and optional hydrogen mass
    repartitioning (mass moved from the bonded heavy atom, total mass kept). In place."""
    import openmm

    z = np.asarray(atomic_numbers)
    bonds: list[tuple[int, int, float]] = []
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for b in range(f.getNumBonds()):
                i, j, r0, _k = f.getBondParameters(b)
                bonds.append((i, j, r0.value_in_unit(openmm.unit.nanometer)))
    h_bonds = [(i, j, r0) for i, j, r0 in bonds if z[i] == 1 or z[j] == 1]
    if constraints == "hbonds":
        if system.getNumConstraints():
            raise MdkstepError("system already has constraints; prep writes unconstrained systems")
        for i, j, r0 in h_bonds:
            system.addConstraint(i, j, r0)
    elif constraints != "none":
        raise MdkstepError(f"constraints {constraints!r}: expected 'hbonds' or 'none'")
    if hydrogen_mass_amu:
        for i, j, _ in h_bonds:
            h, heavy = (i, j) if z[i] == 1 else (j, i)
            if z[heavy] == 1:
                continue
            dm = hydrogen_mass_amu - system.getParticleMass(h).value_in_unit(openmm.unit.dalton)
            system.setParticleMass(h, hydrogen_mass_amu)
            system.setParticleMass(heavy, system.getParticleMass(heavy).value_in_unit(openmm.unit.dalton) - dm)
    return system


def system_masses(system) -> np.ndarray:
    """Particle masses in amu."""
    import openmm

    return np.array([system.getParticleMass(i).value_in_unit(openmm.unit.dalton)
                     for i in range(system.getNumParticles())])


def choose_platform(name: str, n_atoms: int):
    """'auto': CUDA when present; else Reference for small molecules (< 300 atoms: ~40x
    faster than the CPU platform here, whose fixed per-step cost dominates), else CPU."""
    import openmm

    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name == "auto":
        if "CUDA" in available:
            name = "CUDA"
        else:
            name = "Reference" if n_atoms < 300 else "CPU"
    if name not in available:
        raise MdkstepError(f"OpenMM platform {name!r} not available here (have: {', '.join(available)})")
    return openmm.Platform.getPlatformByName(name)


def make_integrator(dt_fs: float, temperature_K: float, friction_per_ps: float,
                    constraint_tolerance: float = 1e-8):
    """Velocity-Verlet-form BAOAB ("V R O R V") as an OpenMM CustomIntegrator.

    Hand-written because OpenMM's built-in Langevin/Verlet integrators report velocities
    half a step off the positions; here x and v are synchronous after every step, which the
    k-step data contract and the hybrid corrector rely on. friction 0 gives plain velocity
    Verlet (NVE). The forces of the last step are kept in the per-dof variable ``fsave``.
    """
    import openmm

    dt = dt_fs / 1000.0
    integ = openmm.CustomIntegrator(dt)
    integ.setConstraintTolerance(constraint_tolerance)
    integ.addPerDofVariable("x1", 0.0)
    integ.addPerDofVariable("fsave", 0.0)
    integ.addGlobalVariable("pe", 0.0)
    if friction_per_ps > 0:
        a = float(np.exp(-friction_per_ps * dt))
        integ.addGlobalVariable("a", a)
        integ.addGlobalVariable("b", float(np.sqrt(1.0 - a * a)))
        integ.addGlobalVariable("kT", KB_KJ_PER_MOL_K * temperature_K)
    integ.addUpdateContextState()
    integ.addComputePerDof("v", "v + 0.5*dt*f/m")
    integ.addConstrainVelocities()
    integ.addComputePerDof("x", "x + 0.5*dt*v")
    if friction_per_ps > 0:
        integ.addComputePerDof("v", "a*v + b*sqrt(kT/m)*gaussian")
    integ.addComputePerDof("x", "x + 0.5*dt*v")
    integ.addComputePerDof("x1", "x")
    integ.addConstrainPositions()
    integ.addComputePerDof("v", "v + (x - x1)/dt")
    integ.addConstrainVelocities()
    integ.addComputePerDof("v", "v + 0.5*dt*f/m")
    integ.addConstrainVelocities()
    integ.addComputePerDof("fsave", "f")
    integ.addComputeGlobal("pe", "energy")
    return integ


def openmm_seed(seed: int) -> int:
    """``seed`` as an OpenMM random seed that is never 0: OpenMM reads 0 as "pick a new random
    seed" (for ``setRandomNumberSeed`` and ``setVelocitiesToTemperature``), which made replica 0
    of the default ``--seed 0`` irreproducible. Positive 31-bit seeds are kept as they are."""
    seed = int(seed)
    if 0 < seed < 2**31 - 1:
        return seed
    return seed % (2**31 - 1) or 2**31 - 2
