"""mdkstep.ase.HybridMD: the hybrid integrator as an ASE MolecularDynamics on any calculator."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.lj import LennardJones
from ase.io import read

from mdkstep.ase import HybridMD
from mdkstep.dynamics import velocity_verlet_step
from mdkstep.engines.ase_engine import ASEEngine
from mdkstep.hybrid import HybridConfig

K, DT_FS = 4, 2.0


def _cluster():
    x = np.array([[0, 0, 0], [3.8, 0, 0], [1.9, 3.3, 0], [1.9, 1.1, 3.1]], dtype=float)  # Å, Ar4
    atoms = Atoms("Ar4", positions=x)
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(scale=0.003, size=(4, 3)))  # Å per ASE time unit
    return atoms


class VerletOracle:
    """k velocity-Verlet steps on its own (uncounted) calculator: a near-perfect jumper."""

    def __init__(self, atoms):
        self.eng = ASEEngine(LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0), atoms.numbers, atoms.get_masses())

    def __call__(self, x, v, f):
        dx, dv = np.zeros_like(x), np.zeros_like(v)
        for r in range(len(x)):
            xr, vr, fr = x[r], v[r], self.eng._compute(x[r])[1]
            for _ in range(K):
                xr, vr, fr, _u = velocity_verlet_step(self.eng, xr, vr, fr, DT_FS / 1000.0, self.eng.masses)
            dx[r], dv[r] = xr - x[r], vr - v[r]
        return dx, dv


def test_hybrid_md_is_an_ase_dynamics(tmp_path):
    atoms = _cluster()
    cfg = HybridConfig(k=K, ensemble="nve", energy_filter=False)
    dyn = HybridMD(atoms, VerletOracle(atoms), DT_FS * units.fs, cfg, trajectory=str(tmp_path / "md.traj"),
                   logfile=str(tmp_path / "md.log"))
    seen = []
    dyn.attach(lambda: seen.append(atoms.get_potential_energy() + atoms.get_kinetic_energy()), interval=1)
    dyn.run(20)
    assert dyn.nsteps == 20 and len(seen) == 21
    assert dyn.get_time() == pytest.approx(20 * K * DT_FS * units.fs)
    # one counted call at the start and one per cycle: observers reading E/F cost nothing
    assert dyn.engine.counters.calls == 1 + 20
    assert len(read(tmp_path / "md.traj", index=":")) == 21
    assert np.ptp(seen) < 1e-3 * abs(np.mean(seen)) + 1e-5  # NVE with a near-exact jumper
    assert dyn.stats()["jumps_accepted"] == 20 and dyn.stats()["fallbacks"] == 0


def test_hybrid_md_needs_a_calculator():
    from mdkstep.utils import MdkstepError

    atoms = Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]])
    with pytest.raises(MdkstepError, match="no calculator"):
        HybridMD(atoms, VerletOracle(_cluster()), DT_FS * units.fs, HybridConfig(k=K))
