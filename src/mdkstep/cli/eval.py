"""Stage 05: evaluate hybrid runs against plain-MD baselines (MM; 05b does QM the same way).

For every molecule folder under --hybrid-runs (<molecule>/*.npz written by stage 06 with
their .stats.json), against --baseline/<molecule>/replica_*.npz:
  - rollout fidelity at ONE frame interval per molecule (the least common multiple of the
    replicas' and every run's frame intervals, or --set compare_interval_ps; stated in the
    report): W1 of bond, angle and (pooled, fast) dihedral distributions, mean bond-length
    error, slow-rotamer population difference, intramolecular pair-distance RDF L1, VACF L2,
    temperature — each beside the same distance between independent baseline replicas (the
    noise floor) and as a ratio to it; "faithful" is mdkstep.analysis.evaluation.faithful, the
    bench's rule (structure within 1.5x the floor and every element's T within 10 %; VACF is
    reported, it does not decide);
  - NVE energy drift (kJ/mol/ps, and per atom), per-element temperature;
  - stability (jumps accepted / retried / fallen back, NaN count) and efficiency
    (force_call_reduction, and wall_speedup against plain OpenMM MD timed in this same run);
  - one-jump accuracy on the test split when --checkpoint and --dataset are given.
Writes <out-dir>/metrics.json, report.md and PNG plots, and exports each run for a viewer
(mdkstep.analysis.export): <out-dir>/<molecule>/trajectories/<run>.dcd + <run>.pdb (VMD, PyMOL,
mdtraj; DCD header time axis in ps) and <run>.xyz (extended XYZ, Å; ASE, OVITO). Settings
(export, one_jump_max_windows, plain_md_steps, compare_interval_ps, fidelity_ratio_ok) come from
--config (configs/eval.yaml lists them with their defaults), the flags, then --set KEY=VALUE.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.analysis import plots
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
    one_jump_metrics,
)
from mdkstep.analysis.export import export_trajectory
from mdkstep.analysis.metrics import frame_interval_ps
from mdkstep.analysis.ramachandran import BASIN_NAMES, ramachandran_evaluation
from mdkstep.baselines.openmm_md import MDConfig, raw_steps_per_s
from mdkstep.cli.common import add_log_level, hybrid_molecules, make_parser
from mdkstep.config import from_dict, load_config, run_cli
from mdkstep.data.windows import KStepDataset
from mdkstep.model.checkpoint import model_from_checkpoint
from mdkstep.molecule.system import from_molecule_dir
from mdkstep.pipeline.mode import common_interval_ps
from mdkstep.trajectory import Trajectory, load_trajectory
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, atomic_write_text, check_writable, setup_logging

EXAMPLE = """Example (hybrid runs of stage 06 against 2 baseline replicas; plain OpenMM timed for wall_speedup):
  mdkstep-eval --baseline outputs/md --hybrid-runs outputs/hybrid --out-dir outputs/eval --raw-root outputs/raw \\
      --checkpoint outputs/train/best.pt --dataset outputs/datasets/dataset_k8.npz \\
      --test-split outputs/splits/test.json
  python src/05_eval_drift_rdfs.py --baseline outputs/md --hybrid-runs outputs/hybrid --out-dir outputs/eval \\
      --no-export --set plain_md_steps=5000 --set compare_interval_ps=0.016
  vmd outputs/eval/aspirin/trajectories/k8.pdb outputs/eval/aspirin/trajectories/k8.dcd   # look at a run
