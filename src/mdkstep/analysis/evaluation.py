"""Evaluation of hybrid runs against baselines (shared by 05 for MM and 05b for QM).

Per molecule: fidelity distances of each hybrid run vs baseline replica 0, beside the same
distances between baseline replicas (the noise floor); temperatures; NVE drift; stability
counts; efficiency ratios from the engine-counted force calls and wall times.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.analysis.metrics import compare, summarize_trajectory
from mdkstep.data.windows import collate
from mdkstep.molecule.geometry import bond_angles, bond_lengths, dihedral_angles, wrap_angle
from mdkstep.runner import is_leftover
from mdkstep.trajectory import Trajectory, load_trajectory
from mdkstep.utils import MdkstepError

FIDELITY_KEYS = ("bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1", "vacf_l2")


def load_stats(npz: Path) -> dict[str, Any]:
    """The stats JSON written beside a hybrid trajectory (``X.stats.json`` or ``X.npz.stats.json``)."""
    cands = [npz.with_suffix(".stats.json"), npz.with_name(npz.name + ".stats.json")]
    base = re.sub(r"_r\d+$", "", npz.stem)  # replica <stem>_r<i>.npz of a multi-replica run: <stem>.stats.json
    if base != npz.stem:
        cands.append(npz.with_name(base + ".stats.json"))
    for cand in cands:
        if cand.is_file():
            return json.loads(cand.read_text())
    return {}


def frame_interval_ps(t: Trajectory) -> float:
    return float(np.median(np.diff(t.time_ps))) if t.n_frames > 1 else 0.0


def replica_floor(replicas: list[Trajectory], topo: dict[str, Any], interval_ps: float) -> dict[str, Any]:
    """Distances between every pair of baseline replicas: per key the max (the floor used for
    ratios) and the [min, max] range over pairs (reported as ``<key>_replica``)."""
    if len(replicas) < 2:
        return {}
    pairs = [compare(a, b, topo, interval_ps) for a, b in itertools.combinations(replicas, 2)]
    out: dict[str, Any] = {}
    for k in pairs[0]:
        vals = [p[k] for p in pairs if np.isfinite(p[k])]
        if vals:
            out[k] = float(np.max(np.abs(vals)))
            out[f"{k}_replica"] = [float(np.min(vals)), float(np.max(vals))]
    out["n_pairs"] = len(pairs)
    return out


def efficiency(stats: dict[str, Any], baseline_dt_fs: float, baseline_wall_s_per_ps: float | None,
               baseline_force_calls_per_ps: float | None = None,
               baseline_force_calls_source: str = "integrator_steps") -> dict[str, Any]:
    """force_call_reduction and wall_speedup (docs/force-calls.md) from a hybrid stats dict.

    The baseline's calls per simulated ps are the counted ``baseline_force_calls_per_ps`` when
    given (with its ``baseline_force_calls_source``), else one call per integrator step
    (1000 / dt_fs, source "integrator_steps").
    """
    sim_ps = float(stats.get("simulated_ps_total") or stats.get("simulated_ps") or 0.0)  # calls & wall cover all replicas
    calls = stats.get("force_calls")
    wall = stats.get("wall_seconds", stats.get("wall_s"))
    counted = baseline_force_calls_per_ps is not None
    out: dict[str, Any] = {
        "baseline_force_calls_per_ps": baseline_force_calls_per_ps if counted else 1000.0 / baseline_dt_fs,
        "baseline_force_calls_source": baseline_force_calls_source if counted else "integrator_steps"}
    if sim_ps > 0 and calls:
        out["hybrid_force_calls_per_ps"] = calls / sim_ps
        out["force_call_reduction"] = out["baseline_force_calls_per_ps"] / out["hybrid_force_calls_per_ps"]
    if sim_ps > 0 and wall and baseline_wall_s_per_ps:
        out["hybrid_wall_s_per_ps"] = wall / sim_ps
        out["baseline_wall_s_per_ps"] = baseline_wall_s_per_ps
        out["wall_speedup"] = baseline_wall_s_per_ps / out["hybrid_wall_s_per_ps"]
    for k in ("model_ms_per_jump", "force_ms_per_call", "jumps_attempted", "jumps_accepted", "retries",
              "fallbacks", "nan_frames", "acceptance"):
        if k in stats:
            out[k] = stats[k]
    if stats.get("jumps_attempted"):
        out["fallback_fraction"] = stats.get("fallbacks", 0) / stats["jumps_attempted"]
    return out


def evaluate_run(ref: Trajectory, hybrid: Trajectory, topo: dict[str, Any], floor: dict[str, Any],
                 interval_ps: float) -> dict[str, Any]:
    """Distances of one hybrid run vs the reference replica, each beside the floor and as a ratio."""
    d = compare(ref, hybrid, topo, interval_ps)
    out: dict[str, Any] = {"distances": d, "summary": summarize_trajectory(hybrid, np.asarray(topo["bonds"]))}
    ratios = {}
    for k in FIDELITY_KEYS:
        if k in floor and floor[k] > 0 and np.isfinite(d.get(k, np.nan)):
            ratios[k] = d[k] / floor[k]
    out["ratio_to_floor"] = ratios
    out["within_1p5x_floor"] = bool(ratios) and all(v <= 1.5 for v in ratios.values())
    return out


def hybrid_runs(folder: Path) -> list[Path]:
    """Hybrid trajectories of one molecule (``*.npz`` minus resume checkpoints and hidden leftovers
    of killed runs); error if none."""
    runs = sorted(p for p in folder.glob("*.npz") if not is_leftover(p))  # no checkpoints, temporaries
    if not runs:
        raise MdkstepError(f"{folder}: no hybrid trajectories")
    return runs


def evaluate_hybrid_file(run: Path, replicas: list[Trajectory], topo: dict[str, Any]) -> tuple[Trajectory, dict[str, Any]]:
    """Load one hybrid run and compare it with replica 0 at the coarser of the two frame
    intervals, beside the replica floor at that interval."""
    hyb = load_trajectory(run)
    interval = max(frame_interval_ps(hyb), frame_interval_ps(replicas[0]))
    floor = replica_floor(replicas, topo, interval)
    ev = evaluate_run(replicas[0], hyb, topo, floor, interval)
    ev["floor"] = floor
    ev["interval_ps"] = interval
    return hyb, ev


def load_replicas(baseline_dir: Path) -> list[Trajectory]:
    """Baseline replicas ``replica_*.npz`` of one molecule (sorted)."""
    paths = sorted(baseline_dir.glob("replica_*.npz"))
    if not paths:
        raise MdkstepError(f"{baseline_dir}: no replica_*.npz baselines (run stage 01 with --replicas 2)")
    return [load_trajectory(p) for p in paths]


def fmt(v: Any, nd: int = 4) -> str:
    """A number for a report table: nd significant digits, 'n/a' for NaN/inf, str() otherwise."""
    if isinstance(v, float):
        return f"{v:.{nd}g}" if np.isfinite(v) else "n/a"
    return "n/a" if v is None else str(v)


def one_jump_metrics(model: Any | None, ds: Any, max_windows: int = 8192, seed: int = 0,
                     batch_size: int = 512, device: Any = "cpu") -> dict[str, dict[str, float]]:
    """One-jump accuracy vs the reference frame t+k (docs: metric definitions) on a
    KStepDataset, for the model and the trivial predictors "no_move" (x_t, v_t) and
    "ballistic" (x_t + k dt v_t, v_t).

    Returns {predictor: {pos_rmse_A, bond_rmse_A, bond_rmse_heavy_A, angle_rmse_deg,
    dihedral_rmse_deg, vel_rmse_nm_ps, n_windows}} plus "skill" = model / best trivial, per metric.
    """
    import torch

    with torch.no_grad():
        return _one_jump_metrics(model, ds, max_windows, seed, batch_size, device)


def _one_jump_metrics(model, ds, max_windows: int, seed: int, batch_size: int, device) -> dict[str, dict[str, float]]:
    import math

    import torch

    if len(ds) == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), size=min(max_windows, len(ds)), replace=False))
    tau_ps = ds.spec.k * ds.spec.dt_fs / 1000.0
    sums: dict[str, dict[str, list[float]]] = {}
    use_forces = bool(model is not None and model.config.use_forces)
    for s in range(0, len(idx), batch_size):
        wbs = ds.batches(idx[s:s + batch_size])
        gb, tg = collate(wbs, use_forces, dtype=torch.float64)
        preds = {
            "no_move": (torch.zeros_like(tg.dx), torch.zeros_like(tg.dv)),
            "ballistic": (tau_ps * gb.vel, torch.zeros_like(tg.dv)),
        }
        if model is not None:
            ref = next(model.parameters())
            out = model(gb.to(device, ref.dtype))
            preds["model"] = (out["dx"].double().cpu(), out["dv"].double().cpu())
        heavy = (gb.z[tg.bonds[:, 0]] > 1) & (gb.z[tg.bonds[:, 1]] > 1)
        for name, (dx, dv) in preds.items():
            xp = gb.pos + dx
            acc = sums.setdefault(name, {})
            db = bond_lengths(xp, tg.bonds) - bond_lengths(tg.x1, tg.bonds)
            acc.setdefault("pos", []).extend(((dx - tg.dx) ** 2).sum(-1).tolist())
            acc.setdefault("bond", []).extend((db**2).tolist())
            acc.setdefault("bond_heavy", []).extend((db[heavy] ** 2).tolist())
            acc.setdefault("angle", []).extend(((bond_angles(xp, tg.angles) - bond_angles(tg.x1, tg.angles)) ** 2).tolist())
            if len(tg.dihedrals):
                dd = wrap_angle(dihedral_angles(xp, tg.dihedrals) - dihedral_angles(tg.x1, tg.dihedrals))
                acc.setdefault("dihedral", []).extend((dd**2).tolist())
            acc.setdefault("vel", []).extend(((dv - tg.dv) ** 2).sum(-1).tolist())
    to_A, to_deg = 10.0, 180.0 / math.pi
    res: dict[str, dict[str, float]] = {}
    for name, acc in sums.items():
        r = lambda k: float(np.sqrt(np.mean(acc[k]))) if acc.get(k) else float("nan")  # noqa: E731
        res[name] = {
            "pos_rmse_A": r("pos") * to_A, "bond_rmse_A": r("bond") * to_A, "bond_rmse_heavy_A": r("bond_heavy") * to_A,
            "angle_rmse_deg": r("angle") * to_deg, "dihedral_rmse_deg": r("dihedral") * to_deg,
            "vel_rmse_nm_ps": r("vel"), "n_windows": int(len(idx)),
        }
    if "model" in res:
        res["skill"] = {k: res["model"][k] / min(res["no_move"][k], res["ballistic"][k])
                        for k in res["model"] if k != "n_windows" and min(res["no_move"][k], res["ballistic"][k]) > 0}
    return res
