"""Exact-mode runs through the shared chunked run loop (:func:`mdkstep.runner.run_chunked`).

The sampler is :func:`mdkstep.exact.sampler.exact_step` (O(tau/2) -> learned shear stride Phi, one
force call -> Metropolis test on H = U + K -> O(tau/2); generalized HMC: a rejected stride
keeps x, U, F and flips v). :class:`ExactStepper` is its :class:`~mdkstep.runner.Stepper`; the
files are the hybrid's: one trajectory NPZ per replica in the schema of
:mod:`mdkstep.trajectory` (``<out>`` or ``<stem>_r<i>.npz``), the resume file
``<stem>.hybrid_ckpt.npz`` (chain state, RNG state, every stride's dH and acceptance, force
calls), and statistics: acceptance, |dH| median / p90, force calls per ps counted by the
engine, and the integrated autocorrelation time of U and of the slowest dihedral with the
effective samples per force call (:mod:`mdkstep.analysis.metrics`).

Settings come from the hybrid config (:class:`~mdkstep.hybrid.config.HybridConfig`):
temperature_K, friction_per_ps (Langevin O-steps), metropolis, ensemble (nve: no O-steps and
no test, Phi alone), save_interval_cycles (strides per frame), chunk_frames; the jump
model's keys (corrector, guards, energy filter, ...) do not apply. Constrained systems (MM,
HBonds) run the RATTLE-projected map (mdkstep.constraints). Units: nm, nm/ps, kJ/mol, ps, K.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mdkstep.analysis.metrics import (
    effective_samples_per_force_call,
    iat_reliable,
    integrated_autocorr_time,
    slowest_dihedral_iat,
)
from mdkstep.dynamics import kinetic_energy, n_dof
from mdkstep.engines.base import ForceEngine
from mdkstep.exact.sampler import ChainState, ExactConfig, ShearJumper, exact_step, init_chain, nve_config
from mdkstep.hybrid.run import checkpoint_path, replica_paths
from mdkstep.model.shear import n_forwards_per_stride
from mdkstep.runner import content_hash, lock_path_for, pack_json, run_chunked, unpack_json
from mdkstep.trajectory import ChunkedTrajectoryWriter, load_trajectory, make_metadata
from mdkstep.utils import KB_KJ_PER_MOL_K, MdkstepError

CHAIN_KEYS = ("x", "v", "u", "f", "a")


def check_constraints(engine: ForceEngine, jumper: ShearJumper) -> None:
    """The jumper must project onto the engine's constraints: a one-line error otherwise."""
    if jumper.n_constraints != engine.n_constraints:
        raise MdkstepError(f"exact mode: {engine.name} has {engine.n_constraints} constraints but the shear jumper "
                           f"projects onto {jumper.n_constraints} (build it with ShearJumper.for_engine)")


def exact_config(hcfg) -> ExactConfig:
    """The sampler's settings from a resolved hybrid config: NVT = Langevin O-steps with its
    friction and the Metropolis test if ``metropolis``; NVE = Phi alone (no O-step, no test)."""
    if hcfg.ensemble == "nve":
        return nve_config(hcfg.temperature_K)
    if hcfg.thermostat != "langevin":
        raise MdkstepError(f"exact mode thermalizes with Langevin O-steps; thermostat {hcfg.thermostat!r} is not "
                           "supported (set thermostat: langevin)")
    return ExactConfig(temperature_K=float(hcfg.temperature_K), friction_per_ps=float(hcfg.friction_per_ps),
                       metropolis=bool(hcfg.metropolis))


