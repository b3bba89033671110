"""Acceptance-vs-stride curve of exact mode on a QM molecule, untrained vs trained.

From states of a 300 K baseline trajectory (01b; by default the held-out last 20 %), one
exact-mode proposal per state and stride tau: |dH| median / p90 (kJ/mol) and the mean
Metropolis acceptance probability <min(1, exp(-dH/kT))>. "Untrained" is delta = 0, i.e.
Metropolized velocity Verlet at step tau; "trained" are shear checkpoints (04 with
configs/model_shear.yaml) at their own tau. Optionally writes untrained shear checkpoints
(--save-untrained DIR), e.g. to run Metropolized Verlet through 06b.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/exact/exact_stride_curve.py \\
        --trajectory outputs/exact/md/ethanol/replica_0.npz \\
        --trained outputs/exact/train_k8/best.pt outputs/exact/train_k16/best.pt --out outputs/exact/curve.json

Units: fs on the command line; nm, ps, kJ/mol, amu, K inside.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mdkstep.dynamics import kinetic_energy
from mdkstep.engines.xtb_engine import XTBEngine
from mdkstep.exact.sampler import ShearJumper, acceptance_probability, init_chain
from mdkstep.model.checkpoint import model_from_checkpoint, save_checkpoint, shear_payload
from mdkstep.model.shear import untrained_shear_kicks
from mdkstep.molecule.system import from_trajectory
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K


def proposal_stats(jumper: ShearJumper, engine, x: np.ndarray, v: np.ndarray, kT: float) -> dict:
    """One proposal from each state (x, v) (S,N,3): |dH| quantiles (kJ/mol), mean acceptance
    probability, and the force calls it took (S for the start forces + S for the proposals)."""
    calls0 = engine.counters.calls
    st = init_chain(jumper, engine, x, v)
    x1, v1, u1, _, _ = jumper.propose(engine, st.x, st.v, st.a)
    m = jumper.masses
    dH = u1 + kinetic_energy(v1, m) - st.u - kinetic_energy(v, m)
    ok = np.isfinite(dH)
    adh = np.abs(dH[ok])
    return {"tau_fs": jumper.tau_ps * 1000.0, "n_states": int(len(x)),
            "mean_acceptance_probability": float(acceptance_probability(dH, kT).mean()),
            "median_abs_dH_kJ_mol": float(np.median(adh)) if adh.size else None,
            "p90_abs_dH_kJ_mol": float(np.quantile(adh, 0.9)) if adh.size else None,
            "nonfinite": int((~ok).sum()), "force_calls": engine.counters.calls - calls0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectory", type=Path, required=True, help="300 K baseline NPZ (01b)")
    p.add_argument("--from-fraction", type=float, default=0.8, help="states from this fraction of the frames on")
    p.add_argument("--n-states", type=int, default=150)
    p.add_argument("--taus-fs", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--trained", type=Path, nargs="*", default=[], help="shear checkpoints (each at its own tau)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--save-untrained", type=Path, default=None, help="write untrained_k<K>.pt for every tau here")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the numbers")
    a = p.parse_args()
    torch.set_num_threads(1)
    traj = load_trajectory(a.trajectory)
    system = from_trajectory(a.trajectory, traj)
    dt_fs = float(traj.metadata["dt_fs"])
    lo = int(a.from_fraction * traj.n_frames)
    idx = np.linspace(lo, traj.n_frames - 1, a.n_states).astype(int)
    x, v = traj.positions[idx].astype(float), traj.velocities[idx].astype(float)
    engine = XTBEngine(system.atomic_numbers, traj.masses, method="GFN2-xTB", charge=system.charge)
    kT = KB_KJ_PER_MOL_K * a.temperature
    rows = []
    for tau_fs in a.taus_fs:
        kicks = untrained_shear_kicks()
        j = ShearJumper(kicks, system.atomic_numbers, traj.masses, system.bonds, tau_fs / 1000.0)
        rows.append({"model": "untrained (Metropolized Verlet)", **proposal_stats(j, engine, x, v, kT)})
        if a.save_untrained is not None:
            k = int(round(tau_fs / dt_fs))
            a.save_untrained.mkdir(parents=True, exist_ok=True)
            save_checkpoint(a.save_untrained / f"untrained_k{k}.pt",
                            shear_payload(kicks, k, dt_fs, "xtb", sorted(set(map(int, system.atomic_numbers))),
                                          train_config={"dtype": "float64"}))
        print(json.dumps(rows[-1]))
    for ck_path in a.trained:
        model, ck = model_from_checkpoint(ck_path, dtype=torch.float64)
        tau_ps = int(ck["k"]) * float(ck["dt_fs"]) / 1000.0
        j = ShearJumper(model, system.atomic_numbers, traj.masses, system.bonds, tau_ps)
        rows.append({"model": f"trained {ck_path}", **proposal_stats(j, engine, x, v, kT)})
        print(json.dumps(rows[-1]))
    out = {"trajectory": str(a.trajectory), "states": [int(idx[0]), int(idx[-1])], "rows": rows,
           "ms_per_call": engine.counters.ms_per_call}
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
