"""mdkstep.ase.HybridMD: the hybrid integrator as an ASE MolecularDynamics on any calculator."""
from __future__ import annotations

from pathlib import Path

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


# ------------------------------------------------------------------ from_checkpoint with a shipped model
SHIPPED_QM = Path(__file__).resolve().parents[1] / "models" / "qm_k16.pt"


def _ethanol(velocities: bool = False):
    from mdkstep.molecule.system import from_smiles

    s = from_smiles("CCO", "ethanol", seed=0)
    atoms = Atoms(numbers=s.atomic_numbers, positions=s.positions_nm * 10.0)
    if velocities:
        atoms.set_velocities(np.random.default_rng(1).normal(scale=0.01, size=(len(atoms), 3)))
    return atoms


def test_from_checkpoint_takes_the_bath_in_ase_units_and_06b_defaults():
    from mdkstep.ase import DEFAULT_CONFIG
    from mdkstep.config import load_config

    atoms = _ethanol()
    atoms.calc = LennardJones()
    dyn = HybridMD.from_checkpoint(atoms, SHIPPED_QM, temperature_K=310, friction=0.002 / units.fs,
                                   thermostat="csvr", timestep=0.25 * units.fs)
    cfg = dyn.hybrid_config
    assert cfg.k == 16 and cfg.dt_fs == pytest.approx(0.25)
    assert cfg.friction_per_ps == pytest.approx(2.0) and cfg.thermostat == "csvr" and cfg.temperature_K == 310
    # no bath keywords: the same settings as 06b (configs/hybrid_qm.yaml), at the card's 300 K
    atoms2 = _ethanol()
    atoms2.calc = LennardJones()
    dflt = HybridMD.from_checkpoint(atoms2, SHIPPED_QM).hybrid_config
    qm = load_config(HybridConfig, DEFAULT_CONFIG["qm"])
    assert dflt.friction_per_ps == qm.friction_per_ps == 50.0 and dflt.temperature_K == 300.0
    # thermostat 'none' is NVE
    atoms3 = _ethanol()
    atoms3.calc = LennardJones()
    assert HybridMD.from_checkpoint(atoms3, SHIPPED_QM, thermostat="none").hybrid_config.ensemble == "nve"


def test_from_checkpoint_refuses_another_timestep():
    from mdkstep.utils import MdkstepError

    atoms = _ethanol()
    atoms.calc = LennardJones()
    with pytest.raises(MdkstepError, match="differs from the dt"):
        HybridMD.from_checkpoint(atoms, SHIPPED_QM, timestep=1.0 * units.fs)


def test_missing_velocities_are_drawn_at_the_temperature():
    atoms = _ethanol()
    atoms.calc = LennardJones()
    HybridMD.from_checkpoint(atoms, SHIPPED_QM, temperature_K=300, seed=3)
    v = atoms.get_velocities()
    assert np.any(v) and np.allclose(atoms.get_momenta().sum(0), 0.0, atol=1e-10)
    assert 100 < atoms.get_temperature() < 600  # 9 atoms: one draw scatters widely around 300 K


def test_level_of_theory_mismatch_warns_once(caplog):
    from tblite.ase import TBLite

    from mdkstep.engines.ase_engine import EngineCalculator
    from mdkstep.engines.pyscf_engine import PySCFEngine

    atoms = _ethanol()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    with caplog.at_level("WARNING", logger="mdkstep"):
        HybridMD.from_checkpoint(atoms, SHIPPED_QM)
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
    atoms = _ethanol()
    atoms.calc = EngineCalculator(PySCFEngine(atoms.numbers, atoms.get_masses()))
    with caplog.at_level("WARNING", logger="mdkstep"):
        HybridMD.from_checkpoint(atoms, SHIPPED_QM)
    msgs = [r.getMessage() for r in caplog.records if "trained on" in r.getMessage()]
    assert len(msgs) == 1 and "GFN2-xTB" in msgs[0] and "PySCF" in msgs[0]


def test_equilibrate_discards_the_warm_up():
    atoms = _cluster()
    dyn = HybridMD(atoms, VerletOracle(atoms), DT_FS * units.fs, HybridConfig(k=K, temperature_K=50.0))
    dyn.equilibrate(5)
    assert dyn.stats()["cycles"] == 0 and dyn.stats()["force_calls"] == 0
    dyn.run(3)
    st = dyn.stats()
    assert st["cycles"] == 3 and st["force_calls"] == 3 and st["retry_rate"] == 0.0 and st["fallback_rate"] == 0.0