class ExactStepper:
    """The :class:`~mdkstep.runner.Stepper` of R exact-mode chains: a frame every
    ``strides_per_frame`` strides per replica; state = the chain state, the RNG state, the
    per-stride dH (kJ/mol) and acceptance so far, and the cumulative force calls / wall time."""

    def __init__(self, jumper: ShearJumper, engine: ForceEngine, cfg: ExactConfig, rng: np.random.Generator,
                 x0: np.ndarray, v0: np.ndarray, strides_per_frame: int, writers: Sequence[ChunkedTrajectoryWriter],
                 meta_base: dict[str, Any]):
        self.jumper, self.engine, self.cfg, self.rng = jumper, engine, cfg, rng
        self.x0, self.v0 = x0, v0
        self.every = int(strides_per_frame)
        self.writers, self.meta_base = writers, meta_base
        self.state: ChainState | None = None
        self.dH: list[np.ndarray] = []
        self.accepted: list[np.ndarray] = []
        self.calls_before, self.wall_before = 0, 0.0
        # per-atom O-steps thermalize the COM too
        self.dof = n_dof(len(jumper.masses), jumper.n_constraints, com_removed=False)
        self._mark()

    def _mark(self) -> None:
        self.calls0, self.t0 = self.engine.counters.calls, time.perf_counter()

    @property
    def force_calls(self) -> int:
        """Force calls of the whole run so far (all sessions, setup included), engine-counted."""
        return self.calls_before + self.engine.counters.calls - self.calls0

    @property
    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def start(self) -> None:
        self.state = init_chain(self.jumper, self.engine, self.x0, self.v0)

    def frames(self, stride_index: int) -> list[dict[str, np.ndarray]]:
        """The current state of every replica as one trajectory frame (schema units)."""
        st, m = self.state, self.jumper.masses
        ke = kinetic_energy(st.v, m)
        t = stride_index * self.jumper.tau_ps
        return [{"positions": st.x[r].copy(), "velocities": st.v[r].copy(), "forces": st.f[r].copy(),
                 "energies": np.float64(st.u[r]), "kinetic": np.float64(ke[r]),
                 "temperature": np.float64(2.0 * ke[r] / (self.dof * KB_KJ_PER_MOL_K)), "time_ps": np.float64(t)}
                for r in range(st.x.shape[0])]

    def advance(self, first_frame: int, n_frames: int) -> list[dict[str, np.ndarray]]:
        out: list[list[dict[str, np.ndarray]]] = [[] for _ in range(self.state.x.shape[0])]
        for fr in range(first_frame, first_frame + n_frames):
            for _ in range(self.every):
                res = exact_step(self.jumper, self.engine, self.state, self.cfg, self.rng)
                self.state = res.state
                self.dH.append(res.dH)
                self.accepted.append(res.accepted)
            for r, frame in enumerate(self.frames((fr + 1) * self.every)):
                if not all(np.all(np.isfinite(a)) for a in frame.values()):
                    raise MdkstepError(f"{self.writers[r].out_path}: non-finite state at stride "
                                       f"{(fr + 1) * self.every}; not written")
                out[r].append(frame)
        return [{k: np.stack([f[k] for f in fs]) for k in fs[0]} for fs in out]

    def get_state(self) -> dict[str, np.ndarray]:
        st = {f"chain_{k}": np.asarray(getattr(self.state, k)) for k in CHAIN_KEYS}
        n_rep = self.state.x.shape[0]
        st["dH"] = np.stack(self.dH) if self.dH else np.zeros((0, n_rep))
        st["accepted"] = np.stack(self.accepted) if self.accepted else np.zeros((0, n_rep), dtype=bool)
        st["info"] = pack_json({"rng": self.rng.bit_generator.state, "force_calls": self.force_calls,
                                "wall_seconds": self.wall_seconds, "metadata": self.meta_base})
        return st

    def set_state(self, state) -> None:
        try:
            self.state = ChainState(**{k: np.array(state[f"chain_{k}"], dtype=float) for k in CHAIN_KEYS})
            info = unpack_json(state["info"])
            self.rng.bit_generator.state = info["rng"]
            self.dH = list(np.asarray(state["dH"], dtype=float))
            self.accepted = list(np.asarray(state["accepted"], dtype=bool))
        except (KeyError, TypeError, ValueError) as e:
            raise MdkstepError(f"exact-mode resume state is damaged ({type(e).__name__}: {e}); delete it to start "
                               "over") from None
        self.calls_before, self.wall_before = int(info["force_calls"]), float(info["wall_seconds"])
        self._mark()
        self.meta_base = info.get("metadata", self.meta_base)
        for r, w in enumerate(self.writers):
            w.metadata = {**self.meta_base, "replica": r}


