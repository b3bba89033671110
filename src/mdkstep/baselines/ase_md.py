"""QM MD baselines (stages 01b / 01c): ASE Langevin or velocity Verlet over a QM force engine
(GFN2-xTB via tblite, or PySCF), streamed to disk in chunks and checkpointed so an interrupted
run resumes with no lost or duplicated frame.

ASE drives the integration through :class:`~mdkstep.engines.ase_engine.EngineCalculator`, so
every force call is counted by our engine. The centre of mass is held by ASE's ``FixCom``
constraint with ``Langevin(fixcm=False)``: ASE's default ``fixcm=True`` overheats small
molecules (ethanol, GFN2-xTB: 400-480 K mean with 1000 K spikes at 300 K). Saved positions and velocities are synchronous (both at step n), and the
saved forces are the raw engine forces at those positions.

Units: nm, ps, kJ/mol, amu, K; ``dt_fs`` in fs; ``friction_per_ps`` in 1/ps.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.dynamics import kinetic_energy, n_dof
from mdkstep.engines.ase_engine import EngineCalculator
from mdkstep.engines.factory import make_engine
from mdkstep.engines.units import (
    ANGSTROM_TO_NM,
    ASE_VELOCITY_TO_NM_PS,
    EV_PER_ANGSTROM_TO_KJ_MOL_NM,
    PS_IN_ASE_TIME,
    nm_to_angstrom,
)
from mdkstep.molecule.system import System
from mdkstep.runner import content_hash, lock_path_for, pack_json, run_chunked, unpack_json
from mdkstep.trajectory import ChunkedTrajectoryWriter, make_metadata
from mdkstep.utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, remove_com

#: a run whose mean temperature is further than this fraction from the target is flagged
TEMPERATURE_TOLERANCE = 0.10


@dataclass
class QMConfig:
    """Settings of the QM baselines (configs/qm*.yaml). Units in the comments."""

    # --- force engine
    engine: str = "xtb"  #: xtb | pyscf
    method: str = "GFN2-xTB"  #: xtb: GFN2-xTB | GFN1-xTB | IPEA1-xTB; pyscf: RHF | UHF | RKS | UKS | ...
    multiplicity: int | None = None  #: spin multiplicity 2S+1; None: each molecule's own (RDKit: radicals + 1)
    backend: str = "tblite"  #: xtb only: tblite | xtb-python
    accuracy: float = 1.0  #: xtb only: SCC accuracy multiplier (smaller = tighter)
    electronic_temperature_K: float = 300.0  #: xtb only: Fermi smearing, K
    basis: str = "sto-3g"  #: pyscf only: basis set name
    xc: str | None = None  #: pyscf only: xc functional for RKS/UKS
    conv_tol: float = 1e-9  #: pyscf only: SCF energy convergence, Hartree
    use_gpu: bool | str = "auto"  #: pyscf only: auto | true | false (GPU4PySCF)
    max_memory_mb: int | None = None  #: pyscf only: memory limit, MB
    omp_num_threads: int | None = None  #: OpenMP threads per worker (None: 1)
    # --- dynamics
    temperature_K: float = 300.0  #: thermostat target and initial velocities, K
    dt_fs: float = 0.25  #: integration step, fs
    thermostat: str = "langevin"  #: langevin (NVT) | nve (velocity Verlet; equilibration stays Langevin)
    friction_per_ps: float = 2.0  #: Langevin friction, 1/ps (ASE's 0.002/fs = 2/ps)
    equilibration_ps: float = 1.0  #: Langevin equilibration before production, ps (not saved)
    equilibration_friction_per_ps: float | None = None  #: friction during equilibration, 1/ps (None: friction_per_ps)
    production_ps: float = 10.0  #: saved production length per replica, ps
    save_interval: int = 1  #: save every N steps
    chunk_frames: int = 2000  #: frames per on-disk chunk (= checkpoint interval)
    minimize: bool = True  #: relax the start structure with the QM engine (ASE BFGS) first
    minimize_fmax_kj_mol_nm: float = 5.0  #: BFGS force threshold, kJ/(mol nm) (~0.05 eV/Å)
    minimize_steps: int = 200  #: BFGS step limit

    def validate(self) -> None:
        if self.engine not in ("xtb", "pyscf"):
            raise ValueError(f"key 'engine': {self.engine!r} is not one of ['xtb', 'pyscf']")
        if self.thermostat not in ("langevin", "nve"):
            raise ValueError(f"key 'thermostat': {self.thermostat!r} is not one of ['langevin', 'nve']")
        if self.use_gpu not in ("auto", True, False):
            raise ValueError(f"key 'use_gpu': {self.use_gpu!r} is not one of [auto, true, false]")
        if self.dt_fs <= 0 or self.temperature_K <= 0:
            raise ValueError("keys 'dt_fs' and 'temperature_K' must be > 0")
        if self.production_ps <= 0 or self.equilibration_ps < 0:
            raise ValueError("key 'production_ps' must be > 0 and 'equilibration_ps' >= 0")
        if self.save_interval < 1 or self.chunk_frames < 1:
            raise ValueError("keys 'save_interval' and 'chunk_frames' must be >= 1")
        if self.friction_per_ps < 0 or (self.thermostat == "langevin" and self.friction_per_ps == 0):
            raise ValueError("key 'friction_per_ps' must be > 0 for thermostat 'langevin' (use thermostat: nve)")
        if self.equilibration_ps > 0 and not self.equilibration_friction > 0:
            raise ValueError("equilibration needs a friction > 0: set 'equilibration_friction_per_ps' (1/ps)")
        if self.multiplicity is not None and self.multiplicity < 1:
            raise ValueError("key 'multiplicity' must be >= 1")

    @property
    def equilibration_friction(self) -> float:
        """Langevin friction used during equilibration, 1/ps."""
        if self.equilibration_friction_per_ps is not None:
            return self.equilibration_friction_per_ps
        return self.friction_per_ps

    @property
    def n_frames(self) -> int:
        """Saved production frames per replica."""
        return int(round(self.production_ps * 1000.0 / self.dt_fs / self.save_interval))


@dataclass
class QMRunSpec:
    """One trajectory to produce."""

    out_path: Path
    seed: int
    label: str = "replica0"
    replica: int = 0


# ---------------------------------------------------------------------------- dynamics

def _metadata(system: System, cfg: QMConfig, spec: QMRunSpec, engine) -> dict[str, Any]:
    info = engine.describe()
    nvt = cfg.thermostat == "langevin"
    return make_metadata(
        dt_fs=cfg.dt_fs, save_interval=cfg.save_interval, engine=cfg.engine, method=info.get("method", cfg.method),
        temperature_K=cfg.temperature_K, friction=cfg.friction_per_ps if nvt else 0.0, seed=spec.seed,
        molecule=system.name, smiles=system.smiles, constraints="none", backend=info.get("backend"),
        integrator="ase_langevin" if nvt else "ase_velocity_verlet", ensemble="nvt" if nvt else "nve",
        friction_unit="1/ps", com_fixed=True, n_dof=n_dof(system.n_atoms), charge=system.charge,
        multiplicity=cfg.multiplicity, source=system.source, equilibration_ps=cfg.equilibration_ps,
        equilibration_friction=cfg.equilibration_friction, label=spec.label, replica=spec.replica,
        engine_info=info, config=asdict(cfg))


def _fingerprint(system: System, cfg: QMConfig, spec: QMRunSpec) -> dict[str, Any]:
    """Everything that defines a QM run: config, seed, replica and the molecule's content hash."""
    return {"config": asdict(cfg), "seed": spec.seed, "label": spec.label, "replica": spec.replica,
            "system_sha": content_hash(np.asarray(system.atomic_numbers), np.asarray(system.positions_nm, dtype=float),
                                       np.asarray(system.masses, dtype=float),
                                       {"charge": system.charge, "multiplicity": system.multiplicity})}


