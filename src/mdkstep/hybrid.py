"""The hybrid integrator: learned k-step jumps, each corrected with real forces (one engine-agnostic
implementation, used by the MM script 06 and the QM script 06b).

Units: positions nm, velocities nm/ps, forces kJ/(mol nm), energies kJ/mol, masses amu, time ps
(``dt_fs`` in fs), temperature K.

One cycle, per replica, from the state (x, v, F = F(x), U = U(x)):

1. jump: x' = x + s dx, v' = v + s dv with (dx, dv) from the jumper (ONE model forward for all
   replicas) and s = delta_scale (times retry_shrink per retry);
2. projection onto the physical manifold: ``engine.constrain_positions`` /
   ``engine.constrain_velocities``, centre-of-mass velocity removed (``remove_com``), angular
   momentum reset to its pre-jump value (``fix_angular_momentum``);
3. corrector with the real forces (``corrector``):

   - ``"kick"`` (default) -- ONE force call per cycle, the cycle advances k*dt. The jump is the
     k steps; the call evaluates (U', F') at the jumped positions x'. In a velocity-Verlet step
     the synchronous velocity ends with the half-kick dt/2 F(x_{t+k})/m; when the jumper also
     predicts the forces at x' (a force head) and ``use_predicted_forces``, that half-kick is
     replaced by the real one, v' += s dt/2 (F' - F_pred)/m; without a force prediction the
     velocity is left as predicted (there is nothing to substitute). NVT: a Langevin O-step
     over the cycle's length k*dt.
   - ``"verlet"`` -- TWO force calls per cycle, the cycle advances (k+1)*dt: the jump, F(x') at
     the jumped point (call 1, also guarded), then one velocity-Verlet step "V R R V" (NVE) or
     BAOAB step "V R O R V" (NVT Langevin, O over the whole cycle length (k+1)*dt) with
     constraints exactly as ``mdkstep.mm.make_integrator``, F(x'') (call 2).

   A single call per (k+1)*dt is not possible without a predicted force: an exact Verlet step
   needs F at its start (the jumped point, unknown) and at its end. In both schemes the forces
   at the new state are exact and are handed to the next jump as model input at no extra cost.
4. thermostat/filter: CSVR (Bussi stochastic velocity rescaling, time constant ``tau_ps``) over
   the cycle length; NVE ``energy_filter``: rescale the COM-free velocities so that U + K equals
   the total energy after the previous cycle, using the U the corrector already computed (no
   extra call).

Guard (each replica on its own): non-finite values, max |F_i| above ``max_force_kj_mol_nm``,
U(new) - U(before) above ``max_energy_jump_kj_mol`` (checked at x' and, for "verlet", at x''),
(U + K)(new) - (U + K)(before) above ``max_total_energy_jump_kj_mol``, or an impossible energy
filter reject the jump; it is retried with the same (dx, dv) scaled by retry_shrink (no new
model forward; one force call per retry that reaches the engine) up to ``max_attempts``
attempts, then the replica falls back to ``steps_per_cycle`` plain physics steps (velocity
Verlet, or BAOAB with the Langevin thermostat; one force call per step) so that every cycle
advances the same simulated time. A jump whose positions are non-finite is rejected before any
force call.

Force calls are never inferred: every figure comes from ``engine.counters.calls`` (read before
and after each phase). Per replica and cycle: every attempt costs the calls it makes -- "kick"
1, "verlet" 2 (1 when rejected at x'), 0 when the jumped state is non-finite -- so a cycle
accepted at its first attempt costs 1 ("kick") or 2 ("verlet"); a fallback adds
``steps_per_cycle`` calls to those of its failed attempts. One extra call per replica at the
start evaluates F(x0) (``force_calls_setup``).

Output: one trajectory NPZ per replica (the schema of ``mdkstep.trajectory``): ``out_path``
itself for one replica, ``<stem>_r<i>.npz`` for several. A frame every ``save_interval_cycles``
cycles; ``time_ps`` = cycle * steps_per_cycle * dt exactly. The run is checkpointed after
every chunk (``<stem>.hybrid_ckpt.npz``: x, v, F, U, cycle, counters, RNG state) and resumes
with the same frames.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from .engines.base import ForceEngine
from .trajectory import ChunkedTrajectoryWriter, n_dof
from .utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, atomic_path, element_symbol

ENSEMBLES = ("nve", "nvt")
THERMOSTATS = ("langevin", "csvr", "none")
CORRECTORS = ("kick", "verlet")
REJECT_REASONS = ("nonfinite", "engine_error", "max_force", "energy_jump", "total_energy_jump", "energy_filter")


# ----------------------------------------------------------------------------- config

@dataclass
class HybridConfig:
    """Settings of the hybrid integrator (configs/hybrid.yaml)."""

    k: int | None = None  #: integrator steps per jump; None = the checkpoint's k
    dt_fs: float | None = None  #: integrator step of the training data, fs; None = the checkpoint's
    corrector: str = "kick"  #: kick (1 call per k*dt) | verlet (2 calls per (k+1)*dt)
    ensemble: str = "nvt"  #: nve | nvt
    temperature_K: float | None = None  #: NVT target, K; None = the MD config's
    thermostat: str = "langevin"  #: NVT only: langevin | csvr | none (none is an error in NVT)
    friction_per_ps: float = 1.0  #: Langevin friction, 1/ps of simulated time
    tau_ps: float = 0.1  #: CSVR time constant, ps
    delta_scale: float = 1.0  #: multiplies the predicted (dx, dv)
    max_attempts: int = 3  #: jump attempts per cycle before the physics fallback
    retry_shrink: float = 0.5  #: delta scale factor per retry
    max_force_kj_mol_nm: float | None = 25000.0  #: guard on max_i |F_i|; None = off
    max_energy_jump_kj_mol: float | None = 100.0  #: guard on U(new) - U(before); None = off
    max_total_energy_jump_kj_mol: float | None = None  #: guard on (U+K)(new) - (U+K)(before); None = off
    energy_filter: bool = True  #: rescale velocities so U + K after a jump equals U + K before it (NVT: before the thermostat)
    remove_com: bool = True  #: remove the centre-of-mass velocity every cycle
    fix_angular_momentum: bool = False  #: restore the pre-jump angular momentum after each jump
    save_interval_cycles: int = 1  #: save a frame every N cycles
    chunk_frames: int = 1000  #: frames per on-disk chunk (= checkpoint interval)
    save_forces: bool = True  #: store the (exact) forces of every saved frame
    use_predicted_forces: bool = True  #: kick: swap the jumper's predicted F(x') in the last half-kick for the real one

    def validate(self) -> None:
        """Raise ValueError on an inconsistent configuration."""
        if self.k is not None and self.k < 1:
            raise ValueError(f"key 'k' must be >= 1, got {self.k}")
        if self.dt_fs is not None and not self.dt_fs > 0:
            raise ValueError(f"key 'dt_fs' must be > 0, got {self.dt_fs}")
        for key, allowed in (("corrector", CORRECTORS), ("ensemble", ENSEMBLES), ("thermostat", THERMOSTATS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"key '{key}': {getattr(self, key)!r} is not one of {list(allowed)}")
        if self.ensemble == "nvt" and self.thermostat == "none":
            raise ValueError("ensemble 'nvt' needs thermostat 'langevin' or 'csvr'")
        if self.temperature_K is not None and not self.temperature_K > 0:
            raise ValueError(f"key 'temperature_K' must be > 0, got {self.temperature_K}")
        if self.friction_per_ps < 0 or not self.tau_ps > 0:
            raise ValueError("keys 'friction_per_ps' must be >= 0 and 'tau_ps' > 0")
        if not self.delta_scale > 0:
            raise ValueError(f"key 'delta_scale' must be > 0, got {self.delta_scale}")
        if self.max_attempts < 1:
            raise ValueError(f"key 'max_attempts' must be >= 1, got {self.max_attempts}")
        if not 0 < self.retry_shrink <= 1:
            raise ValueError(f"key 'retry_shrink' must be in (0, 1], got {self.retry_shrink}")
        for key in ("max_force_kj_mol_nm", "max_energy_jump_kj_mol", "max_total_energy_jump_kj_mol"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ValueError(f"key '{key}' must be > 0 or null, got {v}")
        if self.save_interval_cycles < 1 or self.chunk_frames < 1:
            raise ValueError("keys 'save_interval_cycles' and 'chunk_frames' must be >= 1")

    def resolved(self, k: int | None = None, dt_fs: float | None = None,
                 temperature_K: float | None = None) -> "HybridConfig":
        """A copy with unset k / dt_fs / temperature_K filled from the arguments."""
        out = replace(self, k=self.k if self.k is not None else k,
                      dt_fs=self.dt_fs if self.dt_fs is not None else dt_fs,
                      temperature_K=self.temperature_K if self.temperature_K is not None else temperature_K)
        out.validate()
        return out

    @property
    def steps_per_cycle(self) -> int:
        """Integrator steps one cycle advances: k ("kick") or k + 1 ("verlet")."""
        return int(self._need("k")) + (1 if self.corrector == "verlet" else 0)

    @property
    def calls_per_cycle(self) -> int:
        """Force calls of one accepted cycle per replica (no retry): 1 ("kick") or 2 ("verlet")."""
        return 2 if self.corrector == "verlet" else 1

    @property
    def dt_ps(self) -> float:
        return float(self._need("dt_fs")) / 1000.0

    @property
    def cycle_ps(self) -> float:
        """Simulated time of one cycle, ps."""
        return self.steps_per_cycle * self.dt_ps

    @property
    def thermostat_active(self) -> str:
        """The thermostat actually applied: 'none' in NVE."""
        return self.thermostat if self.ensemble == "nvt" else "none"

    def _need(self, key: str) -> Any:
        v = getattr(self, key)
        if v is None:
            raise MdkstepError(f"hybrid config: '{key}' is not set (give it or take it from the checkpoint)")
        return v


# ----------------------------------------------------------------------------- jumpers

class Jumper(Protocol):
    """Predicts the k-step jump of R replicas at once.

    Called with x (R,N,3) nm, v (R,N,3) nm/ps, F (R,N,3) kJ/(mol nm); returns (dx, dv), each
    (R,N,3) in nm and nm/ps, or (dx, dv, F_pred) where F_pred (R,N,3) kJ/(mol nm) are forces
    predicted at the jumped positions (or None).
    """

    def __call__(self, x: np.ndarray, v: np.ndarray, f: np.ndarray) -> tuple: ...


class ModelJumper:
    """A trained k-step model as a :class:`Jumper`: one forward for all R replicas.

    Inputs are prepared as in training: COM-centred positions, COM-free velocities, the exact
    forces (only when the model uses them). The batch topology is built once per R and reused.
    ``ms`` holds the wall milliseconds of every call (input conversion + forward + output).
    """

    def __init__(self, model, z: np.ndarray, masses: np.ndarray, bonds: np.ndarray, device: str = "cpu"):
        import torch

        self.model = model.eval()
        self.device = torch.device(device)
        self.model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.z = np.asarray(z, dtype=np.int64)
        self.masses = np.asarray(masses, dtype=float)
        self.bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.use_forces = bool(model.config.use_forces)
        self._templates: dict[int, Any] = {}
        self.ms: list[float] = []

    @property
    def ms_per_jump(self) -> float:
        return float(np.mean(self.ms)) if self.ms else float("nan")

    def _template(self, n_rep: int):
        if n_rep not in self._templates:
            from .model import make_graph_batch

            n = len(self.z)
            zeros = np.zeros((n, 3))
            self._templates[n_rep] = make_graph_batch(
                [self.z] * n_rep, [self.masses] * n_rep, [zeros] * n_rep, [zeros] * n_rep,
                [zeros] * n_rep if self.use_forces else None, [self.bonds] * n_rep,
                max_hops=self.model.config.max_hops, dtype=self.dtype, device=self.device)
        return self._templates[n_rep]

    def __call__(self, x: np.ndarray, v: np.ndarray, f: np.ndarray) -> tuple:
        import torch

        t0 = time.perf_counter()
        n_rep, n = x.shape[:2]
        m = self.masses
        xc = x - (np.einsum("rij,i->rj", x, m) / m.sum())[:, None]
        vc = v - (np.einsum("rij,i->rj", v, m) / m.sum())[:, None]

        def tens(a: np.ndarray):
            return torch.as_tensor(np.ascontiguousarray(a.reshape(-1, 3)), device=self.device).to(self.dtype)

        batch = replace(self._template(n_rep), pos=tens(xc), vel=tens(vc),
                        forces=tens(f) if self.use_forces else None)
        with torch.inference_mode():
            out = self.model(batch)
        dx = out["dx"].to("cpu", torch.float64).numpy().reshape(n_rep, n, 3)
        dv = out["dv"].to("cpu", torch.float64).numpy().reshape(n_rep, n, 3)
        fp = out.get("forces")
        fp = fp.to("cpu", torch.float64).numpy().reshape(n_rep, n, 3) if fp is not None else None
        self.ms.append(1000.0 * (time.perf_counter() - t0))
        return dx, dv, fp


# ----------------------------------------------------------------------------- physics helpers

def angular_momentum(x: np.ndarray, v: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Angular momentum (3,) about the centre of mass, amu nm^2/ps, of one configuration (N,3)."""
    m = masses
    xc = x - (m @ x) / m.sum()
    return np.sum(m[:, None] * np.cross(xc, v), axis=0)


