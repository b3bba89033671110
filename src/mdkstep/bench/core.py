"""Engine-agnostic pieces of the benchmark: hybrid runs
(production, NVE, timing) and one method's fidelity record.

Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mdkstep.analysis.evaluation import FIDELITY_KEYS, STRUCTURE_KEYS, faithful, ratios_to_floor, replica_floor
from mdkstep.analysis.metrics import (
    compare,
    iat_reliable,
    integrated_autocorr_time,
    slowest_dihedral_iat,
    summarize_trajectory,
)
from mdkstep.baselines.plain import Segment
from mdkstep.config import load_config
from mdkstep.hybrid import HybridConfig, HybridIntegrator, run_hybrid
from mdkstep.hybrid.run import checkpoint_path
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint
from mdkstep.model.jumper import ModelJumper
from mdkstep.pipeline.mode import Method, common_interval_ps
from mdkstep.trajectory import Trajectory
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, file_sha256

__all__ = ["STRUCTURE_KEYS"]  # the distances that decide "faithful": mdkstep.analysis.evaluation


# ------------------------------------------------------------------------------- hybrid

def hybrid_config(path: str, overrides: dict[str, Any], k: int, dt_fs: float, temperature_K: float,
                  **extra: Any):
    """HybridConfig from YAML + overrides with k, dt and temperature set. The hybrid's
    thermostat friction is its own (configs/hybrid.yaml, as stages 06/06b use it), not the plain
    methods': its local O-steps are part of the integrator (they move the heat a learned jump
    misplaces between elements), measured in README "Friction of the hybrid's bath"."""

    cfg = load_config(HybridConfig, path, {**overrides, **extra})
    return cfg.resolved(k=k, dt_fs=dt_fs, temperature_K=temperature_K)


def load_jumper(checkpoint: Path, engine, bonds: np.ndarray, k: int, dt_fs: float):
    """ModelJumper on the CPU (or CUDA when present) for ``engine``'s atoms; checks k and dt."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ck = model_from_checkpoint(checkpoint, device=device)
    check_compatible(ck, str(checkpoint), k=k, atom_types=set(map(int, engine.atomic_numbers)))
    if ck.get("dt_fs") is not None and abs(float(ck["dt_fs"]) - dt_fs) > 1e-9:
        raise MdkstepError(f"{checkpoint}: trained at dt_fs={ck['dt_fs']}, the benchmark runs {dt_fs}")
    return ModelJumper(model, engine.atomic_numbers, engine.masses, bonds, device=device)


def run_fingerprint(checkpoint: Path | list[Path] | None, hcfg, time_ps: float, seed: int) -> dict[str, Any]:
    """What defines a cached learned-method run: the model file's SHA-256 (None: untrained; a
    list for a stride schedule), the resolved hybrid config, the simulated time and the seed."""
    from dataclasses import asdict

    sha = [file_sha256(c) for c in checkpoint] if isinstance(checkpoint, list) else \
        (file_sha256(checkpoint) if checkpoint else None)
    return json.loads(json.dumps({"checkpoint_sha256": sha,
                                  "hybrid_config": asdict(hcfg), "time_ps": float(time_ps), "seed": int(seed)},
                                 default=str))