def _make_atoms(system: System, engine):
    from ase import Atoms
    from ase.constraints import FixCom

    atoms = Atoms(numbers=system.atomic_numbers, positions=nm_to_angstrom(system.positions_nm),
                  masses=system.masses)
    atoms.calc = EngineCalculator(engine)
    atoms.set_constraint(FixCom())
    return atoms


def _langevin(atoms, cfg: QMConfig, rng, friction_per_ps: float | None = None):
    """ASE Langevin with fixcm=False (the FixCom constraint on ``atoms`` holds the centre of
    mass); friction converted from 1/ps to ASE's inverse time unit."""
    from ase import units
    from ase.md.langevin import Langevin

    fr = cfg.friction_per_ps if friction_per_ps is None else friction_per_ps
    return Langevin(atoms, timestep=cfg.dt_fs * units.fs, temperature_K=cfg.temperature_K,
                    friction=fr / PS_IN_ASE_TIME, fixcm=False, rng=rng)


def _production_dynamics(atoms, cfg: QMConfig, rng):
    if cfg.thermostat == "langevin":
        return _langevin(atoms, cfg, rng)
    from ase import units
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=cfg.dt_fs * units.fs)


def _minimize(atoms, cfg: QMConfig) -> int:
    """ASE BFGS to ``cfg.minimize_fmax_kj_mol_nm`` or ``cfg.minimize_steps`` steps; returns the steps taken."""
    from ase.optimize import BFGS

    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=cfg.minimize_fmax_kj_mol_nm / EV_PER_ANGSTROM_TO_KJ_MOL_NM, steps=cfg.minimize_steps)
    return int(opt.nsteps)


