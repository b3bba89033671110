"""The one engine factory: :func:`make_engine` (``openmm | xtb | pyscf | ase``) for a
:class:`mdkstep.molecule.system.System`; heavy backends import lazily."""
from __future__ import annotations

from typing import Any

from mdkstep.engines.ase_engine import ASEEngine
from mdkstep.engines.base import ForceEngine
from mdkstep.engines.openmm_engine import OpenMMEngine
from mdkstep.engines.openmm_setup import apply_constraints_and_hmr
from mdkstep.engines.pyscf_engine import PySCFEngine
from mdkstep.engines.xtb_engine import XTBEngine
from mdkstep.utils import MdkstepError

ENGINE_KINDS = ("openmm", "xtb", "pyscf", "ase")


def _get(cfg: Any, key: str, default: Any) -> Any:
    """Attribute or mapping access, so config dataclasses, plain dicts and None all work."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _openmm(system, cfg: Any) -> ForceEngine:
    """OpenMM engine on the system's XML with the MD config's constraints and HMR
    (keys: constraints [hbonds], hydrogen_mass_amu [None], platform [auto], constraint_tolerance [1e-8])."""

    omm = apply_constraints_and_hmr(system.openmm_system(), system.atomic_numbers, _get(cfg, "constraints", "hbonds"),
                                    _get(cfg, "hydrogen_mass_amu", None))
    return OpenMMEngine(omm, system.atomic_numbers, _get(cfg, "platform", "auto"),
                        float(_get(cfg, "constraint_tolerance", 1e-8)))


def _xtb(system, cfg: Any) -> ForceEngine:
    """GFN-xTB (keys: method [GFN2-xTB], multiplicity [the system's], backend [tblite],
    accuracy [1.0], electronic_temperature_K [300])."""

    return XTBEngine(system.atomic_numbers, system.masses, method=_get(cfg, "method", "GFN2-xTB"),
                     charge=system.charge, multiplicity=system.resolve_multiplicity(_get(cfg, "multiplicity", None)),
                     backend=_get(cfg, "backend", "tblite"), accuracy=float(_get(cfg, "accuracy", 1.0)),
                     electronic_temperature=float(_get(cfg, "electronic_temperature_K", 300.0)))


def _pyscf(system, cfg: Any) -> ForceEngine:
    """PySCF (keys: method [RHF], basis [sto-3g], xc, multiplicity [the system's], omp_num_threads,
    max_memory_mb, use_gpu [auto], conv_tol [1e-9 Hartree])."""

    multiplicity = system.resolve_multiplicity(_get(cfg, "multiplicity", None))
    return PySCFEngine(system.atomic_numbers, system.masses, method=_get(cfg, "method", "RHF"),
                       basis=_get(cfg, "basis", "sto-3g"), charge=system.charge, spin=multiplicity - 1,
                       xc=_get(cfg, "xc", None), omp_num_threads=_get(cfg, "omp_num_threads", None),
                       max_memory_mb=_get(cfg, "max_memory_mb", None), use_gpu=_get(cfg, "use_gpu", "auto"),
                       conv_tol=float(_get(cfg, "conv_tol", 1e-9)))


def _ase(system, cfg: Any) -> ForceEngine:
    """Any ASE calculator (keys: calculator, an instance or a zero-argument factory; cell_nm [None]; pbc [False])."""

    calc = _get(cfg, "calculator", None)
    if calc is None:
        raise MdkstepError("ase engine: key 'calculator' is missing (an ASE calculator or a function returning one)")
    if isinstance(calc, type) or (callable(calc) and not hasattr(calc, "get_potential_energy")):
        calc = calc()  # a calculator class or factory: one fresh calculator for this engine
    return ASEEngine(calc, system.atomic_numbers, system.masses, cell_nm=_get(cfg, "cell_nm", None),
                     pbc=_get(cfg, "pbc", False), charge=system.charge)


_BUILDERS = {"openmm": _openmm, "xtb": _xtb, "pyscf": _pyscf, "ase": _ase}


def make_engine(kind: str, system, cfg: Any = None) -> ForceEngine:
    """The force engine ``kind`` (openmm | xtb | pyscf | ase) for ``system``, set up from ``cfg``.

    ``cfg`` is a config dataclass (MDConfig for openmm, QMConfig for xtb / pyscf) or a dict;
    missing keys take the defaults named in each builder. Charge (e) comes from the system;
    the spin multiplicity from ``cfg.multiplicity`` when given (not None), else the system's own
    (:meth:`mdkstep.molecule.system.System.resolve_multiplicity`: one the electron count cannot
    have is a one-line error naming the molecule).
    """
    if kind not in _BUILDERS:
        raise MdkstepError(f"unknown engine {kind!r} (key 'engine': use one of {list(ENGINE_KINDS)})")
    return _BUILDERS[kind](system, cfg)
