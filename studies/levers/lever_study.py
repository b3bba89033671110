#!/usr/bin/env python
"""Ablation of the rollout training levers (issue 11, Build 2): one model per lever setting,
same seed, same data, same optimizer-step budget; for each, the one-jump test metrics beside
"no move" and "ballistic" and a short hybrid rollout against the reference replicas.

Levers (each off in the baseline; settings can be changed with --lever-set):
  baseline  nothing
  massdv    (f) mass-weighted velocity term, dv_weight = mass (the kinetic energy of the error)
  internal  (g) internal-coordinate terms x10: lambda_bond = 1.0, lambda_angle = 0.5
  combo     the union of the single levers that helped the rollout (score below), or --combo
Levers (a)-(e) (input noise, time reversal, per-element KE term, two-jump loss, v(t+k) direct)
measured as no help (README "Rollout levers") and were removed from the trainer; their rows in
the README came from this script before the removal.

Rollout per model and molecule: R replicas from the last frames of reference replica 0, the
hybrid config as given, compared with the reference replicas at their common frame interval;
structure ratios = distance / replica floor (floor = the largest distance between two
reference replicas); per-element kinetic temperature beside the reference's; force calls/ps;
fallbacks. A lever "helps" when its rollout score (the geometric mean over molecules and
structure keys of the ratio to the floor) is below the baseline's and its largest per-element
temperature deviation from the reference is not more than 2 percentage points above the
baseline's; without a rollout (--rollout-ps 0) the one-jump test bond RMSE decides.

Writes <out>/lever_study.json and <out>/lever_study.md; per model <out>/<lever>/ (the training
run: best.pt, metrics.csv, final_metrics.json, lever.json) and <out>/<lever>/hybrid/. A rerun
reuses a finished model whose settings are unchanged (and its rollouts), so an interrupted
study continues where it stopped; --overwrite retrains everything.

Example (MM bench data, k = 8):
  .venv/bin/python studies/levers/lever_study.py --dataset outputs/bench/mm/models/k8/dataset.npz \\
      --splits-dir outputs/bench/mm/models/k8/splits --reference-root outputs/bench/mm/runs \\
      --reference-pattern 'ref_r*.npz' --raw-root outputs/bench/mm/raw --k 8 --max-steps 8000 \\
      --model-set use_forces=true --set-train lr=1e-3 --set-train batch_size=64 \\
      --set-hybrid friction_per_ps=10 --rollout-ps 50 --replicas 2 --out outputs/lever_study_mm_k8
Smoke (a tiny ethanol dataset built on the fly, ~1 minute):
  .venv/bin/python studies/levers/lever_study.py --smoke --out /tmp/lever_smoke
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # the package is installed editable; this keeps a bare checkout working
    sys.path.insert(0, str(ROOT / "src"))

from mdkstep.utils import LOG, MdkstepError, atomic_write_json, setup_logging  # noqa: E402

#: lever name -> (short label, TrainConfig overrides, ModelConfig overrides)
LEVERS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "baseline": ("baseline", {}, {}),
    "massdv": ("+f mass-weighted dv", {"dv_weight": "mass"}, {}),
    "internal": ("+g bond/angle terms x10", {"lambda_bond": 1.0, "lambda_angle": 0.5}, {}),
}
SINGLE = [n for n in LEVERS if n != "baseline"]
ALL = ["baseline", *SINGLE, "combo"]
HELPS_TEXT = {None: "", True: "yes", False: "no"}
T_SLACK = 0.02  #: a lever may raise the largest per-element |T/T_ref - 1| by this much and still "help"


# ------------------------------------------------------------------------------ arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, help="k-step dataset (stage 02 output, dataset_k<K>.npz)")
    p.add_argument("--splits-dir", type=Path, help="folder with train.json, val.json, test.json (stage 02)")
    p.add_argument("--reference-root", type=Path, help="folder with <molecule>/<reference replicas> (stage 01 output)")
    p.add_argument("--reference-pattern", default="replica_*.npz",
                   help="glob of the reference replicas in each molecule folder (bench: 'ref_r*.npz'); >= 2 for a floor")
    p.add_argument("--raw-root", type=Path, default=None,
                   help="stage-00 folders <molecule>/ (system.xml; needed by --engine openmm)")
    p.add_argument("--molecules", nargs="*", default=None,
                   help="molecules to roll out (default: those of the test split, else all, with reference replicas)")
    p.add_argument("--k", type=int, default=None, help="jump length; must equal the dataset's (default: the dataset's)")
    p.add_argument("--max-steps", type=int, default=2000, help="optimizer steps per model (the budget; default 2000)")
    p.add_argument("--levers", nargs="+", default=ALL, choices=ALL, metavar="LEVER",
                   help=f"subset of {' '.join(ALL)} (default: all; baseline is always trained)")
    p.add_argument("--combo", nargs="*", default=None, choices=SINGLE, metavar="LEVER",
                   help="levers of the combination (default: those that helped)")
    p.add_argument("--lever-set", action="append", default=[], metavar="LEVER.KEY=VALUE",
                   help="change a lever's setting, e.g. internal.lambda_bond=0.5 (repeatable)")
    p.add_argument("--model-config", type=Path, default=ROOT / "configs/model.yaml")
    p.add_argument("--train-config", type=Path, default=ROOT / "configs/train.yaml")
    p.add_argument("--hybrid-config", type=Path, default=ROOT / "configs/hybrid.yaml")
    p.add_argument("--engine", choices=("openmm", "xtb"), default="openmm", help="force engine of the rollout")
    p.add_argument("--engine-config", type=Path, default=None,
                   help="MD YAML (openmm, default configs/md.yaml) or QM YAML (xtb, default configs/qm.yaml): "
                        "constraints, HMR, platform / method; it must match the reference")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override (as 04_train.py --model-set)")
    p.add_argument("--set-train", action="append", default=[], metavar="KEY=VALUE", help="train config override")
    p.add_argument("--set-hybrid", action="append", default=[], metavar="KEY=VALUE", help="hybrid config override")
    p.add_argument("--rollout-ps", type=float, default=10.0,
                   help="hybrid ps per replica (0: no rollout; compare equal lengths with the reference when you can)")
    p.add_argument("--replicas", type=int, default=2, help="hybrid replicas per molecule (default 2)")
    p.add_argument("--seed", type=int, default=0, help="training seed (all models) and rollout seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="training device: auto | cpu | cuda")
    p.add_argument("--out", type=Path, required=True, help="study folder")
    p.add_argument("--overwrite", action="store_true", help="retrain every model and redo every rollout")
    p.add_argument("--smoke", action="store_true",
                   help="build a tiny ethanol dataset under <out>/smoke_data and run a ~1 minute study on it")
    p.add_argument("--log-level", default="WARNING")
    return p


def parse_kv(items: list[str], what: str) -> dict[str, Any]:
    """KEY=VALUE items (values read as YAML) as a dict; errors name ``what``."""
    from mdkstep.config import parse_override

    out = {}
    for it in items:
        k, v = parse_override(it)
        out[k] = v
    return out


def lever_table(items: list[str]) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """LEVERS with the --lever-set changes applied (a key goes to the model config when it is
    a ModelConfig field, else to the train config)."""
    from dataclasses import fields

    from mdkstep.model import ModelConfig

    table = {n: (lab, dict(t), dict(m)) for n, (lab, t, m) in LEVERS.items()}
    model_keys = {f.name for f in fields(ModelConfig)}
    for it in items:
        name, _, rest = it.partition(".")
        if name not in SINGLE or "=" not in rest:
            raise MdkstepError(f"--lever-set {it!r}: expected LEVER.KEY=VALUE with LEVER one of {SINGLE}")
        (key, val), = parse_kv([rest], "--lever-set").items()
        table[name][2 if key in model_keys else 1][key] = val
    return table


# ------------------------------------------------------------------------------ smoke data

def build_smoke_data(root: Path, k: int) -> dict[str, Path]:
    """A tiny MM study input: ethanol prepared from SMILES, two 3 ps reference replicas (2 fs,
    HBonds, forces saved) and a k-step dataset of replica 0 with a time split."""
    from mdkstep.baselines.openmm_md import MDConfig, RunSpec, run_trajectory
    from mdkstep.config import load_config
    from mdkstep.data.windows import build_dataset, write_split_files
    from mdkstep.molecule.prep import PrepConfig, SmiEntry, prepare_from_smiles
    from mdkstep.molecule.system import from_molecule_dir

    raw, md = root / "raw", root / "md"
    if not (raw / "ethanol" / "system.xml").is_file():
        prepare_from_smiles(SmiEntry(1, "CCO", "ethanol"), raw, PrepConfig())
    mol = from_molecule_dir(raw / "ethanol")
    cfg = load_config(MDConfig, ROOT / "configs/md_quick.yaml",
                      {"production_ps": 3.0, "equilibration_ps": 0.5, "nve_windows": 0, "platform": "Reference"})
    for r in range(2):
        out = md / "ethanol" / f"replica_{r}.npz"
        if not out.is_file():
            run_trajectory(mol, cfg, RunSpec(out, seed=r + 1, friction_per_ps=cfg.friction_per_ps,
                                             production_ps=cfg.production_ps, equilibration_ps=cfg.equilibration_ps),
                           progress=False)
    (md / "ethanol" / "topology.json").write_text((raw / "ethanol" / "topology.json").read_text())
    ds = root / f"dataset_k{k}.npz"
    summary = build_dataset([md / "ethanol" / "replica_0.npz"], k, ds, split="time", raw_root=raw)
    write_split_files(root / "splits", summary, [str(ds)])
    return {"dataset": ds, "splits": root / "splits", "reference_root": md, "raw_root": raw,
            "engine_config": ROOT / "configs/md_quick.yaml"}


def apply_smoke(args) -> None:
    """--smoke: tiny data, tiny model, short budget and rollout (about a minute on one core)."""
    k = args.k or 4
    paths = build_smoke_data(args.out / "smoke_data", k)
    args.dataset, args.splits_dir = paths["dataset"], paths["splits"]
    args.reference_root, args.raw_root = paths["reference_root"], paths["raw_root"]
    args.engine_config, args.engine, args.k = paths["engine_config"], "openmm", k
    args.model_config = ROOT / "configs/model_quick.yaml"
    args.model_set = ["hidden=16", "n_layers=2", *args.model_set]
    args.set_train = ["batch_size=32", "warmup_steps=2", "lr=1e-3", "eval_every=10", "val_max_windows=128",
                      "metrics_max_windows=256", "norm_max_windows=256", "log_every=10", *args.set_train]
    args.hybrid_config = ROOT / "configs/hybrid_quick.yaml"
    args.max_steps = min(args.max_steps, 15)
    args.rollout_ps = min(args.rollout_ps, 0.4) if args.rollout_ps > 0 else 0.0
    args.replicas = 1


# ------------------------------------------------------------------------------ one model

def train_one(name: str, args, table, combo: list[str], ds_k: int) -> dict[str, Any]:
    """Train (or reuse) the model of lever setting ``name``; returns its record (settings,
    wall time, one-jump test metrics of model / no_move / ballistic)."""
    from mdkstep.config import load_config
    from mdkstep.model import ModelConfig
    from mdkstep.training.trainer import TrainConfig, train

    t_over, m_over = lever_overrides(name, table, combo)
    run = args.out / name
    base_t = {**parse_kv(args.set_train, "--set-train"), "k": ds_k, "max_steps": args.max_steps, "seed": args.seed,
              "wandb": False}
    tcfg = load_config(TrainConfig, args.train_config, {**base_t, **t_over})
    mcfg = load_config(ModelConfig, args.model_config, {**parse_kv(args.model_set, "--model-set"), **m_over})
    settings = {"train_overrides": t_over, "model_overrides": m_over, "train_config": _asdict(tcfg),
                "model_config": _asdict(mcfg), "dataset": str(args.dataset)}
    lever_file, final = run / "lever.json", run / "final_metrics.json"
    if not args.overwrite and final.is_file() and lever_file.is_file():
        old = json.loads(lever_file.read_text())
        if old.get("settings") == json.loads(json.dumps(settings)):
            LOG.warning("%s: reusing the trained model in %s", name, run)
            return old
    t0 = time.perf_counter()
    splits = (args.splits_dir / "train.json", args.splits_dir / "val.json")
    res = train(args.dataset, splits, mcfg, tcfg, run, device_name=args.device, test_split=args.splits_dir / "test.json",
                progress=False, overwrite=True)
    rec = {"lever": name, "label": table[name][0] if name in table else "combo (" + " ".join(combo) + ")",
           "settings": settings, "train_wall_s": time.perf_counter() - t0, "steps": res["steps"],
           "checkpoint": str(run / "best.pt"), "one_jump": res["final_metrics"].get("test") or res["final_metrics"]["val"]}
    _clear_rollouts(run)
    atomic_write_json(lever_file, rec)
    return rec


def lever_overrides(name: str, table, combo: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train overrides, model overrides) of a lever setting; combo merges its members."""
    if name != "combo":
        return dict(table[name][1]), dict(table[name][2])
    t, m = {}, {}
    for n in combo:
        t.update(table[n][1])
        m.update(table[n][2])
    return t, m