def relax_and_thermalize(system: System, engine, cfg: QMConfig, n_replicas: int = 1, seed: int = 0,
                         minimize_steps: int | None = None, thermalize_ps: float = 0.2,
                         friction_per_ps: float = 50.0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A thermal start from a bare structure (a SMILES conformer, an XYZ/PDB file), with the QM
    ``engine`` through ASE exactly as the baselines run it (FixCom, Langevin fixcm=False):

    1. BFGS minimisation of ``system.positions_nm`` (at most ``minimize_steps``, default
       ``cfg.minimize_steps``; force threshold ``cfg.minimize_fmax_kj_mol_nm``; 0 skips it);
    2. per replica r: Maxwell-Boltzmann momenta at ``cfg.temperature_K`` (seed ``seed + r``, no
       COM motion), a Langevin run of ``thermalize_ps`` ps at ``cfg.dt_fs`` with the strong
       ``friction_per_ps`` (1/ps), then fresh Maxwell-Boltzmann velocities (no COM motion).

    Returns x0 (R, N, 3) nm, v0 (R, N, 3) nm/ps and an info dict (steps, ps, friction, the
    engine's counted calls and the wall seconds of this set-up, mean T of the thermalisation's
    second half). The calls are counted by ``engine`` like any other."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    if thermalize_ps < 0 or (thermalize_ps > 0 and not friction_per_ps > 0):
        raise MdkstepError(f"thermalisation: {thermalize_ps} ps at friction {friction_per_ps}/ps: need ps >= 0 and "
                           "friction > 0")
    t0, calls0 = time.perf_counter(), engine.counters.calls
    steps_max = cfg.minimize_steps if minimize_steps is None else int(minimize_steps)
    atoms = _make_atoms(system, engine)
    n_min = _minimize(atoms, replace(cfg, minimize_steps=steps_max)) if steps_max > 0 else 0
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max()) * EV_PER_ANGSTROM_TO_KJ_MOL_NM
    relaxed = atoms.positions.copy()
    n_steps = int(round(thermalize_ps * 1000.0 / cfg.dt_fs))
    dof, masses = n_dof(system.n_atoms), np.asarray(system.masses, dtype=float)
    xs, vs, temps = [], [], []
    for r in range(n_replicas):
        rng = np.random.default_rng(seed + r)
        atoms.set_positions(relaxed, apply_constraint=False)
        thermalize_momenta(atoms, cfg.temperature_K, rng=rng)
        Stationary(atoms)
        if n_steps:
            dyn = _langevin(atoms, cfg, rng, friction_per_ps)
            for i in range(n_steps):
                dyn.step()
                if 2 * i >= n_steps:
                    v = atoms.get_velocities() * ASE_VELOCITY_TO_NM_PS
                    temps.append(2.0 * kinetic_energy(remove_com(v, masses), masses) / (dof * KB_KJ_PER_MOL_K))
        if not np.all(np.isfinite(atoms.positions)):
            raise MdkstepError(f"{system.name}: thermalisation blew up (non-finite positions, replica {r}); "
                               "check dt_fs and the structure")
        thermalize_momenta(atoms, cfg.temperature_K, rng=rng)
        Stationary(atoms)
        xs.append(atoms.positions * ANGSTROM_TO_NM)
        vs.append(atoms.get_velocities() * ASE_VELOCITY_TO_NM_PS)
    info = {"minimization_steps": n_min, "minimization_max_steps": steps_max,
            "minimization_fmax_kj_mol_nm": fmax, "thermalization_ps": n_steps * cfg.dt_fs / 1000.0,
            "thermalization_friction_per_ps": float(friction_per_ps),
            "thermalization_temperature_K": float(np.mean(temps)) if temps else None,
            "setup_force_calls": engine.counters.calls - calls0, "setup_s": time.perf_counter() - t0}
    return np.stack(xs), np.stack(vs), info


def _current_results(atoms) -> tuple[float, np.ndarray]:
    """Engine energy (kJ/mol) and forces (kJ/(mol nm)) at the atoms' current positions."""
    calc = atoms.calc
    if calc.last_forces_kj_mol_nm is None or calc.check_state(atoms):
        atoms.get_forces(apply_constraint=False)  # one (counted) call; normally never needed
    return float(calc.last_energy_kj_mol), np.array(calc.last_forces_kj_mol_nm)


