"""The learned methods of the benchmark behind one interface: the direct-jump hybrid
(``hybrid_k<K>``, a jump model + one corrector force call per jump) and exact mode
(``exact_k<K>``: a learned shear stride inside generalized HMC; ``mvv_<dt>fs``: the same
sampler with delta = 0, i.e. Metropolized velocity Verlet at that stride, its honest peer).

Each :class:`LearnedMethod` runs the NVT production (cached, resumable), an NVE segment from
the same start, a timer for the interleaved timing, and the record fields that only it
knows (force calls, acceptance, model ms per jump). Exact mode's bath is Langevin at the
plain methods' friction (``mode.thermostat()``): the sampler is then the reference's
Langevin dynamics with a Metropolis-corrected long stride, and its VACF is comparable.
Exact mode on a constrained system (MM, HBonds) runs the RATTLE-projected shear map
(mdkstep.constraints). Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mdkstep.baselines.plain import Segment
from mdkstep.bench.core import (
    cached_stats,
    hybrid_config,
    hybrid_nve,
    hybrid_timer,
    load_jumper,
    run_fingerprint,
    run_hybrid_production,
)
from mdkstep.dynamics import kinetic_energy
from mdkstep.exact.run import exact_config, run_exact_chunked
from mdkstep.exact.sampler import ShearJumper, exact_step, init_chain, nve_config
from mdkstep.hybrid import StrideSchedule, permutation_orders
from mdkstep.hybrid.domain import domain_signs
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint
from mdkstep.model.shear import untrained_shear_kicks
from mdkstep.pipeline.mode import Method
from mdkstep.utils import LOG, MdkstepError, atomic_write_json


def production_calls_per_ps(calls: int, st: dict[str, Any]) -> float | None:
    """Force calls per simulated ps of a learned run without its start-up call(s) (F(x0) per
    replica): the plain rows count their production steps only (plain_calls), so both sides of a
    ratio count the same thing; the setup calls stay in ``force_calls`` / ``force_calls_setup``."""
    total_ps = st.get("simulated_ps_total") or st["simulated_ps"] * st.get("n_replicas", 1)
    return calls / total_ps if total_ps else None


class HybridMethod:
    """``hybrid_k<K>``: the direct-jump hybrid (mdkstep.hybrid) with one checkpoint, or
    ``hybrid_k<K1>+<K2>...``: a stride schedule (``orders`` [[(k_i, checkpoint_i), ...]], used in
    turn, one force call each; method.k = sum k_i), or ``hybrid_k8+10,9+9,10+8``: one of several
    such orders of equal sum drawn per cycle."""

    kind = "hybrid"

    def __init__(self, mode, mol: str, method: Method, checkpoint: Path | None, bonds: np.ndarray, hcfg_path: str,
                 overrides: dict[str, Any], temperature_K: float,
                 orders: list[list[tuple[int, Path]]] | None = None):
        self.mode, self.mol, self.method, self.checkpoint, self.bonds = mode, mol, method, checkpoint, bonds
        self.orders = orders or []  #: a schedule's orders (one, or several drawn per cycle)
        k, dt = method.k, method.dt_fs
        self.hcfg = hybrid_config(hcfg_path, overrides, k, dt, temperature_K)
        self.hcfg_nve = hybrid_config(hcfg_path, overrides, k, dt, temperature_K, ensemble="nve", energy_filter=False)
        self.timing_jumper = None
        self.seed_offset = 2000 if orders else 0  #: schedules draw their own seeds (hybrid_k<K>'s stay as before)

    def _jumper(self, engine):
        if self.orders:
            jumpers = {k: load_jumper(ck, engine, self.bonds, k, self.method.dt_fs)
                       for k, ck in sorted({kc for o in self.orders for kc in o})}
            orders = [[(jumpers[k], k) for k, _ in o] for o in self.orders]
            return StrideSchedule(orders[0], alternatives=orders[1:])
        return load_jumper(self.checkpoint, engine, self.bonds, self.method.k, self.method.dt_fs)

    def production(self, x0: np.ndarray, v0: np.ndarray, time_ps: float, out: Path, seed: int,
                   meta: dict[str, Any]) -> dict[str, Any]:
        engine = self.mode.engine(self.mol)
        cks = [ck for o in self.orders for _, ck in o] if self.orders else self.checkpoint
        return run_hybrid_production(engine, self._jumper(engine), self.hcfg, x0, v0, time_ps, out, seed, meta,
                                     run_fingerprint(cks, self.hcfg, time_ps, seed))

    def nve(self, x0: np.ndarray, v0: np.ndarray, time_ps: float) -> Segment:
        engine = self.mode.engine(self.mol)
        return hybrid_nve(engine, self._jumper(engine), self.hcfg_nve, x0, v0, time_ps)

    def timer(self, x0: np.ndarray, v0: np.ndarray, time_ps: float, seed: int) -> Callable[[], Segment]:
        engine = self.mode.engine(self.mol)
        self.timing_jumper = self._jumper(engine)
        return hybrid_timer(engine, self.timing_jumper, self.hcfg, x0, v0, time_ps, seed)

    def record(self, st: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
        att = st["jumps_attempted"]
        return {"force_calls": st["force_calls"], "force_calls_setup": st["force_calls_setup"],
                "force_calls_per_ps": production_calls_per_ps(st["force_calls"] - st["force_calls_setup"], st),
                "force_calls_source": "engine_counter",
                "model_ms_per_jump": float(np.median(self.timing_jumper.ms)) if getattr(self.timing_jumper, "ms", None)
                else None,
                "jumps_attempted": att, "jumps_accepted": st["jumps_accepted"], "retries": st["retries"],
                "fallbacks": st["fallbacks"], "fallback_fraction": st["fallbacks"] / att if att else None,
                "filter_ke_change_mean": st.get("filter_ke_change_mean"),  # None: a run cached before it was kept
                "out_of_domain": domain_signs(st, self.hcfg.temperature_K),
                "acceptance": None, "nan_frames": st["nan_frames"] + rec["nan_frames"],
                "temperature_per_element_K": st.get("temperature_per_element_K") or rec["temperature_per_element_K"]}


class ExactMethod:
    """``exact_k<K>`` (a shear checkpoint) or ``mvv_<dt>fs`` (checkpoint None: delta = 0)."""

    kind = "exact"

    def __init__(self, mode, mol: str, method: Method, checkpoint: Path | None, bonds: np.ndarray,
                 hcfg_path: str, overrides: dict[str, Any], temperature_K: float, friction_per_ps: float):
        self.mode, self.mol, self.method, self.checkpoint, self.bonds = mode, mol, method, checkpoint, bonds
        over = {**overrides, "friction_per_ps": friction_per_ps, "metropolis": True, "thermostat": "langevin"}
        self.hcfg = hybrid_config(hcfg_path, over, method.k, method.dt_fs, temperature_K)
        self.ms: list[float] = []

    def _jumper(self, engine):
        import torch

        if self.checkpoint is None:
            kicks = untrained_shear_kicks()
        else:
            kicks, ck = model_from_checkpoint(self.checkpoint, dtype=torch.float64)
            check_compatible(ck, str(self.checkpoint), k=self.method.k, atom_types=set(map(int, engine.atomic_numbers)))
            if abs(float(ck["dt_fs"]) - self.method.dt_fs) > 1e-9:
                raise MdkstepError(f"{self.checkpoint}: trained at dt_fs={ck['dt_fs']}, the benchmark runs "
                                   f"{self.method.dt_fs}")
        return ShearJumper.for_engine(kicks, engine, self.bonds, self.method.k * self.method.dt_fs / 1000.0)

    def production(self, x0: np.ndarray, v0: np.ndarray, time_ps: float, out: Path, seed: int,
                   meta: dict[str, Any]) -> dict[str, Any]:

        fp = run_fingerprint(self.checkpoint, self.hcfg, time_ps, seed)
        stats = cached_stats(out, fp)
        if stats is not None:
            return stats
        engine = self.mode.engine(self.mol)
        jumper = self._jumper(engine)
        n_strides = max(self.hcfg.save_interval_cycles, int(round(time_ps / jumper.tau_ps)))
        stats = run_exact_chunked(engine, jumper, self.hcfg, x0, v0, n_strides, out, np.random.default_rng(seed),
                                  resume=True, metadata=meta, progress=True)
        stats["bench_fingerprint"] = fp
        atomic_write_json(out.with_suffix(".stats.json"), stats)
        return stats

    def nve(self, x0: np.ndarray, v0: np.ndarray, time_ps: float) -> Segment:
        """Phi alone (no O-step, no test): U + K after every stride; a non-finite energy ends it."""

        engine = self.mode.engine(self.mol)
        jumper = self._jumper(engine)
        cfg, rng = nve_config(self.hcfg.temperature_K), np.random.default_rng(0)
        span = engine.counters.span()
        state = init_chain(jumper, engine, x0, v0)
        n = max(3, int(round(time_ps / jumper.tau_ps)))
        seg = Segment(self.method.dt_fs, 0, 0.0, 0, 0.0, force_calls_source=span.source)
        for i in range(n):
            state = exact_step(jumper, engine, state, cfg, rng).state
            ke = float(kinetic_energy(state.v, jumper.masses)[0])
            e = float(state.u[0]) + ke
            if not np.isfinite(e):
                seg.stable = False
                break
            seg.energies.append(e)
            seg.kinetic.append(ke)
            seg.times_ps.append((i + 1) * jumper.tau_ps)
            seg.steps += self.method.k
        span.close()
        seg.wall_s, seg.force_calls, seg.force_seconds = span.wall_s, span.calls, span.seconds
        seg.simulated_ps = seg.steps * self.method.dt_fs / 1000.0
        return seg

    def timer(self, x0: np.ndarray, v0: np.ndarray, time_ps: float, seed: int) -> Callable[[], Segment]:
        """Advances one NVT chain by ``time_ps`` per call; records the non-force ms per stride
        (model forwards, O-steps, test) in ``self.ms``."""

        engine = self.mode.engine(self.mol)
        jumper = self._jumper(engine)
        cfg, rng = exact_config(self.hcfg), np.random.default_rng(seed)
        state = {"chain": init_chain(jumper, engine, x0, v0)}
        n = max(1, int(round(time_ps / jumper.tau_ps)))

        def segment() -> Segment:
            with engine.counters.span() as span:
                for _ in range(n):
                    state["chain"] = exact_step(jumper, engine, state["chain"], cfg, rng).state
            self.ms.append(1000.0 * (span.wall_s - span.seconds) / n)
            steps = n * self.method.k
            return Segment(self.method.dt_fs, steps, steps * self.method.dt_fs / 1000.0, span.calls, span.wall_s,
                           force_seconds=span.seconds, force_calls_source=span.source)

        return segment

    def record(self, st: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
        setup = st["n_replicas"]  # init_chain: U, F at x0, one call per replica
        return {"force_calls": st["force_calls"], "force_calls_setup": setup,
                "force_calls_per_ps": production_calls_per_ps(st["force_calls"] - setup, st),
                "force_calls_source": st["force_calls_source"],
                "model_ms_per_jump": float(np.median(self.ms)) if self.ms else None,
                "jumps_attempted": st["jumps_attempted"], "jumps_accepted": st["jumps_accepted"], "retries": 0,
                "fallbacks": 0, "fallback_fraction": 0.0, "acceptance": st["acceptance"],
                "filter_ke_change_mean": None, "out_of_domain": None,
                "nan_frames": rec["nan_frames"]}


def learned_methods(mode, mol: str, ref: Method, settings: dict[str, Any], checkpoints: dict[int, Path],
                    exact_checkpoints: dict[str, tuple[int, Path | None]], bonds: np.ndarray) -> list:
    """Every learned method of one molecule: a hybrid per jump-model checkpoint (by k, unless
    ``fixed_k_rows`` is false; the
    hybrid config with ``hybrid_overrides`` and that k's ``hybrid_overrides_by_k``), a hybrid
    per stride schedule (``schedules``: lists of those k, with ``hybrid_overrides`` and
    ``schedule_hybrid_overrides``), then
    exact mode per shear checkpoint and Metropolized Verlet per ``mvv_dts_fs`` (name -> (k,
    checkpoint or None))."""
    temperature, friction = mode.thermostat()
    out: list = []
    by_k = settings.get("hybrid_overrides_by_k") or {}
    fixed = settings.get("fixed_k_rows", True)
    for k, ck in checkpoints.items() if fixed is True else [(k, checkpoints[k]) for k in (fixed or []) if k in checkpoints]:
        m = Method(f"hybrid_k{k}", "hybrid", ref.dt_fs, k=k, note=f"model {ck}")
        over = {**settings["hybrid_overrides"], **(by_k.get(str(k)) or by_k.get(k) or {})}
        out.append(HybridMethod(mode, mol, m, ck, bonds, settings["hybrid_config"], over, temperature))
    for sched in settings.get("schedules") or []:
        orders = schedule_orders(sched)
        note = (f"stride schedule {sched}, models k = {sched} in turn" if len(orders) == 1 else
                f"stride schedule: one of the orders {sched} drawn per cycle")
        m = Method(schedule_name(sched), "hybrid", ref.dt_fs, k=sum(orders[0]), note=note)
        over = {**settings["hybrid_overrides"], **(settings.get("schedule_hybrid_overrides") or {})}
        out.append(HybridMethod(mode, mol, m, None, bonds, settings["hybrid_config"], over,
                                temperature, orders=[[(k, checkpoints[k]) for k in o] for o in orders]))
    for name, (k, ck) in exact_checkpoints.items():
        note = f"exact mode, shear model {ck}" if ck else f"Metropolized velocity Verlet at {k * ref.dt_fs:g} fs"
        m = Method(name, "exact", ref.dt_fs, k=k, note=note)
        out.append(ExactMethod(mode, mol, m, ck, bonds, settings["hybrid_config"], settings["hybrid_overrides"],
                               temperature, friction))
    return out


def schedule_orders(sched: list | dict) -> list[list[int]]:
    """The orders of a bench stride schedule: [4, 12] -> [[4, 12]]; [[8, 10], [9, 9]] as given;
    {permutations: [4, 10, 12]} -> every order of those k (mdkstep.hybrid.permutation_orders)."""
    if isinstance(sched, dict):
        return permutation_orders(sched["permutations"])
    return [[int(k) for k in o] for o in sched] if sched and isinstance(sched[0], list) else [[int(k) for k in sched]]


#: a schedule row's name (also its files' stem) longer than this is shortened (file names: <= 255 bytes)
MAX_SCHEDULE_NAME = 100


def schedule_name(sched: list | dict) -> str:
    """Row name of a stride schedule: hybrid_k4+12, or hybrid_k8+10,9+9,10+8 for orders drawn per cycle.
    A name longer than MAX_SCHEDULE_NAME becomes hybrid_k<first order, sorted>,...<n>orders-<crc32> (every
    permutation of one order: hybrid_k<sorted order>,allperms)."""
    import itertools
    import zlib

    orders = schedule_orders(sched)
    name = "hybrid_k" + ",".join("+".join(str(k) for k in o) for o in orders)
    if len(name) <= MAX_SCHEDULE_NAME:
        return name
    first = "+".join(str(k) for k in sorted(orders[0]))
    if sorted(map(tuple, orders)) == sorted(set(itertools.permutations(sorted(orders[0])))):
        return f"hybrid_k{first},allperms"
    return f"hybrid_k{first},...{len(orders)}orders-{zlib.crc32(name.encode()):08x}"


def exact_method_names(mvv_dts_fs: list[float], exact_ks: list[int], ref_dt_fs: float) -> dict[str, int]:
    """Method name -> k of the exact-mode rows: ``mvv_<dt>fs`` then ``exact_k<K>``; a stride that
    is not a whole number of reference steps is a one-line error."""
    names: dict[str, int] = {}
    for dt in mvv_dts_fs:
        k = int(round(dt / ref_dt_fs))
        if k < 1 or abs(k * ref_dt_fs - dt) > 1e-9:
            raise MdkstepError(f"mvv_dts_fs: {dt} fs is not a whole number of {ref_dt_fs} fs reference steps")
        names[f"mvv_{dt:g}fs"] = k
    for k in exact_ks:
        names[f"exact_k{k}"] = int(k)
    LOG.debug("exact-mode rows: %s", names)
    return names

