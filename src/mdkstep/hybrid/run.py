"""The hybrid run driver: files, resume, statistics around :class:`HybridIntegrator`.

Output: one trajectory NPZ per replica (the schema of ``mdkstep.trajectory``): ``out_path``
itself for one replica, ``<stem>_r<i>.npz`` for several. A frame every ``save_interval_cycles``
cycles; ``time_ps`` = cycle * steps_per_cycle * dt exactly. The run is checkpointed after
every chunk (``<stem>.hybrid_ckpt.npz``: x, v, F, U, cycle, counters, RNG state) and resumes
with the same frames. Units: nm, nm/ps, kJ/mol, ps, K.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engines.base import ForceEngine
from ..trajectory import ChunkedTrajectoryWriter
from ..utils import LOG, MdkstepError
from .config import HybridConfig
from .integrator import HybridIntegrator, Jumper


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


def _fingerprint(cfg: HybridConfig, n_cycles: int, n_rep: int, n_atoms: int) -> dict[str, Any]:
    return {"config": asdict(cfg), "n_cycles": n_cycles, "n_replicas": n_rep, "n_atoms": n_atoms}


def run_hybrid(engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, x0: np.ndarray, v0: np.ndarray,
               n_cycles: int, out_path: str | Path, rng: np.random.Generator, resume: bool = True, *,
               f0: np.ndarray | None = None, u0: np.ndarray | None = None,
               metadata: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a hybrid trajectory of R replicas and write one NPZ per replica.

    engine: the force engine (its counter is the force-call truth); jumper: see :class:`Jumper`;
    cfg: a resolved :class:`HybridConfig` (k, dt_fs set); x0, v0: (N,3) or (R,N,3) start state,
    nm and nm/ps; n_cycles: cycles to run (rounded down to whole frames; each cycle advances
    ``cfg.cycle_ps``); out_path: trajectory NPZ (``replica_paths`` for R > 1); rng: thermostat
    noise (its state is checkpointed); resume: continue from ``<stem>.hybrid_ckpt.npz`` when it
    exists; f0/u0: forces/energies at x0 if already known (skips the setup calls); metadata:
    merged into every trajectory's metadata (molecule, smiles, constraints, seed, ...).
    Returns the run statistics (force calls, timings, guard counters, temperatures).
    """
    from tqdm import tqdm

    cfg.validate()
    integ = HybridIntegrator(engine, jumper, cfg, rng)
    x0 = np.asarray(x0, dtype=float).reshape(-1, integ.n_atoms, 3)
    n_rep = x0.shape[0]
    n_frames = int(n_cycles) // cfg.save_interval_cycles
    if n_frames < 1:
        raise MdkstepError(f"{n_cycles} cycles give no frame at save_interval_cycles = {cfg.save_interval_cycles}")
    n_cycles = n_frames * cfg.save_interval_cycles
    n_chunks = -(-n_frames // cfg.chunk_frames)
    paths = replica_paths(out_path, n_rep)
    ckpt = checkpoint_path(out_path)
    meta_base = _metadata(engine, cfg, metadata or {}, n_rep)
    static = {"atom_types": np.asarray(engine.atomic_numbers), "masses": np.asarray(engine.masses, dtype=float)}
    writers = [ChunkedTrajectoryWriter(p, static, {**meta_base, "replica": r}) for r, p in enumerate(paths)]
    fp = _fingerprint(cfg, n_cycles, n_rep, integ.n_atoms)

    done_chunks = 0
    calls_before = 0
    session_calls0, session_sec0 = engine.counters.calls, engine.counters.seconds
    t_start = time.perf_counter()
    if resume and ckpt.is_file():
        extra = integ.load_state(ckpt)
        if extra.get("fingerprint") != json.loads(json.dumps(fp)):
            raise MdkstepError(f"{ckpt}: a partial hybrid run with other settings exists; delete it (or do not resume)")
        done_chunks = int(extra["done_chunks"])
        calls_before = integ.counters.force_calls
        meta_base = extra.get("metadata", meta_base)  # the first session's description of the run
        for r, w in enumerate(writers):
            w.metadata = {**meta_base, "replica": r}
        LOG.info("%s: resuming at chunk %d/%d (cycle %d)", Path(out_path).name, done_chunks, n_chunks, integ.counters.cycles)
    else:
        ckpt.unlink(missing_ok=True)
        integ.initialize(x0, v0, f0, u0)
    for w in writers:
        w.discard_chunks_from(done_chunks)

    wall_before = integ.counters.wall_seconds
    sic, spc, dt_ps = cfg.save_interval_cycles, cfg.steps_per_cycle, cfg.dt_ps

    sec_mark = session_sec0

    def sync_counters() -> None:
        """Fold this session's engine counter and wall clock into the cumulative counters."""
        nonlocal sec_mark
        c = integ.counters
        c.force_calls = calls_before + engine.counters.calls - session_calls0
        c.force_seconds += engine.counters.seconds - sec_mark
        sec_mark = engine.counters.seconds
        c.wall_seconds = wall_before + time.perf_counter() - t_start

    sync_counters()

    bar = tqdm(total=n_cycles, initial=integ.counters.cycles, desc=f"hybrid k={cfg.k} {cfg.corrector}",
               unit="cycle", disable=not progress or None, leave=False)
    for chunk in range(done_chunks, n_chunks):
        first, last = chunk * cfg.chunk_frames, min(n_frames, (chunk + 1) * cfg.chunk_frames)
        for fr in range(first, last):
            for _ in range(sic):
                integ.cycle()
            bar.update(sic)
            cyc = (fr + 1) * sic
            for r, w in enumerate(writers):
                frame = integ.frame(r)
                if not all(np.all(np.isfinite(a)) for a in frame.values()):
                    integ.counters.nan_frames += 1
                    raise MdkstepError(f"{paths[r]}: non-finite state at cycle {cyc}; not written (guard failure)")
                w.append(**frame, time_ps=np.float64(cyc * spc * dt_ps))
        for w in writers:
            w.flush(chunk)
        sync_counters()
        integ.save_state(ckpt, {"done_chunks": chunk + 1, "fingerprint": fp, "metadata": meta_base})
    bar.close()
    sync_counters()
    for w in writers:
        w.finalize()
    ckpt.unlink(missing_ok=True)
    return _stats(integ, engine, jumper, cfg, n_frames, n_rep, paths)


def _metadata(engine: ForceEngine, cfg: HybridConfig, extra: dict[str, Any], n_rep: int) -> dict[str, Any]:
    desc = engine.describe()
    meta = {
        "dt_fs": cfg.dt_fs,
        "save_interval": cfg.save_interval_cycles * cfg.steps_per_cycle,  # integrator steps between frames
        "engine": desc.get("engine", engine.name),
        "method": f"hybrid_{cfg.corrector}",
        "ensemble": cfg.ensemble,
        "thermostat": cfg.thermostat_active,
        "temperature_K": cfg.temperature_K,
        "friction": cfg.friction_per_ps if cfg.thermostat_active == "langevin" else 0.0,
        "seed": None,
        "molecule": "unknown",
        "smiles": None,
        "constraints": "hbonds" if engine.n_constraints else "none",
        "n_constraints": engine.n_constraints,
        "k": cfg.k,
        "steps_per_cycle": cfg.steps_per_cycle,
        "cycle_ps": cfg.cycle_ps,
        "n_replicas": n_rep,
        "hybrid": asdict(cfg),
        "engine_info": desc,
    }
    meta.update(extra)
    return json.loads(json.dumps(meta, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


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
        "nan_frames": c.nan_frames,
        "engine": engine.describe(),
    }
    out.update(integ.temperature_stats())
    return out
