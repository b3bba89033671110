"""Backbone basins of a capped dipeptide in the generalization bench (issue 24): per run, the
phi/psi basin populations and core-to-core transitions of every reference replica and hybrid row,
and each hybrid's population distance (total variation vs replica 0) over the replicas' spread.

    .venv/bin/python studies/generalization/backbone.py outputs/bench_generalization/mm/runs/ace_val_nme \\
        outputs/bench_generalization/mm/raw/ace_val_nme/topology.json

Frames are compared every 0.1 ps. Results: docs/studies/generalization.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mdkstep.analysis.ramachandran import ramachandran_evaluation
from mdkstep.trajectory import load_trajectory


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    runs_dir, topo = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    reps = [load_trajectory(p) for p in sorted(runs_dir.glob("ref_r*.npz"))]
    hybrids = {p.stem: load_trajectory(p) for p in sorted(runs_dir.glob("hybrid_*.npz"))}
    res = ramachandran_evaluation(runs_dir.name, topo, reps, hybrids, interval_ps=0.1)
    print("| run | " + " | ".join(["C7eq", "C5", "alphaR", "C7ax", "other"]) + " | transitions | TV / spread |")
    print("|---|---|---|---|---|---|---|---|")
    for label, s in {**res["replicas"], **res["runs"]}.items():
        r = s["residues"][0]
        pops = " | ".join(f"{r['populations'].get(b, 0.0):.3f}" for b in ("C7eq", "C5", "alphaR", "C7ax", "other"))
        ratio = s.get("basin_tv_ratio_to_floor")
        print(f"| {label} | {pops} | {r['transitions']} | {'' if ratio is None else f'{ratio:.2f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
