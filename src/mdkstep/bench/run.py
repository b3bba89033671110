"""The benchmark loop: for each mode (MM, QM) and molecule, run every method for the same
simulated time, time them interleaved, compare each with the reference replicas, and build
one record per molecule x method (docs/force-calls.md and docs/metrics.md keys).

Runs, models and trajectories are cached under ``<out_dir>/<mode>/`` (a rerun after an
interruption continues where it stopped); timing and fidelity are recomputed every time.
Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.analysis.evaluation import element_temperature_deviation, element_temperature_floor, one_jump_metrics
from mdkstep.analysis.refcheck import reference_check
from mdkstep.bench.breakeven import BREAK_EVEN_KEYS, add_break_even, model_cost, schedule_cost
from mdkstep.bench.core import FloorCache, fidelity, interleaved_timing, sampling_efficiency, trajectory_summary
from mdkstep.bench.learned import exact_method_names, learned_methods, schedule_name, schedule_orders
from mdkstep.data.windows import KStepDataset, build_dataset
from mdkstep.model.checkpoint import model_from_checkpoint, read_card
from mdkstep.pipeline.config import BenchConfig
from mdkstep.pipeline.machine import machine_info, set_threads
from mdkstep.pipeline.mm import MMMode
from mdkstep.pipeline.mode import Method, Mode
from mdkstep.pipeline.models import (
    data_cost,
    ensure_exact_model,
    ensure_model,
    one_jump_summary,
    training_cost,
    training_run,
)
from mdkstep.pipeline.qm import QMMode
from mdkstep.progress import Progress
from mdkstep.shipped import shipped_path
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import LOG, MdkstepError

#: keys every record carries (None where a key does not apply, e.g. model_ms_per_jump of plain MD)
RECORD_KEYS = (
    "mode", "molecule", "method", "kind", "dt_fs", "k", "hmr", "reference", "note", "n_atoms", "simulated_ps",
    "force_calls", "force_calls_setup", "force_calls_per_ps", "force_calls_source", "wall_s_per_ps", "wall_s_per_ps_min",
    "wall_s_per_ps_repeats", "timing_spread", "force_ms_per_call", "model_ms_per_jump",
    "force_call_reduction", "wall_speedup", "best_plain_method", "force_call_reduction_vs_best_plain",
    "wall_speedup_vs_best_plain", "compare_interval_ps", "bond_w1_A", "bond_w1_A_replica", "bond_w1_A_ratio",
    "mean_bond_err_A", "mean_bond_err_A_replica", "mean_bond_err_A_ratio", "angle_w1_deg", "angle_w1_deg_replica",
    "angle_w1_deg_ratio", "dihedral_w1_deg", "dihedral_w1_deg_replica", "dihedral_w1_deg_ratio", "rdf_l1",
    "rdf_l1_replica", "rdf_l1_ratio", "vacf_l2", "vacf_l2_replica", "vacf_l2_ratio", "slow_rotamer_tv",
    "max_structure_ratio", "faithful", "temperature_mean_K", "temperature_std_K", "temperature_per_element_K",
    "nve_ps", "nve_stable", "nve_drift_kj_mol_ps", "nve_drift_kj_mol_ps_per_atom", "etot_std_kj_mol",
    "etot_over_ekin_fluct", "nan_frames", "jumps_attempted", "jumps_accepted", "retries", "fallbacks",
    "fallback_fraction", "filter_ke_change_mean", "out_of_domain", "element_T_max_dev", "element_T_max_dev_replica", "acceptance", "tau_int_U_fs",
    "tau_int_U_reliable", "ess_per_force_call_U", "tau_int_dihedral_fs", "tau_int_dihedral_reliable",
    "ess_per_force_call_dihedral", "ess_gain_vs_best_plain", "ess_gain_dihedral_vs_best_plain",
) + BREAK_EVEN_KEYS  # model_source, model_cost_*, saving_*_per_ps, break_even_ps_* (bench/breakeven.py)


def mode_settings(mode: Mode, cfg: BenchConfig) -> dict[str, Any]:
    """Per-mode knobs from the flat config (``mm_*`` or ``qm_*``)."""
    p = mode.name + "_"
    return {k[len(p):]: v for k, v in asdict(cfg).items() if k.startswith(p)}


def time_ps(s: dict[str, Any], mol: str) -> float:
    """NVT production per method (and per reference replica) of ``mol``, ps: its
    ``<mode>_time_ps_by_mol`` entry, else ``<mode>_time_ps``."""
    return float((s.get("time_ps_by_mol") or {}).get(mol, s["time_ps"]))


def best_plain(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The faithful plain method with the fewest force calls per ps (then the least wall time)."""
    ok = [r for r in records if r["kind"] == "plain" and r["faithful"]]
    return min(ok, key=lambda r: (r["force_calls_per_ps"], r["wall_s_per_ps"] or np.inf)) if ok else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a / b) if a and b else None