Units: W1 distances in Angstrom (bonds) and degrees (angles, dihedrals), drift kJ/mol/ps,
temperature K, force calls and wall seconds per simulated ps, compare_interval_ps in ps.
"""


@dataclass
class EvalConfig:
    """Settings of stage 05 (configs/eval.yaml); the defaults are the old fixed values."""

    export: bool = True  #: export every run to DCD + PDB and extended XYZ for a viewer; --no-export: false
    one_jump_max_windows: int = 8192  #: test windows for the one-jump accuracy (--checkpoint + --dataset)
    plain_md_steps: int = 10000  #: plain OpenMM steps timed for wall_speedup (needs --raw-root)
    compare_interval_ps: float | None = None  #: one frame interval for every run of a molecule, ps (None: the LCM)
    fidelity_ratio_ok: float = FAITHFUL_RATIO  #: faithful = every structure distance <= this x the replica floor

    def validate(self) -> None:
        if self.one_jump_max_windows < 1 or self.plain_md_steps < 1:
            raise ValueError("keys 'one_jump_max_windows' and 'plain_md_steps' must be >= 1")
        check_judging_keys(self)


def check_judging_keys(cfg) -> None:
    """compare_interval_ps > 0 (or None) and fidelity_ratio_ok >= 1 (05 and 05b)."""
    if cfg.compare_interval_ps is not None and not cfg.compare_interval_ps > 0:
        raise ValueError(f"key 'compare_interval_ps' {cfg.compare_interval_ps}: must be > 0 ps (or null: the LCM)")
    if not cfg.fidelity_ratio_ok >= 1.0:
        raise ValueError(f"key 'fidelity_ratio_ok' {cfg.fidelity_ratio_ok}: must be >= 1 (x the replica floor)")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--baseline", type=Path, required=True, help="baseline root (stage 01 --out): <molecule>/replica_*.npz")
    p.add_argument("--hybrid-runs", type=Path, required=True, help="hybrid root (stage 06 outputs): <molecule>/*.npz")
    p.add_argument("--out-dir", type=Path, required=True, help="where metrics.json, report.md and plots go")
    p.add_argument("--raw-root", type=Path, default=None, help="stage-00 folder: residue/atom names for the exported "
                   "PDB (else element + index) and timing plain MD in this run (wall_speedup); the Ramachandran "
                   "analysis needs only topology.json")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint for one-jump accuracy")
    p.add_argument("--dataset", type=Path, default=None, help="dataset_k<K>.npz for one-jump accuracy")
    p.add_argument("--test-split", type=Path, default=None, help="test.json of the dataset (default: all windows)")
    p.add_argument("--no-export", action="store_true",
                   help="skip the DCD + PDB and XYZ export of every run (same as --set export=false)")
    p.add_argument("--config", type=Path, default=None,
                   help="evaluation YAML (default: the built-in values, as in configs/eval.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    add_log_level(p)
    return p


def plain_md_wall_s_per_ps(raw_dir: Path, meta: dict[str, Any], n_steps: int = 10000) -> float | None:
    """Wall seconds per simulated ps of plain OpenMM MD (no saving), timed now, same settings."""
    if not (raw_dir / "topology.json").is_file() or meta.get("engine") != "openmm":
        return None
    cfg = from_dict(MDConfig, meta["config"], "baseline metadata") if "config" in meta else MDConfig()
    sps = raw_steps_per_s(from_molecule_dir(raw_dir), cfg, n_steps=n_steps)["custom_baoab"]
    return 1.0 / (sps * cfg.dt_fs / 1000.0)


def common_interval(name: str, replicas: list[Trajectory], runs: dict[str, Trajectory],
                    given_ps: float | None = None) -> float:
    """The ONE frame interval (ps) at which every run of a molecule and its replica floor are
    compared: ``given_ps`` (compare_interval_ps), which must be a whole multiple of every frame
    interval, else the least common multiple of the replicas' and runs' frame intervals
    (:func:`mdkstep.pipeline.mode.common_interval_ps`, as the bench)."""
    frames = {f"replica {i}": frame_interval_ps(t) for i, t in enumerate(replicas)}
    frames.update({run: frame_interval_ps(t) for run, t in runs.items()})
    frames = {k: v for k, v in frames.items() if v > 0}
    if given_ps is None:
        return common_interval_ps(*(1000.0 * v for v in frames.values())) if frames else 0.0
    for label, f in frames.items():
        n = given_ps / f
        if n < 1 - 1e-6 or abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise MdkstepError(f"compare_interval_ps={given_ps:g}: not a whole multiple of {name} {label}'s frame "
                               f"interval {1000 * f:g} fs")
    return float(given_ps)


def view_outputs(trajs: dict[str, Trajectory], topo: dict[str, Any], out_dir: Path, export: bool,
                 pdb: Path | None = None) -> dict[str, Any]:
    """What a person looks at, for one molecule (05 and 05b): energy/temperature, structure
    histograms and pair-distance distribution plots of every trajectory in ``trajs`` (replica 0
    first) and, with ``export``, each run (not the replica) for a viewer
    (:func:`mdkstep.analysis.export.export_trajectory`: DCD + PDB, extended XYZ) under
    ``out_dir/trajectories``. Returns {"plots": [...], "exported": {run: files}}."""
    bonds = np.asarray(topo["bonds"], dtype=int).reshape(-1, 2)
    out: dict[str, Any] = {"plots": [str(plots.energy_temperature(trajs, out_dir / "energy_temperature.png")),
                                     str(plots.structure_histograms(trajs, topo, out_dir / "structure_histograms.png")),
                                     str(plots.rdf_overlay(trajs, out_dir / "rdf.png"))], "exported": {}}
    if export:
        for run, t in trajs.items():
            if not run.startswith("baseline"):
                out["exported"][run] = export_trajectory(t, out_dir / "trajectories", run, bonds, pdb)
    return out


def evaluate_molecule(name: str, args, cfg: EvalConfig) -> dict[str, Any]:
    replicas = load_replicas(args.baseline / name)
    ref = replicas[0]
    topo_file = args.baseline / name / "topology.json"
    if not topo_file.is_file() and args.raw_root:
        topo_file = args.raw_root / name / "topology.json"
    if not topo_file.is_file():
        raise MdkstepError(f"{args.baseline / name}: no topology.json (re-run stage 01, or give --raw-root)")
    topo = json.loads(topo_file.read_text())
    runs = {run.stem: run for run in hybrid_runs(args.hybrid_runs / name)}
    raw_dir = args.raw_root / name if args.raw_root else None
    base_wall = plain_md_wall_s_per_ps(raw_dir, ref.metadata, cfg.plain_md_steps) if raw_dir else None
    hybs = {stem: load_trajectory(run) for stem, run in runs.items()}
    interval = common_interval(name, replicas, hybs, cfg.compare_interval_ps)
    reference = Reference(replicas, topo, interval)
    res: dict[str, Any] = {"molecule": name, "baseline": reference.summary, "n_replicas": len(replicas),
                           "compare_interval_ps": interval, "fidelity_ratio_ok": cfg.fidelity_ratio_ok, "runs": {}}
    trajs = {"baseline r0": ref}
    for stem, hyb in hybs.items():
        ev = reference.evaluate(hyb, cfg.fidelity_ratio_ok)
        ev["efficiency"] = efficiency(load_stats(runs[stem]), float(ref.metadata["dt_fs"]), base_wall)
        res["runs"][stem] = ev
        trajs[stem] = hyb
    out_dir = args.out_dir / name
    pdb = raw_dir / "molecule.pdb" if raw_dir and (raw_dir / "molecule.pdb").is_file() else None
    view = view_outputs(trajs, topo, out_dir, cfg.export, pdb)
    res["plots"] = view["plots"]
    for stem, files in view["exported"].items():
        res["runs"][stem]["exported"] = files
    # backbone from the bond graph (a SMILES-prepared PDB is one UNK residue): every replica and run
    res["ramachandran"] = ramachandran_evaluation(name, topo, replicas, hybs, out_dir / "ramachandran.png",
                                                  interval)
    return res


def one_jump(args, cfg: EvalConfig) -> dict[str, Any]:
    model, ck = model_from_checkpoint(args.checkpoint)
    ds = KStepDataset(args.dataset, args.test_split)
    if ds.k != int(ck["k"]):
        raise MdkstepError(f"{args.dataset}: dataset k={ds.k} but {args.checkpoint} has k={ck['k']}")
    return one_jump_metrics(model, ds, cfg.one_jump_max_windows)


def ramachandran_lines(rama: dict[str, Any]) -> list[str]:
    """Report lines: per replica and run, per residue, basin populations (%), core-to-core
    transitions, and each run's basin_tv vs replica 0 beside the replica floor."""
    if not rama.get("backbone"):
        return [f"Ramachandran: none ({rama.get('note', 'not evaluated')}).", ""]
    fl = rama.get("floor", {}).get("basin_tv")
    lines = [f"### Ramachandran (backbone from the bond graph, {rama['backbone']['n_residues']} residue(s); "
             f"regions in mdkstep/molecule/peptide.py BASINS_DEG; every {fmt(rama['interval_ps'])} ps)", "",
             "| trajectory | residue | " + " | ".join(f"{b} %" for b in BASIN_NAMES)
             + " | transitions | per ns | basin TV vs r0 (floor) | ratio |",
             "|" + "---|" * (len(BASIN_NAMES) + 6)]
    rows = [(k, v, False) for k, v in rama["replicas"].items()] + [(k, v, True) for k, v in rama["runs"].items()]
    for label, s, is_run in rows:
        for r, res in enumerate(s["residues"]):
            tv = f"{fmt(s['basin_tv'])} ({fmt(fl)}) | {fmt(s['basin_tv_ratio_to_floor'])}" if is_run and r == 0 else " | "
            lines.append(f"| {label} | {r + 1} | " + " | ".join(f"{100 * res['populations'][b]:.1f}" for b in BASIN_NAMES)
                         + f" | {res['transitions']} | {fmt(res['transitions_per_ns'])} | {tv} |")
    plot = rama.get("plot") or f"NOT drawn: {rama.get('plot_error')}"
    return lines + ["", f"Replica floor of basin TV: {fmt(fl)} (max over replica pairs and residues). "
                    f"Ramachandran plot: {plot}", ""]