def run_exact_chunked(engine: ForceEngine, jumper: ShearJumper, hcfg, x0: np.ndarray, v0: np.ndarray,
                      n_strides: int, out_path: str | Path, rng: np.random.Generator, resume: bool = True, *,
                      metadata: dict[str, Any] | None = None, dihedrals: np.ndarray | None = None,
                      progress: bool = False, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) ``n_strides`` exact-mode strides of R replicas and write one NPZ per replica.

    hcfg: a resolved :class:`~mdkstep.hybrid.config.HybridConfig` (k, dt_fs, temperature_K set;
    tau = k dt must equal the jumper's); x0, v0 (N,3) or (R,N,3) nm, nm/ps; n_strides rounded
    down to whole frames of ``save_interval_cycles`` strides; rng: O-step and Metropolis noise
    (checkpointed); dihedrals (D,4) for the slowest-dihedral efficiency figure; fingerprint:
    more facts defining the run (the model checkpoint's hash), compared on resume.
    Returns the statistics (see :func:`exact_stats`)."""

    check_constraints(engine, jumper)
    hcfg.validate()
    cfg = exact_config(hcfg)
    cfg.validate()
    if abs(hcfg.k * hcfg.dt_ps - jumper.tau_ps) > 1e-12:
        raise MdkstepError(f"exact mode: k*dt = {hcfg.k * hcfg.dt_fs} fs differs from the model's stride "
                           f"{jumper.tau_ps * 1000} fs")
    x0 = np.asarray(x0, dtype=float).reshape(-1, len(jumper.masses), 3)
    n_rep, every = x0.shape[0], hcfg.save_interval_cycles
    n_frames = int(n_strides) // every
    if n_frames < 1:
        raise MdkstepError(f"{n_strides} strides give no frame at save_interval_cycles = {every}")
    paths, ckpt = replica_paths(out_path, n_rep), checkpoint_path(out_path)
    fp = {"exact": asdict(cfg), "hybrid": asdict(hcfg), "n_strides": n_frames * every, "n_replicas": n_rep,
          "tau_ps": jumper.tau_ps, "engine": engine.name, "n_forwards": n_forwards_per_stride(jumper.kicks),
          "atoms_sha": content_hash(np.asarray(engine.atomic_numbers), np.asarray(engine.masses, dtype=float)),
          "rng_start_sha": content_hash(rng.bit_generator.state), **(fingerprint or {})}
    meta_base = make_metadata(**{**dict(
        dt_fs=hcfg.dt_fs, save_interval=every * hcfg.k, engine=engine.describe().get("engine", engine.name),
        method="exact_shear" + ("_metropolis" if cfg.metropolis else ""), temperature_K=cfg.temperature_K,
        friction=cfg.friction_per_ps, seed=None, molecule="unknown", smiles=None,
        constraints="hbonds" if engine.n_constraints else "none", ensemble=hcfg.ensemble,
        thermostat="langevin" if cfg.friction_per_ps else "none", n_constraints=engine.n_constraints,
        k=hcfg.k, steps_per_cycle=hcfg.k, cycle_ps=jumper.tau_ps, n_replicas=n_rep, metropolis=cfg.metropolis,
        n_inner=jumper.kicks.n_inner, hybrid=asdict(hcfg), engine_info=engine.describe()), **(metadata or {})})
    static = {"atom_types": np.asarray(engine.atomic_numbers), "masses": np.asarray(engine.masses, dtype=float)}
    writers = [ChunkedTrajectoryWriter(p, static, {**meta_base, "replica": r}) for r, p in enumerate(paths)]
    stepper = ExactStepper(jumper, engine, cfg, rng, x0, v0, every, writers, meta_base)
    run_chunked(stepper, writers, n_frames=n_frames, chunk_frames=hcfg.chunk_frames, state_path=ckpt,
                fingerprint=fp, lock_path=lock_path_for(out_path), resume=resume,
                restart_hint=f"delete {ckpt} (or pass --overwrite) to start over",
                label=f"exact k={hcfg.k}", progress=progress, progress_unit=("stride", every))
    return exact_stats(stepper, engine, hcfg, cfg, paths, dihedrals)


def exact_stats(stepper: ExactStepper, engine: ForceEngine, hcfg, cfg: ExactConfig, paths: Sequence[Path],
                dihedrals: np.ndarray | None = None) -> dict[str, Any]:
    """Statistics of a finished exact run: acceptance, |dH| median / p90 (kJ/mol), force calls
    and calls/ps (engine-counted, setup included, all replicas), wall s/ps, temperature, and
    tau_int (frames) of U and of the slowest dihedral with the effective samples per force call
    (n_frames R / (tau_int force calls)), read back from the written trajectories."""

    dH, acc = np.stack(stepper.dH), np.stack(stepper.accepted)
    n_strides, n_rep = dH.shape
    tau = stepper.jumper.tau_ps
    total_ps = n_strides * tau * n_rep
    adh = np.abs(dH[np.isfinite(dH)])
    trajs = [load_trajectory(p) for p in paths]
    u = np.stack([t.energies for t in trajs], axis=1)  # (F, R)
    temp = np.stack([t.temperature for t in trajs], axis=1)
    n_frames = u.shape[0]
    calls = stepper.force_calls
    tau_u = integrated_autocorr_time(u)
    out: dict[str, Any] = {
        "mode": "exact", "outputs": [str(p) for p in paths], "n_replicas": n_rep, "n_strides": n_strides,
        "n_frames": n_frames, "k": hcfg.k, "dt_fs": hcfg.dt_fs, "tau_fs": tau * 1000.0, "ensemble": hcfg.ensemble,
        "metropolis": cfg.metropolis, "friction_per_ps": cfg.friction_per_ps,
        "n_inner": stepper.jumper.kicks.n_inner, "model_forwards_per_stride": n_forwards_per_stride(stepper.jumper.kicks),
        "simulated_ps": n_strides * tau, "simulated_ps_total": total_ps,
        "acceptance": float(acc.mean()), "jumps_attempted": int(acc.size), "jumps_accepted": int(acc.sum()),
        "median_abs_dH_kJ_mol": float(np.median(adh)) if adh.size else None,
        "p90_abs_dH_kJ_mol": float(np.quantile(adh, 0.9)) if adh.size else None,
        "nonfinite_dH": int((~np.isfinite(dH)).sum()),
        "force_calls": calls, "force_calls_source": engine.counters.source,
        "force_calls_per_ps": calls / total_ps if total_ps else None,
        "wall_seconds": stepper.wall_seconds, "wall_seconds_per_ps": stepper.wall_seconds / total_ps,
        "temperature_mean_K": float(temp.mean()), "temperature_std_K": float(temp.std()),
        "frame_interval_ps": tau * stepper.every,
        "tau_int_U_frames": tau_u, "tau_int_U_reliable": iat_reliable(tau_u, n_frames),
        "ess_per_force_call_U": effective_samples_per_force_call(n_frames * n_rep, tau_u, calls),
    }
    if dihedrals is not None and len(np.asarray(dihedrals).reshape(-1, 4)):
        pos = np.stack([t.positions for t in trajs], axis=1)
        tau_d, idx = slowest_dihedral_iat(pos, dihedrals)
        out.update({"tau_int_slowest_dihedral_frames": tau_d,
                    "slowest_dihedral": np.asarray(dihedrals).reshape(-1, 4)[idx].tolist(),
                    "tau_int_slowest_dihedral_reliable": iat_reliable(tau_d, n_frames),
                    "ess_per_force_call_slowest_dihedral": effective_samples_per_force_call(n_frames * n_rep, tau_d,
                                                                                           calls)})
    return out


__all__ = ["ExactStepper", "run_exact_chunked", "exact_stats", "exact_config", "check_constraints"]