def set_angular_momentum(x: np.ndarray, v: np.ndarray, masses: np.ndarray, target: np.ndarray) -> np.ndarray:
    """v (N,3) minus the rigid rotation omega x (x - x_com) that brings its angular momentum to
    ``target`` (3,). Rigid rotations keep distance constraints and linear momentum."""
    m = masses
    xc = x - (m @ x) / m.sum()
    dl = angular_momentum(x, v, m) - target
    r2 = np.sum(xc * xc, axis=1)
    inertia = np.einsum("i,ijk->jk", m, r2[:, None, None] * np.eye(3) - xc[:, :, None] * xc[:, None, :])
    ridge = 1e-12 * max(np.trace(inertia), 1e-30)
    omega = np.linalg.solve(inertia + ridge * np.eye(3), dl)
    return v - np.cross(omega, xc)


def atom_dof(masses: np.ndarray, constraint_pairs: np.ndarray, n_constraints: int) -> np.ndarray:
    """Degrees of freedom per atom (N,), summing to 3N - n_constraints - 3 (COM removed).

    COM removal takes m_i/M x 3 from atom i; a constraint i-j takes m_j/(m_i+m_j) from i and
    m_i/(m_i+m_j) from j (its relative-motion share). Without the pair list the constraints
    are spread evenly. Used for per-element (equipartition) temperatures.
    """
    m = np.asarray(masses, dtype=float)
    dof = 3.0 - 3.0 * m / m.sum()
    pairs = np.asarray(constraint_pairs, dtype=int).reshape(-1, 2)
    if len(pairs) == n_constraints:
        for i, j in pairs:
            dof[i] -= m[j] / (m[i] + m[j])
            dof[j] -= m[i] / (m[i] + m[j])
    else:
        dof -= n_constraints / len(m)
    return dof


