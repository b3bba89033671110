"""Plain OpenMM MD baselines (stage 01): Langevin (BAOAB) or NVE velocity Verlet, streamed to
disk in chunks, checkpointed so an interrupted run resumes with no lost or duplicated frame.

Units: nm, ps, kJ/mol, amu, K; ``dt_fs`` in femtoseconds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.dynamics import kinetic_energy, n_dof
from mdkstep.engines.openmm_setup import apply_constraints_and_hmr, choose_platform, make_integrator, openmm_seed
from mdkstep.molecule.system import System
from mdkstep.runner import content_hash, lock_path_for, run_chunked
from mdkstep.trajectory import ChunkedTrajectoryWriter, make_metadata
from mdkstep.utils import KB_KJ_PER_MOL_K, MdkstepError, remove_com


@dataclass
class MDConfig:
    """Settings of the MM baselines (configs/md.yaml)."""

    temperature_K: float = 300.0  #: thermostat and initial velocity temperature, K
    dt_fs: float = 2.0  #: integration step, fs
    friction_per_ps: float = 0.1  #: Langevin friction, 1/ps (0 = NVE velocity Verlet)
    constraints: str = "hbonds"  #: hbonds | none
    hydrogen_mass_amu: float | None = None  #: hydrogen mass repartitioning (e.g. 3.0); None = off
    equilibration_ps: float = 10.0  #: NVT equilibration before production, ps (not saved)
    production_ps: float = 100.0  #: saved production length per replica, ps
    save_interval: int = 1  #: save every N steps
    chunk_frames: int = 5000  #: frames per on-disk chunk (= checkpoint interval)
    save_forces: bool = False  #: also store forces at every saved frame
    platform: str = "auto"  #: auto | Reference | CPU | CUDA | OpenCL
    nve_windows: int = 0  #: NVE (velocity Verlet) windows run after production, for drift reference
    nve_window_ps: float = 5.0  #: length of each NVE window, ps
    constraint_tolerance: float = 1e-8  #: SHAKE/SETTLE relative tolerance

    def validate(self) -> None:
        if self.dt_fs <= 0:
            raise ValueError("key 'dt_fs' must be > 0")
        if self.constraints not in ("hbonds", "none"):
            raise ValueError(f"key 'constraints': {self.constraints!r} is not one of ['hbonds', 'none']")
        if self.save_interval < 1 or self.chunk_frames < 1:
            raise ValueError("keys 'save_interval' and 'chunk_frames' must be >= 1")
        if self.production_ps <= 0:
            raise ValueError("key 'production_ps' must be > 0")
        if self.friction_per_ps < 0:
            raise ValueError("key 'friction_per_ps' must be >= 0")


@dataclass
class RunSpec:
    """One trajectory to produce."""

    out_path: Path
    seed: int
    friction_per_ps: float
    production_ps: float
    equilibration_ps: float
    label: str = "nvt"


def build_system(mol: System, cfg: MDConfig):
    """The molecule's OpenMM System with the config's constraints and HMR applied."""
    return apply_constraints_and_hmr(mol.openmm_system(), mol.atomic_numbers, cfg.constraints, cfg.hydrogen_mass_amu)


def _metadata(mol: System, cfg: MDConfig, spec: RunSpec, platform: str, n_constraints: int) -> dict[str, Any]:
    nvt = spec.friction_per_ps > 0
    return make_metadata(
        dt_fs=cfg.dt_fs, save_interval=cfg.save_interval, engine="openmm",
        method="langevin_baoab" if nvt else "velocity_verlet", temperature_K=cfg.temperature_K,
        friction=spec.friction_per_ps, seed=spec.seed, molecule=mol.name, smiles=mol.smiles,
        constraints=cfg.constraints, platform=platform, ensemble="nvt" if nvt else "nve",
        n_constraints=n_constraints, hydrogen_mass_amu=cfg.hydrogen_mass_amu, forcefield=mol.forcefield,
        equilibration_ps=spec.equilibration_ps, label=spec.label, config=asdict(cfg))


def _fingerprint(system, mol: System, cfg: MDConfig, spec: RunSpec, platform: str,
                 start_state: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """Everything that defines an MM run: config, run spec, platform and the content hashes of
    the OpenMM system (force field, constraints, HMR), the start structure and start state."""
    import openmm

    return {"config": asdict(cfg), "seed": spec.seed, "friction_per_ps": spec.friction_per_ps,
            "production_ps": spec.production_ps, "equilibration_ps": spec.equilibration_ps, "label": spec.label,
            "platform": platform, "system_sha": content_hash(openmm.XmlSerializer.serialize(system)),
            "structure_sha": content_hash(np.asarray(mol.positions_nm, dtype=float)),
            "start_state_sha": None if start_state is None else content_hash(*map(np.asarray, start_state))}



class OpenMMStepper:
    """The :class:`~mdkstep.runner.Stepper` of an OpenMM Context: frames every
    ``save_interval`` steps, state = OpenMM's own checkpoint (positions, velocities, RNG)."""

    def __init__(self, ctx, integ, mol: System, cfg: MDConfig, spec: RunSpec, masses: np.ndarray, dof: int,
                 start_state: tuple[np.ndarray, np.ndarray] | None):
        self.ctx, self.integ, self.mol, self.cfg, self.spec = ctx, integ, mol, cfg, spec
        self.masses, self.dof, self.start_state = masses, dof, start_state
        self.steps = 0  #: production steps run in this session
        self.seconds = 0.0  #: wall time of those steps (and their frame copies), s

    def start(self) -> None:
        """Start structure (or ``start_state``), velocities, constraints, equilibration."""
        cfg, ctx = self.cfg, self.ctx
        ctx.setPositions(self.start_state[0] if self.start_state else self.mol.positions_nm)
        ctx.applyConstraints(cfg.constraint_tolerance)
        if self.start_state is not None:
            ctx.setVelocities(self.start_state[1])
        else:
            ctx.setVelocitiesToTemperature(cfg.temperature_K, openmm_seed(self.spec.seed))
        ctx.applyVelocityConstraints(cfg.constraint_tolerance)
        n_eq = int(round(self.spec.equilibration_ps * 1000.0 / cfg.dt_fs))
        if n_eq:
            self.integ.step(n_eq)

    def advance(self, first_frame: int, n_frames: int) -> list[dict[str, np.ndarray]]:
        """Frames ``first_frame ..`` (per frame only a state copy; derived arrays per block)."""
        cfg, n = self.cfg, len(self.masses)
        t0 = time.perf_counter()
        xs, vs = np.empty((n_frames, n, 3)), np.empty((n_frames, n, 3))
        pes = np.empty(n_frames)
        fs = np.empty((n_frames, n, 3)) if cfg.save_forces else None
        for t in range(n_frames):
            self.integ.step(cfg.save_interval)
            st = self.ctx.getState(getPositions=True, getVelocities=True)
            xs[t] = st.getPositions(asNumpy=True)._value
            vs[t] = st.getVelocities(asNumpy=True)._value
            pes[t] = self.integ.getGlobalVariableByName("pe")
            if fs is not None:
                fs[t] = self.integ.getPerDofVariableByName("fsave")
        self.steps += n_frames * cfg.save_interval
        self.seconds += time.perf_counter() - t0
        if not np.all(np.isfinite(xs)):
            raise MdkstepError(f"{self.spec.out_path}: MD blew up (non-finite positions at frames {first_frame}.."
                               f"{first_frame + n_frames - 1}); check dt_fs and constraints")
        ke = kinetic_energy(remove_com(vs, self.masses), self.masses)
        rec = dict(positions=xs, velocities=vs, energies=pes, kinetic=ke,
                   temperature=2.0 * ke / (self.dof * KB_KJ_PER_MOL_K),
                   time_ps=(np.arange(first_frame, first_frame + n_frames) + 1) * cfg.save_interval * cfg.dt_fs / 1000.0)
        if fs is not None:
            rec["forces"] = fs
        return [rec]

    def get_state(self) -> dict[str, np.ndarray]:
        return {"openmm_checkpoint": np.frombuffer(self.ctx.createCheckpoint(), dtype=np.uint8)}

    def set_state(self, state) -> None:
        self.ctx.loadCheckpoint(np.asarray(state["openmm_checkpoint"], dtype=np.uint8).tobytes())

    def end_state(self) -> tuple[np.ndarray, np.ndarray]:
        st = self.ctx.getState(getPositions=True, getVelocities=True)
        return np.asarray(st.getPositions(asNumpy=True)._value), np.asarray(st.getVelocities(asNumpy=True)._value)


