"""A way to simulate (``Method``) and what a mode (MM with OpenMM, QM with xTB) provides
to the bench and to ``make models`` (``Mode``).

Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from mdkstep.baselines.plain import Segment
from mdkstep.runner import check_finished


@dataclass
class Method:
    """One way to simulate: plain MD at a step, or the hybrid with a k-step model."""

    name: str
    kind: str  #: "plain" | "hybrid"
    dt_fs: float  #: integrator step (the hybrid's base step)
    k: int = 1  #: steps per jump (hybrid)
    hmr: bool = False  #: hydrogen mass repartitioning (MM plain)
    reference: bool = False  #: the reference step (its replicas give the floor)
    note: str = ""

    @property
    def frame_fs(self) -> float:
        """Simulated time between saved frames, fs (one step; one hybrid cycle)."""
        return self.dt_fs * (self.k if self.kind == "hybrid" else 1)


class Mode(Protocol):
    """What the MM (OpenMM) and QM (xTB) parts provide to the shared benchmark loop."""

    name: str  #: "mm" | "qm"
    root: Path

    def molecules(self) -> list[str]: ...
    def reference(self) -> Method: ...
    def plain_methods(self, mol: str, x0: np.ndarray, v0: np.ndarray) -> list[Method]: ...
    def run_plain(self, mol: str, method: Method, seed: int, out: Path, time_ps: float, training: bool = False) -> Path: ...
    def plain_timer(self, mol: str, method: Method, x0: np.ndarray, v0: np.ndarray) -> Callable[[], Segment]: ...
    def plain_nve(self, mol: str, method: Method, x0: np.ndarray, v0: np.ndarray) -> Segment: ...
    def engine(self, mol: str): ...
    def topology(self, mol: str) -> dict[str, Any]: ...
    def thermostat(self) -> tuple[float, float]: ...  # (temperature K, Langevin friction 1/ps)
    def run_meta(self, mol: str) -> dict[str, Any]: ...  # metadata written into hybrid trajectories


def common_interval_ps(*frame_fs: float) -> float:
    """The least common multiple of frame intervals (fs, multiples of 0.001 fs), in ps: the one
    interval at which two runs can be compared frame for frame (VACF lags line up)."""
    fr = [Fraction(f).limit_denominator(1000) for f in frame_fs]
    num = math.lcm(*(f.numerator for f in fr))
    den = math.gcd(*(f.denominator for f in fr))
    return float(Fraction(num, den)) / 1000.0


def check_cached_run(out: Path, seed: int, dt_fs: float, time_ps: float) -> None:
    """A cached plain run is reused only when it was made with this seed, step and length (a
    reference of another length would silently change the floor); else a one-line error."""
    check_finished(out, {"seed": seed, "dt_fs": dt_fs, "config": {"production_ps": time_ps}},
                   remedy="remove it (or use another out_dir) to run it again with these settings")