def judging_lines(m: dict[str, Any]) -> list[str]:
    """Report lines (05, 05b): the one comparison interval and the rule "faithful"."""
    return [f"Every run and the replica floor compared at ONE frame interval: {fmt(m['compare_interval_ps'])} ps "
            "(the least common multiple of the replicas' and runs' frame intervals unless compare_interval_ps was "
            f"set). Faithful (the bench's rule, mdkstep.analysis.evaluation.faithful): {', '.join(STRUCTURE_KEYS)} "
            f"each <= {m['fidelity_ratio_ok']:g}x the replica floor AND every element's mean T within 10 % of replica "
            f"0's (or {m['fidelity_ratio_ok']:g}x the replicas' own spread); VACF is reported, it does not decide.", ""]


def verdict_cell(ev: dict[str, Any]) -> str:
    """'yes (1.2x)' or 'NO (3.1x)': the verdict and the worst structure ratio."""
    return f"{'yes' if ev['faithful'] else 'NO'} ({fmt(ev['max_structure_ratio'], 3)}x)"


def view_lines(name: str, m: dict[str, Any]) -> list[str]:
    """Report lines (05, 05b): the plots and each run's files for a viewer."""
    lines = ["Plots: " + ", ".join(f"{name}/{Path(p).name}" for p in m.get("plots", [])), ""]
    exported = {run: ev["exported"] for run, ev in m["runs"].items() if ev.get("exported")}
    if exported:
        lines += [f"Trajectories for a viewer in {name}/trajectories/ (DCD time axis in ps, XYZ in Å with time_ps per "
                  "frame): " + "; ".join(f"`vmd {Path(f['pdb']).name} {Path(f['dcd']).name}`, `ase gui "
                                         f"{Path(f['xyz']).name}`" for f in exported.values()), ""]
    return lines


