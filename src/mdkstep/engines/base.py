"""One force-engine interface for every backend (OpenMM, xTB, PySCF, any ASE calculator).

Contract: positions in nm -> (potential energy in kJ/mol, forces in kJ/(mol nm)).
Every call is counted and timed by the engine itself (docs/force-calls.md); nothing else
may infer the count. A phase is measured with a counted span on the engine's counters:
``with engine.counters.span() as s: ...`` then ``s.calls``, ``s.seconds``, ``s.source``.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

#: where a force-call count comes from: each call counted by the engine itself, or (OpenMM's
#: own integrator, which cannot be hooked per call) one force evaluation per integrator step
FORCE_CALL_SOURCES = ("engine_counter", "integrator_steps")


@dataclass
class EngineCounters:
    """Force calls, the wall seconds spent inside them, and where the count comes from."""

    calls: int = 0
    seconds: float = 0.0
    source: str = "engine_counter"  #: one of FORCE_CALL_SOURCES

    @property
    def ms_per_call(self) -> float:
        return 1000.0 * self.seconds / self.calls if self.calls else float("nan")

    def add(self, calls: int, seconds: float = 0.0) -> None:
        """Record ``calls`` force calls taking ``seconds`` (for runners that count integrator steps)."""
        self.calls += int(calls)
        self.seconds += float(seconds)

    def span(self) -> "CountedSpan":
        """A counted span from now: ``with counters.span() as s: ...`` then ``s.calls``, ``s.seconds``."""
        return CountedSpan(self)


class CountedSpan:
    """Force calls, seconds inside them and elapsed wall seconds of one measured phase.

    Read live while open; frozen by :meth:`close` (or leaving the ``with`` block).
    ``source`` is the counters' :attr:`EngineCounters.source`.
    """

    def __init__(self, counters: EngineCounters):
        self._counters = counters
        self.source = counters.source
        self._start = (counters.calls, counters.seconds, time.perf_counter())
        self._end: tuple[int, float, float] | None = None

    def __enter__(self) -> "CountedSpan":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def close(self) -> "CountedSpan":
        """Freeze the figures (idempotent); returns self."""
        if self._end is None:
            self._end = self._now()
        return self

    def _now(self) -> tuple[int, float, float]:
        return self._end or (self._counters.calls, self._counters.seconds, time.perf_counter())

    @property
    def calls(self) -> int:
        return self._now()[0] - self._start[0]

    @property
    def seconds(self) -> float:
        """Wall seconds inside the force calls, s."""
        return self._now()[1] - self._start[1]

    @property
    def wall_s(self) -> float:
        """Elapsed wall seconds of the span, s."""
        return self._now()[2] - self._start[2]

    @property
    def ms_per_call(self) -> float | None:
        return 1000.0 * self.seconds / self.calls if self.calls else None

    def summary(self) -> dict:
        """``force_calls``, ``force_calls_source``, ``force_seconds``, ``wall_s``."""
        return {"force_calls": self.calls, "force_calls_source": self.source, "force_seconds": self.seconds,
                "wall_s": self.wall_s}


class ForceEngine(ABC):
    """Abstract force engine. Subclasses implement :meth:`_compute`.

    Optional hooks for constrained systems (MM): :meth:`constrain_positions` and
    :meth:`constrain_velocities`, and :attr:`n_constraints` for degrees of freedom.
    """

    name: str = "engine"

    def __init__(self, masses_amu: np.ndarray, atomic_numbers: np.ndarray):
        self.masses = np.asarray(masses_amu, dtype=float)
        self.atomic_numbers = np.asarray(atomic_numbers, dtype=int)
        self.counters = EngineCounters()

    @property
    def n_atoms(self) -> int:
        return int(self.masses.shape[0])

    @property
    def n_constraints(self) -> int:
        return 0

    def compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces (kJ/(mol nm), shape (n_atoms, 3)); one counted call."""
        x = np.asarray(positions_nm, dtype=float)
        if x.shape != (self.n_atoms, 3):
            raise ValueError(f"{self.name}: positions shape {x.shape}, expected ({self.n_atoms}, 3)")
        t0 = time.perf_counter()
        try:
            energy, forces = self._compute(x)
        finally:
            self.counters.calls += 1
            self.counters.seconds += time.perf_counter() - t0
        return float(energy), np.asarray(forces, dtype=float)

    @abstractmethod
    def _compute(self, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
        """Backend-specific energy/forces in kJ/mol and kJ/(mol nm)."""

    def constrain_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        """Project positions onto the constraint manifold (no-op without constraints)."""
        return positions_nm

    def constrain_velocities(self, positions_nm: np.ndarray, velocities: np.ndarray) -> np.ndarray:
        """Remove velocity components along constraints (no-op without constraints)."""
        return velocities

    def constraint_pairs(self) -> np.ndarray:
        """Atom index pairs (n_constraints, 2) of the distance constraints (empty without)."""
        return np.zeros((0, 2), dtype=int)

    def constraint_lengths(self) -> np.ndarray:
        """Distances (n_constraints,) nm of the pairs of :meth:`constraint_pairs`."""
        return np.zeros(0)

    def describe(self) -> dict:
        """Metadata describing the engine (for trajectory metadata and reports)."""
        return {"engine": self.name}
