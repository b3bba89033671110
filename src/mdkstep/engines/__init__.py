"""Force engines behind one interface (:class:`ForceEngine`). Heavy backends import lazily."""
from mdkstep.engines.base import CountedSpan, EngineCounters, ForceEngine

__all__ = ["CountedSpan", "EngineCounters", "ForceEngine", "OpenMMEngine", "XTBEngine", "PySCFEngine", "ASEEngine",
           "EngineCalculator", "make_engine"]

#: name -> submodule, imported on first attribute access (keeps ``import mdkstep.engines`` light)
_LAZY = {
    "XTBEngine": "xtb_engine",
    "PySCFEngine": "pyscf_engine",
    "ASEEngine": "ase_engine",
    "EngineCalculator": "ase_engine",
    "OpenMMEngine": "openmm_engine",
    "make_engine": "factory",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