def write_report(metrics: dict[str, Any], path: Path) -> None:
    lines = ["# md-kstep evaluation report", ""]
    if "one_jump" in metrics:
        lines += ["## One-jump accuracy (test windows)", "", "| predictor | pos RMSE Å | bond RMSE Å | angle RMSE ° | dihedral RMSE ° | vel RMSE nm/ps |", "|---|---|---|---|---|---|"]
        for pred in ("no_move", "ballistic", "model"):
            r = metrics["one_jump"].get(pred)
            if r:
                lines.append(f"| {pred} | {fmt(r['pos_rmse_A'])} | {fmt(r['bond_rmse_A'])} | {fmt(r['angle_rmse_deg'])} | "
                             f"{fmt(r['dihedral_rmse_deg'])} | {fmt(r['vel_rmse_nm_ps'])} |")
        lines.append("")
    for name, m in metrics["molecules"].items():
        lines += [f"## {name}", "", f"Baseline replica 0: T = {fmt(m['baseline']['temperature_mean_K'])} ± "
                  f"{fmt(m['baseline']['temperature_std_K'])} K; {m['n_replicas']} replicas give the noise floor.", ""]
        lines += judging_lines(m)
        head = ("| run | " + " | ".join(f"{k} (floor){'' if k in STRUCTURE_KEYS else ', not deciding'}"
                                        for k in FIDELITY_KEYS)
                + " | faithful (worst ratio) | T mean K | force calls/ps | force_call_reduction | wall_speedup | "
                "fallbacks | NaN |")
        lines += [head, "|" + "---|" * (len(FIDELITY_KEYS) + 8)]
        for run, ev in m["runs"].items():
            d, fl, eff = ev["distances"], ev["floor"], ev["efficiency"]
            cells = [f"{fmt(d.get(k))} ({fmt(fl.get(k))})" for k in FIDELITY_KEYS]
            lines.append(f"| {run} | " + " | ".join(cells) + f" | {verdict_cell(ev)} | "
                         f"{fmt(ev['summary']['temperature_mean_K'])} | {fmt(eff.get('hybrid_force_calls_per_ps'))} | "
                         f"{fmt(eff.get('force_call_reduction'))} | {fmt(eff.get('wall_speedup'))} | "
                         f"{fmt(eff.get('fallbacks'))} | {fmt(eff.get('nan_frames', ev['summary']['nan_frames']))} |")
            per_el = ev["summary"].get("temperature_per_element_K", {})
            if per_el:
                lines.append(f"|  ↳ {run}: T per element K: " + ", ".join(f"{el} {t:.0f}" for el, t in per_el.items())
                             + f" (largest deviation from replica 0: {fmt(ev['element_T_max_dev'], 3)}, accepted up to "
                             f"{fmt(ev['element_T_tolerance'], 3)}); fallback fraction {fmt(eff.get('fallback_fraction'))} |")
            if ev["faithful_reasons"]:
                lines.append(f"|  ↳ {run} not faithful: " + "; ".join(ev["faithful_reasons"]) + " |")
            if "drift_kj_mol_ps" in ev["summary"]:
                lines.append(f"|  ↳ NVE drift {fmt(ev['summary']['drift_kj_mol_ps'])} kJ/mol/ps |")
        lines += [""] + view_lines(name, m)
        lines += ramachandran_lines(m.get("ramachandran") or {})
    lines += ["wall_speedup < 1 is expected for MM on small molecules: an OpenMM force call costs tens of µs, "
              "a model forward about a millisecond. The MM product is the force-call reduction.", ""]
    atomic_write_text(path, "\n".join(lines))


