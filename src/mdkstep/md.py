"""Plain OpenMM MD baselines (stage 01): Langevin (BAOAB) or NVE velocity Verlet, streamed to
disk in chunks, checkpointed so an interrupted run resumes with no lost or duplicated frame.

Units: nm, ps, kJ/mol, amu, K; ``dt_fs`` in femtoseconds.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .system import System
from .mm import apply_constraints_and_hmr, choose_platform, make_integrator
from .dynamics import kinetic_energy, n_dof
from .trajectory import ChunkedTrajectoryWriter
from .utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, atomic_write_bytes, atomic_write_json, remove_com


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
    return {
        "dt_fs": cfg.dt_fs,
        "save_interval": cfg.save_interval,
        "engine": "openmm",
        "platform": platform,
        "method": "langevin_baoab" if spec.friction_per_ps > 0 else "velocity_verlet",
        "ensemble": "nvt" if spec.friction_per_ps > 0 else "nve",
        "temperature_K": cfg.temperature_K,
        "friction": spec.friction_per_ps,
        "seed": spec.seed,
        "molecule": mol.name,
        "smiles": mol.smiles,
        "constraints": cfg.constraints,
        "n_constraints": n_constraints,
        "hydrogen_mass_amu": cfg.hydrogen_mass_amu,
        "forcefield": mol.forcefield,
        "equilibration_ps": spec.equilibration_ps,
        "label": spec.label,
        "config": asdict(cfg),
    }


def run_trajectory(mol: System, cfg: MDConfig, spec: RunSpec, start_state: tuple[np.ndarray, np.ndarray] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one trajectory and write ``spec.out_path`` in the NPZ schema.

    ``start_state`` = (positions nm, velocities nm/ps) to start from instead of the prepared
    structure with Maxwell-Boltzmann velocities. Returns run statistics.
    """
    import openmm
    from openmm import unit
    from tqdm import tqdm

    system = build_system(mol, cfg)
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
    integ = make_integrator(cfg.dt_fs, cfg.temperature_K, spec.friction_per_ps, cfg.constraint_tolerance)
    integ.setRandomNumberSeed(spec.seed)  # must precede Context creation to take effect
    platform = choose_platform(cfg.platform, system.getNumParticles())
    ctx = openmm.Context(system, integ, platform)
    dof = n_dof(len(masses), system.getNumConstraints(), com_removed=True)
    meta = _metadata(mol, cfg, spec, platform.getName(), system.getNumConstraints())
    writer = ChunkedTrajectoryWriter(spec.out_path, {"atom_types": mol.atomic_numbers, "masses": masses}, meta)
    ckpt = writer.parts / "checkpoint.chk"
    progress_file = writer.parts / "progress.json"

    n_frames = int(round(spec.production_ps * 1000.0 / cfg.dt_fs / cfg.save_interval))
    if n_frames < 1:
        raise MdkstepError(f"production of {spec.production_ps} ps at {cfg.dt_fs} fs gives no frames")
    n_chunks = -(-n_frames // cfg.chunk_frames)
    done_chunks = 0
    if ckpt.is_file() and progress_file.is_file():
        prog = json.loads(progress_file.read_text())
        if prog.get("n_frames") != n_frames or prog.get("chunk_frames") != cfg.chunk_frames:
            raise MdkstepError(f"{writer.parts}: a partial run with other settings exists; delete it to restart")
        ctx.loadCheckpoint(ckpt.read_bytes())
        done_chunks = int(prog["done_chunks"])
        writer.discard_chunks_from(done_chunks)
        LOG.info("%s: resuming at chunk %d/%d", spec.out_path.name, done_chunks, n_chunks)
    else:
        writer.discard_chunks_from(0)
        ctx.setPositions(start_state[0] if start_state else mol.positions_nm)
        ctx.applyConstraints(cfg.constraint_tolerance)
        if start_state is not None:
            ctx.setVelocities(start_state[1])
        else:
            ctx.setVelocitiesToTemperature(cfg.temperature_K, spec.seed)
        ctx.applyVelocityConstraints(cfg.constraint_tolerance)
        n_eq = int(round(spec.equilibration_ps * 1000.0 / cfg.dt_fs))
        if n_eq:
            integ.step(n_eq)

    dt_ps = cfg.dt_fs / 1000.0
    t_start = time.perf_counter()
    steps_done = 0
    bar = tqdm(total=n_frames, initial=done_chunks * cfg.chunk_frames, desc=f"{mol.name}:{spec.label}",
               unit="frame", disable=not progress or None, leave=False)
    for chunk in range(done_chunks, n_chunks):
        first = chunk * cfg.chunk_frames
        last = min(n_frames, first + cfg.chunk_frames)
        m = last - first
        xs = np.empty((m, len(masses), 3))
        vs = np.empty((m, len(masses), 3))
        pes = np.empty(m)
        fs = np.empty((m, len(masses), 3)) if cfg.save_forces else None
        # Per frame only copy state out (the hot loop); derived quantities are vectorized per chunk.
        for t in range(m):
            integ.step(cfg.save_interval)
            st = ctx.getState(getPositions=True, getVelocities=True)
            xs[t] = st.getPositions(asNumpy=True)._value
            vs[t] = st.getVelocities(asNumpy=True)._value
            pes[t] = integ.getGlobalVariableByName("pe")
            if fs is not None:
                fs[t] = integ.getPerDofVariableByName("fsave")
        steps_done += m * cfg.save_interval
        if not np.all(np.isfinite(xs)):
            raise MdkstepError(f"{spec.out_path}: MD blew up (non-finite positions in chunk {chunk}); "
                               "check dt_fs and constraints")
        ke = kinetic_energy(remove_com(vs, masses), masses)
        rec = dict(positions=xs, velocities=vs, energies=pes, kinetic=ke,
                   temperature=2.0 * ke / (dof * KB_KJ_PER_MOL_K),
                   time_ps=(np.arange(first, last) + 1) * cfg.save_interval * dt_ps)
        if fs is not None:
            rec["forces"] = fs
        writer.append_block(**rec)
        bar.update(last - first)
        writer.flush(chunk)
        atomic_write_bytes(ckpt, ctx.createCheckpoint())
        atomic_write_json(progress_file, {"done_chunks": chunk + 1, "n_frames": n_frames, "chunk_frames": cfg.chunk_frames})
    bar.close()
    elapsed = time.perf_counter() - t_start
    final = ctx.getState(getPositions=True, getVelocities=True)
    end_state = (np.asarray(final.getPositions(asNumpy=True)._value), np.asarray(final.getVelocities(asNumpy=True)._value))
    writer.finalize()
    return {
        "out": str(spec.out_path),
        "n_frames": n_frames,
        "steps_this_session": steps_done,
        "steps_per_s": steps_done / elapsed if elapsed > 0 and steps_done else None,
        "platform": platform.getName(),
        "end_state": end_state,
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
        integ.setRandomNumberSeed(seed + 1000 * r + 1)  # before the Context exists, or it is ignored
        ctx = openmm.Context(system, integ, choose_platform(cfg.platform, system.getNumParticles()))
        ctx.setPositions(mol.positions_nm)
        ctx.applyConstraints(cfg.constraint_tolerance)
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 2000)
        ctx.setVelocitiesToTemperature(cfg.temperature_K, seed + 1000 * r + 1)
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
        ctx.setVelocitiesToTemperature(cfg.temperature_K, seed)
        integ.step(500)
        t0 = time.perf_counter()
        integ.step(n_steps)
        out[name] = n_steps / (time.perf_counter() - t0)
    return out
