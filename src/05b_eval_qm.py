#!/usr/bin/env python
"""Stage 05b: evaluate QM hybrid runs (06b) against plain QM MD baselines (01b / 01c).

For every molecule folder under --hybrid-runs (<molecule>/*.npz with their .stats.json),
against --baseline/<molecule>/replica_*.npz (0.25 fs):
  - rollout fidelity (mdkstep.analysis.evaluation, as stage 05): W1 of bond / angle / dihedral
    distributions, mean bond-length error, RDF L1, VACF L2, temperature, each beside the same
    distance between independent baseline replicas (the noise floor) and as a ratio to it;
  - efficiency, the headline: force calls and wall seconds per simulated ps of the hybrid vs
    plain MD with the SAME engine at the base step (the baselines' dt, 0.25 fs) AND at larger
    plain steps (default 0.5 and 1.0 fs). The plain runs are timed IN THIS RUN: --plain-steps
    velocity-Verlet steps (NVE, one counted force call per step) from the last frame of
    replica 0, whose total-energy drift (kJ/mol/ps) and fluctuation tell how accurate the
    larger plain steps are (NaN or a blow-up is reported as unstable).
Writes <out-dir>/metrics.json and report.md. Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.config import run_cli
from mdkstep.analysis.evaluation import (FIDELITY_KEYS, efficiency, evaluate_hybrid_file, fmt, hybrid_runs,
                                load_replicas, load_stats)
from mdkstep.analysis.metrics import summarize_trajectory
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, atomic_write_text, check_writable, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True, help="QM baseline root (01b --out): <molecule>/replica_*.npz")
    p.add_argument("--hybrid-runs", type=Path, required=True, help="hybrid root (06b outputs): <molecule>/*.npz")
    p.add_argument("--out-dir", type=Path, required=True, help="where metrics.json and report.md go")
    p.add_argument("--qm-config", type=Path, default=None,
                   help="QM YAML for the plain-MD timing engine (default: the config stored in the baseline metadata)")
    p.add_argument("--raw-root", type=Path, default=None, help="stage-00 folder for topology.json (else beside / inferred)")
    p.add_argument("--plain-dts", type=float, nargs="+", default=None, metavar="FS",
                   help="plain-MD steps to time, fs (default: the baseline dt, 0.5 and 1.0)")
    p.add_argument("--plain-steps", type=int, default=200, help="velocity-Verlet steps per timed plain segment (default 200)")
    p.add_argument("--no-timing", action="store_true", help="skip the plain-MD timing (no wall_speedup)")
    p.add_argument("--log-level", default="INFO")
    return p


# ------------------------------------------------------------------------ plain MD, timed now

def time_plain_md(ref, args) -> dict[str, Any]:
    """Plain velocity-Verlet segments (:func:`mdkstep.baselines.plain.time_plain_md`) with the baselines'
    engine (--qm-config, else the config in the baseline metadata) from replica 0's last frame."""
    from mdkstep.config import from_dict, load_config
    from mdkstep.engines.factory import make_engine
    from mdkstep.baselines.plain import time_plain_md as plain_segments
    from mdkstep.baselines.ase_md import QMConfig
    from mdkstep.baselines.pool import limit_threads
    from mdkstep.molecule.system import System

    meta = ref.metadata
    if args.qm_config is not None:
        cfg = load_config(QMConfig, args.qm_config)
    elif "config" in meta:
        cfg = from_dict(QMConfig, meta["config"], "baseline metadata")
    else:
        raise MdkstepError("baseline metadata has no QM config; give --qm-config")
    limit_threads(cfg.omp_num_threads or 1)
    system = System(str(meta.get("molecule", "baseline")), ref.atom_types, ref.masses, ref.positions[-1],
                    charge=int(meta.get("charge", 0) or 0), source="trajectory")
    dts = args.plain_dts or sorted({float(meta["dt_fs"]), 0.5, 1.0})
    return plain_segments(make_engine(cfg.engine, system, cfg), ref.positions[-1], ref.velocities[-1], dts,
                          args.plain_steps)


