"""The ASE face of the hybrid integrator: ``HybridMD`` runs learned k-step jumps on any ASE
``Atoms`` with any ASE calculator, the way ASE users run ``VelocityVerlet`` or ``Langevin``.

    from mdkstep.ase import HybridMD
    atoms.calc = TBLite(method="GFN2-xTB")
    dyn = HybridMD.from_checkpoint(atoms, "model.pt", temperature_K=300, trajectory="md.traj", logfile="-")
    dyn.run(1000)  # 1000 cycles of k base steps each; ASE observers (attach) see every cycle

One ``step()`` is one hybrid cycle (:class:`mdkstep.hybrid.HybridIntegrator`): it advances
k x dt (``corrector: verlet``: (k+1) x dt) and costs one force call ("kick") of the user's
calculator. ``dyn.dt`` is therefore the cycle length, so ``get_time()`` and ASE's MDLogger
report simulated time correctly. The calculator is wrapped in an engine that counts every
call (``dyn.engine.counters``); after each cycle the exact energy and forces at the new
positions are handed to ``atoms`` so observers that read them cost no extra call.
Units at this face are ASE's (Å, eV, ASE time); inside, the project's (nm, ps, kJ/mol).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from ase import units
from ase.md.md import MolecularDynamics

from mdkstep.engines.ase_engine import ASEEngine, EngineCalculator
from mdkstep.engines.units import ANGSTROM_TO_NM, ASE_VELOCITY_TO_NM_PS, EV_PER_ANGSTROM_TO_KJ_MOL_NM, EV_TO_KJ_MOL
from mdkstep.hybrid import HybridConfig, HybridIntegrator, Jumper
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint
from mdkstep.model.jumper import ModelJumper
from mdkstep.molecule.topology import infer_bonds
from mdkstep.utils import MdkstepError


class HybridMD(MolecularDynamics):
    """Hybrid MD (learned jump + one real force call per cycle) as an ASE dynamics object.

    Args:
        atoms: the system; its calculator gives the real forces.
        jumper: a :class:`mdkstep.hybrid.Jumper` (e.g. :class:`mdkstep.model.ModelJumper`).
        timestep: the base integrator step dt in ASE time units (``0.25 * units.fs``), the
            step the model was trained on.
        config: a :class:`HybridConfig` (k must be set); ``temperature_K`` / ``seed``
            override it. Default: configs/hybrid.yaml's defaults (NVT, local Langevin).
        trajectory, logfile, loginterval: as for every ASE ``MolecularDynamics``.
    """

    def __init__(self, atoms, jumper: Jumper, timestep: float, config: HybridConfig,
                 temperature_K: float | None = None, seed: int = 0, trajectory=None, logfile=None,
                 loginterval: int = 1, **kwargs):
        if atoms.calc is None:
            raise MdkstepError("HybridMD: atoms has no calculator (set atoms.calc first)")
        cfg = replace(config, dt_fs=float(timestep / units.fs),
                      temperature_K=temperature_K if temperature_K is not None else config.temperature_K)
        cfg.validate()
        self.engine = ASEEngine(atoms.calc, atoms.numbers, atoms.get_masses(), charge=int(atoms.info.get("charge", 0)))
        self.hybrid = HybridIntegrator(self.engine, jumper, cfg, np.random.default_rng(seed))
        self.hybrid_config = cfg
        atoms.calc = EngineCalculator(self.engine)  # observers' energy/force reads are counted too
        super().__init__(atoms, cfg.cycle_ps * 1000.0 * units.fs, trajectory=trajectory, logfile=logfile,
                         loginterval=loginterval, **kwargs)
        x0 = atoms.get_positions() * ANGSTROM_TO_NM
        v0 = atoms.get_velocities() * ASE_VELOCITY_TO_NM_PS
        self.hybrid.initialize(x0[None], v0[None])
        self._publish()

    @classmethod
    def from_checkpoint(cls, atoms, checkpoint: str | Path, config: HybridConfig | None = None,
                        device: str = "cpu", **kwargs) -> "HybridMD":
        """A ``HybridMD`` driven by a trained model: k and dt come from the checkpoint, bonds
        (for the model's graph) are perceived from the current geometry."""

        model, ck = model_from_checkpoint(checkpoint, device=device)
        check_compatible(ck, str(checkpoint), atom_types=set(int(z) for z in atoms.numbers))
        base = config or HybridConfig()
        cfg = replace(base, k=int(ck["k"]))
        bonds = infer_bonds(atoms.numbers, atoms.get_positions() * ANGSTROM_TO_NM)
        jumper = ModelJumper(model, atoms.numbers, atoms.get_masses(), bonds, device=device)
        return cls(atoms, jumper, float(ck["dt_fs"]) * units.fs, cfg, **kwargs)

    def _publish(self) -> None:
        """Copy the integrator's state into ``atoms`` and prime its calculator with the exact
        energy and forces at these positions (computed by the cycle: no extra call)."""
        h = self.hybrid
        self.atoms.set_positions(h.x[0] / ANGSTROM_TO_NM, apply_constraint=False)
        self.atoms.set_velocities(h.v[0] / ASE_VELOCITY_TO_NM_PS)
        calc = self.atoms.calc
        calc.atoms = self.atoms.copy()
        e_ev = float(h.u[0]) / EV_TO_KJ_MOL
        calc.results = {"energy": e_ev, "free_energy": e_ev, "forces": h.f[0] / EV_PER_ANGSTROM_TO_KJ_MOL_NM}
        calc.last_energy_kj_mol, calc.last_forces_kj_mol_nm = float(h.u[0]), h.f[0].copy()

    def step(self, forces=None):
        """One hybrid cycle; returns the forces at the new positions (eV/Å)."""
        self.hybrid.cycle()
        self._publish()
        return self.hybrid.f[0] / EV_PER_ANGSTROM_TO_KJ_MOL_NM

    def todict(self):
        d = super().todict()
        d.update({"k": self.hybrid_config.k, "corrector": self.hybrid_config.corrector,
                  "base_timestep_fs": self.hybrid_config.dt_fs})
        return d

    def stats(self) -> dict:
        """Guard counters, force calls and temperatures so far (see ``HybridIntegrator``)."""
        c = self.hybrid.counters
        return {"cycles": c.cycles, "force_calls": self.engine.counters.calls, "jumps_accepted": c.jumps_accepted,
                "fallbacks": c.fallbacks, "rejects": dict(c.rejects), **self.hybrid.temperature_stats()}
