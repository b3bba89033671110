"""Effective samples per force call of a set of trajectories (plain MD, hybrid or exact mode).

tau_int (mdkstep.analysis.metrics.integrated_autocorr_time, Sokal window, all replicas pooled) of the
potential energy and of the slowest dihedral, in frames, and

    effective samples per force call = n_frames * R / (tau_int * force calls).

Force calls: the run's ``.stats.json`` ``force_calls`` when it has one (06/06b, engine-counted,
setup included), else production steps = frames * save_interval per replica (01b plain MD:
one call per step; its minimization and equilibration are not counted, as for the runs
started from its frames).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/exact/exact_efficiency.py \\
        --label "plain 1 fs" --trajectories outputs/exact/plain1fs/ethanol/replica_*.npz
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mdkstep.analysis.metrics import (
    effective_samples_per_force_call,
    iat_reliable,
    integrated_autocorr_time,
    slowest_dihedral_iat,
)
from mdkstep.molecule.system import from_trajectory
from mdkstep.trajectory import load_trajectory


def efficiency(paths: list[Path], stats_file: Path | None = None) -> dict:
    """tau_int (frames, and fs) of U and of the slowest dihedral; effective samples per call."""
    trajs = [load_trajectory(p) for p in paths]
    n = min(t.n_frames for t in trajs)
    u = np.stack([t.energies[:n] for t in trajs], axis=1)
    pos = np.stack([t.positions[:n] for t in trajs], axis=1)
    meta = trajs[0].metadata
    frame_fs = float(meta["dt_fs"]) * int(meta["save_interval"])
    if stats_file is not None and stats_file.is_file():
        calls, source = int(json.loads(stats_file.read_text())["force_calls"]), f"{stats_file} force_calls"
    else:
        calls, source = n * int(meta["save_interval"]) * len(trajs), "production steps (1 call each)"
    system = from_trajectory(paths[0], trajs[0])
    tau_u = integrated_autocorr_time(u)
    tau_d, i = slowest_dihedral_iat(pos, system.dihedrals)
    per_rep = [integrated_autocorr_time(u[:, r]) for r in range(u.shape[1])]
    return {"tau_int_U_frames_per_replica": per_rep,
            "tau_int_U_sem_frames": float(np.std(per_rep, ddof=1) / np.sqrt(len(per_rep))) if len(per_rep) > 1 else None,
            "n_replicas": len(trajs), "n_frames": n, "frame_fs": frame_fs, "force_calls": calls,
            "force_calls_source": source, "tau_int_U_frames": tau_u, "tau_int_U_fs": tau_u * frame_fs,
            "tau_int_U_reliable": iat_reliable(tau_u, n),
            "ess_per_force_call_U": effective_samples_per_force_call(n * len(trajs), tau_u, calls),
            "slowest_dihedral": system.dihedrals[i].tolist() if i >= 0 else None,
            "tau_int_dihedral_frames": tau_d, "tau_int_dihedral_fs": tau_d * frame_fs,
            "tau_int_dihedral_reliable": iat_reliable(tau_d, n),
            "ess_per_force_call_dihedral": effective_samples_per_force_call(n * len(trajs), tau_d, calls)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True)
    p.add_argument("--trajectories", type=Path, nargs="+", required=True, help="replica NPZs of one run")
    p.add_argument("--stats", type=Path, default=None, help="the run's .stats.json (06/06b) for its force calls")
    p.add_argument("--out", type=Path, default=None, help="append the row to this JSON-lines file")
    a = p.parse_args()
    row = {"label": a.label, **efficiency(a.trajectories, a.stats)}
    print(json.dumps(row))
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
