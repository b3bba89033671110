"""Exact mode: the learned shear jump (mdkstep.model.shear) as a proposal of generalized HMC.

Per stride of tau = k dt (one force call):

    O(tau/2)  ->  propose (x', v') = Phi(x, v)  ->  accept with min(1, exp(-(H' - H)/kT))
              ->  O(tau/2)

H = U + K with U(x') from the stride's one force call. On rejection the chain keeps x, the
known U(x), F(x) and the cached first kick a(x), with reversed velocity -v (generalized
HMC; no extra call). O is the exact Ornstein-Uhlenbeck step of Langevin dynamics. Because
Phi is volume-preserving and reversible for ANY learned kicks, every part preserves the
Boltzmann distribution exp(-H/kT) exactly: the model's quality sets the acceptance rate
(the speed), never the correctness. ``metropolis: false`` accepts every proposal (a
Langevin integrator with a learned stride: not exact); with ``friction_per_ps: 0`` as well,
the chain is NVE with Phi.

Engine-agnostic (any :class:`~mdkstep.engines.base.ForceEngine`). With distance constraints
(``ShearJumper(..., constraints=...)``, MM's HBonds) the map is RATTLE-projected
(mdkstep.constraints), the O-steps are projected onto the tangent space, and every proposal
is checked for reversibility (Phi(R Phi(x, v)) = R(x, v) to ``REVERSIBILITY_TOL``) and
rejected where the Newton solve failed or found another root -- the check that keeps
constrained HMC exact (Lelievre, Rousset & Stoltz 2019); it costs model forwards, no force
call. States are batches of R replicas, arrays (R, N, 3). Units: nm, ps, kJ/mol, amu, K.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mdkstep.constraints import ConstraintFailure, DistanceConstraints
from mdkstep.dynamics import kinetic_energy, ou_step
from mdkstep.engines.base import ForceEngine
from mdkstep.model.graph import GraphBatch
from mdkstep.model.shear import ShearKicks, graph_template, inner_path, outer_kick, stride
from mdkstep.utils import KB_KJ_PER_MOL_K

#: a constrained proposal whose reverse misses the start by more than this (nm, nm/ps) is rejected
REVERSIBILITY_TOL = 1e-8


# ----------------------------------------------------------------------- the jumper

def engine_forces(engine: ForceEngine, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U (R,) kJ/mol and F (R,N,3) kJ/(mol nm) of every replica x (R,N,3) nm: R counted calls."""
    us, fs = zip(*(engine.compute(xr) for xr in x))
    return np.asarray(us, dtype=float), np.stack(fs)