def cached_stats(out: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The stats of a finished cached run made with ``fingerprint``, else None; a finished run
    made with another model or settings (or before fingerprints) is removed and logged, so it
    is run again instead of being reused silently."""

    stats_path = out.with_suffix(".stats.json")
    if not (out.is_file() and stats_path.is_file()):
        return None
    stats = json.loads(stats_path.read_text())
    if stats.get("bench_fingerprint") == fingerprint:
        return stats
    LOG.info("%s: cached run was made with another model or settings; running it again", out)
    for p in (out, stats_path, checkpoint_path(out)):
        p.unlink(missing_ok=True)
    return None


def run_hybrid_production(engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, time_ps: float, out: Path,
                          seed: int, meta: dict[str, Any], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """NVT hybrid trajectory of ``time_ps`` (resumable; skipped when finished with the same
    ``fingerprint``, :func:`run_fingerprint`). Returns its stats."""

    stats = cached_stats(out, fingerprint)
    if stats is not None:
        return stats
    n_cycles = max(1, int(round(time_ps / hcfg.cycle_ps)))
    stats = run_hybrid(engine, jumper, hcfg, x0, v0, n_cycles, out, np.random.default_rng(seed), resume=True,
                       metadata=meta, progress=True)
    stats["bench_fingerprint"] = fingerprint
    atomic_write_json(out.with_suffix(".stats.json"), stats)
    return stats


def hybrid_nve(engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, time_ps: float) -> Segment:
    """NVE hybrid segment (no thermostat; ``hcfg`` decides the energy filter): U + K after
    every cycle. A guard failure that leaves a non-finite state ends it as unstable."""

    integ = HybridIntegrator(engine, jumper, hcfg, np.random.default_rng(0))
    integ.initialize(x0, v0)
    n = max(3, int(round(time_ps / hcfg.cycle_ps)))
    span = engine.counters.span()
    seg = Segment(hcfg.dt_fs, 0, 0.0, 0, 0.0, force_calls_source=span.source)
    ke = lambda: float(0.5 * np.sum(integ.m3 * integ.v[0] ** 2))  # noqa: E731
    for i in range(n):
        integ.cycle()
        e = integ.total_energy(0)
        if not np.isfinite(e):
            seg.stable = False
            break
        seg.energies.append(e)
        seg.kinetic.append(ke())
        seg.times_ps.append((i + 1) * hcfg.cycle_ps)
        seg.steps += hcfg.steps_per_cycle
    span.close()
    seg.wall_s, seg.force_calls, seg.force_seconds = span.wall_s, span.calls, span.seconds
    seg.simulated_ps = seg.steps * hcfg.dt_fs / 1000.0
    return seg


def hybrid_timer(engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, time_ps: float,
                 seed: int) -> Callable[[], Segment]:
    """A callable that advances one hybrid run by ``time_ps`` (NVT, no saving) per call and
    returns the timed segment (calls from the engine's counter)."""

    integ = HybridIntegrator(engine, jumper, hcfg, np.random.default_rng(seed))
    integ.initialize(x0, v0)
    n = max(1, int(round(time_ps / hcfg.cycle_ps)))

    def segment() -> Segment:
        with engine.counters.span() as span:
            for _ in range(n):
                integ.cycle()
        steps = n * hcfg.steps_per_cycle
        return Segment(hcfg.dt_fs, steps, steps * hcfg.dt_fs / 1000.0, span.calls, span.wall_s,
                       force_seconds=span.seconds, force_calls_source=span.source)

    return segment


# ------------------------------------------------------------------------------- timing

def interleaved_timing(timers: dict[str, Callable[[], Segment]], repeats: int) -> dict[str, dict[str, Any]]:
    """One untimed warm-up per method, then ``repeats`` rounds that time every method once
    each, in turn (so slow drifts of the machine's load hit all methods alike). Per method:
    wall s/ps of every repeat, their min and median, and the spread (max - min) / median."""
    for t in timers.values():
        t()
    per: dict[str, list[Segment]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, t in timers.items():
            per[name].append(t())
    out = {}
    for name, segs in per.items():
        w = np.array([s.wall_s_per_ps for s in segs])
        calls = sum(s.force_calls for s in segs)
        # OpenMM's own integrator (integrator_steps) cannot time its force calls: whole steps then
        stepped = all(s.force_calls_source == "integrator_steps" for s in segs)
        walls = sum(s.wall_s if stepped else s.force_seconds for s in segs)
        out[name] = {"wall_s_per_ps_repeats": w.tolist(), "wall_s_per_ps": float(np.median(w)),
                     "wall_s_per_ps_min": float(np.min(w)),
                     "timing_spread": float((w.max() - w.min()) / np.median(w)) if len(w) > 1 else 0.0}
        out[name]["force_ms_per_call"] = 1000.0 * walls / calls if calls else None
    return out


# ------------------------------------------------------------------------------- fidelity

@dataclass
class FloorCache:
    """Replica floors of one molecule, computed once per comparison interval."""

    replicas: list[Trajectory]
    topo: dict[str, Any]
    _floors: dict[float, dict[str, Any]] = field(default_factory=dict)

    def at(self, interval_ps: float) -> dict[str, Any]:
        key = round(interval_ps, 9)
        if key not in self._floors:
            self._floors[key] = replica_floor(self.replicas, self.topo, interval_ps)
        return self._floors[key]


def fidelity(run: Trajectory, method: Method, ref_method: Method, floors: FloorCache, ratio_ok: float,
             element_T_dev: float | None, element_T_floor: float | None) -> dict[str, Any]:
    """Distances of ``run`` vs reference replica 0 at the common frame interval, the replica
    floor at that interval, ratios, and the verdict of :func:`mdkstep.analysis.evaluation.faithful`
    (structure within ``ratio_ok`` x floor and the element temperatures, ``element_T_dev``
    against the replicas' own ``element_T_floor``)."""
    interval = common_interval_ps(method.frame_fs, ref_method.frame_fs)
    floor = floors.at(interval)
    d = compare(floors.replicas[0], run, floors.topo, interval)
    ratios = ratios_to_floor(d, floor)
    verdict = faithful(d, floor, element_T_dev, ratio_ok, element_T_floor)
    out: dict[str, Any] = {"compare_interval_ps": interval}
    for k in FIDELITY_KEYS:
        out[k] = d.get(k)
        out[f"{k}_replica"] = floor.get(f"{k}_replica")
        out[f"{k}_ratio"] = ratios.get(k)
    out["slow_rotamer_tv"] = d.get("slow_rotamer_tv")
    out["max_structure_ratio"] = verdict.worst_ratio
    out["faithful"] = verdict.faithful
    return out


def sampling_efficiency(run: Trajectory, force_calls_per_ps: float | None,
                        dihedrals: np.ndarray | None = None) -> dict[str, Any]:
    """Integrated autocorrelation times (fs; Sokal window, mdkstep.analysis.metrics) of one production
    trajectory's potential energy U and of its slowest dihedral, whether the run is >= 50 of
    them long, and the effective samples per force call = 1 / (tau_int x force calls per unit
    time): the figures that compare plain, hybrid and exact runs on sampling (issue 12). In
    NVT, U's tau is set mostly by the thermostat (its friction), the slowest dihedral's by the
    conformational dynamics. None where the run is too short to give a positive estimate."""

    frame_fs = float(run.metadata["dt_fs"]) * int(run.metadata["save_interval"])
    out: dict[str, Any] = {}
    series = {"U": integrated_autocorr_time(np.asarray(run.energies, dtype=float))}
    if dihedrals is not None and len(np.asarray(dihedrals).reshape(-1, 4)):
        series["dihedral"] = slowest_dihedral_iat(run.positions, dihedrals)[0]
    for name, tau in series.items():
        tau_fs = tau * frame_fs if np.isfinite(tau) and tau > 0 else None  # <= 0: far too short to estimate
        out[f"tau_int_{name}_fs"] = tau_fs
        out[f"tau_int_{name}_reliable"] = bool(tau_fs) and iat_reliable(tau, run.n_frames)
        out[f"ess_per_force_call_{name}"] = 1000.0 / (tau_fs * force_calls_per_ps) if tau_fs and force_calls_per_ps \
            else None
    return out


def trajectory_summary(run: Trajectory, bonds: np.ndarray) -> dict[str, Any]:
    """Temperature mean/std and per element (constraint-aware), NaN frames."""
    s = summarize_trajectory(run, bonds)
    return {"temperature_mean_K": s["temperature_mean_K"], "temperature_std_K": s["temperature_std_K"],
            "temperature_per_element_K": s["temperature_per_element_K"], "nan_frames": s["nan_frames"],
            "simulated_ps": s["simulated_ps"]}
