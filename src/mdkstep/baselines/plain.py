"""Plain-MD segments for timing, NVE drift and step-size scans (stage 05b and the benchmark).

Two kinds, one result type:
- :class:`OpenMMRunner`: OpenMM's own integrator (the BAOAB CustomIntegrator of
  :func:`mdkstep.engines.openmm_setup.make_integrator`; friction 0 = velocity Verlet) on a Context, the way a
  chemist runs plain MM. OpenMM caches the forces between steps, so a step costs exactly one
  force evaluation; the count is the integrator's step count (it cannot be hooked in-engine),
  recorded with ``force_calls_source = "integrator_steps"``.
- :func:`engine_vv_segment`: velocity Verlet (:func:`mdkstep.dynamics.velocity_verlet_step`,
  with the engine's constraints) driven through a :class:`ForceEngine`, whose own counter
  gives the force calls.

Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mdkstep.dynamics import linear_drift, velocity_verlet_step
from mdkstep.engines.base import EngineCounters
from mdkstep.engines.openmm_setup import choose_platform, make_integrator, openmm_seed
from mdkstep.utils import LOG, remove_com


@dataclass
class Segment:
    """One plain-MD segment: what it cost and how well it conserved energy."""

    dt_fs: float
    steps: int
    simulated_ps: float
    force_calls: int
    wall_s: float
    stable: bool = True
    energies: list[float] = field(default_factory=list)  #: total energy samples, kJ/mol
    times_ps: list[float] = field(default_factory=list)
    kinetic: list[float] = field(default_factory=list)  #: kinetic energy samples, kJ/mol
    force_seconds: float = 0.0  #: wall seconds inside engine force calls (engine-driven segments)
    force_calls_source: str = "engine_counter"  #: engine_counter | integrator_steps (engines.base.FORCE_CALL_SOURCES)

    @property
    def wall_s_per_ps(self) -> float:
        return self.wall_s / self.simulated_ps if self.simulated_ps else float("nan")

    def drift(self, n_atoms: int) -> dict[str, float]:
        """NVE drift (slope of a linear fit of U + K vs time, kJ/mol/ps, and per atom), the
        total-energy std, and std(U + K) / std(K) (small = good energy conservation)."""
        e, k = np.asarray(self.energies), np.asarray(self.kinetic)
        slope = linear_drift(self.times_ps, e)
        if not np.isfinite(slope):
            nan = float("nan")
            return {"nve_drift_kj_mol_ps": nan, "nve_drift_kj_mol_ps_per_atom": nan, "etot_std_kj_mol": nan,
                    "etot_over_ekin_fluct": nan}
        return {"nve_drift_kj_mol_ps": slope, "nve_drift_kj_mol_ps_per_atom": slope / n_atoms,
                "etot_std_kj_mol": float(np.std(e)),
                "etot_over_ekin_fluct": float(np.std(e) / np.std(k)) if len(k) and np.std(k) > 0 else float("nan")}

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("energies", "times_ps", "kinetic", "force_seconds"):
            d.pop(key)
        d["wall_s_per_ps"] = self.wall_s_per_ps
        d["force_calls_per_ps"] = self.force_calls / self.simulated_ps if self.simulated_ps else float("nan")
        return d


class OpenMMRunner:
    """A plain OpenMM simulation of one System at one step (Langevin BAOAB, or friction 0 =
    velocity Verlet), started from a given state, advanced in timed segments."""

    def __init__(self, system, x0: np.ndarray, v0: np.ndarray, dt_fs: float, temperature_K: float,
                 friction_per_ps: float, seed: int = 0, platform: str = "auto", constraint_tolerance: float = 1e-8):
        import openmm

        self.dt_fs = dt_fs
        self.n_atoms = system.getNumParticles()
        self.integ = make_integrator(dt_fs, temperature_K, friction_per_ps, constraint_tolerance)
        self.integ.setRandomNumberSeed(openmm_seed(seed))  # before the Context exists, or it is ignored
        self.context = openmm.Context(system, self.integ, choose_platform(platform, self.n_atoms))
        self.context.setPositions(x0)
        self.context.applyConstraints(constraint_tolerance)
        self.context.setVelocities(v0)
        self.context.applyVelocityConstraints(constraint_tolerance)
        self.t_ps = 0.0
        self.counters = EngineCounters(source="integrator_steps")  # OpenMM's integrator: one force call per step

    def _energies(self) -> tuple[float, float]:
        st = self.context.getState(getEnergy=True)
        return st.getPotentialEnergy()._value + st.getKineticEnergy()._value, st.getKineticEnergy()._value

    def run(self, n_steps: int, record_every: int = 0) -> Segment:
        """Advance ``n_steps``; with ``record_every`` > 0 sample U + K every that many steps
        (stopping early, unstable, on a non-finite or runaway energy). Timed without sampling
        when record_every is 0 (the pure cost of plain MD)."""
        span = self.counters.span()
        seg = Segment(self.dt_fs, 0, 0.0, 0, 0.0, force_calls_source=span.source)
        if record_every <= 0:
            self.integ.step(n_steps)
            seg.steps = n_steps
        else:
            e_start = None
            while seg.steps + record_every <= n_steps:
                self.integ.step(record_every)
                seg.steps += record_every
                e, k = self._energies()
                e_start = e if e_start is None else e_start
                self._advance_clock(record_every)
                seg.energies.append(e)
                seg.kinetic.append(k)
                seg.times_ps.append(self.t_ps)
                if not np.isfinite(e) or abs(e - e_start) > 1e4:  # blown up: stop, not stable
                    seg.stable = False
                    break
        self.counters.add(seg.steps)  # one force evaluation per step (forces cached between steps)
        seg.wall_s, seg.force_calls = span.wall_s, span.close().calls
        if record_every <= 0:
            self._advance_clock(n_steps)
        seg.simulated_ps = seg.steps * self.dt_fs / 1000.0
        return seg

    def _advance_clock(self, n: int) -> None:
        self.t_ps += n * self.dt_fs / 1000.0


def engine_vv_segment(engine, x0: np.ndarray, v0: np.ndarray, dt_fs: float, n_steps: int,
                      f0: np.ndarray | None = None) -> tuple[Segment, np.ndarray, np.ndarray, np.ndarray]:
    """n_steps of velocity Verlet with ``engine`` (one counted call per step, plus one at the
    start unless the forces ``f0`` at x0 are given); returns the segment (U + K sampled every
    step) and the final (x, v, F). An SCF failure or a non-finite energy ends the segment as
    unstable."""
    m = engine.masses[:, None]
    dt = dt_fs / 1000.0
    x = np.array(x0, dtype=float)
    v = remove_com(np.array(v0, dtype=float)[None], engine.masses)[0]
    span = engine.counters.span()
    seg = Segment(dt_fs, 0, 0.0, 0, 0.0, force_calls_source=span.source)
    f = engine.compute(x)[1] if f0 is None else np.array(f0, dtype=float)
    for _ in range(n_steps):
        try:
            x, v, f, u = velocity_verlet_step(engine, x, v, f, dt, engine.masses)
        except Exception as e:  # noqa: BLE001 - an SCF failure at a too-large step means: unstable
            LOG.warning("plain MD at %.3g fs failed after %d steps: %s", dt_fs, seg.steps, e)
            seg.stable = False
            break
        seg.steps += 1
        k = 0.5 * float(np.sum(m * v * v))
        if not np.isfinite(u + k):
            seg.stable = False
            break
        seg.energies.append(u + k)
        seg.kinetic.append(k)
        seg.times_ps.append(seg.steps * dt)
    span.close()
    seg.wall_s, seg.force_calls, seg.force_seconds = span.wall_s, span.calls, span.seconds
    seg.simulated_ps = seg.steps * dt
    return seg, x, v, f


def stable_by_drift(seg: Segment, n_atoms: int, max_drift_per_atom: float) -> bool:
    """A scan segment counts as stable when it never blew up and |NVE drift| per atom is at
    most ``max_drift_per_atom`` kJ/mol/ps."""
    d = seg.drift(n_atoms)["nve_drift_kj_mol_ps_per_atom"]
    return bool(seg.stable and np.isfinite(d) and abs(d) <= max_drift_per_atom)


def time_plain_md(engine, x0: np.ndarray, v0: np.ndarray, dts_fs, n_steps: int) -> dict[str, dict[str, Any]]:
    """Velocity-Verlet segments of ``n_steps`` with ``engine`` at each step of ``dts_fs`` (fs),
    all from (x0 nm, v0 nm/ps). One untimed warm-up call first (library set-up); its forces start
    every segment, so a segment makes exactly one counted call per step. Per step "<dt>fs": the
    segment summary (force_calls, force_calls_source, force_calls_per_ps, wall_s_per_ps, ...), the
    NVE drift, ms per call (inside the engine) and the largest |E_tot - E_tot(0)|, kJ/mol."""
    f0 = engine.compute(x0)[1]
    out = {}
    for dt in dts_fs:
        seg = engine_vv_segment(engine, x0, v0, dt, n_steps, f0=f0)[0]
        e = np.asarray(seg.energies)
        out[f"{dt:g}fs"] = {**seg.summary(), **seg.drift(engine.n_atoms),
                            "wall_s_per_ps": seg.wall_s_per_ps if seg.simulated_ps else None,
                            "force_ms_per_call": 1000.0 * seg.force_seconds / seg.force_calls if seg.force_calls else None,
                            "etot_max_dev_kj_mol": float(np.max(np.abs(e - e[0]))) if len(e) else float("nan")}
        LOG.info("plain MD %g fs: %.3g s/ps, %s calls (%s), NVE drift %.3g kJ/mol/ps", dt,
                 out[f"{dt:g}fs"]["wall_s_per_ps"] or float("nan"), seg.force_calls, seg.force_calls_source,
                 out[f"{dt:g}fs"]["nve_drift_kj_mol_ps"])
    return out
