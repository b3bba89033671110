"""The hybrid cycle: learned k-step jumps, each corrected with real forces, guarded, thermostatted.

Units: positions nm, velocities nm/ps, forces kJ/(mol nm), energies kJ/mol, masses amu, time ps
(``dt_fs`` in fs), temperature K.

One cycle of length tau (k*dt for "kick", (k+1)*dt for "verlet"), per replica, from the state
(x, v, F = F(x), U = U(x)), in one sentence: **thermostat tau/2 -> jump -> projection -> force
call -> corrector -> energy filter -> thermostat tau/2**. The middle part is the Hamiltonian
part (it should conserve U + K; the filter enforces that), the two halves are the bath. The
symmetric O/2 - jump - O/2 form is the one FlashMD and Hamiltonian flow maps use.

1. thermostat, first half (NVT): ``langevin`` = exact Ornstein-Uhlenbeck O-step of tau/2 on
   every atom (local: heat moves between atoms and elements), or ``csvr`` = Bussi global
   rescaling over tau/2 (global: it cannot move heat between elements). The filter's reference
   energy is U + K after this half.
2. jump: x' = x + s dx, v' = v + s dv with (dx, dv) from the jumper (ONE model forward for all
   replicas) and s = delta_scale (times retry_shrink per retry);
3. projection onto the physical manifold: ``engine.constrain_positions`` /
   ``engine.constrain_velocities``, centre-of-mass velocity removed (``remove_com``), angular
   momentum reset to its pre-jump value (``fix_angular_momentum``);
4. ONE force call at x' (guarded), then the corrector:

   - ``"kick"`` (default) -- one call per cycle of k*dt. When the jumper also predicts the
     forces at x' (a force head) and ``use_predicted_forces``, the last velocity-Verlet
     half-kick is swapped for the real one, v' += s dt/2 (F' - F_pred)/m; without a force
     prediction the velocity is left as predicted.
   - ``"verlet"`` -- two calls per cycle of (k+1)*dt: after the jump one constrained
     velocity-Verlet step (``mdkstep.dynamics.velocity_verlet_step``), F(x'') (call 2).

5. energy filter (``energy_filter``): the COM-free velocities are rescaled so that U + K equals
   the reference energy (NVE: the run's energy; NVT: the energy after the first thermostat
   half), with the U already computed (no extra call);
6. thermostat, second half (NVT).

Guard (each replica on its own): a jump that moves nothing ("frozen": max_i |s dx_i| below
``FROZEN_FRACTION`` of the ballistic k dt max_i |v_i| while the atoms move -- k real MD steps
cannot leave every moving atom in place), non-finite values, max |F_i| above ``max_force_kj_mol_nm``,
U(new) - U(before) above ``max_energy_jump_kj_mol``, (U + K)(new) - (U + K)(before) above
``max_total_energy_jump_kj_mol``, or an impossible energy filter reject the jump; it is
retried with the same (dx, dv) scaled by retry_shrink (no new model forward) up to
``max_attempts`` attempts, then the replica falls back to ``steps_per_cycle`` plain
velocity-Verlet steps (one call each) between the same two thermostat halves, so every cycle
advances the same simulated time.

Force calls are never inferred: every figure comes from ``engine.counters.calls`` (read before
and after each phase). A cycle accepted at its first attempt costs 1 ("kick") or 2
("verlet") calls per replica; a fallback adds ``steps_per_cycle`` calls to those of its failed
attempts; one call per replica at the start evaluates F(x0) (``force_calls_setup``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from mdkstep.dynamics import UnstableStep, atom_dof, csvr_factor, n_dof, ou_step, velocity_verlet_step
from mdkstep.engines.base import ForceEngine
from mdkstep.hybrid.config import REJECT_REASONS, HybridConfig
from mdkstep.utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, center_of_mass, element_symbol, remove_com

#: a jump whose largest displacement is below this fraction of k dt max|v| (COM-free) is "frozen"
FROZEN_FRACTION = 1e-4


class Jumper(Protocol):
    """Predicts the k-step jump of R replicas at once.

    Called with x (R,N,3) nm, v (R,N,3) nm/ps, F (R,N,3) kJ/(mol nm); returns (dx, dv), each
    (R,N,3) in nm and nm/ps, or (dx, dv, F_pred) where F_pred (R,N,3) kJ/(mol nm) are forces
    predicted at the jumped positions (or None).
    """

    def __call__(self, x: np.ndarray, v: np.ndarray, f: np.ndarray) -> tuple: ...


class StrideSchedule:
    """Several jumpers used in turn within one cycle: [(jumper_1, k_1), (jumper_2, k_2), ...], or
    several such orders of equal total k with one drawn at random per cycle (``alternatives``).

    Each sub-stride is a whole jump (thermostat k_i dt / 2 - jump - projection - one force call
    - corrector - filter - thermostat k_i dt / 2, with its own guard and fallback of k_i plain
    steps); a cycle is one whole order, sum k_i steps and one force call per sub-stride, so the
    frames stay evenly spaced. Why: a jump of tau moves a vibration of frequency nu through
    2 pi nu tau; where that is a multiple of pi the next frame's displacement does not depend on
    the velocity, so the thermostat cannot reach that mode (scripts/stride_resonance.py).
    Strides that are resonant for different modes leave no mode without a coupling; a random
    order per cycle (e.g. 8 + 10, 9 + 9, 10 + 8) also keeps any mode from meeting the same
    phase every cycle (measured: README, "Stride resonance"). The draw uses the integrator's
    generator, so a resumed run draws the same orders. Only with the "kick" corrector (one
    call per sub-stride); the counters' jumps, retries and fallbacks count sub-strides,
    ``cycles`` whole orders.
    """

    def __init__(self, strides: list[tuple[Jumper, int]], alternatives: list[list[tuple[Jumper, int]]] | None = None):
        orders = [strides] + list(alternatives or [])
        if any(not o or any(int(k) < 1 for _, k in o) for o in orders):
            raise MdkstepError("stride schedule: every order needs at least one (jumper, k) with k >= 1")
        self.orders = [[(j, int(k)) for j, k in o] for o in orders]
        sums = sorted({sum(k for _, k in o) for o in self.orders})
        if len(sums) > 1:
            raise MdkstepError(f"stride schedule: the orders must span the same k (frames evenly spaced), got {sums}")
        self.strides = self.orders[0]

    @property
    def k(self) -> int:
        """Integrator steps of one pass through the schedule."""
        return sum(k for _, k in self.strides)

    @property
    def jumpers(self) -> list[Jumper]:
        """Each distinct jumper once."""
        seen: dict[int, Jumper] = {}
        for o in self.orders:
            for j, _ in o:
                seen.setdefault(id(j), j)
        return list(seen.values())

    @property
    def ms(self) -> list[float]:
        """Model milliseconds of every sub-stride jump so far (the jumpers that time themselves)."""
        return [t for j in self.jumpers for t in getattr(j, "ms", [])]

    @property
    def ms_per_jump(self) -> float:
        """Mean model milliseconds per sub-stride jump (nan before the first)."""
        ms = self.ms
        return float(np.mean(ms)) if ms else float("nan")


def permutation_orders(ks: list[int]) -> list[list[int]]:
    """Every distinct order of the jump lengths ``ks`` ([4, 10, 12] -> 6 orders), sorted: the
    widest drawn schedule of those models (the draw then gives every position of a cycle
    every k; measured the most faithful MM schedule, README "Stride resonance")."""
    import itertools

    return [list(o) for o in sorted(set(itertools.permutations(int(k) for k in ks)))]


# ----------------------------------------------------------------------------- angular momentum

def angular_momentum(x: np.ndarray, v: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Angular momentum (3,) about the centre of mass, amu nm^2/ps, of one configuration (N,3)."""
    m = masses
    xc = remove_com(x, m)
    return np.sum(m[:, None] * np.cross(xc, v), axis=0)


