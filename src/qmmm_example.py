#!/usr/bin/env python
"""QM/MM proof of concept: one GFN2-xTB water (tblite, through our XTBEngine and the ASE
adapter) inside a cluster of rigid TIP3P waters, with ASE's subtractive ``SimpleQMMM``:

    E = E_QM(QM water) + E_MM(all waters) - E_MM(QM water)      (mechanical embedding)

The QM water is flexible (GFN2-xTB); the MM waters are rigid TIP3P (RATTLE via
``FixBondLengths``). The QM-MM interaction is TIP3P's Lennard-Jones + Coulomb with TIP3P
charges on the QM water too: ``EIQMMM`` (electrostatic embedding) would need point-charge
embedding in the QM calculator, which tblite's ASE calculator does not offer.

Steps: build an n x n x n grid of randomly oriented waters (the central one is QM), relax
with BFGS, draw Maxwell-Boltzmann velocities, run velocity Verlet, print energy components.
Units printed: kJ/mol, K, fs (ASE works in eV, Å internally).
"""
from __future__ import annotations

import argparse

import numpy as np


def water_cluster(n_side: int = 3, spacing_A: float = 3.1, seed: int = 0):
    """``n_side``^3 randomly oriented waters (O, H, H order) on a cubic grid (Å); returns
    (atoms, index of the central water's first atom)."""
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    atoms = Atoms()
    centre = (n_side - 1) / 2.0
    grid = [(i, j, k) for i in range(n_side) for j in range(n_side) for k in range(n_side)]
    qm_mol = int(np.argmin([sum((c - centre) ** 2 for c in g) for g in grid]))
    for g in grid:
        w = molecule("H2O")
        w.translate(-w[0].position)
        w.rotate(rng.uniform(0, 360), rng.normal(size=3) + 1e-9)
        w.rotate(rng.uniform(0, 360), rng.normal(size=3) + 1e-9)
        w.translate(np.array(g, dtype=float) * spacing_A)
        atoms += w
    atoms.center(vacuum=5.0)
    atoms.pbc = False
    return atoms, 3 * qm_mol


def run_qmmm(n_steps: int = 20, n_side: int = 3, dt_fs: float = 0.5, temperature_K: float = 300.0,
             seed: int = 0, relax_steps: int = 30, verbose: bool = True) -> dict:
    """Build, relax and run the QM/MM cluster; returns energy components per step (kJ/mol),
    temperatures (K) and the QM engine's call count."""
    from ase import units
    from ase.calculators.qmmm import SimpleQMMM
    from ase.calculators.tip3p import TIP3P
    from ase.constraints import FixBondLengths
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    from mdkstep.engines.ase_engine import EngineCalculator
    from mdkstep.engines.units import EV_TO_KJ_MOL
    from mdkstep.engines.xtb_engine import XTBEngine

    atoms, q0 = water_cluster(n_side, seed=seed)
    qm = list(range(q0, q0 + 3))
    engine = XTBEngine(atoms.numbers[qm], atoms.get_masses()[qm], method="GFN2-xTB")
    qmcalc = EngineCalculator(engine)
    rc = 0.5 * float(np.ptp(atoms.positions, axis=0).max()) + 10.0  # no cutoff inside the cluster (Å)
    mm_all, mm_qm = TIP3P(rc=rc), TIP3P(rc=rc)
    atoms.calc = SimpleQMMM(qm, qmcalc, mm_qm, mm_all)
    mm_mols = [m for m in range(len(atoms) // 3) if 3 * m != q0]
    pairs = [(3 * m + a, 3 * m + b) for m in mm_mols for a, b in ((0, 1), (0, 2), (1, 2))]
    atoms.set_constraint(FixBondLengths(pairs, tolerance=1e-9))  # rigid TIP3P (Å); the QM water stays flexible
    if relax_steps:
        BFGS(atoms, logfile=None).run(fmax=0.5, steps=relax_steps)
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    n_dof = 3 * len(atoms) - len(pairs) - 3

    def components() -> dict:
        e_tot = atoms.get_potential_energy()  # eV, evaluates the QM/MM calculator once
        qmat = atoms.calc.qmatoms
        e_qm = qmcalc.get_potential_energy(qmat)  # cached: no new engine call
        e_mm_all = mm_all.get_potential_energy(atoms)
        e_mm_qm = mm_qm.get_potential_energy(qmat)
        ke = atoms.get_kinetic_energy()
        return {"E_QM": e_qm * EV_TO_KJ_MOL, "E_MM_all": e_mm_all * EV_TO_KJ_MOL,
                "E_MM_QMregion": e_mm_qm * EV_TO_KJ_MOL, "E_pot": e_tot * EV_TO_KJ_MOL,
                "E_kin": ke * EV_TO_KJ_MOL, "E_total": (e_tot + ke) * EV_TO_KJ_MOL,
                "T_K": 2.0 * ke / (n_dof * units.kB)}

    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    rows = [components()]
    if verbose:
        print(f"QM/MM: 1 GFN2-xTB water + {len(mm_mols)} rigid TIP3P waters ({len(atoms)} atoms), "
              f"SimpleQMMM, velocity Verlet {dt_fs} fs; energies in kJ/mol")
        print(f"{'step':>5} {'E_QM':>12} {'E_MM_all':>10} {'E_MM_QMreg':>10} {'E_pot':>12} {'E_kin':>8} "
              f"{'E_total':>12} {'T_K':>7}")
    for step in range(n_steps + 1):
        if step:
            dyn.step()
            rows.append(components())
        if verbose:
            r = rows[-1]
            print(f"{step:5d} {r['E_QM']:12.3f} {r['E_MM_all']:10.3f} {r['E_MM_QMregion']:10.3f} {r['E_pot']:12.3f} "
                  f"{r['E_kin']:8.3f} {r['E_total']:12.3f} {r['T_K']:7.1f}")
    out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    out["qm_engine_calls"] = engine.counters.calls
    out["qm_ms_per_call"] = engine.counters.ms_per_call
    if verbose:
        drift = out["E_total"][-1] - out["E_total"][0]
        print(f"total-energy change over {n_steps} steps: {drift:+.3f} kJ/mol; "
              f"{engine.counters.calls} GFN2-xTB calls, {engine.counters.ms_per_call:.2f} ms each")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="MD steps after relaxation (default 20)")
    p.add_argument("--n-side", type=int, default=3, help="waters per grid edge: n^3 waters in all (default 3 = 27)")
    p.add_argument("--dt-fs", type=float, default=0.5, help="time step, fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="initial Maxwell-Boltzmann temperature, K")
    p.add_argument("--relax-steps", type=int, default=30, help="BFGS steps before MD (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed for orientations and velocities")
    args = p.parse_args(argv)
    run_qmmm(args.steps, args.n_side, args.dt_fs, args.temperature, args.seed, args.relax_steps)
    return 0


if __name__ == "__main__":
    from mdkstep.config import run_cli

    run_cli(main)