def learned_seed(cfg: BenchConfig, m: Method, offset: int = 0) -> int:
    """The seed of a learned row: hybrid_k<K> rows cfg.seed + 50 + k (as in every bench so far); exact and mvv
    rows + 1000 + a number from the row's name, so adding or removing rows never changes another row's seed."""
    seed = cfg.seed + 50 + m.k + offset + cfg.learned_seed_offset
    if m.kind == "exact":
        seed += 1000 + zlib.crc32(m.name.encode()) % 1000
    return seed


def run_molecule(mode: Mode, cfg: BenchConfig, mol: str, checkpoints: dict[int, Path], runs: dict[str, Path],
                 exact_checkpoints: dict[str, tuple[int, Path | None]] | None = None) -> list[dict[str, Any]]:
    """Every method on one molecule: production runs, NVE segments, interleaved timing,
    fidelity vs the reference replicas; one record per method. ``checkpoints``: jump models
    by k (hybrid rows); ``exact_checkpoints``: exact-mode rows, name -> (k, shear checkpoint,
    or None for Metropolized velocity Verlet)."""
    exact_checkpoints = exact_checkpoints or {}
    s = mode_settings(mode, cfg)
    ref = mode.reference()
    folder = mode.root / "runs" / mol
    start = load_trajectory(runs["train"])
    x0, v0 = start.positions[-1], start.velocities[-1]
    del start
    topo = mode.topology(mol)
    bonds = np.asarray(topo["bonds"], dtype=int).reshape(-1, 2)
    temperature, _friction = mode.thermostat()  # the plain methods' friction; the hybrid has its own
    methods = mode.plain_methods(mol, x0, v0)
    learned = learned_methods(mode, mol, ref, s, checkpoints, exact_checkpoints, bonds)
    # coarse progress in the log (each run has its own): production runs, then NVE, timing, fidelity
    bar = Progress(sum(not m.reference for m in methods) + len(learned) + 3, f"bench {mode.name} {mol}", "task",
                   progress=False)
    trajs: dict[str, Path] = {ref.name: runs["r1"]}
    for i, m in enumerate(methods):
        if not m.reference:
            LOG.info("%s %s: plain %s (%g ps)", mode.name, mol, m.name, time_ps(s, mol))
            trajs[m.name] = mode.run_plain(mol, m, cfg.seed + 10 + i, folder / f"{m.name}.npz", time_ps(s, mol))
            bar.update(1)
    stats: dict[str, dict[str, Any]] = {}
    for lm in learned:
        m = lm.method
        methods.append(m)
        seed = learned_seed(cfg, m, getattr(lm, "seed_offset", 0))
        out = folder / f"{m.name}.npz"
        LOG.info("%s %s: %s (%g ps)", mode.name, mol, m.name, time_ps(s, mol))
        stats[m.name] = lm.production(x0, v0, time_ps(s, mol), out, seed, {**mode.run_meta(mol), "seed": seed})
        trajs[m.name] = out
        bar.update(1)
    by_name = {lm.method.name: lm for lm in learned}

    LOG.info("%s %s: NVE segments (%g ps each)", mode.name, mol, s["nve_ps"])
    nve = {m.name: (mode.plain_nve(mol, m, x0, v0) if m.kind == "plain" else by_name[m.name].nve(x0, v0, s["nve_ps"]))
           for m in methods}
    bar.update(1)

    LOG.info("%s %s: interleaved timing, %d repeats of %g ps per method", mode.name, mol, cfg.timing_repeats,
             s["timing_ps"])
    timers = {m.name: (mode.plain_timer(mol, m, x0, v0) if m.kind == "plain"
                       else by_name[m.name].timer(x0, v0, s["timing_ps"], cfg.seed)) for m in methods}
    timing = interleaved_timing(timers, cfg.timing_repeats)
    bar.update(1)

    LOG.info("%s %s: fidelity vs the reference replicas", mode.name, mol)
    floors = FloorCache([load_trajectory(runs[f"r{i}"]) for i in range(cfg.ref_replicas)], topo)
    records = []
    per_element = [trajectory_summary(r, bonds)["temperature_per_element_K"] for r in floors.replicas]
    ref_elements, element_floor = per_element[0], element_temperature_floor(per_element)
    for m in methods:
        run = floors.replicas[1] if m.reference else load_trajectory(trajs[m.name])
        rec: dict[str, Any] = {"mode": mode.name, "molecule": mol, "method": m.name, "kind": m.kind, "dt_fs": m.dt_fs,
                               "k": m.k if m.kind != "plain" else None, "hmr": m.hmr, "reference": m.reference,
                               "note": m.note, "n_atoms": run.n_atoms}
        rec.update(trajectory_summary(run, bonds))
        t = timing[m.name]
        rec.update({key: t[key] for key in ("wall_s_per_ps", "wall_s_per_ps_min", "wall_s_per_ps_repeats",
                                            "timing_spread", "force_ms_per_call")})
        if m.kind == "plain":
            rec.update(plain_calls(trajs[m.name], m))
            rec.update({"model_ms_per_jump": None, "jumps_attempted": None, "jumps_accepted": None, "retries": None,
                        "fallbacks": None, "fallback_fraction": None, "acceptance": None,
                        "filter_ke_change_mean": None, "out_of_domain": None})
        else:
            rec.update(by_name[m.name].record(stats[m.name], rec))  # a hybrid's per-element T: every step's
        rec["element_T_max_dev"] = element_temperature_deviation(rec["temperature_per_element_K"], ref_elements)
        rec["element_T_max_dev_replica"] = element_floor
        # the one rule "faithful" (mdkstep.analysis.evaluation.faithful): structure and element temperatures
        rec.update(fidelity(run, m, ref, floors, cfg.fidelity_ratio_ok, rec["element_T_max_dev"], element_floor))
        rec.update(sampling_efficiency(run, rec["force_calls_per_ps"], np.asarray(topo.get("dihedrals", []))))
        seg = nve[m.name]
        rec.update({"nve_ps": seg.simulated_ps, "nve_stable": seg.stable, **seg.drift(run.n_atoms)})
        records.append(rec)
        del run
    bar.update(1)
    bar.close()
    add_ratios(records)
    return [{key: r.get(key) for key in RECORD_KEYS} for r in records]