def set_angular_momentum(x: np.ndarray, v: np.ndarray, masses: np.ndarray, target: np.ndarray) -> np.ndarray:
    """v (N,3) minus the rigid rotation omega x (x - x_com) that brings its angular momentum to
    ``target`` (3,). Rigid rotations keep distance constraints and linear momentum."""
    m = masses
    xc = remove_com(x, m)
    dl = angular_momentum(x, v, m) - target
    r2 = np.sum(xc * xc, axis=1)
    inertia = np.einsum("i,ijk->jk", m, r2[:, None, None] * np.eye(3) - xc[:, :, None] * xc[:, None, :])
    ridge = 1e-12 * max(np.trace(inertia), 1e-30)
    omega = np.linalg.solve(inertia + ridge * np.eye(3), dl)
    return v - np.cross(omega, xc)


# ----------------------------------------------------------------------------- counters

@dataclass
class HybridCounters:
    """Cumulative counters of a hybrid run (saved in the resume checkpoint).

    Replica-cycles: one per replica per cycle. Force calls come from the engine's counter.
    """

    cycles: int = 0
    jumps_attempted: int = 0  #: replica-cycles that tried a jump
    jumps_accepted: int = 0  #: ... accepted at some attempt
    jumps_accepted_first_try: int = 0
    retries: int = 0  #: extra attempts (2nd, 3rd, ...) including those that ended in a fallback
    fallbacks: int = 0  #: replica-cycles integrated with plain physics
    rejects: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REJECT_REASONS})
    filter_skipped: int = 0  #: NVE fallback cycles whose energy filter was impossible (E_ref reset)
    filter_ke_change_sum: float = 0.0  #: sum over accepted jumps of |s^2 - 1|, the internal-KE change of the energy filter
    filter_count: int = 0  #: accepted jumps that went through the energy filter
    nan_frames: int = 0  #: frames with non-finite values seen at saving (never written; must be 0)
    force_calls: int = 0
    force_calls_setup: int = 0
    force_calls_jump: int = 0  #: calls of jump attempts (accepted or rejected)
    force_calls_fallback: int = 0
    force_seconds: float = 0.0
    wall_seconds: float = 0.0
    jumper_calls: int = 0
    jumper_ms: float = 0.0
    t_sum: float = 0.0
    t_sumsq: float = 0.0
    t_count: int = 0
    element_mv2: dict[str, float] = field(default_factory=dict)  #: per element sum of m v^2 (COM frame)


