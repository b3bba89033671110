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

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .system import System, from_molecule_dir, from_smi_file
from .dynamics import kinetic_energy, n_dof
from .runner import content_hash, lock_path_for, pack_json, run_chunked, tidy_finished, unpack_json
from .trajectory import ChunkedTrajectoryWriter, make_metadata
from .utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, remove_com

#: a run whose mean temperature is further than this fraction from the target is flagged
TEMPERATURE_TOLERANCE = 0.10


@dataclass
class QMConfig:
    """Settings of the QM baselines (configs/qm*.yaml). Units in the comments."""

    # --- force engine
    engine: str = "xtb"  #: xtb | pyscf
    method: str = "GFN2-xTB"  #: xtb: GFN2-xTB | GFN1-xTB | IPEA1-xTB; pyscf: RHF | UHF | RKS | UKS | ...
    multiplicity: int = 1  #: spin multiplicity 2S+1
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
        if self.multiplicity < 1:
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

    from .engines.ase_engine import EngineCalculator
    from .engines.units import nm_to_angstrom

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

    from .engines.units import PS_IN_ASE_TIME

    fr = cfg.friction_per_ps if friction_per_ps is None else friction_per_ps
    return Langevin(atoms, timestep=cfg.dt_fs * units.fs, temperature_K=cfg.temperature_K,
                    friction=fr / PS_IN_ASE_TIME, fixcm=False, rng=rng)


def _production_dynamics(atoms, cfg: QMConfig, rng):
    if cfg.thermostat == "langevin":
        return _langevin(atoms, cfg, rng)
    from ase import units
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=cfg.dt_fs * units.fs)


def _minimize(atoms, cfg: QMConfig) -> None:
    from ase.optimize import BFGS

    from .engines.units import EV_PER_ANGSTROM_TO_KJ_MOL_NM

    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=cfg.minimize_fmax_kj_mol_nm / EV_PER_ANGSTROM_TO_KJ_MOL_NM, steps=cfg.minimize_steps)


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
        from .engines.units import ANGSTROM_TO_NM, ASE_VELOCITY_TO_NM_PS

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
        from .engines.units import ANGSTROM_TO_NM, ASE_VELOCITY_TO_NM_PS

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
    from .engines.factory import make_engine

    if system.multiplicity != cfg.multiplicity:
        LOG.warning("%s: the molecule's multiplicity is %d (RDKit radical electrons + 1) but the config's is %d",
                    system.name, system.multiplicity, cfg.multiplicity)
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


# ------------------------------------------------------------------------ batch running

@dataclass
class QMJob:
    """A (molecule, replica) pair for the worker pool."""

    system: System
    spec: QMRunSpec
    cfg: QMConfig
    progress: bool = False


