"""Ramachandran basins of peptide backbones: basin populations, transitions, the replicas'
spread of both, and the 05 report of a run against them (angles in radians in, degrees out).

Basin regions (degrees, phi and psi in [-180, 180)) are defined once, in ``BASINS_DEG``.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from mdkstep.analysis import plots
from mdkstep.analysis.metrics import frame_interval_ps, subsample_to_interval
from mdkstep.molecule.peptide import Backbone, backbone_from_topology, phi_psi
from mdkstep.utils import LOG

#: Ramachandran basins of the alanine dipeptide, rectangles in degrees: name -> ((phi_lo, phi_hi),
#: (psi_lo, psi_hi)), half-open [lo, hi); lo > hi means the range wraps through +-180.
#: Centred on the usual vacuum / implicit-solvent minima: C7eq (-77.5, 89.9), C5 (-134.8, 145.9)
#: and C7ax (60.6, -72.4) of Tobias & Brooks, J. Phys. Chem. 96, 3864 (1992); alphaR near
#: (-65, -40) (Apostolakis, Ferrara & Caflisch, J. Chem. Phys. 110, 2099 (1999)). The
#: rectangles leave gaps between basins; frames in no basin are "other". The fractions and
#: the transition count are sensitive to these edges only through frames near the borders.
BASINS_DEG: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "C7eq": ((-120.0, -40.0), (20.0, 120.0)),
    "C5": ((-180.0, -120.0), (120.0, -150.0)),  # psi wraps: [120, 180) U [-180, -150)
    "alphaR": ((-120.0, -30.0), (-90.0, 0.0)),
    "C7ax": ((30.0, 120.0), (-120.0, 0.0)),
}


BASIN_NAMES: tuple[str, ...] = tuple(BASINS_DEG) + ("other",)


def _in_range(x_deg: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (x_deg >= lo) & (x_deg < hi) if lo < hi else (x_deg >= lo) | (x_deg < hi)


def _to_deg(a_rad: np.ndarray) -> np.ndarray:
    """Radians -> degrees in [-180, 180)."""
    return np.mod(np.degrees(np.asarray(a_rad, dtype=float)) + 180.0, 360.0) - 180.0


def assign_basins(phi_rad: np.ndarray, psi_rad: np.ndarray) -> np.ndarray:
    """Basin index into ``BASIN_NAMES`` for each (phi, psi) in radians; len(BASINS_DEG) = "other"."""
    phi, psi = _to_deg(phi_rad), _to_deg(psi_rad)
    out = np.full(phi.shape, len(BASINS_DEG), dtype=np.int64)
    for b, ((p0, p1), (s0, s1)) in enumerate(BASINS_DEG.values()):
        out[(out == len(BASINS_DEG)) & _in_range(phi, p0, p1) & _in_range(psi, s0, s1)] = b
    return out


def basin_populations(labels: np.ndarray) -> dict[str, float]:
    """Fraction of frames in each basin of ``BASIN_NAMES`` (sums to 1)."""
    labels = np.asarray(labels).ravel()
    n = max(1, labels.size)
    return {name: float(np.sum(labels == b)) / n for b, name in enumerate(BASIN_NAMES)}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Total-variation distance 0.5 * sum |p - q| of two population dicts (0 = equal, 1 = disjoint)."""
    return 0.5 * float(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)))


def count_transitions(labels: np.ndarray) -> int:
    """Core-to-core transitions of one residue's basin series (F,): a transition is counted when
    the series enters a basin other than the last basin it visited. Frames in "other" (the gaps
    between basins) keep the last basin, so a flicker across a border is not counted."""
    other = len(BASINS_DEG)
    last, n = None, 0
    for b in np.asarray(labels).ravel():
        if b == other:
            continue
        if last is not None and b != last:
            n += 1
        last = int(b)
    return n


def series_summary(phi: np.ndarray, psi: np.ndarray, duration_ps: float) -> dict[str, Any]:
    """Per residue: basin populations and core-to-core transitions (also per ns) of phi/psi (F, R)
    radians sampled over ``duration_ps``."""
    labels = assign_basins(phi, psi)
    res = []
    for r in range(labels.shape[1]):
        n = count_transitions(labels[:, r])
        res.append({"populations": basin_populations(labels[:, r]), "transitions": n,
                    "transitions_per_ns": n / (duration_ps / 1000.0) if duration_ps > 0 else float("nan")})
    return {"residues": res, "n_frames": int(labels.shape[0]), "duration_ps": float(duration_ps)}