def run_trajectory(mol: System, cfg: MDConfig, spec: RunSpec, start_state: tuple[np.ndarray, np.ndarray] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one trajectory and write ``spec.out_path`` in the NPZ schema.

    ``start_state`` = (positions nm, velocities nm/ps) to start from instead of the prepared
    structure with Maxwell-Boltzmann velocities. Resume state: ``<out>.parts/checkpoint.npz``
    (one atomic file, see :mod:`mdkstep.runner`); a resume with other settings is refused.
    Returns run statistics.
    """
    import openmm
    from openmm import unit

    system = build_system(mol, cfg)
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
    integ = make_integrator(cfg.dt_fs, cfg.temperature_K, spec.friction_per_ps, cfg.constraint_tolerance)
    integ.setRandomNumberSeed(openmm_seed(spec.seed))  # must precede Context creation to take effect
    platform = choose_platform(cfg.platform, system.getNumParticles())
    ctx = openmm.Context(system, integ, platform)
    dof = n_dof(len(masses), system.getNumConstraints(), com_removed=True)
    meta = _metadata(mol, cfg, spec, platform.getName(), system.getNumConstraints())
    writer = ChunkedTrajectoryWriter(spec.out_path, {"atom_types": mol.atomic_numbers, "masses": masses}, meta)
    n_frames = int(round(spec.production_ps * 1000.0 / cfg.dt_fs / cfg.save_interval))
    if n_frames < 1:
        raise MdkstepError(f"production of {spec.production_ps} ps at {cfg.dt_fs} fs gives no frames")
    stepper = OpenMMStepper(ctx, integ, mol, cfg, spec, masses, dof, start_state)
    run_chunked(stepper, [writer], n_frames=n_frames, chunk_frames=cfg.chunk_frames,
                state_path=writer.parts / "checkpoint.npz", lock_path=lock_path_for(spec.out_path),
                fingerprint=_fingerprint(system, mol, cfg, spec, platform.getName(), start_state),
                restart_hint=f"delete {writer.parts} to start over", label=f"{mol.name}:{spec.label}",
                progress=progress)
    steps_done, elapsed = stepper.steps, stepper.seconds
    return {
        "out": str(spec.out_path),
        "n_frames": n_frames,
        "steps_this_session": steps_done,
        "steps_per_s": steps_done / elapsed if elapsed > 0 and steps_done else None,
        "force_calls": steps_done,  # this session's production steps: OpenMM caches forces, one call per step
        "force_calls_source": "integrator_steps",
        "platform": platform.getName(),
        "end_state": stepper.end_state(),
    }


def equilibrate(mol: System, cfg: MDConfig, n_rep: int, seed: int, equil_ps: float | None = None,
                min_friction_per_ps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Start states for ``n_rep`` replicas: per replica r, OpenMM minimisation (10 kJ/(mol nm),
    <= 2000 iterations), Maxwell-Boltzmann velocities (seed + 1000 r + 1) and plain BAOAB (the
    baseline integrator) for ``equil_ps`` (default ``cfg.equilibration_ps``) at friction
    max(cfg's, ``min_friction_per_ps``) 1/ps. Returns (x nm, v nm/ps), each (n_rep, n_atoms, 3)."""
    import openmm

    t_eq = cfg.equilibration_ps if equil_ps is None else equil_ps
    n_eq = int(round(t_eq * 1000.0 / cfg.dt_fs))
    xs, vs = [], []
    for r in range(n_rep):
        system = build_system(mol, cfg)
        integ = make_integrator(cfg.dt_fs, cfg.temperature_K, max(cfg.friction_per_ps, min_friction_per_ps),
                                cfg.constraint_tolerance)
        integ.setRandomNumberSeed(openmm_seed(seed + 1000 * r + 1))  # before the Context exists, or it is ignored
        ctx = openmm.Context(system, integ, choose_platform(cfg.platform, system.getNumParticles()))
        ctx.setPositions(mol.positions_nm)
        ctx.applyConstraints(cfg.constraint_tolerance)
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 2000)
        ctx.setVelocitiesToTemperature(cfg.temperature_K, openmm_seed(seed + 1000 * r + 1))
        ctx.applyVelocityConstraints(cfg.constraint_tolerance)
        if n_eq:
            integ.step(n_eq)
        st = ctx.getState(getPositions=True, getVelocities=True)
        xs.append(np.asarray(st.getPositions(asNumpy=True)._value))
        vs.append(np.asarray(st.getVelocities(asNumpy=True)._value))
    return np.stack(xs), np.stack(vs)


def raw_steps_per_s(mol: System, cfg: MDConfig, n_steps: int = 20000, seed: int = 0) -> dict[str, float]:
    """OpenMM speed with no saving at all (same system): our BAOAB CustomIntegrator and
    OpenMM's built-in LangevinMiddleIntegrator, for the saving-overhead comparison."""
    import openmm

    out = {}
    for name in ("custom_baoab", "langevin_middle"):
        system = build_system(mol, cfg)
        if name == "custom_baoab":
            integ = make_integrator(cfg.dt_fs, cfg.temperature_K, max(cfg.friction_per_ps, 1e-6))
        else:
            integ = openmm.LangevinMiddleIntegrator(cfg.temperature_K, cfg.friction_per_ps, cfg.dt_fs / 1000.0)
        ctx = openmm.Context(system, integ, choose_platform(cfg.platform, system.getNumParticles()))
        ctx.setPositions(mol.positions_nm)
        ctx.applyConstraints(1e-8)
        ctx.setVelocitiesToTemperature(cfg.temperature_K, openmm_seed(seed))
        integ.step(500)
        t0 = time.perf_counter()
        integ.step(n_steps)
        out[name] = n_steps / (time.perf_counter() - t0)
    return out
