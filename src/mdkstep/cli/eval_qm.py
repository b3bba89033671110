"""Stage 05b: evaluate QM hybrid runs (06b) against plain QM MD baselines (01b / 01c).

For every molecule folder under --hybrid-runs (<molecule>/*.npz with their .stats.json),
against --baseline/<molecule>/replica_*.npz (0.25 fs):
  - rollout fidelity (mdkstep.analysis.evaluation, as stage 05) at ONE frame interval per
    molecule (the least common multiple of the replicas' and runs' frame intervals, or --set
    compare_interval_ps; stated in the report): W1 of bond / angle / dihedral distributions,
    mean bond-length error, RDF L1, VACF L2, temperature, each beside the same distance between
    independent baseline replicas (the noise floor) and as a ratio to it, and the bench's verdict
    "faithful" (mdkstep.analysis.evaluation.faithful; VACF does not decide);
  - efficiency, the headline: force calls and wall seconds per simulated ps of the hybrid vs
    plain MD with the SAME engine at the base step (the baselines' dt, 0.25 fs) AND at larger
    plain steps (default 0.5 and 1.0 fs). The plain runs are timed IN THIS RUN: --plain-steps
    velocity-Verlet steps (NVE, one counted force call per step) from the last frame of
    replica 0, whose total-energy drift (kJ/mol/ps) and fluctuation tell how accurate the
    larger plain steps are (NaN or a blow-up is reported as unstable).
Writes <out-dir>/metrics.json, report.md, the plots of stage 05 per molecule (energy_temperature,
structure_histograms, rdf, ramachandran for peptides) and each run for a viewer
(mdkstep.analysis.export): <molecule>/trajectories/<run>.dcd + <run>.pdb (DCD header time axis in
ps) and <run>.xyz (extended XYZ, Å). Units: nm, ps, kJ/mol, amu, K; dt in fs.
Settings (timing, plain_dts_fs, plain_steps, export, compare_interval_ps, fidelity_ratio_ok) come
from --config (configs/eval_qm.yaml lists them with their defaults), the flags, then --set KEY=VALUE.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.analysis.evaluation import (
    FAITHFUL_RATIO,
    FIDELITY_KEYS,
    STRUCTURE_KEYS,
    Reference,
    efficiency,
    fmt,
    hybrid_runs,
    load_replicas,
    load_stats,
)
from mdkstep.analysis.ramachandran import ramachandran_evaluation
from mdkstep.baselines.ase_md import QMConfig
from mdkstep.baselines.plain import time_plain_md as plain_segments
from mdkstep.baselines.pool import limit_threads
from mdkstep.cli.common import add_log_level, hybrid_molecules, make_parser
from mdkstep.cli.eval import (
    check_judging_keys,
    common_interval,
    evaluate_and_write,
    judging_lines,
    ramachandran_lines,
    verdict_cell,
    view_lines,
    view_outputs,
)
from mdkstep.config import from_dict, load_config, run_cli
from mdkstep.engines import factory
from mdkstep.molecule.system import System
from mdkstep.molecule.topology import molecule_topology
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import LOG, MdkstepError, atomic_write_text, check_writable, setup_logging

EXAMPLE = """Example (QM hybrid runs of 06b against the 0.25 fs baselines; plain MD timed at 0.25, 0.5 and 1 fs):
  mdkstep-eval-qm --baseline outputs/qm/md --hybrid-runs outputs/qm/hybrid --out-dir outputs/qm/eval \\
      --plain-dts 0.25 0.5 1.0 --plain-steps 200
  python src/05b_eval_qm.py --baseline outputs/qm/md --hybrid-runs outputs/qm/hybrid --out-dir outputs/qm/eval \\
      --no-timing --set plain_steps=100
  ase gui outputs/qm/eval/ethanol/trajectories/k16.xyz      # look at a run (or: vmd k16.pdb k16.dcd)
