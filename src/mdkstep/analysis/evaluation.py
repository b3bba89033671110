"""Evaluation of hybrid runs against baselines (shared by 05 for MM and 05b for QM).

Per molecule: fidelity distances of each hybrid run vs baseline replica 0, beside the same
distances between baseline replicas (the noise floor), all at one common frame interval;
temperatures; NVE drift; stability counts; efficiency ratios from the engine-counted force
calls and wall times. :func:`faithful` is the one verdict "faithful to the reference" that
stages 05, 05b and the bench use.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mdkstep.analysis.metrics import compare, summarize_trajectory
from mdkstep.data.windows import collate
from mdkstep.molecule.geometry import bond_angles, bond_lengths, dihedral_angles, wrap_angle
from mdkstep.runner import is_leftover
from mdkstep.trajectory import Trajectory, load_trajectory
from mdkstep.utils import MdkstepError

FIDELITY_KEYS = ("bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1", "vacf_l2")
#: Distances that decide "faithful" (structure). VACF is reported beside them but does not
#: decide: hydrogen mass repartitioning and a thermostat's friction change the dynamics on
#: purpose, not the ensemble.
STRUCTURE_KEYS = ("bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1")
#: faithful: every structure distance within this many x the replica floor (bench: fidelity_ratio_ok)
FAITHFUL_RATIO = 1.5
#: faithful also needs every element's mean temperature within this fraction of reference
#: replica 0's -- or within the ratio x the replicas' own spread, where short references are
#: noisier than that (the same rule as every other distance)
ELEMENT_T_TOLERANCE = 0.10


class Verdict(NamedTuple):
    """:func:`faithful`'s answer: the verdict, the largest structure distance / floor (None
    without a floor) and, when not faithful, why (one short line each)."""

    faithful: bool
    worst_ratio: float | None
    reasons: list[str]


def ratios_to_floor(distances: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    """distance / replica floor for every key of :data:`FIDELITY_KEYS` with a positive floor
    and a finite distance."""
    return {k: float(distances[k]) / float(floor[k]) for k in FIDELITY_KEYS
            if float(floor.get(k) or 0.0) > 0 and np.isfinite(distances.get(k, np.nan))}


def element_temperature_deviation(per_element: dict[str, float] | None, ref: dict[str, float] | None) -> float | None:
    """Largest |T_element / T_element(reference replica 0) - 1| over the elements (equipartition
    vs the reference); None when either side has no per-element temperatures."""
    if not per_element or not ref:
        return None
    devs = [abs(per_element[s] / ref[s] - 1.0) for s in ref if s in per_element and ref[s] > 0]
    return max(devs) if devs else None


def element_temperature_floor(per_element: list[dict[str, float]]) -> float | None:
    """The replicas' own spread of :func:`element_temperature_deviation`: its largest value of
    replicas 1, 2, ... against replica 0 (``per_element[0]``); None with one replica."""
    if len(per_element) < 2:
        return None
    return max((element_temperature_deviation(p, per_element[0]) or 0.0) for p in per_element[1:])


def element_temperature_tolerance(ratio_ok: float = FAITHFUL_RATIO, element_T_floor: float | None = None,
                                  element_T_tol: float = ELEMENT_T_TOLERANCE) -> float:
    """The largest per-element temperature deviation :func:`faithful` accepts (a fraction)."""
    return max(element_T_tol, ratio_ok * (element_T_floor or 0.0))


def faithful(distances: dict[str, Any], floor: dict[str, Any], element_T_dev: float | None,
             ratio_ok: float = FAITHFUL_RATIO, element_T_floor: float | None = None,
             element_T_tol: float = ELEMENT_T_TOLERANCE) -> Verdict:
    """THE rule "faithful to the reference" (stages 05, 05b, the bench): every structure
    distance (:data:`STRUCTURE_KEYS`: bond W1, mean bond error, angle W1, fast-dihedral W1, RDF
    L1) within ``ratio_ok`` x the replica floor, AND every element's mean temperature within
    max(``element_T_tol``, ``ratio_ok`` x ``element_T_floor``) of reference replica 0's
    (``element_T_dev`` from :func:`element_temperature_deviation`, a fraction; None fails).
    VACF and the slow-rotamer populations are reported, not decided on. No floor (one replica)
    is not faithful."""
    ratios = ratios_to_floor(distances, floor)
    s_ratios = {k: ratios[k] for k in STRUCTURE_KEYS if k in ratios}
    worst = max(s_ratios.values()) if s_ratios else None
    reasons = [f"{k} {r:.3g}x the replica floor (> {ratio_ok:g})" for k, r in s_ratios.items() if r > ratio_ok]
    if not s_ratios:
        reasons.append("no replica floor (needs >= 2 baseline replicas)")
    tol = element_temperature_tolerance(ratio_ok, element_T_floor, element_T_tol)
    if element_T_dev is None:
        reasons.append("no per-element temperature")
    elif element_T_dev > tol:
        reasons.append(f"an element's mean T is {100 * element_T_dev:.3g} % off the reference's (> {100 * tol:.3g} %)")
    return Verdict(not reasons, worst, reasons)


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
                 interval_ps: float, ratio_ok: float = FAITHFUL_RATIO, element_T_floor: float | None = None,
                 ref_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distances of one hybrid run vs the reference replica at ``interval_ps``, each beside the
    floor and as a ratio, per-element temperature deviation, and the :func:`faithful` verdict
    ("faithful", "max_structure_ratio", "faithful_reasons")."""
    bonds = np.asarray(topo["bonds"])
    d = compare(ref, hybrid, topo, interval_ps)
    out: dict[str, Any] = {"distances": d, "summary": summarize_trajectory(hybrid, bonds)}
    out["ratio_to_floor"] = ratios_to_floor(d, floor)
    ref_el = (ref_summary or summarize_trajectory(ref, bonds))["temperature_per_element_K"]
    dev = element_temperature_deviation(out["summary"]["temperature_per_element_K"], ref_el)
    v = faithful(d, floor, dev, ratio_ok, element_T_floor)
    out.update({"element_T_max_dev": dev, "element_T_max_dev_replica": element_T_floor,
                "element_T_tolerance": element_temperature_tolerance(ratio_ok, element_T_floor), "faithful": v.faithful,
                "max_structure_ratio": v.worst_ratio, "faithful_reasons": v.reasons})
    return out