def csvr_factor(kinetic: float, target: float, n_dof_: int, dt_over_tau: float, rng: np.random.Generator) -> float:
    """Bussi-Donadio-Parrinello (2007) stochastic velocity rescaling factor alpha.

    kinetic: current kinetic energy K (kJ/mol); target: n_dof kT/2; dt_over_tau: elapsed
    time / tau. Returns alpha with K' = alpha^2 K drawn exactly from the CSVR process (sign
    convention of the paper's appendix).
    """
    if kinetic <= 0:
        return 1.0
    c = math.exp(-dt_over_tau)
    r1 = float(rng.standard_normal())
    s = float(rng.chisquare(n_dof_ - 1)) if n_dof_ > 1 else 0.0
    k_new = (kinetic + (1 - c) * (target * (s + r1 * r1) / n_dof_ - kinetic)
             + 2 * r1 * math.sqrt(kinetic * target / n_dof_ * (1 - c) * c))
    alpha = math.sqrt(max(k_new, 0.0) / kinetic)
    if c > 0 and r1 + math.sqrt(c * n_dof_ * kinetic / ((1 - c) * target)) < 0:
        alpha = -alpha
    return alpha


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

def replica_paths(out_path: str | Path, n_replicas: int) -> list[Path]:
    """Trajectory files: ``out_path`` for one replica, ``<stem>_r<i><suffix>`` for several."""
    out = Path(out_path)
    if n_replicas == 1:
        return [out]
    return [out.with_name(f"{out.stem}_r{i}{out.suffix or '.npz'}") for i in range(n_replicas)]


