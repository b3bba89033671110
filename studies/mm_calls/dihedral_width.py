"""Per fast dihedral group of a cached bench molecule: circular W1 (deg) of each run against ref_r0 (the
other reference replicas beside, as the floor) and the circular standard deviation (deg) of every run:
which torsions a hybrid row gets wrong, and whether too narrow or too wide (docs/results/mm-calls.md).

usage: PYTHONPATH=src python studies/mm_calls/dihedral_width.py outputs/bench/mm/runs/paracetamol \
           'hybrid_k4+8+9+10+12,allperms' 'hybrid_k9+10+12+16,allperms' [--interval-ps 0.086]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mdkstep.analysis.metrics import (
    circular_w1,
    internal_coordinates,
    subsample_to_interval,
)
from mdkstep.molecule.topology import classify_dihedrals
from mdkstep.trajectory import load_trajectory

RAD_TO_DEG = 180.0 / np.pi


def circular_std_deg(phi: np.ndarray) -> float:
    return float(np.degrees(np.sqrt(-2.0 * np.log(abs(np.mean(np.exp(1j * phi)))))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="outputs/<bench>/mm/runs/<molecule> (ref_r0..3.npz, topology.json)")
    ap.add_argument("rows", nargs="+", help="run names (file stems) to compare")
    ap.add_argument("--interval-ps", type=float, default=0.086, help="frame interval (the bench's for the row)")
    a = ap.parse_args()
    topo = json.loads((a.runs / "topology.json").read_text())

    def dihedrals(name: str):
        t = load_trajectory(a.runs / f"{name}.npz")
        return t, internal_coordinates(t.positions[subsample_to_interval(t, a.interval_ps)], topo)["dihedrals"]

    t0, d0 = dihedrals("ref_r0")
    refs = sorted(p.stem for p in a.runs.glob("ref_r*.npz") if p.stem != "ref_r0")
    series = {n: dihedrals(n)[1] for n in refs + a.rows}
    quads = np.asarray(topo["dihedrals"]).reshape(-1, 4)
    cls = classify_dihedrals(t0.atom_types, np.asarray(topo["bonds"]), quads)
    z = t0.atom_types
    sym = {1: "H", 6: "C", 7: "N", 8: "O"}
    names = refs + a.rows
    print("| dihedral (first of group) | " + " | ".join(f"W1 {n}" for n in names) + " | std ref_r0 | "
          + " | ".join(f"std {n}" for n in names) + " |")
    print("|---" * (2 * len(names) + 2) + "|")
    for members, slow in zip(cls.groups, cls.slow):
        if slow:
            continue
        lab = "-".join(f"{sym.get(int(z[i]), z[i])}{i}" for i in quads[members[0]])
        pa = d0[:, members].ravel()
        w = [circular_w1(pa, series[n][:, members].ravel()) * RAD_TO_DEG for n in names]
        s = [circular_std_deg(series[n][:, members].ravel()) for n in names]
        print(f"| {lab} (x{len(members)}) | " + " | ".join(f"{x:.2f}" for x in w)
              + f" | {circular_std_deg(pa):.1f} | " + " | ".join(f"{x:.1f}" for x in s) + " |")


if __name__ == "__main__":
    main()
