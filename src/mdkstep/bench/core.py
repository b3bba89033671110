"""Engine-agnostic pieces of the benchmark: the method list, the mode interface, hybrid runs
(production, NVE, timing), model training, and one method's fidelity record.

Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..evaluation import FIDELITY_KEYS, replica_floor
from ..metrics import compare, summarize_trajectory
from ..plain import Segment
from ..trajectory import Trajectory
from ..utils import LOG, MdkstepError, atomic_write_json

#: Distances that decide "faithful" (structure). VACF is reported beside them but does not
#: decide: hydrogen mass repartitioning changes the dynamics on purpose, not the ensemble.
STRUCTURE_KEYS = ("bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1")


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


# ------------------------------------------------------------------------------- models

def ensure_model(mode_name: str, k: int, dataset_trajs: list[Path], out: Path, model_cfg_path: str,
                 model_over: dict[str, Any], train_cfg_path: str, train_over: dict[str, Any],
                 given: str | None, raw_root: Path | None = None,
                 pretrained: Path | None = None, allow_k_change: bool = False) -> tuple[Path, dict[str, Any]]:
    """The checkpoint for jump length k: ``given`` when set (must exist), else trained now into
    ``out`` (dataset of ``dataset_trajs``, time split; initialized from ``pretrained`` when set,
    a checkpoint of another k only with ``allow_k_change``)
    unless ``out/best.pt`` already exists. Returns the checkpoint path and the one-jump test
    metrics (model vs no-move)."""
    from ..config import load_config
    from ..dataset import build_dataset, write_split_files
    from ..model import ModelConfig
    from ..training import TrainConfig, train

    if given:
        ck = Path(given)
        if not ck.is_file():
            raise MdkstepError(f"{mode_name}_checkpoints: {ck} (k={k}) not found; remove the entry to train one here")
        return ck, {}
    best, final = out / "best.pt", out / "final_metrics.json"
    if best.is_file() and final.is_file():
        LOG.info("%s k=%d: using the trained %s", mode_name, k, best)
        return best, json.loads(final.read_text())
    ds_file, splits = out / "dataset.npz", out / "splits"
    summary = build_dataset(dataset_trajs, k, ds_file, split="time", raw_root=raw_root)
    write_split_files(splits, summary, [str(ds_file)])
    mcfg = load_config(ModelConfig, model_cfg_path, model_over)
    tcfg = load_config(TrainConfig, train_cfg_path, {**train_over, "k": k})
    LOG.info("%s k=%d: training on %d windows (%s, %s)", mode_name, k, summary["counts"]["train"],
             model_cfg_path, train_cfg_path)
    t0 = time.perf_counter()
    res = train(ds_file, (splits / "train.json", splits / "val.json"), mcfg, tcfg, out,
                resume=(out / "last.pt").is_file(), pretrained=pretrained, test_split=splits / "test.json",
                progress=True, allow_k_change=allow_k_change)
    record_training_cost(out, time.perf_counter() - t0, res)
    return best, json.loads(final.read_text()) if final.is_file() else res.get("final_metrics", {})


def ensure_exact_model(mode_name: str, k: int, dataset_trajs: list[Path], out: Path, model_cfg_path: str,
                       train_cfg_path: str, train_over: dict[str, Any], given: str | None) -> tuple[Path, dict[str, Any]]:
    """Exact mode's shear checkpoint for stride k: ``given`` when set (must exist), else trained
    now into ``out`` (mdkstep.exact_training on a time-split dataset of ``dataset_trajs``) unless
    ``out/best.pt`` exists. Returns it and the teacher-forced |dH| (kJ/mol) before / after
    training on the test split (else val); {} for a given checkpoint."""
    from ..config import load_config
    from ..dataset import build_dataset, write_split_files
    from ..exact_training import ExactTrainConfig, train_shear
    from ..model import ModelConfig

    if given:
        ck = Path(given)
        if not ck.is_file():
            raise MdkstepError(f"{mode_name}_exact_checkpoints: {ck} (k={k}) not found; remove the entry to train one here")
        return ck, {}
    best, final = out / "best.pt", out / "final_metrics.json"
    if not (best.is_file() and final.is_file()):
        ds_file, splits = out / "dataset.npz", out / "splits"
        summary = build_dataset(dataset_trajs, k, ds_file, split="time")
        write_split_files(splits, summary, [str(ds_file)])
        mcfg = load_config(ModelConfig, model_cfg_path)
        tcfg = load_config(ExactTrainConfig, train_cfg_path, {**train_over, "k": k})
        LOG.info("%s exact k=%d: training shear kicks on %d windows (%s, %s)", mode_name, k,
                 summary["counts"]["train"], model_cfg_path, train_cfg_path)
        t0 = time.perf_counter()
        res = train_shear(ds_file, (splits / "train.json", splits / "val.json"), mcfg, tcfg, out,
                          overwrite=out.exists(), test_split=splits / "test.json")
        record_training_cost(out, time.perf_counter() - t0, res)
    return best, teacher_forced_summary(json.loads(final.read_text()))


def teacher_forced_summary(final: dict[str, Any]) -> dict[str, Any]:
    """{split, before, after}: a shear model's teacher-forced |dH| (median, p90 kJ/mol) on the
    test split (else val) before and after training, from its final_metrics.json."""
    after = final.get("teacher_forced_after") or {}
    split = "test" if "test" in after else "val"
    return {"split": split, "before": (final.get("teacher_forced_before") or {}).get(split),
            "after": after.get(split)}


def record_training_cost(out: Path, wall_s: float, summary: dict[str, Any]) -> dict[str, Any]:
    """Add this training session's wall time (s) to ``out/train_cost.json`` (sessions of a
    resumed run add up); returns the record {wall_s, steps, sessions}."""
    path = out / "train_cost.json"
    prev = json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0, "sessions": 0}
    rec = {"wall_s": float(prev["wall_s"]) + float(wall_s), "steps": summary.get("steps"),
           "sessions": int(prev["sessions"]) + 1}
    atomic_write_json(path, rec)
    return rec


def training_cost(model_dir: Path) -> dict[str, Any] | None:
    """``model_dir/train_cost.json`` (training wall s, steps) or None when it was not recorded."""
    path = model_dir / "train_cost.json"
    return json.loads(path.read_text()) if path.is_file() else None


def training_run(mode: "Mode", mol: str, seed: int, out: Path, time_ps: float) -> Path:
    """The training trajectory of ``mol`` (reference step, forces saved; resumable, skipped
    when done) with its cost in ``<out>.cost.json``: wall s of the session(s) that ran it and
    the force calls the run's stats count (production plus setup: QM ``force_calls_total``, the
    engine's counter; MM production + equilibration integrator steps)."""
    cost_path = out.with_suffix(".cost.json")
    ran = not out.is_file()
    t0 = time.perf_counter()
    mode.run_plain(mol, mode.reference(), seed, out, time_ps, training=True)
    if ran or not cost_path.is_file():
        st_path = out.with_suffix(".stats.json")
        st = json.loads(st_path.read_text()) if st_path.is_file() else {}
        calls = st.get("force_calls_total")
        source = "engine_counter" if calls is not None else st.get("force_calls_source")
        if calls is None and st.get("force_calls") is not None:
            calls = int(st["force_calls"]) + int(st.get("force_calls_equilibration", 0))
        atomic_write_json(cost_path, {"wall_s": time.perf_counter() - t0 if ran else None, "force_calls": calls,
                                      "force_calls_source": source, "simulated_ps": time_ps, "seed": seed,
                                      "dt_fs": mode.reference().dt_fs})
    return out


