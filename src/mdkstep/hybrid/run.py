"""The hybrid run driver: files, resume, statistics around :class:`HybridIntegrator`.

Output: one trajectory NPZ per replica (the schema of ``mdkstep.trajectory``): ``out_path``
itself for one replica, ``<stem>_r<i>.npz`` for several. A frame every ``save_interval_cycles``
cycles; ``time_ps`` = cycle * steps_per_cycle * dt exactly. The run is checkpointed after
every chunk (``<stem>.hybrid_ckpt.npz``: x, v, F, U, cycle, counters, RNG state, and the
fingerprint of the run, in one atomic file; see :mod:`mdkstep.runner`) and resumes with the
same frames; a resume with another config, seed or model is refused. Units: nm, nm/ps, kJ/mol, ps, K.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mdkstep.engines.base import ForceEngine
from mdkstep.hybrid.config import HybridConfig
from mdkstep.hybrid.integrator import HybridIntegrator, Jumper
from mdkstep.runner import content_hash, lock_path_for, run_chunked
from mdkstep.trajectory import ChunkedTrajectoryWriter, make_metadata
from mdkstep.utils import MdkstepError


def replica_paths(out_path: str | Path, n_replicas: int) -> list[Path]:
    """Trajectory files: ``out_path`` for one replica, ``<stem>_r<i><suffix>`` for several."""
    out = Path(out_path)
    if n_replicas == 1:
        return [out]
    return [out.with_name(f"{out.stem}_r{i}{out.suffix or '.npz'}") for i in range(n_replicas)]


def checkpoint_path(out_path: str | Path) -> Path:
    """The resume checkpoint of a hybrid run writing ``out_path``."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.hybrid_ckpt.npz")


def _fingerprint(cfg: HybridConfig, n_cycles: int, n_rep: int, engine: ForceEngine, rng: np.random.Generator,
                 extra: dict[str, Any] | None) -> dict[str, Any]:
    """Everything that defines a hybrid run: config, length, replicas, the engine's atoms,
    the thermostat RNG's start state (the seed) and ``extra`` (e.g. the model checkpoint hash)."""
    return {"config": asdict(cfg), "n_cycles": n_cycles, "n_replicas": n_rep, "n_atoms": len(engine.masses),
            "engine": engine.name,
            "atoms_sha": content_hash(np.asarray(engine.atomic_numbers), np.asarray(engine.masses, dtype=float)),
            "rng_start_sha": content_hash(rng.bit_generator.state), **(extra or {})}


class HybridStepper:
    """The :class:`~mdkstep.runner.Stepper` of a :class:`HybridIntegrator`: a frame every
    ``save_interval_cycles`` cycles for each replica; state = the integrator's state, the
    cumulative counters and the first session's metadata. Keeps the integrator's counters
    cumulative over sessions (force calls from the engine counter, wall seconds)."""

    def __init__(self, integ: HybridIntegrator, engine: ForceEngine, writers: Sequence[ChunkedTrajectoryWriter],
                 paths: Sequence[Path], meta_base: dict[str, Any], x0, v0, f0, u0):
        self.integ, self.engine, self.writers, self.paths = integ, engine, writers, paths
        self.meta_base = meta_base
        self.start_args = (x0, v0, f0, u0)
        self.cfg = integ.cfg
        self.source: str | Path = "hybrid checkpoint"  #: names the resume file in errors
        self.t_start = time.perf_counter()
        self.session_calls0 = self.sec_mark = None
        self.calls_before, self.wall_before = 0, 0.0
        self._mark_session()

    def _mark_session(self) -> None:
        self.session_calls0, self.sec_mark = self.engine.counters.calls, self.engine.counters.seconds

    def sync_counters(self) -> None:
        """Fold this session's engine counter and wall clock into the cumulative counters."""
        c, e = self.integ.counters, self.engine.counters
        c.force_calls = self.calls_before + e.calls - self.session_calls0
        c.force_seconds += e.seconds - self.sec_mark
        self.sec_mark = e.seconds
        c.wall_seconds = self.wall_before + time.perf_counter() - self.t_start

    def start(self) -> None:
        self.integ.initialize(*self.start_args)
        self.sync_counters()

    def advance(self, first_frame: int, n_frames: int) -> list[dict[str, np.ndarray]]:
        integ, sic = self.integ, self.cfg.save_interval_cycles
        n_rep = integ.x.shape[0]
        frames: list[list[dict[str, np.ndarray]]] = [[] for _ in range(n_rep)]
        for fr in range(first_frame, first_frame + n_frames):
            for _ in range(sic):
                integ.cycle()
            cyc = (fr + 1) * sic
            for r in range(n_rep):
                frame = integ.frame(r)
                if not all(np.all(np.isfinite(a)) for a in frame.values()):
                    integ.counters.nan_frames += 1
                    raise MdkstepError(f"{self.paths[r]}: non-finite state at cycle {cyc}; not written (guard failure)")
                frame["time_ps"] = np.float64(cyc * self.cfg.steps_per_cycle * self.cfg.dt_ps)
                frames[r].append(frame)
        return [{k: np.stack([f[k] for f in fs]) for k in fs[0]} for fs in frames]

    def get_state(self) -> dict[str, np.ndarray]:
        self.sync_counters()
        return self.integ.get_state({"metadata": self.meta_base})

    def set_state(self, state) -> None:
        extra = self.integ.set_state(state, str(self.source))
        self.calls_before = self.integ.counters.force_calls
        self.wall_before = self.integ.counters.wall_seconds
        self.t_start = time.perf_counter()
        self._mark_session()
        self.meta_base = extra.get("metadata", self.meta_base)  # the first session's description of the run
        for r, w in enumerate(self.writers):
            w.metadata = {**self.meta_base, "replica": r}
        self.sync_counters()