def plain_calls(traj: Path, m: Method) -> dict[str, Any]:
    """Force calls of a plain production run as its runner recorded them in <traj>.stats.json,
    with their source: the engine's counter (QM: ``force_calls_production``) or OpenMM's
    integrator steps (MM: ``force_calls``, ``force_calls_source: integrator_steps``), per ps of
    the steps they cover. Nothing is inferred: a missing count is an error."""
    path = traj.with_suffix(".stats.json")
    if not path.is_file():
        raise MdkstepError(f"{path}: missing (the force-call count of {traj.name}); delete {traj} to rerun it")
    st = json.loads(path.read_text())
    calls = st.get("force_calls", st.get("force_calls_production"))
    source = st.get("force_calls_source") or ("engine_counter" if "force_calls_production" in st else None)
    steps = st.get("steps_this_session")
    if not calls or not steps or source is None:
        raise MdkstepError(f"{path}: no force-call count with its source and steps; delete {traj} to rerun it")
    return {"force_calls": calls, "force_calls_per_ps": calls / (steps * m.dt_fs / 1000.0), "force_calls_source": source}


def add_ratios(records: list[dict[str, Any]]) -> None:
    """force_call_reduction / wall_speedup against the reference and against the best
    faithful plain method of the same molecule (docs/force-calls.md), and the effective
    samples per force call relative to that method's (ess_gain_vs_best_plain)."""
    ref = next(r for r in records if r["reference"])
    best = best_plain(records)
    for r in records:
        r["force_call_reduction"] = _ratio(ref["force_calls_per_ps"], r["force_calls_per_ps"])
        r["wall_speedup"] = _ratio(ref["wall_s_per_ps"], r["wall_s_per_ps"])
        r["best_plain_method"] = best["method"] if best else None
        r["force_call_reduction_vs_best_plain"] = _ratio(best["force_calls_per_ps"], r["force_calls_per_ps"]) if best else None
        r["wall_speedup_vs_best_plain"] = _ratio(best["wall_s_per_ps"], r["wall_s_per_ps"]) if best else None
        for key, name in (("ess_gain_vs_best_plain", "U"), ("ess_gain_dihedral_vs_best_plain", "dihedral")):
            r[key] = _ratio(r.get(f"ess_per_force_call_{name}"), best.get(f"ess_per_force_call_{name}")) if best else None