def limit_threads(n_threads: int):
    """Limit OpenMP/BLAS threads of this process to ``n_threads``.

    Sets the environment (read by libraries loaded later) and, through threadpoolctl, every
    OpenMP/BLAS runtime already loaded (tblite and PySCF each bring one). Oversubscribed
    OpenMP is catastrophic here: GFN2-xTB on ethanol took ~600 ms/call with 2 threads on a busy
    2-core machine vs ~1 ms with 1 thread. Returns the ``threadpool_limits`` handle: use it as a
    context manager, or call ``restore_original_limits()`` to undo (not the environment).
    """
    from threadpoolctl import threadpool_limits

    n = max(1, int(n_threads))
    os.environ.update({k: str(n) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return threadpool_limits(limits=n)


def _worker_init(n_threads: int, log_level: str) -> None:
    """Pool initializer: thread limits before any QM library loads, logging for the child."""
    limit_threads(n_threads)
    from .utils import setup_logging

    setup_logging(log_level)


def run_job(job: QMJob) -> dict[str, Any]:
    """Run one job; a failure is returned as ``{'error': one line}`` so the batch goes on."""
    try:
        return run_qm_trajectory(job.system, job.cfg, job.spec, progress=job.progress)
    except MdkstepError as e:
        return {"molecule": job.system.name, "label": job.spec.label, "out": str(job.spec.out_path), "error": str(e)}
    except Exception as e:  # a backend crash in one molecule must not kill the batch
        return {"molecule": job.system.name, "label": job.spec.label, "out": str(job.spec.out_path),
                "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def default_threads(engine: str, num_workers: int) -> int:
    """OpenMP threads per worker when none are given: 1. The molecules here are tiny; threads
    gain little and oversubscription (workers x threads > free cores) costs up to 100x.
    Raise ``omp_num_threads`` for larger PySCF systems or basis sets."""
    return 1


def run_jobs(jobs: Sequence[QMJob], num_workers: int = 1, omp_num_threads: int | None = None,
             log_level: str = "INFO") -> Iterable[dict[str, Any]]:
    """Yield job results as they finish; ``num_workers`` > 1 uses a spawn process pool.
    Every worker (or this process) runs with ``omp_num_threads`` OpenMP threads (default:
    :func:`default_threads`)."""
    if not jobs:
        return
    threads = omp_num_threads or default_threads(jobs[0].cfg.engine, num_workers)
    if num_workers <= 1 or len(jobs) <= 1:
        with limit_threads(threads):
            for job in jobs:
                yield run_job(job)
        return
    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # no fork after OpenMP/BLAS initialisation
    with ctx.Pool(min(num_workers, len(jobs)), initializer=_worker_init, initargs=(threads, log_level)) as pool:
        for res in tqdm(pool.imap_unordered(run_job, jobs), total=len(jobs), desc="trajectories", unit="traj"):
            yield res


def summary_line(res: dict[str, Any]) -> str:
    """One line per trajectory for the end-of-run summary."""
    if "error" in res:
        return f"{res['molecule']}:{res['label']}: FAILED: {res['error']}"
    line = (f"{res['molecule']}:{res['label']}: {res['n_frames']} frames, mean T {res['mean_temperature_K']:.1f} "
            f"± {res['std_temperature_K']:.1f} K (target {res['target_temperature_K']:.0f} K)")
    if res.get("steps_per_s") and res.get("force_ms_per_call"):
        line += f", {res['steps_per_s']:.0f} steps/s, {res['force_ms_per_call']:.2f} ms/force call"
    return line


# ---------------------------------------------------------------------------- the CLI

def add_cli_arguments(p, default_config: str, default_smiles: str | None = None) -> None:
    """The options shared by 01b (xtb) and 01c (pyscf)."""
    src = p.add_mutually_exclusive_group(required=default_smiles is None)
    src.add_argument("--molecule", type=Path, help="one prepared molecule folder (topology.json + molecule.pdb, stage 00)")
    src.add_argument("--all", type=Path, metavar="RAW_DIR", help="every prepared molecule folder under RAW_DIR")
    src.add_argument("--smiles-file", type=Path, default=default_smiles,
                     help="'SMILES name' per line; RDKit ETKDG conformer, formal charge from RDKit"
                          + (f" (default: {default_smiles})" if default_smiles else ""))
    p.add_argument("--config", type=Path, default=Path(default_config), help=f"QM YAML (default: {default_config})")
    p.add_argument("--out", type=Path, required=True, help="output root; writes <out>/<molecule>/replica_<r>.npz")
    p.add_argument("--time-ps", type=float, default=None, help="production length per replica, ps (overrides production_ps)")
    p.add_argument("--equil-ps", type=float, default=None, help="Langevin equilibration, ps (overrides equilibration_ps)")
    p.add_argument("--seed", type=int, default=0, help="base seed (conformer and velocities); replica r uses seed + 1000*r")
    p.add_argument("--replicas", type=int, default=1, help="independent replicas per molecule (>= 2 gives the noise floor)")
    p.add_argument("--num-workers", type=int, default=1, help="parallel processes, one (molecule, replica) each")
    p.add_argument("--omp-num-threads", type=int, default=None,
                   help="OpenMP threads per worker (default: config omp_num_threads, else 1; "
                        "keep workers x threads <= free cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="pyscf: auto uses GPU4PySCF when a CUDA GPU is present; xtb runs on CPU only")
    p.add_argument("--shard", default=None, metavar="i/n", help="run only molecules i, i+n, ... (0-based), for array jobs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="recompute trajectories that already exist")
    p.add_argument("--no-progress", action="store_true", help="no per-trajectory progress bars")
    p.add_argument("--log-level", default="INFO", help="DEBUG | INFO | WARNING")


def load_systems(args) -> list[System]:
    """The molecules named by --molecule / --all / --smiles-file."""
    from .chem import find_molecules

    if args.molecule:
        return [from_molecule_dir(args.molecule)]
    if args.all:
        dirs = find_molecules(args.all)
        if not dirs:
            raise MdkstepError(f"{args.all}: no molecule folders (run src/00_prep_mols.py first)")
        return [from_molecule_dir(d) for d in dirs]
    if args.smiles_file:
        return from_smi_file(args.smiles_file, args.seed)
    raise MdkstepError("give --molecule, --all or --smiles-file")


def main_from_args(args, required_engine: str | None = None) -> int:
    """Shared body of 01b / 01c: config, jobs, pool, summary, run_stats.json per molecule."""
    from .config import load_config, to_dict
    from .utils import atomic_write_json, check_writable, parse_shard, setup_logging

    setup_logging(args.log_level)
    for flag, value, strict in (("--time-ps", args.time_ps, True), ("--equil-ps", args.equil_ps, False)):
        if value is not None and not (value > 0 if strict else value >= 0):
            raise MdkstepError(f"{flag} must be {'> 0' if strict else '>= 0'} ps, got {value}")
    overrides: dict[str, Any] = {"production_ps": args.time_ps, "equilibration_ps": args.equil_ps,
                                 "omp_num_threads": args.omp_num_threads}
    if args.device != "auto":
        overrides["use_gpu"] = args.device == "cuda"
    cfg = load_config(QMConfig, args.config, overrides, args.set)
    if required_engine and cfg.engine != required_engine:
        raise MdkstepError(f"{args.config}: key 'engine' is {cfg.engine!r}, but this script runs {required_engine!r}")
    if cfg.engine == "xtb" and args.device == "cuda":
        raise MdkstepError("--device cuda: the xtb engine runs on CPU only")
    if args.replicas < 1 or args.num_workers < 1:
        raise MdkstepError("--replicas and --num-workers must be >= 1")
    check_writable(args.out, "--out")  # before any trajectory runs
    i, n = parse_shard(args.shard)
    systems = load_systems(args)[i::n]
    jobs: list[QMJob] = []
    for s in systems:
        for r in range(args.replicas):
            spec = QMRunSpec(args.out / s.name / f"replica_{r}.npz", args.seed + 1000 * r, f"replica{r}", r)
            if spec.out_path.exists() and not args.overwrite:
                LOG.info("%s exists, skipping (use --overwrite to redo)", spec.out_path)
                tidy_finished(spec.out_path)
                continue
            jobs.append(QMJob(s, spec, cfg, progress=args.num_workers == 1 and not args.no_progress))
    LOG.info("%d trajectories (%d molecules x %d replicas) with %s %s, %d worker(s)", len(jobs), len(systems),
             args.replicas, cfg.engine, cfg.method, args.num_workers)
    results: list[dict[str, Any]] = []
    for res in run_jobs(jobs, args.num_workers, cfg.omp_num_threads, args.log_level):
        results.append(res)
        print(summary_line(res), flush=True)
        if res.get("temperature_warning"):
            LOG.warning(res["temperature_warning"])
    by_mol: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by_mol.setdefault(res["molecule"], []).append(res)
    for name, rs in by_mol.items():
        stats_path = args.out / name / "run_stats.json"
        old = json.loads(stats_path.read_text()).get("replicas", []) if stats_path.is_file() else []
        labels = {r["label"] for r in rs}
        merged = [r for r in old if r.get("label") not in labels] + rs
        atomic_write_json(stats_path, {"molecule": name, "config": to_dict(cfg),
                                       "replicas": sorted(merged, key=lambda r: r.get("label", ""))})
    failed = [r for r in results if "error" in r]
    hot = [r for r in results if r.get("temperature_warning")]
    print(f"{len(results) - len(failed)} trajectories written under {args.out}; {len(failed)} failed; "
          f"{len(hot)} with mean temperature > {TEMPERATURE_TOLERANCE:.0%} off target")
    if failed:
        raise MdkstepError(f"{len(failed)} trajectory(ies) failed, first: {failed[0]['error']}")
    return 0


__all__ = [
    "QMConfig", "QMRunSpec", "QMJob", "run_qm_trajectory", "limit_threads", "run_jobs", "run_job", "temperature_warning",
    "add_cli_arguments", "load_systems", "main_from_args",
]