def run_hybrid(engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, x0: np.ndarray, v0: np.ndarray,
               n_cycles: int, out_path: str | Path, rng: np.random.Generator, resume: bool = True, *,
               f0: np.ndarray | None = None, u0: np.ndarray | None = None,
               metadata: dict[str, Any] | None = None, progress: bool = True,
               fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a hybrid trajectory of R replicas and write one NPZ per replica.

    engine: the force engine (its counter is the force-call truth); jumper: see :class:`Jumper`;
    cfg: a resolved :class:`HybridConfig` (k, dt_fs set); x0, v0: (N,3) or (R,N,3) start state,
    nm and nm/ps; n_cycles: cycles to run (rounded down to whole frames; each cycle advances
    ``cfg.cycle_ps``); out_path: trajectory NPZ (``replica_paths`` for R > 1); rng: thermostat
    noise (its state is checkpointed); resume: continue from ``<stem>.hybrid_ckpt.npz`` when it
    exists (refused when the run's fingerprint differs); f0/u0: forces/energies at x0 if already
    known (skips the setup calls); metadata: merged into every trajectory's metadata (molecule,
    smiles, constraints, seed, ...); fingerprint: more facts that define the run (e.g. the model
    checkpoint's hash), compared on resume.
    Returns the run statistics (force calls, timings, guard counters, temperatures).
    """
    cfg.validate()
    integ = HybridIntegrator(engine, jumper, cfg, rng)
    x0 = np.asarray(x0, dtype=float).reshape(-1, integ.n_atoms, 3)
    n_rep = x0.shape[0]
    n_frames = int(n_cycles) // cfg.save_interval_cycles
    if n_frames < 1:
        raise MdkstepError(f"{n_cycles} cycles give no frame at save_interval_cycles = {cfg.save_interval_cycles}")
    n_cycles = n_frames * cfg.save_interval_cycles
    paths = replica_paths(out_path, n_rep)
    ckpt = checkpoint_path(out_path)
    fp = _fingerprint(cfg, n_cycles, n_rep, engine, rng, fingerprint)
    meta_base = _metadata(engine, cfg, metadata or {}, n_rep)
    static = {"atom_types": np.asarray(engine.atomic_numbers), "masses": np.asarray(engine.masses, dtype=float)}
    writers = [ChunkedTrajectoryWriter(p, static, {**meta_base, "replica": r}) for r, p in enumerate(paths)]
    stepper = HybridStepper(integ, engine, writers, paths, meta_base, x0, v0, f0, u0)
    stepper.source = ckpt
    run_chunked(stepper, writers, n_frames=n_frames, chunk_frames=cfg.chunk_frames, state_path=ckpt,
                fingerprint=fp, lock_path=lock_path_for(out_path), resume=resume,
                restart_hint=f"delete {ckpt} (or pass --overwrite) to start over",
                label=f"hybrid k={cfg.k} {cfg.corrector}", progress=progress,
                progress_unit=("cycle", cfg.save_interval_cycles))
    stepper.sync_counters()
    return _stats(integ, engine, jumper, cfg, n_frames, n_rep, paths)


def _metadata(engine: ForceEngine, cfg: HybridConfig, extra: dict[str, Any], n_rep: int) -> dict[str, Any]:
    desc = engine.describe()
    base = dict(dt_fs=cfg.dt_fs, save_interval=cfg.save_interval_cycles * cfg.steps_per_cycle,  # steps between frames
                engine=desc.get("engine", engine.name), method=f"hybrid_{cfg.corrector}",
                temperature_K=cfg.temperature_K,
                friction=cfg.friction_per_ps if cfg.thermostat_active == "langevin" else 0.0, seed=None,
                molecule="unknown", smiles=None, constraints="hbonds" if engine.n_constraints else "none",
                ensemble=cfg.ensemble, thermostat=cfg.thermostat_active, n_constraints=engine.n_constraints,
                k=cfg.k, steps_per_cycle=cfg.steps_per_cycle, cycle_ps=cfg.cycle_ps, n_replicas=n_rep,
                hybrid=asdict(cfg), engine_info=desc)
    return make_metadata(**{**base, **extra})


def _stats(integ: HybridIntegrator, engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, n_frames: int,
           n_rep: int, paths: Sequence[Path]) -> dict[str, Any]:
    c = integ.counters
    sim_ps = c.cycles * cfg.cycle_ps
    total_ps = sim_ps * n_rep
    rc = c.cycles * n_rep
    model_ms = getattr(jumper, "ms_per_jump", None)
    out = {
        "outputs": [str(p) for p in paths],
        "n_replicas": n_rep,
        "n_cycles": c.cycles,
        "n_frames": n_frames,
        "k": cfg.k,
        "dt_fs": cfg.dt_fs,
        "corrector": cfg.corrector,
        "ensemble": cfg.ensemble,
        "thermostat": cfg.thermostat_active,
        "steps_per_cycle": cfg.steps_per_cycle,
        "calls_per_cycle_nominal": cfg.calls_per_cycle,
        "cycle_ps": cfg.cycle_ps,
        "simulated_ps": sim_ps,  # per replica
        "simulated_ps_total": total_ps,  # all replicas
        "force_calls": c.force_calls,  # engine counter, all replicas, setup included
        "force_calls_setup": c.force_calls_setup,
        "force_calls_jump": c.force_calls_jump,
        "force_calls_fallback": c.force_calls_fallback,
        "force_calls_per_ps": c.force_calls / total_ps if total_ps else None,
        "force_calls_per_replica_cycle": (c.force_calls_jump + c.force_calls_fallback) / rc if rc else None,
        "force_ms_per_call": 1000.0 * c.force_seconds / c.force_calls if c.force_calls else None,
        "wall_seconds": c.wall_seconds,
        "wall_seconds_per_ps": c.wall_seconds / total_ps if total_ps else None,
        "model_ms_per_jump": model_ms if model_ms is not None and math.isfinite(model_ms)
        else (c.jumper_ms / c.jumper_calls if c.jumper_calls else None),
        "jumper_ms_per_call": c.jumper_ms / c.jumper_calls if c.jumper_calls else None,
        "jumps_attempted": c.jumps_attempted,
        "jumps_accepted": c.jumps_accepted,
        "jumps_accepted_first_try": c.jumps_accepted_first_try,
        "acceptance": c.jumps_accepted / c.jumps_attempted if c.jumps_attempted else None,
        "retries": c.retries,
        "fallbacks": c.fallbacks,
        "reject_reasons": dict(c.rejects),
        "filter_skipped": c.filter_skipped,
        "filter_ke_change_mean": c.filter_ke_change_sum / c.filter_count if c.filter_count else None,
        "nan_frames": c.nan_frames,
        "engine": engine.describe(),
    }
    out.update(integ.temperature_stats())
    return out