def checkpoint_path(out_path: str | Path) -> Path:
    """The resume checkpoint of a hybrid run writing ``out_path``."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.hybrid_ckpt.npz")


class _Rejected(Exception):
    """A jump attempt failed the guard (internal control flow)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HybridIntegrator:
    """Advances R replicas with jumps + projection + corrector + guard (see module docstring)."""

    def __init__(self, engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, rng: np.random.Generator):
        cfg.validate()
        if cfg.ensemble == "nvt" and cfg.temperature_K is None:
            raise MdkstepError("hybrid config: 'temperature_K' is not set for NVT")
        self.engine, self.jumper, self.cfg, self.rng = engine, jumper, cfg, rng
        self.masses = np.asarray(engine.masses, dtype=float)
        self.m3 = self.masses[:, None]
        self.dt = cfg.dt_ps
        self.tau = cfg.cycle_ps
        self.n_atoms = len(self.masses)
        self.dof = n_dof(self.n_atoms, engine.n_constraints, com_removed=True)
        if self.dof < 1:
            raise MdkstepError(f"{self.n_atoms} atoms with {engine.n_constraints} constraints leave no degrees of freedom")
        self.kT = KB_KJ_PER_MOL_K * (cfg.temperature_K or 0.0)
        self.thermostat = cfg.thermostat_active
        self.counters = HybridCounters()
        z = np.asarray(engine.atomic_numbers, dtype=int)
        self.elements = [element_symbol(e) for e in sorted(set(z.tolist()))]
        self.element_index = {s: np.flatnonzero(np.array([element_symbol(e) for e in z]) == s) for s in self.elements}
        dof_i = atom_dof(self.masses, engine.constraint_pairs(), engine.n_constraints)
        self.element_dof = {s: float(dof_i[idx].sum()) for s, idx in self.element_index.items()}
        # state (R,N,3) / (R,)
        self.x = self.v = self.f = np.zeros((0, self.n_atoms, 3))
        self.u = self.e_ref = np.zeros(0)

    # -- small pieces ---------------------------------------------------------------
    def _calls(self) -> int:
        return self.engine.counters.calls

    def _compute(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        return self.engine.compute(x)

    def _com_v(self, v: np.ndarray) -> np.ndarray:
        return (self.masses @ v) / self.masses.sum()

    def internal_kinetic(self, v: np.ndarray) -> float:
        """Kinetic energy (kJ/mol) of the COM-free velocities of one replica."""
        w = v - self._com_v(v)
        return float(0.5 * np.sum(self.masses[:, None] * w * w))

    def total_energy(self, r: int) -> float:
        """U + K (kJ/mol, K with the COM motion) of replica r."""
        return float(self.u[r] + 0.5 * np.sum(self.m3 * self.v[r] ** 2))

    def _project_velocity(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        v = self.engine.constrain_velocities(x, v)
        if self.cfg.remove_com:
            v = v - self._com_v(v)
        return v

    def _o_step(self, v: np.ndarray, duration_ps: float) -> np.ndarray:
        """Exact Ornstein-Uhlenbeck (Langevin O) step of ``duration_ps``."""
        a = math.exp(-self.cfg.friction_per_ps * duration_ps)
        noise = self.rng.standard_normal(v.shape)
        return a * v + math.sqrt(1.0 - a * a) * np.sqrt(self.kT / self.m3) * noise

    def _csvr(self, v: np.ndarray) -> np.ndarray:
        vc = self._com_v(v)
        alpha = csvr_factor(self.internal_kinetic(v), 0.5 * self.dof * self.kT, self.dof,
                            self.tau / self.cfg.tau_ps, self.rng)
        return vc + alpha * (v - vc)

    def _filter(self, v: np.ndarray, u: float, e_ref: float) -> np.ndarray | None:
        """Velocities rescaled (COM part kept) so that U + K = e_ref; None when impossible."""
        vc = self._com_v(v)
        k_com = 0.5 * self.masses.sum() * float(vc @ vc)
        k_int = self.internal_kinetic(v)
        target = e_ref - u - k_com
        if not (target > 0 and k_int > 0):
            return None
        return vc + math.sqrt(target / k_int) * (v - vc)

    def _check(self, x: np.ndarray, v: np.ndarray, f: np.ndarray, u: float, u_before: float) -> None:
        cfg = self.cfg
        if not (math.isfinite(u) and np.all(np.isfinite(f)) and np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        if cfg.max_force_kj_mol_nm is not None and np.sqrt(np.max(np.sum(f * f, axis=1))) > cfg.max_force_kj_mol_nm:
            raise _Rejected("max_force")
        if cfg.max_energy_jump_kj_mol is not None and u - u_before > cfg.max_energy_jump_kj_mol:
            raise _Rejected("energy_jump")

    def vv_step(self, x: np.ndarray, v: np.ndarray, f: np.ndarray,
                o_duration_ps: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """One velocity-Verlet step "V R R V" (or BAOAB "V R O R V" with an O-step of
        ``o_duration_ps``), constraints as in ``mm.make_integrator``; one force call."""
        eng, dt, m3 = self.engine, self.dt, self.m3
        v = eng.constrain_velocities(x, v + 0.5 * dt * f / m3)
        x = x + 0.5 * dt * v
        if o_duration_ps is not None:
            v = self._o_step(v, o_duration_ps)
        x = x + 0.5 * dt * v
        if eng.n_constraints:
            x1 = x
            x = eng.constrain_positions(x)
            v = eng.constrain_velocities(x, v + (x - x1) / dt)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        u, f = self._compute(x)
        v = eng.constrain_velocities(x, v + 0.5 * dt * f / m3)
        return x, v, f, u

    # -- one replica, one cycle -----------------------------------------------------
    def _attempt(self, r: int, s: float, dx: np.ndarray, dv: np.ndarray,
                 f_pred: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        cfg, eng = self.cfg, self.engine
        x0, v0, u0 = self.x[r], self.v[r], float(self.u[r])
        x = x0 + s * dx
        v = v0 + s * dv
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        # projection onto the physical manifold
        x = eng.constrain_positions(x)
        v = self._project_velocity(x, v)
        if cfg.fix_angular_momentum:
            v = set_angular_momentum(x, v, self.masses, angular_momentum(x0, v0, self.masses))
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            raise _Rejected("nonfinite")
        try:
            u, f = self._compute(x)
        except Exception as e:  # a backend failing on a wild geometry is a rejected jump
            LOG.debug("engine error on a jumped state: %s", e)
            raise _Rejected("engine_error") from None
        self._check(x, v, f, u, u0)
        langevin = self.thermostat == "langevin"
        if cfg.corrector == "kick":
            if f_pred is not None and cfg.use_predicted_forces:
                v = eng.constrain_velocities(x, v + s * 0.5 * self.dt * (f - f_pred) / self.m3)
        else:
            try:
                x, v, f, u = self.vv_step(x, v, f, self.tau if langevin else None)
            except _Rejected:
                raise
            except Exception as e:
                LOG.debug("engine error in the corrector step: %s", e)
                raise _Rejected("engine_error") from None
            self._check(x, v, f, u, u0)
        v = self._project_velocity(x, v)
        if cfg.max_total_energy_jump_kj_mol is not None:
            e_new = u + 0.5 * float(np.sum(self.m3 * v * v))
            if e_new - self.total_energy(r) > cfg.max_total_energy_jump_kj_mol:
                raise _Rejected("total_energy_jump")
        return x, v, f, u

    def _finish(self, r: int, x: np.ndarray, v: np.ndarray, f: np.ndarray, u: float, fallback: bool) -> None:
        """Energy filter, thermostat, then store the replica's new state.

        The filter treats the jump as Hamiltonian: velocities are rescaled so that U + K equals
        the total energy before the jump (NVE: the run's energy; NVT: the energy after the
        previous cycle's thermostat), then the NVT thermostat acts (Langevin O-step over the
        cycle for the kick corrector, whose O-step is not inside the corrector; or CSVR).
        """
        if self.cfg.energy_filter and not fallback:
            vf = self._filter(v, u, float(self.e_ref[r]))
            if vf is None:
                raise _Rejected("energy_filter")
            v = vf
        if self.thermostat == "csvr":
            v = self._csvr(v)
        elif self.thermostat == "langevin" and self.cfg.corrector == "kick" and not fallback:
            v = self._project_velocity(x, self._o_step(v, self.tau))
        self.x[r], self.v[r], self.f[r], self.u[r] = x, v, f, u
        if not (self.cfg.ensemble == "nve" and self.cfg.energy_filter) or fallback:
            self.e_ref[r] = self.total_energy(r)

    def _fallback(self, r: int) -> None:
        x, v, f = self.x[r].copy(), self.v[r].copy(), self.f[r].copy()
        o = self.dt if self.thermostat == "langevin" else None
        u = float(self.u[r])
        try:
            for _ in range(self.cfg.steps_per_cycle):
                x, v, f, u = self.vv_step(x, v, f, o)
        except _Rejected:
            raise MdkstepError(f"hybrid: plain physics fallback blew up (replica {r}, cycle {self.counters.cycles + 1}); "
                               f"dt_fs = {self.cfg.dt_fs} is unstable for this system") from None
        if not (math.isfinite(u) and np.all(np.isfinite(f))):
            raise MdkstepError(f"hybrid: plain physics fallback gave non-finite forces (replica {r}); dt_fs too large?")
        self._finish(r, x, self._project_velocity(x, v), f, u, fallback=True)

    def _advance_replica(self, r: int, dx: np.ndarray, dv: np.ndarray, f_pred: np.ndarray | None) -> None:
        c, cfg = self.counters, self.cfg
        c.jumps_attempted += 1
        for attempt in range(cfg.max_attempts):
            if attempt:
                c.retries += 1
            n0 = self._calls()
            try:
                x, v, f, u = self._attempt(r, cfg.delta_scale * cfg.retry_shrink**attempt, dx, dv, f_pred)
                self._finish(r, x, v, f, u, fallback=False)
            except _Rejected as rej:
                c.rejects[rej.reason] += 1
                continue
            finally:
                c.force_calls_jump += self._calls() - n0
            c.jumps_accepted += 1
            c.jumps_accepted_first_try += attempt == 0
            return
        n0 = self._calls()
        self._fallback(r)
        c.force_calls_fallback += self._calls() - n0
        c.fallbacks += 1

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
                self.u[r], self.f[r] = self._compute(self.x[r])
        self.counters.force_calls_setup += self._calls() - n0
        if not (np.all(np.isfinite(self.f)) and np.all(np.isfinite(self.u))):
            raise MdkstepError("start state has non-finite energy or forces")
        self.e_ref = np.array([self.total_energy(r) for r in range(n_rep)])

    def _jump(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        out = self.jumper(self.x.copy(), self.v.copy(), self.f.copy())
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
        """Advance every replica by one cycle (one jumper call for all of them)."""
        dx, dv, fp = self._jump()
        for r in range(self.x.shape[0]):
            self._advance_replica(r, dx[r], dv[r], fp[r] if fp is not None else None)
        self.counters.cycles += 1
        self._monitor()

    def _monitor(self) -> None:
        c = self.counters
        for r in range(self.x.shape[0]):
            w = self.v[r] - self._com_v(self.v[r])
            mv2 = self.masses * np.sum(w * w, axis=1)
            t = float(mv2.sum()) / (self.dof * KB_KJ_PER_MOL_K)
            c.t_sum += t
            c.t_sumsq += t * t
            c.t_count += 1
            for s, idx in self.element_index.items():
                c.element_mv2[s] = c.element_mv2.get(s, 0.0) + float(mv2[idx].sum())

    def frame(self, r: int) -> dict[str, np.ndarray]:
        """The current state of replica r as one trajectory frame (schema units)."""
        w = self.v[r] - self._com_v(self.v[r])
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
               for s in self.elements if self.element_dof[s] > 0}
        return {"temperature_mean_K": mean, "temperature_std_K": math.sqrt(var), "temperature_per_element_K": per}

    # -- checkpoint -----------------------------------------------------------------
    def save_state(self, path: Path, extra: dict[str, Any]) -> None:
        """Atomically write x, v, F, U, E_ref, counters and the RNG state (+ ``extra``)."""
        meta = {"counters": asdict(self.counters), "rng": self.rng.bit_generator.state, **extra}
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, x=self.x, v=self.v, f=self.f, u=self.u, e_ref=self.e_ref, meta=np.array(json.dumps(meta)))

    def load_state(self, path: Path) -> dict[str, Any]:
        """Restore what :meth:`save_state` wrote; returns its ``extra`` entries."""
        try:
            with np.load(path) as z:
                self.x, self.v, self.f = z["x"].copy(), z["v"].copy(), z["f"].copy()
                self.u, self.e_ref = z["u"].copy(), z["e_ref"].copy()
                meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as e:
            raise MdkstepError(f"{path}: unreadable hybrid checkpoint ({e}); delete it to restart") from None
        self.counters = HybridCounters(**meta.pop("counters"))
        self.rng.bit_generator.state = meta.pop("rng")
        return meta


def _fingerprint(cfg: HybridConfig, n_cycles: int, n_rep: int, n_atoms: int) -> dict[str, Any]:
    return {"config": asdict(cfg), "n_cycles": n_cycles, "n_replicas": n_rep, "n_atoms": n_atoms}


def run_hybrid(engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, x0: np.ndarray, v0: np.ndarray,
               n_cycles: int, out_path: str | Path, rng: np.random.Generator, resume: bool = True, *,
               f0: np.ndarray | None = None, u0: np.ndarray | None = None,
               metadata: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a hybrid trajectory of R replicas and write one NPZ per replica.

    engine: the force engine (its counter is the force-call truth); jumper: see :class:`Jumper`;
    cfg: a resolved :class:`HybridConfig` (k, dt_fs set); x0, v0: (N,3) or (R,N,3) start state,
    nm and nm/ps; n_cycles: cycles to run (rounded down to whole frames; each cycle advances
    ``cfg.cycle_ps``); out_path: trajectory NPZ (``replica_paths`` for R > 1); rng: thermostat
    noise (its state is checkpointed); resume: continue from ``<stem>.hybrid_ckpt.npz`` when it
    exists; f0/u0: forces/energies at x0 if already known (skips the setup calls); metadata:
    merged into every trajectory's metadata (molecule, smiles, constraints, seed, ...).
    Returns the run statistics (force calls, timings, guard counters, temperatures).
    """
    from tqdm import tqdm

    cfg.validate()
    integ = HybridIntegrator(engine, jumper, cfg, rng)
    x0 = np.asarray(x0, dtype=float).reshape(-1, integ.n_atoms, 3)
    n_rep = x0.shape[0]
    n_frames = int(n_cycles) // cfg.save_interval_cycles
    if n_frames < 1:
        raise MdkstepError(f"{n_cycles} cycles give no frame at save_interval_cycles = {cfg.save_interval_cycles}")
    n_cycles = n_frames * cfg.save_interval_cycles
    n_chunks = -(-n_frames // cfg.chunk_frames)
    paths = replica_paths(out_path, n_rep)
    ckpt = checkpoint_path(out_path)
    meta_base = _metadata(engine, cfg, metadata or {}, n_rep)
    static = {"atom_types": np.asarray(engine.atomic_numbers), "masses": np.asarray(engine.masses, dtype=float)}
    writers = [ChunkedTrajectoryWriter(p, static, {**meta_base, "replica": r}) for r, p in enumerate(paths)]
    fp = _fingerprint(cfg, n_cycles, n_rep, integ.n_atoms)

    done_chunks = 0
    calls_before = 0
    session_calls0, session_sec0 = engine.counters.calls, engine.counters.seconds
    t_start = time.perf_counter()
    if resume and ckpt.is_file():
        extra = integ.load_state(ckpt)
        if extra.get("fingerprint") != json.loads(json.dumps(fp)):
            raise MdkstepError(f"{ckpt}: a partial hybrid run with other settings exists; delete it (or do not resume)")
        done_chunks = int(extra["done_chunks"])
        calls_before = integ.counters.force_calls
        meta_base = extra.get("metadata", meta_base)  # the first session's description of the run
        for r, w in enumerate(writers):
            w.metadata = {**meta_base, "replica": r}
        LOG.info("%s: resuming at chunk %d/%d (cycle %d)", Path(out_path).name, done_chunks, n_chunks, integ.counters.cycles)
    else:
        ckpt.unlink(missing_ok=True)
        integ.initialize(x0, v0, f0, u0)
    for w in writers:
        w.discard_chunks_from(done_chunks)

    wall_before = integ.counters.wall_seconds
    sic, spc, dt_ps = cfg.save_interval_cycles, cfg.steps_per_cycle, cfg.dt_ps

    sec_mark = session_sec0

    def sync_counters() -> None:
        """Fold this session's engine counter and wall clock into the cumulative counters."""
        nonlocal sec_mark
        c = integ.counters
        c.force_calls = calls_before + engine.counters.calls - session_calls0
        c.force_seconds += engine.counters.seconds - sec_mark
        sec_mark = engine.counters.seconds
        c.wall_seconds = wall_before + time.perf_counter() - t_start

    sync_counters()

    bar = tqdm(total=n_cycles, initial=integ.counters.cycles, desc=f"hybrid k={cfg.k} {cfg.corrector}",
               unit="cycle", disable=not progress or None, leave=False)
    for chunk in range(done_chunks, n_chunks):
        first, last = chunk * cfg.chunk_frames, min(n_frames, (chunk + 1) * cfg.chunk_frames)
        for fr in range(first, last):
            for _ in range(sic):
                integ.cycle()
            bar.update(sic)
            cyc = (fr + 1) * sic
            for r, w in enumerate(writers):
                frame = integ.frame(r)
                if not all(np.all(np.isfinite(a)) for a in frame.values()):
                    integ.counters.nan_frames += 1
                    raise MdkstepError(f"{paths[r]}: non-finite state at cycle {cyc}; not written (guard failure)")
                w.append(**frame, time_ps=np.float64(cyc * spc * dt_ps))
        for w in writers:
            w.flush(chunk)
        sync_counters()
        integ.save_state(ckpt, {"done_chunks": chunk + 1, "fingerprint": fp, "metadata": meta_base})
    bar.close()
    sync_counters()
    for w in writers:
        w.finalize()
    ckpt.unlink(missing_ok=True)
    return _stats(integ, engine, jumper, cfg, n_frames, n_rep, paths)


def _metadata(engine: ForceEngine, cfg: HybridConfig, extra: dict[str, Any], n_rep: int) -> dict[str, Any]:
    desc = engine.describe()
    meta = {
        "dt_fs": cfg.dt_fs,
        "save_interval": cfg.save_interval_cycles * cfg.steps_per_cycle,  # integrator steps between frames
        "engine": desc.get("engine", engine.name),
        "method": f"hybrid_{cfg.corrector}",
        "ensemble": cfg.ensemble,
        "thermostat": cfg.thermostat_active,
        "temperature_K": cfg.temperature_K,
        "friction": cfg.friction_per_ps if cfg.thermostat_active == "langevin" else 0.0,
        "seed": None,
        "molecule": "unknown",
        "smiles": None,
        "constraints": "hbonds" if engine.n_constraints else "none",
        "n_constraints": engine.n_constraints,
        "k": cfg.k,
        "steps_per_cycle": cfg.steps_per_cycle,
        "cycle_ps": cfg.cycle_ps,
        "n_replicas": n_rep,
        "hybrid": asdict(cfg),
        "engine_info": desc,
    }
    meta.update(extra)
    return json.loads(json.dumps(meta, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def _stats(integ: HybridIntegrator, engine: ForceEngine, jumper: Jumper, cfg: HybridConfig, n_frames: int,
           n_rep: int, paths: Sequence[Path]) -> dict[str, Any]:
    c = integ.counters
    sim_ps = c.cycles * cfg.cycle_ps
    total_ps = sim_ps * n_rep
    rc = c.cycles * n_rep
    model_ms = getattr(jumper, "ms_per_jump", None)
    out = {
        "outputs": [str(p) for p in paths],
        "n_replicas": n_rep,
        "n_cycles": c.cycles,
        "n_frames": n_frames,
        "k": cfg.k,
        "dt_fs": cfg.dt_fs,
        "corrector": cfg.corrector,
        "ensemble": cfg.ensemble,
        "thermostat": cfg.thermostat_active,
        "steps_per_cycle": cfg.steps_per_cycle,
        "calls_per_cycle_nominal": cfg.calls_per_cycle,
        "cycle_ps": cfg.cycle_ps,
        "simulated_ps": sim_ps,  # per replica
        "simulated_ps_total": total_ps,  # all replicas
        "force_calls": c.force_calls,  # engine counter, all replicas, setup included
        "force_calls_setup": c.force_calls_setup,
        "force_calls_jump": c.force_calls_jump,
        "force_calls_fallback": c.force_calls_fallback,
        "force_calls_per_ps": c.force_calls / total_ps if total_ps else None,
        "force_calls_per_replica_cycle": (c.force_calls_jump + c.force_calls_fallback) / rc if rc else None,
        "force_ms_per_call": 1000.0 * c.force_seconds / c.force_calls if c.force_calls else None,
        "wall_seconds": c.wall_seconds,
        "wall_seconds_per_ps": c.wall_seconds / total_ps if total_ps else None,
        "model_ms_per_jump": model_ms if model_ms is not None and math.isfinite(model_ms)
        else (c.jumper_ms / c.jumper_calls if c.jumper_calls else None),
        "jumper_ms_per_call": c.jumper_ms / c.jumper_calls if c.jumper_calls else None,
        "jumps_attempted": c.jumps_attempted,
        "jumps_accepted": c.jumps_accepted,
        "jumps_accepted_first_try": c.jumps_accepted_first_try,
        "acceptance": c.jumps_accepted / c.jumps_attempted if c.jumps_attempted else None,
        "retries": c.retries,
        "fallbacks": c.fallbacks,
        "reject_reasons": dict(c.rejects),
        "filter_skipped": c.filter_skipped,
        "nan_frames": c.nan_frames,
        "engine": engine.describe(),
    }
    out.update(integ.temperature_stats())
    return out
