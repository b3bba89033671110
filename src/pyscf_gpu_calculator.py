#!/usr/bin/env python
"""PySCF (GPU4PySCF when a CUDA GPU and the package are present, else CPU PySCF) as an ASE
calculator: energy in eV, forces in eV/Å.

It wraps :class:`mdkstep.engines.pyscf_engine.PySCFEngine`, so every calculation is counted
by the engine (``calc.engine.counters``) and starts its SCF from the previous density matrix.

    from pyscf_gpu_calculator import PySCFCalculator
    atoms.calc = PySCFCalculator(method="RKS", xc="b3lyp", basis="6-31g*")

Run ``python src/pyscf_gpu_calculator.py`` for a demo (RHF/STO-3G water energy).
"""
from __future__ import annotations

import argparse

import numpy as np
from ase.calculators.calculator import all_changes

from mdkstep.engines.ase_engine import EngineCalculator
from mdkstep.engines.pyscf_engine import PySCFEngine


class PySCFCalculator(EngineCalculator):
    """ASE calculator over :class:`PySCFEngine`; keyword arguments are the engine's
    (method, basis, charge, spin, xc, omp_num_threads, max_memory_mb, use_gpu, conv_tol).
    The engine is built on the first calculation (it needs the elements) and rebuilt only
    when the elements change."""

    def __init__(self, **engine_kwargs):
        self.engine_kwargs = dict(engine_kwargs)
        super().__init__(engine=None)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        numbers = (atoms if atoms is not None else self.atoms).numbers
        if self.engine is None or not np.array_equal(self.engine.atomic_numbers, numbers):
            masses = (atoms if atoms is not None else self.atoms).get_masses()
            self.engine = PySCFEngine(numbers, masses, **self.engine_kwargs)
        super().calculate(atoms, properties, system_changes)


def demo(method: str = "RHF", basis: str = "sto-3g", xc: str | None = None) -> float:
    """Energy (eV) of water (experimental geometry) with the given method; prints a summary."""
    from ase.build import molecule
    from ase.units import Hartree

    from mdkstep.utils import setup_logging

    setup_logging("INFO")
    atoms = molecule("H2O")
    atoms.calc = PySCFCalculator(method=method, basis=basis, xc=xc)
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    eng = atoms.calc.engine
    print(f"water {eng.method} on {eng.device_note}: E = {e:.6f} eV = {e / Hartree:.8f} Hartree; "
          f"max |F| = {np.abs(f).max():.4f} eV/Å; {eng.counters.calls} engine call(s), "
          f"{eng.counters.ms_per_call:.1f} ms/call")
    return float(e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="RHF", help="RHF | UHF | RKS | UKS | a functional name (default RHF)")
    p.add_argument("--basis", default="sto-3g", help="PySCF basis name (default sto-3g)")
    p.add_argument("--xc", default=None, help="xc functional for RKS/UKS (e.g. b3lyp)")
    args = p.parse_args(argv)
    demo(args.method, args.basis, args.xc)
    return 0


if __name__ == "__main__":
    from mdkstep.config import run_cli

    run_cli(main)