def run_mode(mode: Mode, cfg: BenchConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reference replicas and training runs for every molecule, one model per k (trained on
    all molecules' training runs), then :func:`run_molecule` for each. Returns the records and
    the mode's metadata (scans, models, settings)."""
    s = mode_settings(mode, cfg)
    ref = mode.reference()
    mols = mode.molecules()
    runs: dict[str, dict[str, Path]] = {}
    for mol in mols:
        folder = mode.root / "runs" / mol
        LOG.info("%s %s: reference replicas (%d x %g ps) and a training run (%g ps)", mode.name, mol,
                 cfg.ref_replicas, time_ps(s, mol), s["train_ps"])
        runs[mol] = {f"r{i}": mode.run_plain(mol, ref, cfg.seed + 1 + i, folder / f"ref_r{i}.npz", time_ps(s, mol))
                     for i in range(cfg.ref_replicas)}
        runs[mol]["train"] = training_run(mode, mol, cfg.seed + 100, folder / "train.npz", s["train_ps"])
    checkpoints, models, costs = {}, {}, {}
    for k in s["ks"]:
        ck, metrics, cost = bench_model(mode, cfg, k, [runs[m]["train"] for m in mols])
        checkpoints[k] = ck
        costs[f"hybrid_k{k}"] = cost
        models[f"k{k}"] = {"checkpoint": str(ck), "source": cost["source"], "one_jump_test": one_jump_summary(metrics),
                           "cost": cost}
    if cfg.heldout_one_jump:
        heldout = {mol: {f"k{k}": heldout_one_jump(ck, runs[mol]["train"], k, mode.root / "runs" / mol)
                         for k, ck in checkpoints.items()} for mol in mols}
    for sched in s.get("schedules") or []:
        ks = sorted({k for o in schedule_orders(sched) for k in o})
        costs[schedule_name(sched)] = schedule_cost([costs[f"hybrid_k{k}"] for k in ks])
    exact_checkpoints = {}
    for name, k in exact_method_names(s.get("mvv_dts_fs", []), s.get("exact_ks", []), ref.dt_fs).items():
        ck, metrics, cost = bench_exact_model(mode, cfg, k, [runs[m]["train"] for m in mols]) \
            if name.startswith("exact_") else (None, {}, None)
        exact_checkpoints[name] = (k, ck)
        if ck is not None:
            costs[name] = cost
            models[name] = {"checkpoint": str(ck), "source": cost["source"], "teacher_forced": metrics, "cost": cost}
    records = []
    for mol in mols:
        recs = run_molecule(mode, cfg, mol, checkpoints, runs[mol], exact_checkpoints)
        add_break_even(recs, costs)
        records += recs
    meta = {"molecules": mols, "reference": ref.name, "models": models, "settings": s}
    if cfg.heldout_one_jump:
        meta["heldout_one_jump"] = heldout
    if mode.name == "qm":
        meta["reference_check"] = reference_checks(mode, cfg, mols, runs)
    scans = {mol: json.loads(p.read_text()) for mol in mols
             if (p := mode.root / "runs" / mol / "verlet_scan.json").is_file()}
    if scans:
        meta["verlet_scan"] = scans
    return records, meta


def heldout_one_jump(checkpoint: Path, run: Path, k: int, folder: Path, max_windows: int = 4096) -> dict[str, Any]:
    """One-jump metrics of ``checkpoint`` on every k-window of ``run`` (a molecule it never saw)
    beside "no move" and "ballistic" (Å, degrees, nm/ps); the windows are cached in
    ``folder/heldout_k<K>.npz``."""
    ds_file = folder / f"heldout_k{k}.npz"
    if not ds_file.is_file():
        build_dataset([run], k, ds_file, split="time")
    model, _ = model_from_checkpoint(checkpoint)
    res = one_jump_metrics(model, KStepDataset(ds_file), max_windows=max_windows)
    return {p: res[p] for p in ("model", "no_move", "ballistic") if p in res}


def resolve_checkpoint(mode_name: str, k: int, given: dict, use_shipped: bool, models_dir: str) -> tuple[str | None, str]:
    """Which model the bench uses for jump length k: the ``<mode>_checkpoints`` entry
    ("given"), else the shipped ``<models_dir>/<mode>_k<K>.pt`` when ``use_shipped`` and it
    exists ("shipped"), else None: train it here ("trained")."""

    ck = given.get(str(k)) or given.get(k)
    if ck:
        return str(ck), "given"
    path = shipped_path(models_dir, mode_name, k)
    if use_shipped and path.is_file():
        return str(path), "shipped"
    return None, "trained"


def bench_model(mode: Mode, cfg: BenchConfig, k: int, train_runs: list[Path]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The checkpoint for k (:func:`resolve_checkpoint`; trained here by ensure_model when
    neither given nor shipped), its one-jump metrics and its cost (bench/breakeven.py): a
    shipped model's from its card, a trained one's from this bench's training runs and
    training stats, a given one's unknown."""

    s = mode_settings(mode, cfg)
    given, source = resolve_checkpoint(mode.name, k, s["checkpoints"], cfg.use_shipped_models, cfg.models_dir)
    card = read_card(given) if source == "shipped" else None
    out = mode.root / "models" / f"k{k}"
    ck, metrics = ensure_model(mode.name, k, train_runs, out, s["model_config"], s["model_overrides"],
                               s["train_config"], s["train_overrides"], given)
    if card:
        LOG.info("%s k=%d: the shipped model %s", mode.name, k, ck)
        metrics = {card["one_jump"].get("split", "test"): card["one_jump"]}
    cost = model_cost(source, card, data_cost(train_runs) if source == "trained" else None,
                      training_cost(out) if source == "trained" else None)
    return ck, metrics, cost


def bench_exact_model(mode: Mode, cfg: BenchConfig, k: int,
                      train_runs: list[Path]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Exact mode's shear checkpoint for k: ``<mode>_exact_checkpoints`` ("given"), else the
    shipped ``<models_dir>/<mode>_exact_k<K>.pt`` ("shipped"), else trained here on the
    training runs ("trained"). Returns it, its teacher-forced |dH| (kJ/mol) and its cost."""

    s = mode_settings(mode, cfg)
    given = s["exact_checkpoints"].get(str(k)) or s["exact_checkpoints"].get(k)
    path = shipped_path(cfg.models_dir, f"{mode.name}_exact", k)
    source = "given" if given else "shipped" if cfg.use_shipped_models and path.is_file() else "trained"
    given = given or (str(path) if source == "shipped" else None)
    card = read_card(given) if source == "shipped" else None
    out = mode.root / "models" / f"exact_k{k}"
    ck, metrics = ensure_exact_model(mode.name, k, train_runs, out, s["exact_model_config"], s["exact_train_config"],
                                     s["exact_train_overrides"], given)
    if card:
        metrics = card.get("teacher_forced", {})
    cost = model_cost(source, card, data_cost(train_runs) if source == "trained" else None,
                      training_cost(out) if source == "trained" else None)
    return ck, metrics, cost


def reference_checks(mode: Mode, cfg: BenchConfig, mols: list[str], runs: dict[str, dict[str, Path]]) -> dict[str, Any]:
    """bench/refcheck.py on every reference replica of every molecule; a WARNING per replica
    whose mean temperature is off by more than 5 % or whose kinetic energies fail the Gamma law."""

    target, _ = mode.thermostat()
    out = {}
    for mol in mols:
        out[mol] = reference_check([load_trajectory(runs[mol][f"r{i}"]) for i in range(cfg.ref_replicas)], target)
        for r in out[mol]:
            if r["warning"]:
                LOG.warning("%s %s reference replica %d: %s", mode.name, mol, r["replica"], r["warning"])
    return out


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """The whole benchmark; returns {"meta": ..., "records": [...]} (written by the report)."""

    cfg.validate()
    set_threads(cfg.threads)
    out = Path(cfg.out_dir)
    from_scratch = not any((out / m).exists() for m in ("mm", "qm"))
    t0 = time.perf_counter()
    result: dict[str, Any] = {"meta": {"date": _dt.date.today().isoformat(), "machine": machine_info(),
                                       "threads": cfg.threads, "timing_repeats": cfg.timing_repeats,
                                       "fidelity_ratio_ok": cfg.fidelity_ratio_ok, "from_scratch": from_scratch,
                                       "config": asdict(cfg), "modes": {}},
                              "records": []}
    modes: list[Mode] = []
    if cfg.mm_smiles:
        modes.append(MMMode(cfg, out))
    if cfg.qm_smiles:
        modes.append(QMMode(cfg, out))
    for mode in modes:
        t_mode = time.perf_counter()
        recs, meta = run_mode(mode, cfg)
        meta["wall_s"] = time.perf_counter() - t_mode
        result["records"] += recs
        result["meta"]["modes"][mode.name] = meta
    result["meta"]["wall_s"] = time.perf_counter() - t0
    return result