def temperature_warning(mean_T: float, target_K: float, label: str, n_dof: int | None = None) -> str | None:
    """A loud message when ``mean_T`` is more than 10% away from ``target_K``, else None.
    With ``n_dof`` the message also gives the canonical spread of the instantaneous
    temperature, T*sqrt(2/n_dof), since short runs of tiny molecules fluctuate a lot."""
    if abs(mean_T - target_K) <= TEMPERATURE_TOLERANCE * target_K:
        return None
    msg = (f"!!! {label}: mean temperature {mean_T:.1f} K is {100 * (mean_T / target_K - 1):+.0f}% off the "
           f"{target_K:.0f} K target: check dt_fs, friction_per_ps, equilibration and SCF convergence")
    if n_dof:
        msg += (f" (instantaneous T spreads by ±{target_K * np.sqrt(2.0 / n_dof):.0f} K with {n_dof} degrees of "
                "freedom: a short run of a tiny molecule may miss by chance; run longer to tell)")
    return msg + " !!!"


class ASEStepper:
    """The :class:`~mdkstep.runner.Stepper` of an ASE dynamics over a QM engine. State: positions
    (Å) and momenta (ASE units) exactly as ASE holds them, the step count and the RNG state.
    Not in the state: the engine's SCF restart guess, so a resumed run agrees with an
    uninterrupted one to the SCF tolerance (~1e-7 nm), not bit for bit."""

    def __init__(self, atoms, engine, system: System, cfg: QMConfig, spec: QMRunSpec, rng: np.random.Generator):
        self.atoms, self.engine, self.system, self.cfg, self.spec, self.rng = atoms, engine, system, cfg, spec, rng
        self.dof = n_dof(system.n_atoms)
        self.dyn = None
        self.step = 0  #: production steps in all sessions
        self.steps_session = 0
        self.setup_s = 0.0  #: minimisation + thermalisation + equilibration (or state restore), s
        self.seconds = 0.0  #: wall time of this session's production, s
        self.calls = 0  #: engine calls of this session's production
        self.call_seconds = 0.0
        self.calls_source = engine.counters.source

    def start(self) -> None:
        """Minimise (optional), Maxwell-Boltzmann momenta without COM motion, Langevin equilibration."""
        from ase.md.velocitydistribution import Stationary, thermalize_momenta

        t0, cfg = time.perf_counter(), self.cfg
        if cfg.minimize:
            _minimize(self.atoms, cfg)
        thermalize_momenta(self.atoms, cfg.temperature_K, rng=self.rng)
        Stationary(self.atoms)
        n_eq = int(round(cfg.equilibration_ps * 1000.0 / cfg.dt_fs))
        if n_eq:
            eq = _langevin(self.atoms, cfg, self.rng, cfg.equilibration_friction)
            for _ in range(n_eq):
                eq.step()
        self.setup_s = time.perf_counter() - t0

    def advance(self, first_frame: int, n_frames: int) -> list[dict[str, np.ndarray]]:

        if self.dyn is None:
            self.dyn = _production_dynamics(self.atoms, self.cfg, self.rng)
        span = self.engine.counters.span()  # this chunk's production calls, counted by the engine
        n, cfg = self.system.n_atoms, self.cfg
        xs, vs, fs = np.empty((n_frames, n, 3)), np.empty((n_frames, n, 3)), np.empty((n_frames, n, 3))
        pes = np.empty(n_frames)
        for t in range(n_frames):
            for _ in range(cfg.save_interval):
                self.dyn.step()
            xs[t] = self.atoms.positions * ANGSTROM_TO_NM
            vs[t] = self.atoms.get_velocities() * ASE_VELOCITY_TO_NM_PS
            pes[t], fs[t] = _current_results(self.atoms)
        self.step += n_frames * cfg.save_interval
        self.steps_session += n_frames * cfg.save_interval
        span.close()
        self.seconds += span.wall_s
        self.calls += span.calls
        self.call_seconds += span.seconds
        self.calls_source = span.source
        if not np.all(np.isfinite(xs)):
            raise MdkstepError(f"{self.spec.out_path}: MD blew up (non-finite positions at frames {first_frame}.."
                               f"{first_frame + n_frames - 1}); check dt_fs")
        masses = self.system.masses
        ke = kinetic_energy(remove_com(vs, masses), masses)
        return [dict(positions=xs, velocities=vs, forces=fs, energies=pes, kinetic=ke,
                     temperature=2.0 * ke / (self.dof * KB_KJ_PER_MOL_K),
                     time_ps=(np.arange(first_frame, first_frame + n_frames) + 1) * cfg.save_interval
                     * cfg.dt_fs / 1000.0)]

    def get_state(self) -> dict[str, np.ndarray]:
        """Positions (native Å and nm), momenta (native) and velocities (nm/ps), step, RNG."""

        return {"positions_A": self.atoms.positions.copy(), "momenta_ase": self.atoms.get_momenta(),
                "positions_nm": self.atoms.positions * ANGSTROM_TO_NM,
                "velocities_nm_ps": self.atoms.get_velocities() * ASE_VELOCITY_TO_NM_PS,
                "step": np.int64(self.step), "rng_state": pack_json(self.rng.bit_generator.state)}

    def set_state(self, state) -> None:
        t0 = time.perf_counter()
        self.atoms.set_positions(state["positions_A"], apply_constraint=False)
        self.atoms.set_momenta(state["momenta_ase"], apply_constraint=False)
        self.rng.bit_generator.state = unpack_json(state["rng_state"])
        self.step = int(state["step"])
        self.setup_s = time.perf_counter() - t0


