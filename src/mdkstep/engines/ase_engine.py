"""Bridges to ASE in both directions.

* :class:`ASEEngine` wraps any ASE calculator (a DFT code, an ML potential, EMT, ...) as a
  :class:`ForceEngine` (Å, eV -> nm, kJ/mol).
* :class:`EngineCalculator` wraps any :class:`ForceEngine` as an ASE calculator, so ASE's
  integrators drive OUR engine and every force call is counted by the engine itself.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mdkstep.engines.base import ForceEngine
from mdkstep.engines.units import ANGSTROM_TO_NM, EV_PER_ANGSTROM_TO_KJ_MOL_NM, EV_TO_KJ_MOL, nm_to_angstrom


class ASEEngine(ForceEngine):
    """Any ASE calculator behind the ForceEngine interface.

    Args:
        calculator: an ``ase.calculators.calculator.Calculator`` instance (owned by this engine).
        atomic_numbers: (n_atoms,) elements. masses: (n_atoms,) amu.
        cell: optional (3, 3) cell in nm; pbc: periodic flags (default: none).
        charge: net charge stored in ``atoms.info['charge']`` for calculators that read it.
    """

    name = "ase"

    def __init__(self, calculator, atomic_numbers, masses, cell_nm=None, pbc=False, charge: int = 0):
        super().__init__(masses, atomic_numbers)
        cell = None if cell_nm is None else nm_to_angstrom(np.asarray(cell_nm, dtype=float))
        self.atoms = Atoms(numbers=self.atomic_numbers, positions=np.zeros((self.n_atoms, 3)),
                           masses=self.masses, cell=cell, pbc=pbc)
        self.atoms.info["charge"] = int(charge)
        self.atoms.calc = calculator
        self.calculator = calculator

    def _compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        self.atoms.positions = nm_to_angstrom(positions_nm)
        e_ev = self.atoms.get_potential_energy()
        f_ev_a = self.atoms.get_forces()
        return float(e_ev) * EV_TO_KJ_MOL, np.asarray(f_ev_a) * EV_PER_ANGSTROM_TO_KJ_MOL_NM

    def describe(self) -> dict:
        return {"engine": self.name, "calculator": type(self.calculator).__name__}


class EngineCalculator(Calculator):
    """ASE calculator that delegates to a :class:`ForceEngine` (energy eV, forces eV/Å).

    Each ASE calculation is exactly one engine call (energy and forces together). The last
    raw engine results in project units are kept in :attr:`last_energy_kj_mol` and
    :attr:`last_forces_kj_mol_nm` so callers can save them without a unit round trip.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, engine: ForceEngine, **kwargs):
        super().__init__(**kwargs)
        self.engine = engine
        self.last_energy_kj_mol: float | None = None
        self.last_forces_kj_mol_nm: np.ndarray | None = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        e, f = self.engine.compute(self.atoms.positions * ANGSTROM_TO_NM)
        self.last_energy_kj_mol, self.last_forces_kj_mol_nm = e, f
        e_ev = e / EV_TO_KJ_MOL
        self.results = {"energy": e_ev, "free_energy": e_ev, "forces": f / EV_PER_ANGSTROM_TO_KJ_MOL_NM}