# ------------------------------------------------------------------------ evaluation

def topology_of(name: str, ref, args) -> dict[str, Any]:
    from mdkstep.molecule.topology import molecule_topology

    for cand in (args.baseline / name / "topology.json", (args.raw_root / name / "topology.json") if args.raw_root else None):
        if cand is not None and cand.is_file():
            return json.loads(cand.read_text())
    return molecule_topology(args.baseline / name / "replica_0.npz", None, name, np.asarray(ref.atom_types),
                             ref.positions[0])


def evaluate_molecule(name: str, args) -> dict[str, Any]:
    replicas = load_replicas(args.baseline / name)
    ref = replicas[0]
    topo = topology_of(name, ref, args)
    runs = hybrid_runs(args.hybrid_runs / name)
    base_dt = float(ref.metadata["dt_fs"])
    plain = {} if args.no_timing else time_plain_md(ref, args)
    res: dict[str, Any] = {"molecule": name, "baseline": summarize_trajectory(ref, np.asarray(topo["bonds"])),
                           "n_replicas": len(replicas), "baseline_dt_fs": base_dt, "plain_md": plain, "runs": {}}
    if len(replicas) < 2:
        LOG.warning("%s: one baseline replica, no noise floor (run 01b with --replicas 2)", name)
    for run in runs:
        _, ev = evaluate_hybrid_file(run, replicas, topo)
        stats = load_stats(run)
        base_key = f"{base_dt:g}fs"
        base = plain.get(base_key, {})
        ev["efficiency"] = efficiency(stats, base_dt, base.get("wall_s_per_ps"), base.get("force_calls_per_ps"),
                                      base.get("force_calls_source", "integrator_steps"))
        # the same ratios against plain MD at the larger steps (timed above, same engine, counted calls)
        ev["efficiency_vs_plain"] = {key: efficiency(stats, seg["dt_fs"], seg["wall_s_per_ps"], seg["force_calls_per_ps"],
                                                     seg["force_calls_source"])
                                     for key, seg in plain.items()}
        if not plain:
            ev["efficiency_vs_plain"] = {f"{base_dt:g}fs": ev["efficiency"]}
        res["runs"][run.stem] = ev
    return res