def run_qm_trajectory(system: System, cfg: QMConfig, spec: QMRunSpec, progress: bool = True,
                      engine=None) -> dict[str, Any]:
    """Run (or resume) one QM trajectory and write ``spec.out_path`` in the NPZ schema.

    ``engine`` defaults to :func:`mdkstep.engines.factory.make_engine` for ``cfg.engine``.
    Resume state: ``<out>.parts/checkpoint.npz`` (:mod:`mdkstep.runner`; a resume with other
    settings is refused). Returns statistics (frames, steps/s, force calls and ms/call, mean
    temperature).
    """

    multiplicity = system.resolve_multiplicity(cfg.multiplicity)  # one the electrons cannot have: one-line error
    if multiplicity != system.multiplicity:
        LOG.warning("%s: the molecule's multiplicity is %d (RDKit radical electrons + 1) but the config's is %d",
                    system.name, system.multiplicity, multiplicity)
    cfg = replace(cfg, multiplicity=multiplicity)  # metadata and resume fingerprint record the value used
    if cfg.n_frames < 1:
        raise MdkstepError(f"production of {cfg.production_ps} ps at {cfg.dt_fs} fs gives no frames")
    if engine is None:
        engine = make_engine(cfg.engine, system, cfg)
    meta = _metadata(system, cfg, spec, engine)
    writer = ChunkedTrajectoryWriter(spec.out_path, {"atom_types": system.atomic_numbers, "masses": system.masses},
                                     meta)
    stepper = ASEStepper(_make_atoms(system, engine), engine, system, cfg, spec, np.random.default_rng(spec.seed))
    run_chunked(stepper, [writer], n_frames=cfg.n_frames, chunk_frames=cfg.chunk_frames,
                state_path=writer.parts / "checkpoint.npz", lock_path=lock_path_for(spec.out_path),
                fingerprint=_fingerprint(system, cfg, spec), restart_hint=f"delete {writer.parts} to start over",
                label=f"{system.name}:{spec.label}", progress=progress)
    return _qm_stats(system, cfg, spec, engine, stepper)


def _qm_stats(system: System, cfg: QMConfig, spec: QMRunSpec, engine, st: ASEStepper) -> dict[str, Any]:
    with np.load(spec.out_path) as z:
        temps = np.asarray(z["temperature"])
    stats = {
        "out": str(spec.out_path),
        "molecule": system.name,
        "label": spec.label,
        "n_atoms": system.n_atoms,
        "n_frames": cfg.n_frames,
        "steps_this_session": st.steps_session,
        "steps_per_s": st.steps_session / st.seconds if st.seconds > 0 and st.steps_session else None,
        "force_calls_production": st.calls,
        "force_calls_source": st.calls_source,
        "force_ms_per_call": 1000.0 * st.call_seconds / st.calls if st.calls else None,
        "force_calls_total": engine.counters.calls,
        "setup_s": st.setup_s,
        "mean_temperature_K": float(temps.mean()),
        "std_temperature_K": float(temps.std()),
        "target_temperature_K": cfg.temperature_K,
        "engine": engine.describe(),
    }
    stats["temperature_warning"] = temperature_warning(stats["mean_temperature_K"], cfg.temperature_K,
                                                       f"{system.name}:{spec.label}", st.dof)
    return stats




__all__ = ["QMConfig", "QMRunSpec", "relax_and_thermalize", "run_qm_trajectory", "temperature_warning"]