def _asdict(cfg) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(cfg)))


def _clear_rollouts(run: Path) -> None:
    """Remove the rollouts of an earlier model in ``run`` (they belong to other weights)."""
    import shutil

    if (run / "hybrid").is_dir():
        shutil.rmtree(run / "hybrid")


# ------------------------------------------------------------------------------ rollouts

class Rollouts:
    """Per molecule: the engine config, the reference replicas, their floors (the bench's
    FloorCache, computed once per interval and shared by every model) and per-element
    temperature."""

    def __init__(self, args, ds_spec, molecules: list[str]):
        from mdkstep.config import load_config

        self.args, self.spec, self.molecules = args, ds_spec, molecules
        if args.engine == "openmm":
            from mdkstep.baselines.openmm_md import MDConfig

            self.engine_cfg = load_config(MDConfig, args.engine_config or ROOT / "configs/md.yaml")
        else:
            from mdkstep.baselines.ase_md import QMConfig

            self.engine_cfg = load_config(QMConfig, args.engine_config or ROOT / "configs/qm.yaml")
        self.refs: dict[str, Any] = {}

    def reference(self, mol: str) -> dict[str, Any]:
        """Replicas, topology, their floors, the reference's per-element temperature (K) and its
        length (ps)."""
        if mol not in self.refs:
            from mdkstep.analysis.metrics import summarize_trajectory
            from mdkstep.bench.core import FloorCache
            from mdkstep.trajectory import load_trajectory

            paths = sorted((self.args.reference_root / mol).glob(self.args.reference_pattern))
            if len(paths) < 2:
                raise MdkstepError(f"{self.args.reference_root / mol}: {len(paths)} reference replicas match "
                                   f"'{self.args.reference_pattern}'; the floor needs >= 2")
            reps = [load_trajectory(p) for p in paths]
            topo = self.spec.topologies[mol]
            summ = summarize_trajectory(reps[0], np.asarray(topo["bonds"]))
            self.refs[mol] = {"replicas": reps, "topo": topo, "paths": [str(p) for p in paths],
                              "floors": FloorCache(reps, topo),
                              "T_element_K": summ["temperature_per_element_K"], "T_mean_K": summ["temperature_mean_K"],
                              "ps": float(reps[0].time_ps[-1] - reps[0].time_ps[0])}
        return self.refs[mol]

    def system(self, mol: str):
        from mdkstep.molecule.system import from_molecule_dir, from_trajectory

        if self.args.raw_root is not None and (self.args.raw_root / mol).is_dir():
            return from_molecule_dir(self.args.raw_root / mol)
        if self.args.engine == "openmm":
            raise MdkstepError(f"--raw-root: no stage-00 folder for {mol} (the OpenMM engine needs its system.xml)")
        return from_trajectory(self.reference(mol)["paths"][0])

    def run(self, rec: dict[str, Any], mol: str) -> dict[str, Any]:
        """Roll out ``rec``'s model on ``mol`` (the bench's cached, resumable hybrid run: reused
        when finished with the same model, hybrid config, length and seed) and evaluate it."""
        from mdkstep.bench.core import hybrid_config, load_jumper, run_fingerprint, run_hybrid_production
        from mdkstep.cli.hybrid import start_frames
        from mdkstep.engines.factory import make_engine

        ref = self.reference(mol)
        checkpoint = Path(rec["checkpoint"])
        out = checkpoint.parent / "hybrid" / f"{mol}.npz"
        system = self.system(mol)
        engine = make_engine(self.args.engine, system, self.engine_cfg)
        k = int(rec["settings"]["train_config"]["k"])
        hcfg = hybrid_config(str(self.args.hybrid_config), parse_kv(self.args.set_hybrid, "--set-hybrid"), k=k,
                             dt_fs=self.spec.dt_fs, temperature_K=self.engine_cfg.temperature_K)
        n_cycles = max(hcfg.save_interval_cycles, int(round(self.args.rollout_ps / hcfg.cycle_ps)))
        time_ps = n_cycles * hcfg.cycle_ps
        jumper = load_jumper(checkpoint, engine, system.bonds, k, self.spec.dt_fs)
        x0, v0, _ = start_frames(ref["replicas"][0], self.args.replicas)
        fp = run_fingerprint(checkpoint, hcfg, time_ps, self.args.seed)
        stats = run_hybrid_production(engine, jumper, hcfg, x0, v0, time_ps, out, self.args.seed,
                                      {"molecule": mol, "seed": self.args.seed}, fp)
        return self.evaluate(stats, ref)

    def evaluate(self, stats: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
        """Structure ratios to the floor (mean over replicas), per-element T, calls/ps, fallbacks.
        Each run is compared with reference replica 0 at the coarser of the two frame intervals."""
        from mdkstep.analysis.evaluation import evaluate_run
        from mdkstep.analysis.metrics import frame_interval_ps
        from mdkstep.bench.core import STRUCTURE_KEYS
        from mdkstep.trajectory import load_trajectory

        ratios: dict[str, list[float]] = {}
        t_el: dict[str, list[float]] = {}
        ref0 = ref["replicas"][0]
        for p in stats["outputs"]:
            hyb = load_trajectory(Path(p))
            interval = max(frame_interval_ps(hyb), frame_interval_ps(ref0))
            ev = evaluate_run(ref0, hyb, ref["topo"], ref["floors"].at(interval), interval)
            for key, val in ev["ratio_to_floor"].items():
                ratios.setdefault(key, []).append(val)
            for el, t in ev["summary"]["temperature_per_element_K"].items():
                t_el.setdefault(el, []).append(t)
        ratio = {k: float(np.mean(v)) for k, v in ratios.items()}
        temp = {el: float(np.mean(v)) for el, v in t_el.items()}
        dev = {el: temp[el] / ref["T_element_K"][el] - 1.0 for el in temp if ref["T_element_K"].get(el)}
        struct = [ratio[k] for k in STRUCTURE_KEYS if k in ratio and ratio[k] > 0]
        return {"ratio_to_floor": ratio, "structure_geomean": float(np.exp(np.mean(np.log(struct)))) if struct else None,
                "structure_max": max(struct) if struct else None,
                "T_element_K": temp, "T_element_ref_K": ref["T_element_K"], "T_element_dev": dev,
                "T_element_max_abs_dev": max(abs(d) for d in dev.values()) if dev else None,
                "force_calls_per_ps": stats.get("force_calls_per_ps"), "fallbacks": stats.get("fallbacks"),
                "jumps_attempted": stats.get("jumps_attempted"),
                "fallback_fraction": stats["fallbacks"] / stats["jumps_attempted"] if stats.get("jumps_attempted") else None,
                "nan_frames": stats.get("nan_frames"), "hybrid_ps": stats.get("simulated_ps"), "reference_ps": ref["ps"]}


# ------------------------------------------------------------------------------ scoring

def rollout_score(rec: dict[str, Any]) -> tuple[float | None, float | None]:
    """(geometric mean of the structure ratios over molecules, largest per-element |T/T_ref - 1|)."""
    ro = rec.get("rollout") or {}
    g = [r["structure_geomean"] for r in ro.values() if r.get("structure_geomean")]
    t = [r["T_element_max_abs_dev"] for r in ro.values() if r.get("T_element_max_abs_dev") is not None]
    return (float(np.exp(np.mean(np.log(g)))) if g else None), (max(t) if t else None)


def helps(rec: dict[str, Any], base: dict[str, Any]) -> bool:
    """Does a lever beat the baseline? Rollout score when both have one, else one-jump bond RMSE."""
    s, t = rollout_score(rec)
    sb, tb = rollout_score(base)
    if s is not None and sb is not None:
        return s < sb and (t is None or tb is None or t <= tb + T_SLACK)
    return rec["one_jump"]["model"]["bond_rmse_A"] < base["one_jump"]["model"]["bond_rmse_A"]


def choose_combo(records: dict[str, dict[str, Any]], given: list[str] | None) -> list[str]:
    """The levers of the combination: ``given``, else every single lever that helped."""
    if given is not None:
        return list(given)
    return [n for n in SINGLE if n in records and helps(records[n], records["baseline"])]


# ------------------------------------------------------------------------------ report

def markdown(study: dict[str, Any]) -> str:
    """The ablation table: one-jump test metrics and, per molecule, the rollout figures."""
    from mdkstep.analysis.evaluation import fmt

    lines = [f"# Lever study: k = {study['k']}, {study['max_steps']} steps per model, seed {study['seed']}", "",
             f"dataset `{study['dataset']}`; rollout {study['rollout_ps']} ps x {study['replicas']} replica(s) per "
             f"molecule; levers that helped: {', '.join(study['helped']) or 'none'}; combination: "
             f"{' + '.join(study['combo']) if study['combo'] else 'not trained (needs >= 2 levers)'}", "",
             "## One jump (test split)", "",
             "| model | train s | bond RMSE Å | heavy bond Å | angle ° | dihedral ° | vel RMSE nm/ps | bond skill |",
             "|---|---|---|---|---|---|---|---|"]
    first = next(iter(study["models"].values()))["one_jump"]
    for name in ("no_move", "ballistic"):
        m = first[name]
        lines.append(f"| {name.replace('_', ' ')} | | {fmt(m['bond_rmse_A'])} | {fmt(m['bond_rmse_heavy_A'])} | "
                     f"{fmt(m['angle_rmse_deg'])} | {fmt(m['dihedral_rmse_deg'])} | {fmt(m['vel_rmse_nm_ps'])} | |")
    for rec in study["models"].values():
        m, sk = rec["one_jump"]["model"], rec["one_jump"].get("skill", {})
        lines.append(f"| {rec['label']} | {rec['train_wall_s']:.0f} | {fmt(m['bond_rmse_A'])} | "
                     f"{fmt(m['bond_rmse_heavy_A'])} | {fmt(m['angle_rmse_deg'])} | {fmt(m['dihedral_rmse_deg'])} | "
                     f"{fmt(m['vel_rmse_nm_ps'])} | {fmt(sk.get('bond_rmse_A'))} |")
    if study["rollout_ps"] > 0:
        lines += ["", "## Rollout vs the reference (ratios to the replica floor; T per element, K)", "",
                  "| model | molecule | bond | mean bond | angle | dihedral | RDF | VACF | geomean | T per element (ref) "
                  "| calls/ps | fallbacks | helps |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rec in study["models"].values():
            for mol, r in (rec.get("rollout") or {}).items():
                rt = r["ratio_to_floor"]
                temps = ", ".join(f"{el} {r['T_element_K'][el]:.0f} ({r['T_element_ref_K'].get(el, float('nan')):.0f})"
                                  for el in sorted(r["T_element_K"]))
                lines.append(f"| {rec['label']} | {mol} | " + " | ".join(fmt(rt.get(k), 3) for k in (
                    "bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1", "vacf_l2"))
                    + f" | {fmt(r['structure_geomean'], 3)} | {temps} | {fmt(r['force_calls_per_ps'], 4)} | "
                      f"{r['fallbacks']}/{r['jumps_attempted']} | {HELPS_TEXT[rec.get('helps')]} |")
        hyb = [r for rec in study["models"].values() for r in (rec.get("rollout") or {}).values()]
        if hyb and hyb[0]["hybrid_ps"] < 0.9 * hyb[0]["reference_ps"]:
            lines += ["", f"Note: the rollouts ({hyb[0]['hybrid_ps']:.3g} ps) are shorter than the reference replicas "
                          f"({hyb[0]['reference_ps']:.3g} ps): part of each ratio is the shorter run's own sampling noise."]
    lines += ["", "helps: rollout structure geomean below the baseline's with the largest per-element T deviation at "
                  f"most {100 * T_SLACK:.0f} points above it (one-jump bond RMSE without a rollout).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main

def rollout_molecules(args, ds) -> list[str]:
    """--molecules, else the test split's molecules (all when the split is by time) that have a reference."""
    if args.molecules:
        return list(args.molecules)
    from mdkstep.data.windows import KStepDataset

    test = KStepDataset(args.dataset, args.splits_dir / "test.json")
    names = sorted({test.spec.molecules[int(t)] for t in np.unique(test.windows[:, 0])}) or sorted(set(ds.spec.molecules))
    return [m for m in names if (args.reference_root / m).is_dir()]


def check_args(args) -> None:
    for key in ("dataset", "splits_dir", "reference_root"):
        if getattr(args, key) is None and not (key == "reference_root" and args.rollout_ps == 0):
            raise MdkstepError(f"--{key.replace('_', '-')} is required (or pass --smoke)")
    if args.max_steps < 1 or args.replicas < 1 or args.rollout_ps < 0:
        raise MdkstepError("--max-steps and --replicas must be >= 1, --rollout-ps >= 0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    import torch

    from mdkstep.data.windows import KStepDataset

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        apply_smoke(args)
    check_args(args)
    table = lever_table(args.lever_set)
    ds = KStepDataset(args.dataset)
    if args.k is not None and args.k != ds.k:
        raise MdkstepError(f"--k {args.k}: {args.dataset} has k = {ds.k}")
    mols = rollout_molecules(args, ds) if args.rollout_ps > 0 else []
    if args.rollout_ps > 0 and not mols:
        raise MdkstepError(f"{args.reference_root}: no reference replicas for the rollout molecules")
    rollouts = Rollouts(args, ds.spec, mols) if mols else None
    records: dict[str, dict[str, Any]] = {}
    wanted = ["baseline", *[n for n in args.levers if n not in ("baseline", "combo")]]
    for name in wanted:
        records[name] = study_one(name, args, table, [], ds.k, rollouts, mols)
    combo: list[str] = []
    helped = choose_combo(records, None)
    if "combo" in args.levers:
        combo = choose_combo(records, args.combo)
        if len(combo) >= 2:
            records["combo"] = study_one("combo", args, table, combo, ds.k, rollouts, mols)
        else:
            print(f"combination skipped: {len(combo)} lever(s) helped ({', '.join(combo) or 'none'})")
            combo = []
    for name, rec in records.items():
        rec["helps"] = None if name == "baseline" else helps(rec, records["baseline"])
    study = {"k": ds.k, "dataset": str(args.dataset), "max_steps": args.max_steps, "seed": args.seed,
             "rollout_ps": args.rollout_ps, "replicas": args.replicas, "molecules": mols, "helped": helped, "combo": combo,
             "levers": {n: {"train": t, "model": m} for n, (_, t, m) in table.items()}, "models": records}
    atomic_write_json(args.out / "lever_study.json", study)
    (args.out / "lever_study.md").write_text(markdown(study))
    print(markdown(study))
    print(f"-> {args.out / 'lever_study.json'}, {args.out / 'lever_study.md'}")
    return 0


def study_one(name: str, args, table, combo: list[str], k: int, rollouts: Rollouts | None,
              mols: list[str]) -> dict[str, Any]:
    """Train one lever setting and roll it out on every molecule; returns its record."""
    t0 = time.perf_counter()
    rec = train_one(name, args, table, combo, k)
    if rollouts is not None:
        rec["rollout"] = {m: rollouts.run(rec, m) for m in mols}
    s, t = rollout_score(rec)
    print(f"{name}: bond RMSE {rec['one_jump']['model']['bond_rmse_A']:.4g} A (no move "
          f"{rec['one_jump']['no_move']['bond_rmse_A']:.4g}), rollout geomean {s if s is None else round(s, 3)}, "
          f"max per-element T dev {t if t is None else round(t, 3)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rec


if __name__ == "__main__":
    from mdkstep.config import run_cli

    run_cli(main)