Units: plain-MD steps in fs; force calls and wall seconds per simulated ps; NVE drift kJ/mol/ps;
W1 distances in Angstrom (bonds) and degrees (angles, dihedrals); temperature K; compare_interval_ps in ps.
"""


@dataclass
class EvalQMConfig:
    """Settings of stage 05b (configs/eval_qm.yaml); the defaults are the old flags' defaults."""

    timing: bool = True  #: time plain MD now (wall_speedup); --no-timing: false
    plain_dts_fs: list[float] | None = None  #: plain-MD steps to time, fs (None: the baseline dt, 0.5 and 1.0)
    plain_steps: int = 200  #: velocity-Verlet steps per timed plain segment
    export: bool = True  #: export every run to DCD + PDB and extended XYZ for a viewer; --no-export: false
    compare_interval_ps: float | None = None  #: one frame interval for every run of a molecule, ps (None: the LCM)
    fidelity_ratio_ok: float = FAITHFUL_RATIO  #: faithful = every structure distance <= this x the replica floor

    def validate(self) -> None:
        check_judging_keys(self)
        if self.plain_steps < 3:
            raise ValueError("key 'plain_steps' must be >= 3")
        if self.plain_dts_fs is not None and not all(dt > 0 for dt in self.plain_dts_fs):
            raise ValueError(f"key 'plain_dts_fs' {self.plain_dts_fs}: every step must be > 0 fs")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--baseline", type=Path, required=True, help="QM baseline root (01b --out): <molecule>/replica_*.npz")
    p.add_argument("--hybrid-runs", type=Path, required=True, help="hybrid root (06b outputs): <molecule>/*.npz")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="where metrics.json, report.md, the plots and <molecule>/trajectories/ go")
    p.add_argument("--qm-config", type=Path, default=None,
                   help="QM YAML for the plain-MD timing engine (default: the config stored in the baseline metadata)")
    p.add_argument("--raw-root", type=Path, default=None, help="stage-00 folder for topology.json (else beside / inferred)")
    p.add_argument("--plain-dts", type=float, nargs="+", default=None, metavar="FS",
                   help="plain-MD steps to time, fs (default: the baseline dt, 0.5 and 1.0)")
    p.add_argument("--plain-steps", type=int, default=None, help="velocity-Verlet steps per timed plain segment (default 200)")
    p.add_argument("--no-timing", action="store_true", help="skip the plain-MD timing (no wall_speedup; --set timing=false)")
    p.add_argument("--no-export", action="store_true",
                   help="skip the DCD + PDB and XYZ export of every run (same as --set export=false)")
    p.add_argument("--config", type=Path, default=None,
                   help="evaluation YAML (default: the built-in values, as in configs/eval_qm.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    add_log_level(p)
    return p


# ------------------------------------------------------------------------ plain MD, timed now

def time_plain_md(ref, args, ecfg: EvalQMConfig) -> dict[str, Any]:
    """Plain velocity-Verlet segments (:func:`mdkstep.baselines.plain.time_plain_md`) with the baselines'
    engine (--qm-config, else the config in the baseline metadata) from replica 0's last frame."""
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
    dts = ecfg.plain_dts_fs or sorted({float(meta["dt_fs"]), 0.5, 1.0})
    return plain_segments(factory.make_engine(cfg.engine, system, cfg), ref.positions[-1], ref.velocities[-1], dts,
                          ecfg.plain_steps)


# ------------------------------------------------------------------------ evaluation

def topology_of(name: str, ref, args) -> dict[str, Any]:
    for cand in (args.baseline / name / "topology.json", (args.raw_root / name / "topology.json") if args.raw_root else None):
        if cand is not None and cand.is_file():
            return json.loads(cand.read_text())
    return molecule_topology(args.baseline / name / "replica_0.npz", None, name, np.asarray(ref.atom_types),
                             ref.positions[0])


def evaluate_molecule(name: str, args, ecfg: EvalQMConfig) -> dict[str, Any]:
    replicas = load_replicas(args.baseline / name)
    ref = replicas[0]
    topo = topology_of(name, ref, args)
    runs = {run.stem: run for run in hybrid_runs(args.hybrid_runs / name)}
    base_dt = float(ref.metadata["dt_fs"])
    hybs = {stem: load_trajectory(run) for stem, run in runs.items()}
    interval = common_interval(name, replicas, hybs, ecfg.compare_interval_ps)  # checked before the timing
    plain = time_plain_md(ref, args, ecfg) if ecfg.timing else {}
    reference = Reference(replicas, topo, interval)
    res: dict[str, Any] = {"molecule": name, "baseline": reference.summary, "n_replicas": len(replicas),
                           "baseline_dt_fs": base_dt, "compare_interval_ps": interval,
                           "fidelity_ratio_ok": ecfg.fidelity_ratio_ok, "plain_md": plain, "runs": {}}
    if len(replicas) < 2:
        LOG.warning("%s: one baseline replica, no noise floor (run 01b with --replicas 2)", name)
    for stem, hyb in hybs.items():
        ev = reference.evaluate(hyb, ecfg.fidelity_ratio_ok)
        stats = load_stats(runs[stem])
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
        res["runs"][stem] = ev
    out_dir = args.out_dir / name
    view = view_outputs({"baseline r0": ref, **hybs}, topo, out_dir, ecfg.export)
    res["plots"] = view["plots"]
    for stem, files in view["exported"].items():
        res["runs"][stem]["exported"] = files
    # backbone from the bond graph (an inferred topology has no atomic_numbers: the trajectory's)
    res["ramachandran"] = ramachandran_evaluation(name, {"atomic_numbers": [int(z) for z in ref.atom_types], **topo},
                                                  replicas, hybs, out_dir / "ramachandran.png", interval)
    return res


def write_report(metrics: dict[str, Any], path: Path) -> None:
    lines = ["# md-kstep QM evaluation report", "",
             "Efficiency: force calls and wall seconds per simulated ps, hybrid vs plain velocity-Verlet MD with the "
             "same QM engine, all timed in this run. Ratios > 1 favour the hybrid.", ""]
    for name, m in metrics["molecules"].items():
        lines += [f"## {name}", "", f"Baseline replica 0 (dt {fmt(m['baseline_dt_fs'])} fs): T = "
                  f"{fmt(m['baseline']['temperature_mean_K'])} ± {fmt(m['baseline']['temperature_std_K'])} K; "
                  f"{m['n_replicas']} replica(s) give the noise floor.", ""]
        lines += judging_lines(m)
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
                lines.append(f"| {k}{'' if k in STRUCTURE_KEYS else ' (not deciding)'} | {fmt(d.get(k))} | "
                             f"{fmt(fl.get(k))} | {fmt(ev['ratio_to_floor'].get(k))} |")
            per_el = ev["summary"].get("temperature_per_element_K", {})
            lines += ["", f"faithful: {verdict_cell(ev)}" + (" — " + "; ".join(ev["faithful_reasons"])
                                                            if ev["faithful_reasons"] else "")
                      + f"; hybrid T = {fmt(ev['summary']['temperature_mean_K'])} K, per element "
                      + ", ".join(f"{el} {t:.0f} K" for el, t in per_el.items())
                      + f" (largest deviation from replica 0: {fmt(ev['element_T_max_dev'], 3)}; replicas' own "
                      f"{fmt(ev['element_T_max_dev_replica'], 3)}; accepted up to {fmt(ev['element_T_tolerance'], 3)})",
                      ""]
        lines += view_lines(name, m)
        lines += ramachandran_lines(m.get("ramachandran") or {})
    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if not args.hybrid_runs.is_dir():
        raise MdkstepError(f"{args.hybrid_runs}: folder not found")
    check_writable(args.out_dir, "--out-dir")  # before any evaluation
    if args.plain_steps is not None and args.plain_steps < 3:
        raise MdkstepError("--plain-steps must be >= 3")
    if args.plain_dts is not None and not all(np.isfinite(dt) and dt > 0 for dt in args.plain_dts):
        raise MdkstepError(f"--plain-dts {args.plain_dts}: every step must be a finite number > 0 fs")
    ecfg = load_config(EvalQMConfig, args.config, {"timing": False if args.no_timing else None,
                                                    "export": False if args.no_export else None,
                                                    "plain_dts_fs": args.plain_dts, "plain_steps": args.plain_steps},
                       args.set)
    if args.qm_config is not None:  # checked now, even with --no-timing: a broken config is never ignored
        load_config(QMConfig, args.qm_config)
    names = hybrid_molecules(args.hybrid_runs)
    metrics = evaluate_and_write(names, lambda name: evaluate_molecule(name, args, ecfg), args.out_dir, write_report, {})
    for name, m in metrics["molecules"].items():
        for run, ev in m["runs"].items():
            parts = [f"{key}: calls x{fmt(e.get('force_call_reduction'), 3)}, wall x{fmt(e.get('wall_speedup'), 3)}"
                     for key, e in ev["efficiency_vs_plain"].items()]
            print(f"{name}/{run}: faithful {verdict_cell(ev)} at {fmt(m['compare_interval_ps'])} ps, bond W1 {fmt(ev['distances']['bond_w1_A'])} Å (floor {fmt(ev['floor'].get('bond_w1_A'))}), "
                  f"angle W1 {fmt(ev['distances']['angle_w1_deg'])}° (floor {fmt(ev['floor'].get('angle_w1_deg'))}); "
                  f"hybrid vs plain " + "; ".join(parts))
    return 0


def run() -> None:
    """Console script ``mdkstep-eval-qm``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.eval_qm
    run()