def data_cost(train_runs: list[Path]) -> dict[str, Any]:
    """Force calls and wall s of the training trajectories (their ``.cost.json``); a wall
    time that was not recorded (a run made before costs were kept) makes the total None."""
    calls, wall = 0, 0.0
    for run in train_runs:
        path = run.with_suffix(".cost.json")
        c = json.loads(path.read_text()) if path.is_file() else {}
        calls = None if calls is None or c.get("force_calls") is None else calls + int(c["force_calls"])
        wall = None if wall is None or c.get("wall_s") is None else wall + float(c["wall_s"])
    return {"force_calls": calls, "wall_s": wall}


def one_jump_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Test-split bond/angle RMSE of the model beside the no-move predictor."""
    t = metrics.get("test") or metrics.get("val") or {}
    if "model" not in t:
        return {}
    return {"bond_rmse_A": t["model"]["bond_rmse_A"], "angle_rmse_deg": t["model"]["angle_rmse_deg"],
            "no_move_bond_rmse_A": t["no_move"]["bond_rmse_A"], "no_move_angle_rmse_deg": t["no_move"]["angle_rmse_deg"]}


# ------------------------------------------------------------------------------- hybrid

def hybrid_config(path: str, overrides: dict[str, Any], k: int, dt_fs: float, temperature_K: float,
                  **extra: Any):
    """HybridConfig from YAML + overrides with k, dt and temperature set. The hybrid's
    thermostat friction is its own (configs/hybrid.yaml, as stages 06/06b use it), not the plain
    methods': its local O-steps are part of the integrator (they move the heat a learned jump
    misplaces between elements), measured in README "Friction of the hybrid's bath"."""
    from ..config import load_config
    from ..hybrid import HybridConfig

    cfg = load_config(HybridConfig, path, {**overrides, **extra})
    return cfg.resolved(k=k, dt_fs=dt_fs, temperature_K=temperature_K)


def load_jumper(checkpoint: Path, engine, bonds: np.ndarray, k: int, dt_fs: float):
    """ModelJumper on the CPU (or CUDA when present) for ``engine``'s atoms; checks k and dt."""
    import torch

    from ..checkpoint import check_compatible, model_from_checkpoint
    from ..model.jumper import ModelJumper

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ck = model_from_checkpoint(checkpoint, device=device)
    check_compatible(ck, str(checkpoint), k=k, atom_types=set(map(int, engine.atomic_numbers)))
    if ck.get("dt_fs") is not None and abs(float(ck["dt_fs"]) - dt_fs) > 1e-9:
        raise MdkstepError(f"{checkpoint}: trained at dt_fs={ck['dt_fs']}, the benchmark runs {dt_fs}")
    return ModelJumper(model, engine.atomic_numbers, engine.masses, bonds, device=device)


