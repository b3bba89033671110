"""Acceptance of the untrained exact-mode map (= Metropolized velocity Verlet at step tau) on
a QM molecule: a 300 K reference with the map at a small tau, then from each saved state one
proposal per tau (|dH| quantiles, mean acceptance probability), and a short generalized-HMC
chain per tau (measured acceptance rate).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/exact/exact_mvv_acceptance.py --smiles CCO

Units: fs on the command line; nm, ps, kJ/mol, amu, K inside.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mdkstep.dynamics import kinetic_energy
from mdkstep.engines.xtb_engine import XTBEngine
from mdkstep.exact.sampler import ExactConfig, ShearJumper, acceptance_probability, init_chain, run_exact
from mdkstep.model.shear import untrained_shear_kicks
from mdkstep.molecule.system import from_smiles
from mdkstep.utils import KB_KJ_PER_MOL_K, MdkstepError


def untrained_jumper(z, masses, bonds, tau_ps: float) -> ShearJumper:
    """delta = 0: one velocity-Verlet step of tau per stride."""
    return ShearJumper(untrained_shear_kicks(), z, masses, bonds, tau_ps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smiles", default="CCO")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--ref-tau-fs", type=float, default=0.5)
    p.add_argument("--equil-ps", type=float, default=1.0)
    p.add_argument("--n-states", type=int, default=150)
    p.add_argument("--state-every-fs", type=float, default=10.0)
    p.add_argument("--taus-fs", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--chain-strides", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the numbers")
    a = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    system = from_smiles(a.smiles, "molecule", a.seed)
    z, m, x0, bonds = system.atomic_numbers, system.masses, system.positions_nm, system.bonds
    eng = XTBEngine(z, m, method="GFN2-xTB")
    kT = KB_KJ_PER_MOL_K * a.temperature
    v0 = rng.normal(size=x0.shape) * np.sqrt(kT / m)[:, None]
    t0 = time.perf_counter()
    # reference: Metropolized Verlet at a small step (exact), strong friction to equilibrate
    ref = untrained_jumper(z, m, bonds, a.ref_tau_fs / 1000.0)
    n_eq = int(round(a.equil_ps * 1000.0 / a.ref_tau_fs))
    eq = run_exact(ref, eng, x0, v0, n_eq, ExactConfig(a.temperature, friction_per_ps=10.0), rng, record_every=n_eq)
    every = int(round(a.state_every_fs / a.ref_tau_fs))
    prod = run_exact(ref, eng, None, None, a.n_states * every, ExactConfig(a.temperature, friction_per_ps=1.0), rng,
                     record_every=every, state=eq.state)
    xs, vs = prod.positions[:, 0], prod.velocities[:, 0]
    t_ref = kinetic_energy(vs, m).mean() * 2 / (3 * len(m) * KB_KJ_PER_MOL_K)
    out = {"smiles": a.smiles, "engine": eng.describe(), "reference": {
        "tau_fs": a.ref_tau_fs, "equil_ps": a.equil_ps, "acceptance": prod.acceptance, "n_states": len(xs),
        "mean_T_K_from_K": float(t_ref), "ms_per_call": eng.counters.ms_per_call}, "per_tau": []}
    print(f"reference: acceptance {prod.acceptance:.3f} at {a.ref_tau_fs} fs, <T> {t_ref:.0f} K, "
          f"{eng.counters.ms_per_call:.2f} ms/call, {time.perf_counter() - t0:.0f} s")
    for tau_fs in a.taus_fs:
        j = untrained_jumper(z, m, bonds, tau_fs / 1000.0)
        st = init_chain(j, eng, xs, vs)  # all states as replicas
        x1, v1, u1, _, _ = j.propose(eng, st.x, st.v, st.a)
        dH = u1 + kinetic_energy(v1, m) - st.u - kinetic_energy(vs, m)
        p_acc = acceptance_probability(dH, kT)
        try:
            chain_acc = run_exact(j, eng, None, None, a.chain_strides, ExactConfig(a.temperature, friction_per_ps=1.0),
                                  rng, state=init_chain(j, eng, xs[-1], vs[-1])).acceptance
        except MdkstepError as e:  # e.g. an SCF failure at a wild proposal
            print(f"tau {tau_fs} fs: chain failed: {e}")
            chain_acc = float("nan")
        row = {"tau_fs": tau_fs, "median_abs_dH": float(np.median(np.abs(dH))),
               "p90_abs_dH": float(np.quantile(np.abs(dH), 0.9)), "mean_acceptance_prob": float(p_acc.mean()),
               "chain_acceptance": chain_acc, "chain_strides": a.chain_strides}
        out["per_tau"].append(row)
        print(f"tau {tau_fs:4.1f} fs: median |dH| {row['median_abs_dH']:9.3f} kJ/mol, p90 {row['p90_abs_dH']:9.3f}, "
              f"<min(1,e^-dH/kT)> {row['mean_acceptance_prob']:.3f}, chain acceptance {chain_acc:.3f} "
              f"({a.chain_strides} strides)")
    out["seconds"] = time.perf_counter() - t0
    out["force_calls"] = eng.counters.calls
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
    print(f"{eng.counters.calls} force calls, {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
