"""Report figures (matplotlib, Agg backend, written atomically as PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mdkstep.analysis.metrics import internal_coordinates, pair_distance_hist
from mdkstep.trajectory import Trajectory
from mdkstep.utils import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    return path


def energy_temperature(trajs: dict[str, Trajectory], path: Path) -> Path:
    """Potential + total energy (kJ/mol) and temperature (K) vs time (ps), one line per run."""
    plt = _plt()
    fig, ax = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for label, t in trajs.items():
        ke = t.kinetic if t.kinetic is not None else np.zeros_like(t.energies)
        ax[0].plot(t.time_ps, t.energies + ke, lw=0.6, label=f"{label} total")
        ax[1].plot(t.time_ps, t.temperature, lw=0.6, label=label)
    ax[0].set_ylabel("E total (kJ/mol)")
    ax[1].set_ylabel("T (K)")
    ax[1].set_xlabel("time (ps)")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def structure_histograms(trajs: dict[str, Trajectory], topo: dict[str, Any], path: Path,
                         max_frames: int = 4000) -> Path:
    """Overlaid histograms of all bond lengths (Å), angles (°) and dihedrals (°) per run."""
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.5))
    for label, t in trajs.items():
        sel = np.linspace(0, t.n_frames - 1, min(max_frames, t.n_frames)).astype(int)
        ic = internal_coordinates(t.positions[sel], topo)
        for a, vals, bins in ((ax[0], ic["bonds"], 200), (ax[1], ic["angles"], 180),
                              (ax[2], np.degrees(ic["dihedrals"]), 180)):
            if np.size(vals):  # water has no dihedral: an empty panel, not a NaN histogram
                a.hist(np.ravel(vals), bins=bins, histtype="step", density=True, label=label)
    for a, xl in zip(ax, ("bond length (Å)", "angle (°)", "dihedral (°)")):
        a.set_xlabel(xl)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def rdf_overlay(trajs: dict[str, Trajectory], path: Path, r_max_nm: float = 1.0, bin_nm: float = 0.005) -> Path:
    """Intramolecular pair-distance distributions, one line per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    r = np.arange(0.0, r_max_nm, bin_nm) + bin_nm / 2
    for label, t in trajs.items():
        sel = np.linspace(0, t.n_frames - 1, min(4000, t.n_frames)).astype(int)
        ax.plot(r * 10, pair_distance_hist(t.positions[sel], r_max_nm, bin_nm), lw=0.8, label=label)
    ax.set_xlabel("pair distance (Å)")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _spans(lo: float, hi: float) -> list[tuple[float, float]]:
    """A [lo, hi) degree range as one or two plain spans (lo > hi wraps through +-180)."""
    return [(lo, hi)] if lo < hi else [(lo, 180.0), (-180.0, hi)]


def _draw_regions(a, regions: dict[str, tuple[tuple[float, float], tuple[float, float]]]) -> None:
    """Outline each basin rectangle (degrees) and label it."""
    from matplotlib.patches import Rectangle

    for name, ((p0, p1), (s0, s1)) in regions.items():
        for i, (x0, x1) in enumerate(_spans(p0, p1)):
            for j, (y0, y1) in enumerate(_spans(s0, s1)):
                a.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.6, ec="gray"))
                if i == 0 and j == 0:
                    a.annotate(name, (x0 + 2, y1 - 14), fontsize=6, color="gray")


def ramachandran(phipsi: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                 regions: dict[str, tuple[tuple[float, float], tuple[float, float]]] | None = None) -> Path:
    """phi/psi scatter (degrees; input radians, all residues pooled) per run, side by side;
    ``regions`` (name -> ((phi_lo, phi_hi), (psi_lo, psi_hi)) degrees) are outlined."""
    plt = _plt()
    n = len(phipsi)
    fig, ax = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for a, (label, (phi, psi)) in zip(ax[0], phipsi.items()):
        a.scatter(np.degrees(phi).ravel(), np.degrees(psi).ravel(), s=1, alpha=0.3)
        if regions:
            _draw_regions(a, regions)
        a.set_xlim(-180, 180)
        a.set_ylim(-180, 180)
        a.set_title(label, fontsize=9)
        a.set_xlabel("φ (°)")
        a.set_ylabel("ψ (°)")
    fig.tight_layout()
    return _save(fig, path)


def pareto(points: Sequence[dict[str, Any]], x_key: str, y_key: str, path: Path, floor: float | None = None) -> Path:
    """Fidelity distance vs force calls per ps, one labelled point per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        ax.scatter(p[x_key], p[y_key])
        ax.annotate(p["label"], (p[x_key], p[y_key]), fontsize=7)
    if floor is not None:
        ax.axhline(floor, ls="--", c="gray", lw=0.8, label="replica floor")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    fig.tight_layout()
    return _save(fig, path)


def pareto_grid(panels: dict[str, Sequence[dict[str, Any]]], path: Path, ratio_ok: float) -> Path:
    """One panel per (mode, molecule): the largest structure distance / replica floor vs force
    calls per simulated ps (log-log), plain MD as circles, the hybrid as triangles; lines at the
    floor (1) and at the "faithful" limit ``ratio_ok``. Lower-left is better."""
    plt = _plt()
    n = max(1, len(panels))
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for ax, (title, recs) in zip(axes.ravel(), panels.items()):
        ys = [1.0]
        for i, r in enumerate(recs):
            x, y = r.get("force_calls_per_ps"), r.get("max_structure_ratio")
            if not x or y is None or not np.isfinite(y):
                continue
            ys.append(y)
            style = {"hybrid": ("^", "C3"), "exact": ("s", "C2")}.get(r["kind"], ("o", "C0"))
            ax.scatter(x, y, marker=style[0], c=style[1], zorder=3)
            # alternate label offsets: methods at the same cost (4 fs HMR / 4 fs plain) stay readable
            ax.annotate(r["method"], (x, y), fontsize=7, xytext=(4, 4 if i % 2 else -10), textcoords="offset points")
        ax.axhline(1.0, ls="--", c="gray", lw=0.8, label="replica floor")
        ax.axhline(ratio_ok, ls=":", c="k", lw=0.8, label=f"{ratio_ok:g} x floor (faithful)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.5 * min(ys), 3.0 * max(ys + [ratio_ok]))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("force calls per simulated ps")
        ax.set_ylabel("max structure distance / replica floor")
        ax.legend(fontsize=7, loc="upper center")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def loss_curve(csv_path: Path, png: Path) -> Path | None:
    """Train and validation loss (normalized units) vs optimizer step, log scale, from a
    stage-04 metrics.csv (validation only on the rows that have one); None when it has no rows."""
    import csv

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = _plt()

    def curve(key: str) -> tuple[list[int], list[float]]:  # rows without the value (train-only rows: no val) skipped
        pts = [(int(r["step"]), float(r[key])) for r in rows if (r.get(key) or "").strip()]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*curve("train_loss"), label="train", lw=1)
    ax.plot(*curve("val_loss"), "o-", label="val", ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (normalized units)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{csv_path.parent.name}")
    fig.tight_layout()
    return _save(fig, png)