def max_residue_tv(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest over residues of the populations' total-variation distance between two summaries."""
    return max(total_variation(ra["populations"], rb["populations"]) for ra, rb in zip(a["residues"], b["residues"]))


def basin_floor(replica_summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The replica floor of ``basin_tv``: max (and [min, max]) over replica pairs of max_residue_tv."""
    vals = [max_residue_tv(a, b) for a, b in itertools.combinations(replica_summaries, 2)]
    if not vals:
        return {}
    return {"basin_tv": float(max(vals)), "basin_tv_replica": [float(min(vals)), float(max(vals))],
            "n_pairs": len(vals)}


def _trajectory_summary(t, bb: Backbone, interval_ps: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """series_summary of one trajectory at ``interval_ps`` (ps); also its phi, psi (F, R) radians."""

    idx = subsample_to_interval(t, interval_ps) if interval_ps > 0 else np.arange(t.n_frames)
    phi, psi = phi_psi(t.positions[idx], bb)
    return series_summary(phi, psi, len(idx) * interval_ps), phi, psi


def ramachandran_evaluation(name: str, topo: dict[str, Any], replicas: list, runs: dict[str, Any],
                            plot_path=None, interval_ps: float | None = None) -> dict[str, Any]:
    """Backbone, per-residue basin populations and transitions of every baseline replica and
    hybrid run (all at ``interval_ps``, stages 05/05b: the molecule's one comparison interval;
    None: the coarsest frame interval among them), the replica floor of
    ``basin_tv`` and each run's ``basin_tv`` vs replica 0 with its ratio to the floor.

    ``runs``: label -> Trajectory. Writes the phi/psi plot to ``plot_path`` when given; a failed
    plot is logged and recorded as ``plot_error`` (never skipped silently). Returns
    {"backbone": None} for a molecule without a peptide backbone."""
    bb = backbone_from_topology(topo, name)
    if bb is None:
        return {"backbone": None, "note": "no peptide backbone C(=O)-N-CA-C(=O)-N in the bond graph"}
    interval = interval_ps or max(frame_interval_ps(t) for t in [*replicas, *runs.values()])
    out: dict[str, Any] = {"backbone": bb.as_dict(), "interval_ps": interval, "basins_deg": BASINS_DEG,
                           "replicas": {}, "runs": {}}
    angles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rep_summaries = []
    for i, t in enumerate(replicas):
        s, phi, psi = _trajectory_summary(t, bb, interval)
        rep_summaries.append(s)
        out["replicas"][f"baseline r{i}"] = s
        angles[f"baseline r{i}"] = (phi, psi)
    out["floor"] = basin_floor(rep_summaries)
    if len(replicas) < 2:
        LOG.warning("%s: one baseline replica: no replica floor for the basin populations", name)
    for label, t in runs.items():
        s, phi, psi = _trajectory_summary(t, bb, interval)
        s["basin_tv"] = max_residue_tv(s, rep_summaries[0])
        fl = out["floor"].get("basin_tv")
        s["basin_tv_ratio_to_floor"] = s["basin_tv"] / fl if fl else None
        out["runs"][label] = s
        angles[label] = (phi, psi)
    if plot_path is not None:
        out.update(_plot(name, angles, plot_path))
    return out


def _plot(name: str, angles: dict[str, tuple[np.ndarray, np.ndarray]], plot_path) -> dict[str, Any]:
    """The Ramachandran PNG (<= 5000 points per panel), or the reason it could not be drawn."""

    try:
        thin = {k: (p[:: max(1, len(p) // 5000)], s[:: max(1, len(s) // 5000)]) for k, (p, s) in angles.items()}
        return {"plot": str(plots.ramachandran(thin, plot_path, regions=BASINS_DEG))}
    except Exception as e:  # noqa: BLE001 — a missing plot must say why, not stop the evaluation
        LOG.warning("%s: has a peptide backbone but no Ramachandran plot was drawn: %s: %s", name, type(e).__name__, e)
        return {"plot_error": f"{type(e).__name__}: {e}"}