# ----------------------------------------------------------------------------- the integrator

class _Rejected(Exception):
    """A jump attempt failed the guard (internal control flow)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HybridIntegrator:
    """Advances R replicas with thermostat/2 - jump - projection - corrector - filter -
    thermostat/2 and the guard (see the module docstring)."""

    def __init__(self, engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, rng: np.random.Generator):
        cfg.validate()
        if cfg.ensemble == "nvt" and cfg.temperature_K is None:
            raise MdkstepError("hybrid config: 'temperature_K' is not set for NVT")
        self.engine, self.jumper, self.cfg, self.rng = engine, jumper, cfg, rng
        self.masses = np.asarray(engine.masses, dtype=float)
        self.m3 = self.masses[:, None]
        self.dt = cfg.dt_ps
        if isinstance(jumper, StrideSchedule):
            if cfg.corrector != "kick" or jumper.k != cfg.k:
                raise MdkstepError(f"stride schedule {[[k for _, k in o] for o in jumper.orders]}: needs corrector 'kick' and "
                                   f"k = {jumper.k} (the sum of its strides), got {cfg.corrector!r} and k = {cfg.k}")
            self.orders = jumper.orders
        else:
            self.orders = [[(jumper, int(cfg.k))]]
        self.scheduled = len(self.orders) > 1 or len(self.orders[0]) > 1  #: sub-strides shorter than the cycle
        self.k_now = self.orders[0][0][1]  #: steps of the sub-stride being advanced
        self.tau = self.k_now * self.dt if self.scheduled else cfg.cycle_ps  #: its length, ps
        self.n_atoms = len(self.masses)
        self.pairs = np.asarray(engine.constraint_pairs(), dtype=int).reshape(-1, 2)
        if len(self.pairs) != engine.n_constraints:
            raise MdkstepError(f"engine reports {engine.n_constraints} constraints but lists {len(self.pairs)} pairs")
        self.dof = n_dof(self.n_atoms, engine.n_constraints, com_removed=True)
        if 3 * self.n_atoms - engine.n_constraints - 3 < 1:
            raise MdkstepError(f"{self.n_atoms} atoms with {engine.n_constraints} constraints leave no degrees of freedom")
        self.kT = KB_KJ_PER_MOL_K * (cfg.temperature_K or 0.0)
        self.thermostat = cfg.thermostat_active
        self.counters = HybridCounters()
        self._filter_ke_ratio = 1.0  #: the energy filter's last s^2 (internal KE after / before)
        z = np.asarray(engine.atomic_numbers, dtype=int)
        self.elements = [element_symbol(e) for e in sorted(set(z.tolist()))]
        self.element_index = {s: np.flatnonzero(np.array([element_symbol(e) for e in z]) == s) for s in self.elements}
        self.element_dof: dict[str, float] = {}
        # state (R,N,3) / (R,)
        self.x = self.v = self.f = np.zeros((0, self.n_atoms, 3))
        self.u = self.e_ref = np.zeros(0)

    # -- small pieces ---------------------------------------------------------------
    def _calls(self) -> int:
        return self.engine.counters.calls

    def internal_kinetic(self, v: np.ndarray) -> float:
        """Kinetic energy (kJ/mol) of the COM-free velocities of one replica."""
        w = remove_com(v, self.masses)
        return float(0.5 * np.sum(self.m3 * w * w))

    def total_energy(self, r: int) -> float:
        """U + K (kJ/mol, K with the COM motion) of replica r."""
        return float(self.u[r] + 0.5 * np.sum(self.m3 * self.v[r] ** 2))

    def _project_velocity(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        v = self.engine.constrain_velocities(x, v)
        if self.cfg.remove_com:
            v = remove_com(v, self.masses)
        return v

    def _set_element_dof(self, x: np.ndarray) -> None:
        dof_i = atom_dof(self.masses, x, self.pairs, com_removed=True)
        self.element_dof = {s: float(dof_i[idx].sum()) for s, idx in self.element_index.items()}

    # -- the bath (one place for both correctors and the fallback) ---------------------
    def _thermostat(self, x: np.ndarray, v: np.ndarray, duration_ps: float) -> np.ndarray:
        """The NVT bath acting for ``duration_ps``: local Langevin O-step or global CSVR."""
        if self.thermostat == "langevin":
            return self._project_velocity(x, ou_step(v, self.masses, self.cfg.friction_per_ps, duration_ps,
                                                     self.kT, self.rng))
        if self.thermostat == "csvr":
            vc = center_of_mass(v, self.masses)
            alpha = csvr_factor(self.internal_kinetic(v), 0.5 * self.dof * self.kT, self.dof,
                                duration_ps / self.cfg.tau_ps, self.rng)
            return vc + alpha * (v - vc)
        return v

    def _half_bath(self) -> None:
        """First half of the bath for every replica; the filter's reference energy is U + K after it."""
        if self.thermostat == "none":
            return
        for r in range(self.x.shape[0]):
            self.v[r] = self._thermostat(self.x[r], self.v[r], 0.5 * self.tau)
            self.e_ref[r] = self.total_energy(r)

    # -- the Hamiltonian part --------------------------------------------------------
    def _filter(self, v: np.ndarray, u: float, e_ref: float) -> np.ndarray | None:
        """Velocities rescaled (COM part kept) so that U + K = e_ref; None when impossible."""
        vc = center_of_mass(v, self.masses)
        k_com = 0.5 * self.masses.sum() * float(vc @ vc)
        k_int = self.internal_kinetic(v)
        target = e_ref - u - k_com
        if not (target > 0 and k_int > 0):
            return None
        self._filter_ke_ratio = target / k_int  # s^2, counted when the jump is accepted
        return vc + math.sqrt(target / k_int) * (v - vc)

    def _check(self, x: np.ndarray, v: np.ndarray, f: np.ndarray, u: float, u_before: float) -> None:
        cfg = self.cfg
        if not (math.isfinite(u) and np.all(np.isfinite(f)) and np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        if cfg.max_force_kj_mol_nm is not None and np.sqrt(np.max(np.sum(f * f, axis=1))) > cfg.max_force_kj_mol_nm:
            raise _Rejected("max_force")
        if cfg.max_energy_jump_kj_mol is not None and u - u_before > cfg.max_energy_jump_kj_mol:
            raise _Rejected("energy_jump")

    def _frozen(self, s: float, dx: np.ndarray, v0: np.ndarray) -> bool:
        """True when the scaled jump s dx moves no atom by FROZEN_FRACTION of the ballistic
        distance k dt max_i |v_i| (COM-free v): impossible for k steps of MD with moving atoms."""
        w = remove_com(v0, self.masses)
        ballistic = self.k_now * self.dt * float(np.sqrt(np.max(np.sum(w * w, axis=1))))
        moved = abs(s) * float(np.sqrt(np.max(np.sum(dx * dx, axis=1))))
        return ballistic > 0 and moved < FROZEN_FRACTION * ballistic

    def _guarded_compute(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            return self.engine.compute(x)
        except Exception as e:  # a backend failing on a wild geometry is a rejected jump
            LOG.debug("engine error on a jumped state: %s", e)
            raise _Rejected("engine_error") from None

    def _attempt(self, r: int, s: float, dx: np.ndarray, dv: np.ndarray,
                 f_pred: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Jump, projection, force call(s), corrector and filter for replica r at scale s."""
        cfg, eng = self.cfg, self.engine
        x0, v0, u0 = self.x[r], self.v[r], float(self.u[r])
        if np.all(np.isfinite(dx)) and self._frozen(s, dx, v0):
            raise _Rejected("frozen")
        x = x0 + s * dx
        v = v0 + s * dv
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        x = eng.constrain_positions(x)
        v = self._project_velocity(x, v)
        if cfg.fix_angular_momentum:
            v = set_angular_momentum(x, v, self.masses, angular_momentum(x0, v0, self.masses))
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        u, f = self._guarded_compute(x)
        self._check(x, v, f, u, u0)
        if cfg.corrector == "kick":
            if f_pred is not None and cfg.use_predicted_forces:
                v = eng.constrain_velocities(x, v + s * 0.5 * self.dt * (f - f_pred) / self.m3)
        else:
            try:
                x, v, f, u = velocity_verlet_step(eng, x, v, f, self.dt, self.masses)
            except UnstableStep:
                raise _Rejected("nonfinite") from None
            except Exception as e:
                LOG.debug("engine error in the corrector step: %s", e)
                raise _Rejected("engine_error") from None
            self._check(x, v, f, u, u0)
        v = self._project_velocity(x, v)
        if cfg.max_total_energy_jump_kj_mol is not None:
            e_new = u + 0.5 * float(np.sum(self.m3 * v * v))
            if e_new - self.total_energy(r) > cfg.max_total_energy_jump_kj_mol:
                raise _Rejected("total_energy_jump")
        if cfg.energy_filter:
            v = self._filter(v, u, float(self.e_ref[r]))
            if v is None:
                raise _Rejected("energy_filter")
        return x, v, f, u

    def _physics(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The fallback: ``steps_per_cycle`` (with a schedule: the sub-stride's k) plain
        velocity-Verlet steps from replica r's state."""
        x, v, f, u = self.x[r].copy(), self.v[r].copy(), self.f[r].copy(), float(self.u[r])
        steps = self.k_now if self.scheduled else self.cfg.steps_per_cycle
        try:
            for _ in range(steps):
                x, v, f, u = velocity_verlet_step(self.engine, x, v, f, self.dt, self.masses)
        except UnstableStep:
            raise MdkstepError(f"hybrid: plain physics fallback blew up (replica {r}, cycle {self.counters.cycles + 1}); "
                               f"dt_fs = {self.cfg.dt_fs} is unstable for this system") from None
        if not (math.isfinite(u) and np.all(np.isfinite(f))):
            raise MdkstepError(f"hybrid: plain physics fallback gave non-finite forces (replica {r}); dt_fs too large?")
        return x, self._project_velocity(x, v), f, u

    def _store(self, r: int, x: np.ndarray, v: np.ndarray, f: np.ndarray, u: float, fallback: bool) -> None:
        """Second half of the bath, then the replica's new state; the NVE filter keeps its
        reference energy unless plain physics (which conserves only approximately) ran."""
        v = self._thermostat(x, v, 0.5 * self.tau)
        self.x[r], self.v[r], self.f[r], self.u[r] = x, v, f, u
        if not (self.cfg.ensemble == "nve" and self.cfg.energy_filter) or fallback:
            self.e_ref[r] = self.total_energy(r)

    def _advance_replica(self, r: int, dx: np.ndarray, dv: np.ndarray, f_pred: np.ndarray | None) -> None:
        c, cfg = self.counters, self.cfg
        c.jumps_attempted += 1
        for attempt in range(cfg.max_attempts):
            if attempt:
                c.retries += 1
            n0 = self._calls()
            try:
                x, v, f, u = self._attempt(r, cfg.delta_scale * cfg.retry_shrink**attempt, dx, dv, f_pred)
            except _Rejected as rej:
                c.rejects[rej.reason] = c.rejects.get(rej.reason, 0) + 1  # older checkpoints lack new reasons
                continue
            finally:
                c.force_calls_jump += self._calls() - n0
            self._store(r, x, v, f, u, fallback=False)
            if cfg.energy_filter:
                c.filter_ke_change_sum += abs(self._filter_ke_ratio - 1.0)
                c.filter_count += 1
            c.jumps_accepted += 1
            c.jumps_accepted_first_try += attempt == 0
            return
        n0 = self._calls()
        x, v, f, u = self._physics(r)
        c.force_calls_fallback += self._calls() - n0
        c.fallbacks += 1
        self._store(r, x, v, f, u, fallback=True)

    # -- public API -----------------------------------------------------------------
    def initialize(self, x0: np.ndarray, v0: np.ndarray, f0: np.ndarray | None = None,
                   u0: np.ndarray | None = None) -> None:
        """Set the replicas' start state (R,N,3) (projected onto constraints, COM velocity
        removed); F and U are evaluated (one counted call per replica) unless given."""
        x0 = np.array(x0, dtype=float).reshape(-1, self.n_atoms, 3)
        v0 = np.array(v0, dtype=float).reshape(-1, self.n_atoms, 3)
        if x0.shape != v0.shape:
            raise MdkstepError(f"start positions {x0.shape} and velocities {v0.shape} differ in shape")
        if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(v0))):
            raise MdkstepError("start state has non-finite positions or velocities")
        n_rep = x0.shape[0]
        self.x, self.v = x0.copy(), v0.copy()
        self.f = np.zeros_like(x0)
        self.u = np.zeros(n_rep)
        n0 = self._calls()
        for r in range(n_rep):
            self.x[r] = self.engine.constrain_positions(self.x[r])
            self.v[r] = self._project_velocity(self.x[r], self.v[r])
            if f0 is not None and u0 is not None:
                self.f[r] = np.asarray(f0, dtype=float).reshape(-1, self.n_atoms, 3)[r]
                self.u[r] = np.asarray(u0, dtype=float).reshape(-1)[r]
            else:
                self.u[r], self.f[r] = self.engine.compute(self.x[r])
        self.counters.force_calls_setup += self._calls() - n0
        if not (np.all(np.isfinite(self.f)) and np.all(np.isfinite(self.u))):
            raise MdkstepError("start state has non-finite energy or forces")
        self.e_ref = np.array([self.total_energy(r) for r in range(n_rep)])
        self._set_element_dof(self.x[0])

    def _jump(self, jumper: Jumper) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        out = jumper(self.x.copy(), self.v.copy(), self.f.copy())
        self.counters.jumper_ms += 1000.0 * (time.perf_counter() - t0)
        self.counters.jumper_calls += 1
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise MdkstepError("jumper must return (dx, dv) or (dx, dv, forces_pred)")
        dx, dv = (np.asarray(a, dtype=float) for a in out[:2])
        fp = np.asarray(out[2], dtype=float) if len(out) == 3 and out[2] is not None else None
        for name, a in (("dx", dx), ("dv", dv), ("forces", fp)):
            if a is not None and a.shape != self.x.shape:
                raise MdkstepError(f"jumper returned {name} of shape {a.shape}, expected {self.x.shape}")
        return dx, dv, fp

    def cycle(self) -> None:
        """Advance every replica by one cycle (one jumper call for all of them per sub-stride)."""
        order = self.orders[int(self.rng.integers(len(self.orders)))] if len(self.orders) > 1 else self.orders[0]
        for jumper, k in order:
            if self.scheduled:
                self.k_now, self.tau = k, k * self.dt
            self._half_bath()
            dx, dv, fp = self._jump(jumper)
            for r in range(self.x.shape[0]):
                self._advance_replica(r, dx[r], dv[r], fp[r] if fp is not None else None)
        self.counters.cycles += 1
        self._monitor()

    def _monitor(self) -> None:
        c = self.counters
        for r in range(self.x.shape[0]):
            w = remove_com(self.v[r], self.masses)
            mv2 = self.masses * np.sum(w * w, axis=1)
            t = float(mv2.sum()) / (self.dof * KB_KJ_PER_MOL_K)
            c.t_sum += t
            c.t_sumsq += t * t
            c.t_count += 1
            for s, idx in self.element_index.items():
                c.element_mv2[s] = c.element_mv2.get(s, 0.0) + float(mv2[idx].sum())

    def frame(self, r: int) -> dict[str, np.ndarray]:
        """The current state of replica r as one trajectory frame (schema units)."""
        w = remove_com(self.v[r], self.masses)
        ke = 0.5 * float(np.sum(self.m3 * w * w))
        out = {"positions": self.x[r].copy(), "velocities": self.v[r].copy(), "energies": np.float64(self.u[r]),
               "kinetic": np.float64(ke), "temperature": np.float64(2.0 * ke / (self.dof * KB_KJ_PER_MOL_K))}
        if self.cfg.save_forces:
            out["forces"] = self.f[r].copy()
        return out

    def temperature_stats(self) -> dict[str, Any]:
        """Mean and std of the instantaneous temperature (K) over all cycles and replicas, and
        the per-element kinetic temperature sum(m v^2) / (k_B dof_element) (equipartition)."""
        c = self.counters
        if not c.t_count:
            return {"temperature_mean_K": None, "temperature_std_K": None, "temperature_per_element_K": {}}
        mean = c.t_sum / c.t_count
        var = max(c.t_sumsq / c.t_count - mean * mean, 0.0)
        per = {s: c.element_mv2.get(s, 0.0) / (KB_KJ_PER_MOL_K * self.element_dof[s] * c.t_count)
               for s in self.elements if self.element_dof.get(s, 0) > 0}
        return {"temperature_mean_K": mean, "temperature_std_K": math.sqrt(var), "temperature_per_element_K": per}

    # -- checkpoint -----------------------------------------------------------------
    def get_state(self, extra: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """x, v, F, U, E_ref as arrays and counters + RNG state (+ ``extra``) as JSON ``meta``."""
        meta = {"counters": asdict(self.counters), "rng": self.rng.bit_generator.state, **(extra or {})}
        return {"x": self.x, "v": self.v, "f": self.f, "u": self.u, "e_ref": self.e_ref,
                "meta": np.array(json.dumps(meta))}

    def set_state(self, state: Any, source: str = "hybrid checkpoint") -> dict[str, Any]:
        """Restore what :meth:`get_state` returned; returns its ``extra`` entries. A damaged
        state is a one-line error naming ``source``."""
        try:
            x, v, f = (np.array(state[k], dtype=float) for k in ("x", "v", "f"))
            u, e_ref = np.array(state["u"], dtype=float), np.array(state["e_ref"], dtype=float)
            meta = json.loads(str(state["meta"]))
            counters = HybridCounters(**meta.pop("counters"))
            rng_state = meta.pop("rng")
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise MdkstepError(f"{source}: damaged hybrid state ({type(e).__name__}: {str(e)[:80]}); "
                               "delete it to start over") from None
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3) or v.shape != x.shape or f.shape != x.shape:
            raise MdkstepError(f"{source}: hybrid state has positions {x.shape}, expected (R, {self.n_atoms}, 3)")
        self.x, self.v, self.f, self.u, self.e_ref = x, v, f, u, e_ref
        self.counters = counters
        try:
            self.rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as e:
            raise MdkstepError(f"{source}: damaged hybrid state (RNG: {e}); delete it to start over") from None
        self._set_element_dof(self.x[0])
        return meta