def hybrid_runs(folder: Path) -> list[Path]:
    """Hybrid trajectories of one molecule (``*.npz`` minus resume checkpoints and hidden leftovers
    of killed runs); error if none."""
    runs = sorted(p for p in folder.glob("*.npz") if not is_leftover(p))  # no checkpoints, temporaries
    if not runs:
        raise MdkstepError(f"{folder}: no hybrid trajectories")
    return runs


class Reference:
    """The baseline replicas of one molecule, judged at ONE frame interval ``interval_ps``
    (stages 05/05b: the common interval of the replicas and every run of the molecule): the
    replica floor, replica 0's summary and the replicas' per-element temperature spread, each
    computed once."""

    def __init__(self, replicas: list[Trajectory], topo: dict[str, Any], interval_ps: float):
        self.replicas, self.topo, self.interval_ps = replicas, topo, float(interval_ps)
        bonds = np.asarray(topo["bonds"])
        summaries = [summarize_trajectory(r, bonds) for r in replicas]
        self.summary = summaries[0]
        self.floor = replica_floor(replicas, topo, self.interval_ps)
        self.element_T_floor = element_temperature_floor([s["temperature_per_element_K"] for s in summaries])

    def evaluate(self, hyb: Trajectory, ratio_ok: float = FAITHFUL_RATIO) -> dict[str, Any]:
        """:func:`evaluate_run` of ``hyb`` vs replica 0, with "floor" and "interval_ps"."""
        ev = evaluate_run(self.replicas[0], hyb, self.topo, self.floor, self.interval_ps, ratio_ok,
                          self.element_T_floor, self.summary)
        ev["floor"] = self.floor
        ev["interval_ps"] = self.interval_ps
        return ev


def evaluate_hybrid_file(run: Path, ref: Reference, ratio_ok: float = FAITHFUL_RATIO) -> tuple[Trajectory, dict[str, Any]]:
    """Load one hybrid run and evaluate it against ``ref`` (:meth:`Reference.evaluate`)."""
    hyb = load_trajectory(run)
    return hyb, ref.evaluate(hyb, ratio_ok)


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
