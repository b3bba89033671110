"""Choose and build a QM force engine from a config (``engine: xtb | pyscf``); imports lazily."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..utils import MdkstepError
from .base import ForceEngine

QM_ENGINES = ("xtb", "pyscf")


def _get(cfg: Any, key: str, default: Any) -> Any:
    """Attribute or mapping access, so both QMConfig and plain dicts work."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def make_qm_engine(cfg: Any, atomic_numbers: np.ndarray, masses: np.ndarray, charge: int = 0) -> ForceEngine:
    """Build the engine named by ``cfg.engine`` for one molecule.

    Keys read (defaults in brackets): engine [xtb]; method [GFN2-xTB | RHF]; multiplicity [1];
    xtb: backend [tblite], accuracy [1.0], electronic_temperature_K [300];
    pyscf: basis [sto-3g], xc [None], omp_num_threads, max_memory_mb, use_gpu [auto],
    conv_tol [1e-9 Hartree]. ``charge`` is the molecule's net charge (e).
    """
    engine = _get(cfg, "engine", "xtb")
    multiplicity = int(_get(cfg, "multiplicity", 1))
    if engine == "xtb":
        from .xtb_engine import XTBEngine

        return XTBEngine(atomic_numbers, masses, method=_get(cfg, "method", "GFN2-xTB"), charge=charge,
                         multiplicity=multiplicity, backend=_get(cfg, "backend", "tblite"),
                         accuracy=float(_get(cfg, "accuracy", 1.0)),
                         electronic_temperature=float(_get(cfg, "electronic_temperature_K", 300.0)))
    if engine == "pyscf":
        from .pyscf_engine import PySCFEngine

        return PySCFEngine(atomic_numbers, masses, method=_get(cfg, "method", "RHF"),
                           basis=_get(cfg, "basis", "sto-3g"), charge=charge, spin=multiplicity - 1,
                           xc=_get(cfg, "xc", None), omp_num_threads=_get(cfg, "omp_num_threads", None),
                           max_memory_mb=_get(cfg, "max_memory_mb", None), use_gpu=_get(cfg, "use_gpu", "auto"),
                           conv_tol=float(_get(cfg, "conv_tol", 1e-9)))
    raise MdkstepError(f"unknown QM engine {engine!r} (key 'engine': use one of {list(QM_ENGINES)})")