def write_report(metrics: dict[str, Any], path: Path) -> None:
    lines = ["# md-kstep QM evaluation report", "",
             "Efficiency: force calls and wall seconds per simulated ps, hybrid vs plain velocity-Verlet MD with the "
             "same QM engine, all timed in this run. Ratios > 1 favour the hybrid.", ""]
    for name, m in metrics["molecules"].items():
        lines += [f"## {name}", "", f"Baseline replica 0 (dt {fmt(m['baseline_dt_fs'])} fs): T = "
                  f"{fmt(m['baseline']['temperature_mean_K'])} ± {fmt(m['baseline']['temperature_std_K'])} K; "
                  f"{m['n_replicas']} replica(s) give the noise floor.", ""]
        if m["plain_md"]:
            lines += ["| plain MD step | force calls/ps | counted by | wall s/ps | ms/call | NVE drift kJ/mol/ps | "
                      "E_tot std kJ/mol | stable |", "|---|---|---|---|---|---|---|---|"]
            for key, seg in m["plain_md"].items():
                lines.append(f"| {key} | {fmt(seg['force_calls_per_ps'])} | {seg['force_calls_source']} | "
                             f"{fmt(seg['wall_s_per_ps'])} | "
                             f"{fmt(seg['force_ms_per_call'])} | {fmt(seg['nve_drift_kj_mol_ps'])} | "
                             f"{fmt(seg['etot_std_kj_mol'])} | {seg['stable']} |")
            lines.append("")
        for run, ev in m["runs"].items():
            eff = ev["efficiency"]
            lines += [f"### {run}", "", f"hybrid: {fmt(eff.get('hybrid_force_calls_per_ps'))} force calls/ps, "
                      f"{fmt(eff.get('hybrid_wall_s_per_ps'))} wall s/ps, model {fmt(eff.get('model_ms_per_jump'))} ms/jump, "
                      f"accepted {eff.get('jumps_accepted')}/{eff.get('jumps_attempted')}, fallbacks "
                      f"{eff.get('fallbacks')}, NaN frames {eff.get('nan_frames', 'n/a')}", "",
                      "| vs plain MD at | force_call_reduction | wall_speedup |", "|---|---|---|"]
            for key, e in ev["efficiency_vs_plain"].items():
                lines.append(f"| {key} | {fmt(e.get('force_call_reduction'))} | {fmt(e.get('wall_speedup'))} |")
            d, fl = ev["distances"], ev["floor"]
            lines += ["", "| fidelity | hybrid vs replica 0 | replica floor | ratio |", "|---|---|---|---|"]
            for k in FIDELITY_KEYS:
                lines.append(f"| {k} | {fmt(d.get(k))} | {fmt(fl.get(k))} | {fmt(ev['ratio_to_floor'].get(k))} |")
            lines += ["", f"within 1.5x floor: {ev['within_1p5x_floor']}; hybrid T = "
                      f"{fmt(ev['summary']['temperature_mean_K'])} K", ""]
    atomic_write_text(path, "\n".join(lines))


def hybrid_files(folder: Path) -> list[Path]:
    """Trajectory files of a hybrid-run folder, without checkpoints and leftovers of killed runs."""
    from mdkstep.runner import is_leftover

    return [p for p in folder.glob("*.npz") if not is_leftover(p)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if not args.hybrid_runs.is_dir():
        raise MdkstepError(f"{args.hybrid_runs}: folder not found")
    check_writable(args.out_dir, "--out-dir")  # before any evaluation
    if args.plain_steps < 3:
        raise MdkstepError("--plain-steps must be >= 3")
    if args.plain_dts is not None and not all(np.isfinite(dt) and dt > 0 for dt in args.plain_dts):
        raise MdkstepError(f"--plain-dts {args.plain_dts}: every step must be a finite number > 0 fs")
    if args.qm_config is not None:  # checked now, even with --no-timing: a broken config is never ignored
        from mdkstep.config import load_config
        from mdkstep.baselines.ase_md import QMConfig

        load_config(QMConfig, args.qm_config)
    names = sorted(p.name for p in args.hybrid_runs.iterdir() if p.is_dir() and hybrid_files(p))
    if not names:
        raise MdkstepError(f"{args.hybrid_runs}: no <molecule>/*.npz hybrid runs")
    metrics: dict[str, Any] = {"molecules": {}}
    for name in names:
        LOG.info("evaluating %s", name)
        metrics["molecules"][name] = evaluate_molecule(name, args)
    atomic_write_json(args.out_dir / "metrics.json", metrics)
    write_report(metrics, args.out_dir / "report.md")
    print(f"report: {args.out_dir / 'report.md'}")
    for name, m in metrics["molecules"].items():
        for run, ev in m["runs"].items():
            parts = [f"{key}: calls x{fmt(e.get('force_call_reduction'), 3)}, wall x{fmt(e.get('wall_speedup'), 3)}"
                     for key, e in ev["efficiency_vs_plain"].items()]
            print(f"{name}/{run}: bond W1 {fmt(ev['distances']['bond_w1_A'])} Å (floor {fmt(ev['floor'].get('bond_w1_A'))}), "
                  f"angle W1 {fmt(ev['distances']['angle_w1_deg'])}° (floor {fmt(ev['floor'].get('angle_w1_deg'))}); "
                  f"hybrid vs plain " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    run_cli(main)