def evaluate_and_write(names: list[str], evaluate, out_dir: Path, write_report, extra: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every molecule (``evaluate(name)``), then write metrics.json (+ ``extra``) and
    report.md in ``out_dir`` (05 and 05b)."""
    metrics: dict[str, Any] = {"molecules": {}}
    for name in names:
        LOG.info("evaluating %s", name)
        metrics["molecules"][name] = evaluate(name)
    metrics.update(extra)
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_report(metrics, out_dir / "report.md")
    print(f"report: {out_dir / 'report.md'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if not args.hybrid_runs.is_dir():
        raise MdkstepError(f"{args.hybrid_runs}: folder not found")
    cfg = load_config(EvalConfig, args.config, {"export": False if args.no_export else None}, args.set)
    check_writable(args.out_dir, "--out-dir")  # before any evaluation
    names = hybrid_molecules(args.hybrid_runs)
    # one-jump accuracy first: a bad --checkpoint / --dataset / --test-split fails before the long part
    jump = one_jump(args, cfg) if args.checkpoint and args.dataset else None
    metrics = evaluate_and_write(names, lambda name: evaluate_molecule(name, args, cfg), args.out_dir, write_report,
                                 {"one_jump": jump} if jump is not None else {})
    for name, m in metrics["molecules"].items():
        for run, ev in m["runs"].items():
            eff = ev["efficiency"]
            print(f"{name}/{run}: faithful {verdict_cell(ev)} at {fmt(m['compare_interval_ps'])} ps, "
                  f"bond W1 {fmt(ev['distances']['bond_w1_A'])} Å (floor {fmt(ev['floor'].get('bond_w1_A'))}), "
                  f"angle W1 {fmt(ev['distances']['angle_w1_deg'])}° (floor {fmt(ev['floor'].get('angle_w1_deg'))}), "
                  f"force_call_reduction {fmt(eff.get('force_call_reduction'))}, wall_speedup {fmt(eff.get('wall_speedup'))}")
        rama = m.get("ramachandran") or {}
        for run, s in rama.get("runs", {}).items():
            print(f"{name}/{run}: Ramachandran basin TV {fmt(s['basin_tv'])} (floor {fmt(rama['floor'].get('basin_tv'))}), "
                  f"transitions {[r['transitions'] for r in s['residues']]} (replicas "
                  f"{[[r['transitions'] for r in v['residues']] for v in rama['replicas'].values()]})")
    return 0


def run() -> None:
    """Console script ``mdkstep-eval``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.eval
    run()