def run_fingerprint(checkpoint: Path | list[Path] | None, hcfg, time_ps: float, seed: int) -> dict[str, Any]:
    """What defines a cached learned-method run: the model file's SHA-256 (None: untrained; a
    list for a stride schedule), the resolved hybrid config, the simulated time and the seed."""
    from dataclasses import asdict

    from ..runner import file_sha256

    sha = [file_sha256(c) for c in checkpoint] if isinstance(checkpoint, list) else \
        (file_sha256(checkpoint) if checkpoint else None)
    return json.loads(json.dumps({"checkpoint_sha256": sha,
                                  "hybrid_config": asdict(hcfg), "time_ps": float(time_ps), "seed": int(seed)},
                                 default=str))


def cached_stats(out: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The stats of a finished cached run made with ``fingerprint``, else None; a finished run
    made with another model or settings (or before fingerprints) is removed and logged, so it
    is run again instead of being reused silently."""
    from ..hybrid.run import checkpoint_path

    stats_path = out.with_suffix(".stats.json")
    if not (out.is_file() and stats_path.is_file()):
        return None
    stats = json.loads(stats_path.read_text())
    if stats.get("bench_fingerprint") == fingerprint:
        return stats
    LOG.info("%s: cached run was made with another model or settings; running it again", out)
    for p in (out, stats_path, checkpoint_path(out)):
        p.unlink(missing_ok=True)
    return None


def run_hybrid_production(engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, time_ps: float, out: Path,
                          seed: int, meta: dict[str, Any], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """NVT hybrid trajectory of ``time_ps`` (resumable; skipped when finished with the same
    ``fingerprint``, :func:`run_fingerprint`). Returns its stats."""
    from ..hybrid import run_hybrid

    stats = cached_stats(out, fingerprint)
    if stats is not None:
        return stats
    n_cycles = max(1, int(round(time_ps / hcfg.cycle_ps)))
    stats = run_hybrid(engine, jumper, hcfg, x0, v0, n_cycles, out, np.random.default_rng(seed), resume=True,
                       metadata=meta, progress=True)
    stats["bench_fingerprint"] = fingerprint
    atomic_write_json(out.with_suffix(".stats.json"), stats)
    return stats


def hybrid_nve(engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, time_ps: float) -> Segment:
    """NVE hybrid segment (no thermostat; ``hcfg`` decides the energy filter): U + K after
    every cycle. A guard failure that leaves a non-finite state ends it as unstable."""
    from ..hybrid import HybridIntegrator

    integ = HybridIntegrator(engine, jumper, hcfg, np.random.default_rng(0))
    integ.initialize(x0, v0)
    n = max(3, int(round(time_ps / hcfg.cycle_ps)))
    span = engine.counters.span()
    seg = Segment(hcfg.dt_fs, 0, 0.0, 0, 0.0, force_calls_source=span.source)
    ke = lambda: float(0.5 * np.sum(integ.m3 * integ.v[0] ** 2))  # noqa: E731
    for i in range(n):
        integ.cycle()
        e = integ.total_energy(0)
        if not np.isfinite(e):
            seg.stable = False
            break
        seg.energies.append(e)
        seg.kinetic.append(ke())
        seg.times_ps.append((i + 1) * hcfg.cycle_ps)
        seg.steps += hcfg.steps_per_cycle
    span.close()
    seg.wall_s, seg.force_calls, seg.force_seconds = span.wall_s, span.calls, span.seconds
    seg.simulated_ps = seg.steps * hcfg.dt_fs / 1000.0
    return seg


def hybrid_timer(engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, time_ps: float,
                 seed: int) -> Callable[[], Segment]:
    """A callable that advances one hybrid run by ``time_ps`` (NVT, no saving) per call and
    returns the timed segment (calls from the engine's counter)."""
    from ..hybrid import HybridIntegrator

    integ = HybridIntegrator(engine, jumper, hcfg, np.random.default_rng(seed))
    integ.initialize(x0, v0)
    n = max(1, int(round(time_ps / hcfg.cycle_ps)))

    def segment() -> Segment:
        with engine.counters.span() as span:
            for _ in range(n):
                integ.cycle()
        steps = n * hcfg.steps_per_cycle
        return Segment(hcfg.dt_fs, steps, steps * hcfg.dt_fs / 1000.0, span.calls, span.wall_s,
                       force_seconds=span.seconds, force_calls_source=span.source)

    return segment


# ------------------------------------------------------------------------------- timing

def interleaved_timing(timers: dict[str, Callable[[], Segment]], repeats: int) -> dict[str, dict[str, Any]]:
    """One untimed warm-up per method, then ``repeats`` rounds that time every method once
    each, in turn (so slow drifts of the machine's load hit all methods alike). Per method:
    wall s/ps of every repeat, their min and median, and the spread (max - min) / median."""
    for t in timers.values():
        t()
    per: dict[str, list[Segment]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, t in timers.items():
            per[name].append(t())
    out = {}
    for name, segs in per.items():
        w = np.array([s.wall_s_per_ps for s in segs])
        calls = sum(s.force_calls for s in segs)
        # OpenMM's own integrator (integrator_steps) cannot time its force calls: whole steps then
        stepped = all(s.force_calls_source == "integrator_steps" for s in segs)
        walls = sum(s.wall_s if stepped else s.force_seconds for s in segs)
        out[name] = {"wall_s_per_ps_repeats": w.tolist(), "wall_s_per_ps": float(np.median(w)),
                     "wall_s_per_ps_min": float(np.min(w)),
                     "timing_spread": float((w.max() - w.min()) / np.median(w)) if len(w) > 1 else 0.0}
        out[name]["force_ms_per_call"] = 1000.0 * walls / calls if calls else None
    return out


# ------------------------------------------------------------------------------- fidelity

@dataclass
class FloorCache:
    """Replica floors of one molecule, computed once per comparison interval."""

    replicas: list[Trajectory]
    topo: dict[str, Any]
    _floors: dict[float, dict[str, Any]] = field(default_factory=dict)

    def at(self, interval_ps: float) -> dict[str, Any]:
        key = round(interval_ps, 9)
        if key not in self._floors:
            self._floors[key] = replica_floor(self.replicas, self.topo, interval_ps)
        return self._floors[key]


def fidelity(run: Trajectory, method: Method, ref_method: Method, floors: FloorCache,
             ratio_ok: float) -> dict[str, Any]:
    """Distances of ``run`` vs reference replica 0 at the common frame interval, the replica
    floor at that interval, ratios, and whether the structure is within ``ratio_ok`` x floor."""
    interval = common_interval_ps(method.frame_fs, ref_method.frame_fs)
    floor = floors.at(interval)
    d = compare(floors.replicas[0], run, floors.topo, interval)
    ratios = {k: d[k] / floor[k] for k in FIDELITY_KEYS
              if floor.get(k, 0) > 0 and np.isfinite(d.get(k, np.nan))}
    s_ratios = [ratios[k] for k in STRUCTURE_KEYS if k in ratios]
    out: dict[str, Any] = {"compare_interval_ps": interval}
    for k in FIDELITY_KEYS:
        out[k] = d.get(k)
        out[f"{k}_replica"] = floor.get(f"{k}_replica")
        out[f"{k}_ratio"] = ratios.get(k)
    out["slow_rotamer_tv"] = d.get("slow_rotamer_tv")
    out["max_structure_ratio"] = max(s_ratios) if s_ratios else None
    out["faithful"] = bool(s_ratios) and max(s_ratios) <= ratio_ok
    return out


def sampling_efficiency(run: Trajectory, force_calls_per_ps: float | None,
                        dihedrals: np.ndarray | None = None) -> dict[str, Any]:
    """Integrated autocorrelation times (fs; Sokal window, mdkstep.metrics) of one production
    trajectory's potential energy U and of its slowest dihedral, whether the run is >= 50 of
    them long, and the effective samples per force call = 1 / (tau_int x force calls per unit
    time): the figures that compare plain, hybrid and exact runs on sampling (issue 12). In
    NVT, U's tau is set mostly by the thermostat (its friction), the slowest dihedral's by the
    conformational dynamics. None where the run is too short to give a positive estimate."""
    from ..metrics import iat_reliable, integrated_autocorr_time, slowest_dihedral_iat

    frame_fs = float(run.metadata["dt_fs"]) * int(run.metadata["save_interval"])
    out: dict[str, Any] = {}
    series = {"U": integrated_autocorr_time(np.asarray(run.energies, dtype=float))}
    if dihedrals is not None and len(np.asarray(dihedrals).reshape(-1, 4)):
        series["dihedral"] = slowest_dihedral_iat(run.positions, dihedrals)[0]
    for name, tau in series.items():
        tau_fs = tau * frame_fs if np.isfinite(tau) and tau > 0 else None  # <= 0: far too short to estimate
        out[f"tau_int_{name}_fs"] = tau_fs
        out[f"tau_int_{name}_reliable"] = bool(tau_fs) and iat_reliable(tau, run.n_frames)
        out[f"ess_per_force_call_{name}"] = 1000.0 / (tau_fs * force_calls_per_ps) if tau_fs and force_calls_per_ps \
            else None
    return out


def trajectory_summary(run: Trajectory, bonds: np.ndarray) -> dict[str, Any]:
    """Temperature mean/std and per element (constraint-aware), NaN frames."""
    s = summarize_trajectory(run, bonds)
    return {"temperature_mean_K": s["temperature_mean_K"], "temperature_std_K": s["temperature_std_K"],
            "temperature_per_element_K": s["temperature_per_element_K"], "nan_frames": s["nan_frames"],
            "simulated_ps": s["simulated_ps"]}
