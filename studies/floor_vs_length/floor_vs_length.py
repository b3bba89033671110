"""How the replica floor shrinks with the reference length (issue 11, Build 4).

For each molecule folder of a bench run (``<runs>/<mol>/ref_r*.npz`` + topology.json), the
floor (largest distance between two reference replicas, the bench's rule) of every fidelity
key when each replica is cut to its first L ps, for L from --lengths-ps. A floor that still
falls steeply at the bench's length says the references are too short to judge "faithful";
where it flattens is the length to use.

    PYTHONPATH=src .venv/bin/python studies/floor_vs_length/floor_vs_length.py --runs outputs/bench/qm/runs \\
        --lengths-ps 0.5 1 1.5 2 3 --interval-ps 0.004 --out docs/results/floor-vs-length-qm.md

Units: Å, degrees (as in the bench); lengths in ps.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from mdkstep.analysis.evaluation import FIDELITY_KEYS as KEYS


def cut(traj, length_ps: float):
    """The first ``length_ps`` of a trajectory (frames with time - t0 < length)."""
    t = np.asarray(traj.time_ps) - float(traj.time_ps[0])
    n = int(np.searchsorted(t, length_ps - 1e-9))
    fields = {k: getattr(traj, k)[:n] for k in ("positions", "velocities", "energies", "temperature", "time_ps")}
    for k in ("forces", "kinetic"):
        if getattr(traj, k) is not None:
            fields[k] = getattr(traj, k)[:n]
    return replace(traj, **fields)


def floors_by_length(folder: Path, lengths: list[float], interval_ps: float) -> dict[str, dict[str, float]]:
    from mdkstep.analysis.evaluation import replica_floor
    from mdkstep.trajectory import load_trajectory

    reps = [load_trajectory(p) for p in sorted(folder.glob("ref_r*.npz"))]
    topo = json.loads((folder / "topology.json").read_text())
    full = min(float(r.time_ps[-1] - r.time_ps[0]) + float(r.time_ps[1] - r.time_ps[0]) for r in reps)  # n frames x dt
    out = {}
    for length in lengths:
        if length > full + 1e-9:
            continue
        f = replica_floor([cut(r, length) for r in reps], topo, interval_ps)
        out[f"{length:g}"] = {k: f.get(k) for k in KEYS} | {"n_replicas": len(reps)}
    return out


def markdown(res: dict[str, dict[str, dict[str, float]]], runs: Path, interval_ps: float) -> str:
    lines = [f"# Replica floor vs reference length ({runs})", "",
             f"Floor = the largest distance between two reference replicas, each cut to its first L ps, compared at "
             f"{interval_ps * 1000:g} fs frames; in brackets the floor relative to the longest length.", "",
             "| molecule | L ps | replicas | " + " | ".join(KEYS) + " |", "|---|---|---|" + "---|" * len(KEYS)]
    for mol, by_len in res.items():
        last = by_len[max(by_len, key=float)]
        for length, f in by_len.items():
            cells = [f"{f[k]:.3g} ({f[k] / last[k]:.2f})" if f.get(k) and last.get(k) else "n/a" for k in KEYS]
            lines.append(f"| {mol} | {length} | {f['n_replicas']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="bench runs folder with <mol>/ref_r*.npz")
    p.add_argument("--lengths-ps", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    p.add_argument("--interval-ps", type=float, default=0.004, help="comparison frame interval (bench: the hybrid's)")
    p.add_argument("--out", type=Path, default=None, help="markdown file (a .json beside it)")
    a = p.parse_args(argv)
    from mdkstep.utils import atomic_write_json, atomic_write_text

    res = {d.name: floors_by_length(d, sorted(a.lengths_ps), a.interval_ps)
           for d in sorted(a.runs.iterdir()) if len(list(d.glob("ref_r*.npz"))) >= 2}
    text = markdown(res, a.runs, a.interval_ps)
    print(text)
    if a.out:
        atomic_write_text(a.out, text)
        atomic_write_json(a.out.with_suffix(".json"), res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
