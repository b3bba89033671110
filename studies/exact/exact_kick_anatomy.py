"""What a trained exact-mode stride learned, against two velocity-Verlet steps of half its stride.

A shear stride a b a of length tau becomes two velocity-Verlet steps of tau/2 (two force calls)
when delta_a = -(tau/4) F(x)/m and the inner kick b(x_mid) = (tau/2) F(x_mid)/m. From states of a
300 K baseline trajectory (01b, default: 150 of its last 20 %) this reports

* the Metropolis acceptance <min(1, exp(-dH/kT))> of those two Verlet steps of tau/2 (the ceiling of
  a model whose inner kick were a perfect force field and nothing more), and of one step of tau/2;
* how far the model's b(x_mid) is from (tau/2) F(x_mid)/m (one real force call at each x_mid, for
  this diagnosis only) and its delta_a from -(tau/4) F(x)/m: per-state mass-weighted relative
  error, cosine and norm ratio (medians).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/exact/exact_kick_anatomy.py \\
        --trajectory outputs/bench/qm/runs/aspirin/ref_r0.npz --checkpoint models/qm_exact_k16.pt

GFN2-xTB, neutral molecule. Units: nm, ps, kJ/mol, amu, K.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mdkstep.dynamics import kinetic_energy
from mdkstep.engines.xtb_engine import XTBEngine
from mdkstep.exact.sampler import ShearJumper, acceptance_probability, engine_forces, init_chain
from mdkstep.model.checkpoint import model_from_checkpoint
from mdkstep.model.shear import outer_kick, untrained_shear_kicks
from mdkstep.molecule.system import from_trajectory
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K


def one_step_stats(dH: np.ndarray, kT: float, tau_ps: float) -> dict:
    """One proposal from each state: mean acceptance probability, |dH| quantiles (kJ/mol, the
    finite ones), the non-finite count and the force calls (S start forces + S proposals)."""
    ok = np.isfinite(dH)
    adh = np.abs(dH[ok])
    return {"tau_fs": tau_ps * 1000.0, "n_states": int(len(dH)),
            "mean_acceptance_probability": float(acceptance_probability(dH, kT).mean()),
            "median_abs_dH_kJ_mol": float(np.median(adh)) if adh.size else None,
            "p90_abs_dH_kJ_mol": float(np.quantile(adh, 0.9)) if adh.size else None,
            "nonfinite": int((~ok).sum()), "force_calls": 2 * int(len(dH))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectory", type=Path, required=True, help="300 K baseline NPZ (01b)")
    p.add_argument("--checkpoint", type=Path, required=True, help="shear checkpoint (n_inner 1)")
    p.add_argument("--from-fraction", type=float, default=0.8, help="states from this fraction of the frames on")
    p.add_argument("--n-states", type=int, default=150)
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the numbers")
    a = p.parse_args()
    torch.set_num_threads(1)
    traj = load_trajectory(a.trajectory)
    system = from_trajectory(a.trajectory, traj)
    idx = np.linspace(int(a.from_fraction * traj.n_frames), traj.n_frames - 1, a.n_states).astype(int)
    x, v = traj.positions[idx].astype(float), traj.velocities[idx].astype(float)
    m, kT = traj.masses, KB_KJ_PER_MOL_K * a.temperature
    eng = XTBEngine(system.atomic_numbers, m, method="GFN2-xTB", charge=system.charge)
    kicks, ck = model_from_checkpoint(a.checkpoint, dtype=torch.float64)
    if kicks.n_inner != 1:
        raise SystemExit(f"error: {a.checkpoint}: n_inner {kicks.n_inner}; this diagnosis is for a b a (n_inner 1)")
    tau = int(ck["k"]) * float(ck["dt_fs"]) / 1000.0

    half = ShearJumper(untrained_shear_kicks(), system.atomic_numbers, m, system.bonds, tau / 2)
    st = init_chain(half, eng, x, v)
    x1, v1, u1, _, a1 = half.propose(eng, st.x, st.v, st.a)
    dH1 = u1 + kinetic_energy(v1, m) - st.u - kinetic_energy(v, m)  # one Verlet step of tau/2
    _, v2, u2, _, _ = half.propose(eng, x1, v1, a1)
    dH2 = u2 + kinetic_energy(v2, m) - st.u - kinetic_energy(v, m)  # two of them

    j = ShearJumper(kicks, system.atomic_numbers, m, system.bonds, tau)
    tmpl = j.template(len(x))
    st = init_chain(j, eng, x, v)
    X, V, F0 = (torch.tensor(q.reshape(-1, 3)) for q in (x, v, st.f))
    M = tmpl.masses.unsqueeze(-1)
    with torch.no_grad():
        A = outer_kick(kicks, tmpl, X, F0, tau)
        Xm = X + 0.5 * tau * (V + A)
        B = kicks.delta_inner(0, tmpl, Xm)
    Fm = torch.tensor(engine_forces(eng, Xm.numpy().reshape(len(x), -1, 3))[1].reshape(-1, 3))

    def dot(p_, q_):  # per-state mass-weighted inner product
        return (M * p_ * q_).sum(-1).reshape(len(x), -1).sum(-1)

    def compare(got, want) -> dict:
        n_got, n_want = dot(got, got).sqrt(), dot(want, want).sqrt()
        return {"rel_err_median": float(torch.median(dot(got - want, got - want).sqrt() / n_want)),
                "cos_median": float(torch.median(dot(got, want) / (n_got * n_want))),
                "norm_ratio_median": float(torch.median(n_got / n_want))}

    out = {"trajectory": str(a.trajectory), "checkpoint": str(a.checkpoint), "tau_fs": tau * 1000.0,
           "n_states": len(x),
           "verlet_two_half_steps": {"acceptance": float(acceptance_probability(dH2, kT).mean()),
                                     "median_abs_dH_kJ_mol": float(np.median(np.abs(dH2))), "force_calls_per_tau": 2},
           "verlet_one_half_step": one_step_stats(dH1, kT, tau / 2),
           "inner_kick_vs_half_tau_F_mid": compare(B, 0.5 * tau * Fm / M),
           "delta_a_vs_minus_quarter_tau_F": compare(A - 0.5 * tau * F0 / M, -0.25 * tau * F0 / M)}
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
