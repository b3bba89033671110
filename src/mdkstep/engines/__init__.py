"""Force engines behind one interface (:class:`ForceEngine`). Heavy backends import lazily."""
from .base import EngineCounters, ForceEngine

__all__ = ["EngineCounters", "ForceEngine"]