class ShearJumper:
    """NumPy front of a :class:`ShearKicks` for one molecule: builds the graphs, runs the
    model without gradients and calls the engine once per replica and stride.

    Args:
        kicks: the learned corrections (an untrained one is velocity Verlet at step tau).
        z (N,) atomic numbers, masses (N,) amu, bonds (B,2) atom indices (graph hops only).
        tau_ps: stride tau = k dt, ps.
        constraints: distance constraints (RATTLE-projected map), or None.
    """

    def __init__(self, kicks: ShearKicks, z: np.ndarray, masses: np.ndarray, bonds: np.ndarray, tau_ps: float,
                 constraints: DistanceConstraints | None = None):
        if not tau_ps > 0:
            raise ValueError(f"tau_ps must be > 0, got {tau_ps}")
        self.cons = constraints if constraints is not None and len(constraints) else None
        self.kicks = kicks.eval()
        self.z = np.asarray(z, dtype=np.int64)
        self.masses = np.asarray(masses, dtype=float)
        self.bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.tau_ps = float(tau_ps)
        ref = next(kicks.parameters())
        self.dtype, self.device = ref.dtype, ref.device
        self._templates: dict[int, GraphBatch] = {}

    def template(self, n_rep: int) -> GraphBatch:
        """The graph of ``n_rep`` copies of the molecule (cached)."""
        if n_rep not in self._templates:
            self._templates[n_rep] = graph_template(self.z, self.masses, self.bonds, n_rep,
                                                    max_hops=self.kicks.config.max_hops, dtype=self.dtype,
                                                    device=self.device)
        return self._templates[n_rep]

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a).reshape(-1, 3), dtype=self.dtype, device=self.device)

    def _np(self, t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy().reshape(shape)

    @classmethod
    def for_engine(cls, kicks: ShearKicks, engine: ForceEngine, bonds: np.ndarray, tau_ps: float) -> "ShearJumper":
        """The jumper of ``engine``'s molecule with the engine's distance constraints (if any)."""
        return cls(kicks, engine.atomic_numbers, engine.masses, bonds, tau_ps,
                   constraints=DistanceConstraints.from_engine(engine))

    @property
    def n_constraints(self) -> int:
        return len(self.cons) if self.cons is not None else 0

    @torch.no_grad()
    def outer_kick(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        """a(x) = (tau/2) F/m + delta_a(x, F) (R,N,3) nm/ps at x (R,N,3) nm with forces f
        (projected onto the tangent space with constraints)."""
        a = outer_kick(self.kicks, self.template(len(x)), self._t(x), self._t(f), self.tau_ps, self.cons)
        return self._np(a, x.shape)

    @torch.no_grad()
    def on_manifold(self, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, v) (R,N,3) projected onto the constraint manifold and its tangent space (no-op without)."""
        if self.cons is None:
            return x, v
        xt, vt = self.cons.project_state(self._t(x), self._t(v))
        return self._np(xt, x.shape), self._np(vt, x.shape)

    @torch.no_grad()
    def tangent(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """v (R,N,3) projected onto the tangent space at x (no-op without constraints)."""
        if self.cons is None:
            return v
        return self._np(self.cons.velocities(self._t(x), self._t(v)), v.shape)

    @torch.no_grad()
    def propose(self, engine: ForceEngine, x: np.ndarray, v: np.ndarray,
                a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Phi(x, v) with the cached first kick a = a(x): one force call per replica.

        Returns (x', v', U(x') (R,), F(x'), a(x')), arrays (R,N,3) nm, nm/ps, kJ/(mol nm), nm/ps.
        Raises :class:`~mdkstep.constraints.ConstraintFailure` when a constrained drift fails."""
        shape = x.shape
        calls: dict[str, np.ndarray] = {}

        def force_fn(xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            u, f = engine_forces(engine, self._np(xt, shape))
            calls["u"], calls["f"] = u, f
            return torch.as_tensor(u, dtype=self.dtype), self._t(f)

        x1, v1, _, _, a1 = stride(self.kicks, self.template(len(x)), self._t(x), self._t(v), self._t(a),
                                  self.tau_ps, force_fn, self.cons)
        # U and F are returned exactly as the engine gave them (float64), whatever the model dtype
        return self._np(x1, shape), self._np(v1, shape), calls["u"], calls["f"], self._np(a1, shape)

    @torch.no_grad()
    def reversible(self, x: np.ndarray, v: np.ndarray, a: np.ndarray, x1: np.ndarray, v1: np.ndarray,
                   a1: np.ndarray) -> np.ndarray:
        """(R,) bool: the inner path from (x', -v') with a(x') returns to (x, -v) within
        REVERSIBILITY_TOL (always True without constraints, where it holds by construction)."""
        if self.cons is None:
            return np.ones(len(x), dtype=bool)
        try:
            xb, vb = inner_path(self.kicks, self.template(len(x)), self._t(x1), self._t(a1 - v1), self.tau_ps,
                                self.cons)
        except ConstraintFailure:
            return np.zeros(len(x), dtype=bool)
        xb, vb = self._np(xb, x.shape), self._np(vb, x.shape)
        ex = np.abs(xb - x).max(axis=(1, 2))
        ev = np.abs(vb + a + v).max(axis=(1, 2))
        return (ex < REVERSIBILITY_TOL) & (ev < REVERSIBILITY_TOL * max(1.0, float(np.abs(v).max())))

    def propose_checked(self, engine: ForceEngine, x: np.ndarray, v: np.ndarray, a: np.ndarray):
        """:meth:`propose` plus the reversibility check: (x', v', U', F', a', valid (R,) bool).

        A replica whose constrained drift fails is invalid (its proposal is (x, v) itself, no
        force call); the others are proposed one by one then."""
        try:
            x1, v1, u1, f1, a1 = self.propose(engine, x, v, a)
        except ConstraintFailure:
            outs, valid = [], np.ones(len(x), dtype=bool)
            for r in range(len(x)):
                try:
                    outs.append(self.propose(engine, x[r:r + 1], v[r:r + 1], a[r:r + 1]))
                except ConstraintFailure:
                    valid[r] = False
                    outs.append((x[r:r + 1], v[r:r + 1], np.full(1, np.nan), np.zeros_like(x[r:r + 1]),
                                 a[r:r + 1]))
            x1, v1, u1, f1, a1 = (np.concatenate(c) for c in zip(*outs))
            return x1, v1, u1, f1, a1, valid & self.reversible(x, v, a, x1, v1, a1)
        return x1, v1, u1, f1, a1, self.reversible(x, v, a, x1, v1, a1)


# -------------------------------------------------------------------------- sampler

@dataclass
class ExactConfig:
    """Exact-mode sampling settings."""

    temperature_K: float = 300.0
    friction_per_ps: float = 1.0  #: Langevin friction of the O-steps (0 = none)
    metropolis: bool = True  #: the Metropolis test (False: accept every proposal, not exact)

    def validate(self) -> None:
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        if not self.friction_per_ps >= 0:
            raise ValueError(f"friction_per_ps must be >= 0, got {self.friction_per_ps}")

    @property
    def kT(self) -> float:
        """k_B T, kJ/mol."""
        return KB_KJ_PER_MOL_K * self.temperature_K


@dataclass
class ChainState:
    """State of R chains: x, v, f, a (R,N,3) nm, nm/ps, kJ/(mol nm), nm/ps; u (R,) kJ/mol.
    ``a`` is the cached first kick a(x) of the next stride."""

    x: np.ndarray
    v: np.ndarray
    u: np.ndarray
    f: np.ndarray
    a: np.ndarray


def init_chain(jumper: ShearJumper, engine: ForceEngine, x: np.ndarray, v: np.ndarray) -> ChainState:
    """Chain state at x (R,N,3) nm, v (R,N,3) nm/ps (or (N,3) for one replica): R force calls."""
    x = np.array(x, dtype=float).reshape(-1, jumper.z.shape[0], 3)
    v = np.array(v, dtype=float).reshape(x.shape)
    x, v = jumper.on_manifold(x, v)
    u, f = engine_forces(engine, x)
    return ChainState(x, v, u, f, jumper.outer_kick(x, f))


def o_step(v: np.ndarray, masses: np.ndarray, t_ps: float, friction_per_ps: float, kT: float,
           rng: np.random.Generator) -> np.ndarray:
    """The exact Ornstein-Uhlenbeck step of :func:`mdkstep.dynamics.ou_step` on (R,N,3)
    velocities; no noise is drawn when it would do nothing (NVE)."""
    if friction_per_ps == 0.0 or t_ps == 0.0:
        return v
    return ou_step(v, masses, friction_per_ps, t_ps, kT, rng)


def acceptance_probability(dH: np.ndarray, kT: float) -> np.ndarray:
    """The Metropolis acceptance probability min(1, exp(-dH/kT)) of energy errors dH (kJ/mol),
    elementwise; 0 where dH is not finite (rejected, as in :func:`metropolis_accept`)."""
    dH = np.asarray(dH, dtype=float)
    ok = np.isfinite(dH)
    return np.where(ok, np.minimum(1.0, np.exp(-np.clip(np.where(ok, dH, 0.0), -50 * kT, None) / kT)), 0.0)


def metropolis_accept(dH: np.ndarray, kT: float, rng: np.random.Generator) -> np.ndarray:
    """Accept (R,) bool with probability min(1, exp(-dH/kT)); a non-finite dH is rejected."""
    log_u = np.log(rng.uniform(size=dH.shape))
    with np.errstate(invalid="ignore"):
        return np.isfinite(dH) & (log_u < -dH / kT)


@dataclass
class StepResult:
    """One stride of R chains: the new state, accepted (R,) bool, dH = H' - H (R,) kJ/mol."""

    state: ChainState
    accepted: np.ndarray
    dH: np.ndarray


def exact_step(jumper: ShearJumper, engine: ForceEngine, state: ChainState, cfg: ExactConfig,
               rng: np.random.Generator) -> StepResult:
    """O(tau/2), the proposal Phi (one force call per replica), the test, O(tau/2).

    With constraints the O-steps are projected onto the tangent space and an irreversible
    proposal (:meth:`ShearJumper.propose_checked`) gets dH = +inf: rejected by the test."""
    m, kT, half = jumper.masses, cfg.kT, 0.5 * jumper.tau_ps
    v = jumper.tangent(state.x, o_step(state.v, m, half, cfg.friction_per_ps, kT, rng))
    x1, v1, u1, f1, a1, valid = jumper.propose_checked(engine, state.x, v, state.a)
    dH = (u1 + kinetic_energy(v1, m)) - (state.u + kinetic_energy(v, m))
    if cfg.metropolis:
        dH = np.where(valid, dH, np.inf)
    acc = metropolis_accept(dH, kT, rng) if cfg.metropolis else valid
    sel = acc[:, None, None]
    # rejection: stay at x with -v (the momentum flip that makes generalized HMC exact)
    new = ChainState(x=np.where(sel, x1, state.x), v=np.where(sel, v1, -v), u=np.where(acc, u1, state.u),
                     f=np.where(sel, f1, state.f), a=np.where(sel, a1, state.a))
    new.v = jumper.tangent(new.x, o_step(new.v, m, half, cfg.friction_per_ps, kT, rng))
    return StepResult(new, acc, dH)


@dataclass
class ExactRun:
    """Record of :func:`run_exact`: frames every ``record_every`` strides (F,R,N,3) / (F,R),
    per stride dH (S,R) kJ/mol and accepted (S,R); force calls counted by the engine."""

    positions: np.ndarray
    velocities: np.ndarray
    potential: np.ndarray
    dH: np.ndarray
    accepted: np.ndarray
    force_calls: int
    state: ChainState
    tau_ps: float
    metropolis: bool
    extra: dict = field(default_factory=dict)

    @property
    def acceptance(self) -> float:
        """Fraction of accepted proposals (1.0 without the test)."""
        return float(self.accepted.mean()) if self.accepted.size else float("nan")

    def summary(self) -> dict:
        """Plain-number summary: acceptance, |dH| quantiles (kJ/mol), force calls, calls/ps."""
        adh = np.abs(self.dH[np.isfinite(self.dH)])
        n_strides = int(self.dH.shape[0])
        sim_ps = n_strides * self.tau_ps * self.dH.shape[1]
        q = (lambda p: float(np.quantile(adh, p))) if adh.size else (lambda p: float("nan"))
        return {"tau_fs": self.tau_ps * 1000.0, "metropolis": self.metropolis, "n_strides": n_strides,
                "n_replicas": int(self.dH.shape[1]), "acceptance": self.acceptance,
                "median_abs_dH_kJ_mol": q(0.5), "p90_abs_dH_kJ_mol": q(0.9),
                "force_calls": self.force_calls,
                "force_calls_per_ps": self.force_calls / sim_ps if sim_ps else float("nan")}


def run_exact(jumper: ShearJumper, engine: ForceEngine, x0: np.ndarray, v0: np.ndarray, n_strides: int,
              cfg: ExactConfig, rng: np.random.Generator, record_every: int = 1,
              state: ChainState | None = None) -> ExactRun:
    """``n_strides`` strides of R chains from (x0, v0) (or from ``state``, no set-up call).

    Records positions, velocities and U after every ``record_every``-th stride."""
    cfg.validate()
    calls0 = engine.counters.calls
    if state is None:
        state = init_chain(jumper, engine, x0, v0)
    pos, vel, pot, dHs, accs = [], [], [], [], []
    for s in range(1, n_strides + 1):
        res = exact_step(jumper, engine, state, cfg, rng)
        state = res.state
        dHs.append(res.dH)
        accs.append(res.accepted)
        if s % record_every == 0:
            pos.append(state.x.copy())
            vel.append(state.v.copy())
            pot.append(state.u.copy())
    r, n = state.x.shape[0], state.x.shape[1]
    stack = lambda a, shape: np.stack(a) if a else np.zeros((0,) + shape)  # noqa: E731
    return ExactRun(positions=stack(pos, (r, n, 3)), velocities=stack(vel, (r, n, 3)), potential=stack(pot, (r,)),
                    dH=stack(dHs, (r,)), accepted=stack(accs, (r,)).astype(bool),
                    force_calls=engine.counters.calls - calls0, state=state, tau_ps=jumper.tau_ps,
                    metropolis=cfg.metropolis)


def nve_config(temperature_K: float = 300.0) -> ExactConfig:
    """NVE with Phi: no O-steps, no test (a reversible volume-preserving map: measure its drift)."""
    return ExactConfig(temperature_K=temperature_K, friction_per_ps=0.0, metropolis=False)
