"""Extended tight binding (GFN2-xTB, GFN1-xTB, IPEA1-xTB) force engine.

Backends: ``tblite`` (maintained; its Python API ``tblite.interface.Calculator`` is called
directly, skipping the ASE layer) or ``xtb-python`` (``xtb.interface.Calculator``, unmaintained
since 2022). Both work in atomic units (Bohr, Hartree); this engine converts to nm and kJ/mol.
The SCF result object is passed back into every single point, so each call restarts from the
previous converged wavefunction.
"""
from __future__ import annotations

import numpy as np
from ase import units as ase_units

from mdkstep.engines.base import ForceEngine
from mdkstep.engines.units import HARTREE_PER_BOHR_TO_KJ_MOL_NM, HARTREE_TO_KJ_MOL, nm_to_bohr
from mdkstep.utils import LOG, MdkstepError

#: accepted spellings -> canonical method name
_METHODS = {
    "gfn2-xtb": "GFN2-xTB", "gfn2": "GFN2-xTB", "gfn2xtb": "GFN2-xTB",
    "gfn1-xtb": "GFN1-xTB", "gfn1": "GFN1-xTB", "gfn1xtb": "GFN1-xTB",
    "ipea1-xtb": "IPEA1-xTB", "ipea1": "IPEA1-xTB",
}
BACKENDS = ("tblite", "xtb-python")
INSTALL_HINT = {"tblite": "pip install tblite", "xtb-python": "pip install xtb==22.1"}


def canonical_xtb_method(method: str) -> str:
    """Canonical name of an xTB parametrisation ('gfn2' -> 'GFN2-xTB'); MdkstepError if unknown."""
    key = str(method).strip().lower()
    if key not in _METHODS:
        raise MdkstepError(f"xtb engine: unknown method {method!r} (use GFN2-xTB, GFN1-xTB or IPEA1-xTB)")
    return _METHODS[key]


def kelvin_to_hartree(t_k: float) -> float:
    """Electronic temperature K -> Hartree (k_B T), as tblite's 'temperature' setting wants."""
    return float(t_k) * ase_units.kB / ase_units.Hartree


class XTBEngine(ForceEngine):
    """GFN-xTB energies and forces for one molecule (fixed atoms, charge and spin).

    Args:
        atomic_numbers: (n_atoms,) elements.
        masses: (n_atoms,) amu (kept for the integrators; xTB does not use them).
        method: GFN2-xTB | GFN1-xTB | IPEA1-xTB.
        charge: net charge, e.
        multiplicity: 2S+1 (1 = closed shell); unpaired electrons = multiplicity - 1.
        backend: 'tblite' or 'xtb-python'.
        accuracy: SCC accuracy multiplier (smaller = tighter; 1.0 is the xtb default).
        electronic_temperature: Fermi smearing temperature, K.
    """

    name = "xtb"

    def __init__(self, atomic_numbers, masses, method: str = "GFN2-xTB", charge: int = 0,
                 multiplicity: int = 1, backend: str = "tblite", accuracy: float = 1.0,
                 electronic_temperature: float = 300.0):
        super().__init__(masses, atomic_numbers)
        if backend not in BACKENDS:
            raise MdkstepError(f"xtb engine: unknown backend {backend!r} (use one of {list(BACKENDS)})")
        if int(multiplicity) < 1:
            raise MdkstepError(f"xtb engine: multiplicity must be >= 1, got {multiplicity}")
        self.method = canonical_xtb_method(method)
        self.backend = backend
        self.charge = int(charge)
        self.multiplicity = int(multiplicity)
        self.accuracy = float(accuracy)
        self.electronic_temperature = float(electronic_temperature)
        self.scf_restarts = 0  #: SCF failures recovered by restarting from a fresh guess
        self._calc = None
        self._res = None
        self._import_backend()  # fail now, with the pip command, if the backend is missing

    # -- backend set-up (module checked at construction; calculator built on the first call) -
    def _import_backend(self):
        """The backend's Calculator class; MdkstepError naming the pip package when missing."""
        try:
            if self.backend == "tblite":
                from tblite.interface import Calculator
            else:
                from xtb.interface import Calculator
        except ImportError:
            raise MdkstepError(f"xtb backend '{self.backend}' is not installed: {INSTALL_HINT[self.backend]}") from None
        return Calculator

    def _make_calc(self, x_bohr: np.ndarray):
        uhf = self.multiplicity - 1
        Calculator = self._import_backend()
        if self.backend == "tblite":
            calc = Calculator(self.method, self.atomic_numbers, x_bohr, charge=float(self.charge), uhf=uhf)
            calc.set("verbosity", 0)
            calc.set("accuracy", self.accuracy)
            calc.set("temperature", kelvin_to_hartree(self.electronic_temperature))
            return calc
        from xtb.libxtb import VERBOSITY_MUTED
        from xtb.utils import get_method

        calc = Calculator(get_method(self.method), self.atomic_numbers, x_bohr, charge=float(self.charge), uhf=uhf)
        calc.set_verbosity(VERBOSITY_MUTED)
        calc.set_accuracy(self.accuracy)
        calc.set_electronic_temperature(self.electronic_temperature)
        return calc

    def _singlepoint(self, x_bohr: np.ndarray) -> tuple[float, np.ndarray]:
        """(energy Hartree, gradient Hartree/Bohr), restarting from the previous SCF result."""
        if self._calc is None:
            self._calc = self._make_calc(x_bohr)
        else:
            self._calc.update(x_bohr)
        self._res = self._calc.singlepoint(self._res)
        if self.backend == "tblite":
            return float(self._res.get("energy")), np.array(self._res.get("gradient"))
        return float(self._res.get_energy()), np.array(self._res.get_gradient())

    def _compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        x_bohr = np.ascontiguousarray(nm_to_bohr(positions_nm))
        try:
            e_h, g = self._singlepoint(x_bohr)
        except MdkstepError:
            raise
        except Exception as e:  # SCF failure: retry once from a fresh guess
            LOG.warning("xtb (%s): %s; retrying from a fresh SCF guess", self.backend, str(e).splitlines()[0])
            self.scf_restarts += 1
            self._calc, self._res = None, None
            try:
                e_h, g = self._singlepoint(x_bohr)
            except Exception as e2:
                raise MdkstepError(f"xtb ({self.backend}, {self.method}) failed: {str(e2).splitlines()[0]}") from None
        return e_h * HARTREE_TO_KJ_MOL, -g * HARTREE_PER_BOHR_TO_KJ_MOL_NM

    def describe(self) -> dict:
        return {"engine": self.name, "method": self.method, "backend": self.backend, "charge": self.charge,
                "multiplicity": self.multiplicity, "accuracy": self.accuracy,
                "electronic_temperature_K": self.electronic_temperature, "scf_restarts": self.scf_restarts}
