"""Unit conversions between backend units and the project's (nm, ps, kJ/mol, amu).

Every factor derives from ``ase.units`` (CODATA 2014 in ASE 3.29); nothing is hand-typed.
ASE's own units: length Å, energy eV, mass amu, time Å·sqrt(amu/eV).
"""
from __future__ import annotations

from ase import units as _u

#: 1 Hartree in kJ/mol (≈ 2625.4996).
HARTREE_TO_KJ_MOL: float = _u.Hartree * _u.mol / _u.kJ
#: 1 eV in kJ/mol (≈ 96.485).
EV_TO_KJ_MOL: float = _u.mol / _u.kJ
#: 1 Bohr in nm (≈ 0.0529177).
BOHR_TO_NM: float = _u.Bohr / _u.nm
#: 1 Å in nm (0.1).
ANGSTROM_TO_NM: float = 1.0 / _u.nm
#: 1 Hartree/Bohr in kJ/(mol nm) (≈ 49614.75).
HARTREE_PER_BOHR_TO_KJ_MOL_NM: float = HARTREE_TO_KJ_MOL / BOHR_TO_NM
#: 1 eV/Å in kJ/(mol nm) (≈ 964.85).
EV_PER_ANGSTROM_TO_KJ_MOL_NM: float = EV_TO_KJ_MOL / ANGSTROM_TO_NM
#: 1 ps in ASE time units (≈ 98.227).
PS_IN_ASE_TIME: float = 1000.0 * _u.fs
#: velocity: 1 Å per ASE time unit in nm/ps (≈ 10.18).
ASE_VELOCITY_TO_NM_PS: float = ANGSTROM_TO_NM * PS_IN_ASE_TIME


def nm_to_bohr(x_nm):
    """Positions nm -> Bohr."""
    return x_nm / BOHR_TO_NM


def nm_to_angstrom(x_nm):
    """Positions nm -> Å."""
    return x_nm / ANGSTROM_TO_NM
