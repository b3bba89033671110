"""Stage 01: plain OpenMM MD baselines for prepared molecules (MM mode).

Langevin BAOAB (velocity-Verlet form, x and v synchronous) at dt_fs with the config's
friction and temperature, constraints HBonds or none, optional hydrogen mass repartitioning.
Each replica: equilibration (not saved), then production saved every save_interval steps,
streamed to disk in chunks and checkpointed after each chunk, so a killed run resumes with
no lost or duplicated frames (just run the same command again). Optional NVE windows
(plain velocity Verlet) follow replica 0 for an energy-drift reference.

Writes <out>/<molecule>/replica_<r>.npz (trajectory NPZ schema), nve_<j>.npz, and
run_stats.json. Platform: CUDA when present, else Reference for small molecules.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.baselines.openmm_md import MDConfig, RunSpec, raw_steps_per_s, run_trajectory
from mdkstep.cli.common import add_log_level, make_parser, repo_path
from mdkstep.config import load_config, run_cli, to_dict
from mdkstep.molecule.prep import find_molecules
from mdkstep.molecule.system import System, from_molecule_dir
from mdkstep.runner import check_finished, tidy_finished
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import (
    LOG,
    MdkstepError,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    parse_shard,
    setup_logging,
)

EXAMPLE = """Example (2 replicas of 20 ps production each, 2 fs steps, after 2 ps equilibration):
  mdkstep-md --all outputs/raw --config configs/md_quick.yaml --out outputs/md --replicas 2 --time-ps 20
  python src/01_run_md_baselines.py --molecule outputs/raw/ethanol --out outputs/md --time-ps 1 --set dt_fs=1.0
Units: --time-ps / --equil-ps in ps; config dt_fs in fs, friction_per_ps in 1/ps, temperature_K in K.
A finished replica_<r>.npz is skipped when it was made with the same settings (config, seed,
molecule); with other settings the run stops with an error naming the file and the key
(--overwrite redoes it).
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--molecule", type=Path, help="one prepared molecule folder (from stage 00)")
    src.add_argument("--all", type=Path, metavar="RAW_DIR", help="every molecule folder under RAW_DIR")
    p.add_argument("--config", type=Path, default=repo_path("configs/md.yaml"),
                   help="MD YAML (default: configs/md.yaml of the repository)")
    p.add_argument("--out", type=Path, required=True, help="output root; one folder per molecule")
    p.add_argument("--time-ps", type=float, default=None, help="production length per replica, ps (overrides production_ps)")
    p.add_argument("--equil-ps", type=float, default=None, help="equilibration length, ps (overrides equilibration_ps)")
    p.add_argument("--seed", type=int, default=0, help="base seed; replica r uses seed + 1000*r")
    p.add_argument("--replicas", type=int, default=1, help="independent replicas per molecule (>= 2 gives the noise floor)")
    p.add_argument("--shard", default=None, metavar="i/n", help="run only molecules i, i+n, ... (0-based), for array jobs")
    p.add_argument("--nve-windows", type=int, default=None, help="NVE windows after replica 0 (overrides nve_windows)")
    p.add_argument("--save-forces", action="store_true", default=None, help="store forces at every frame")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--measure-raw", action="store_true", help="also time OpenMM with no saving (same system) and report the ratio")
    p.add_argument("--overwrite", action="store_true", help="recompute trajectories that already exist")
    add_log_level(p)
    return p


def last_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(positions nm, velocities nm/ps) of a trajectory's last frame: the end state of the run
    that wrote it (frames are saved after the step, in double precision)."""
    t = load_trajectory(path)
    return np.asarray(t.positions[-1], dtype=float), np.asarray(t.velocities[-1], dtype=float)


def merge_stats(path: Path, new: dict) -> dict:
    """``new`` run statistics merged into those already in ``path``: entries of trajectories
    not rerun this time (same ``out``) are kept, so a rerun that skips finished files keeps them."""
    if not path.is_file():
        return new
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        LOG.warning("%s: unreadable, replaced by this run's statistics", path)
        return new
    merged = {**old, **{k: v for k, v in new.items() if k not in ("replicas", "nve")}}
    for key in ("replicas", "nve"):
        ran = {r.get("out") for r in new.get(key, [])}
        kept = [r for r in old.get(key, []) if r.get("out") not in ran]
        merged[key] = sorted(kept + new.get(key, []), key=lambda r: str(r.get("out", "")))
    return merged


def expected_metadata(mol: System, cfg: MDConfig, spec: RunSpec) -> dict[str, Any]:
    """The settings a finished output of ``spec`` must record to be skipped (the settings part
    of the fingerprint :func:`mdkstep.baselines.openmm_md.run_trajectory` resumes against)."""
    return {"config": to_dict(cfg), "seed": spec.seed, "friction": spec.friction_per_ps,
            "equilibration_ps": spec.equilibration_ps, "label": spec.label, "molecule": mol.name,
            "smiles": mol.smiles, "forcefield": mol.forcefield}


def skip_finished(mol: System, cfg: MDConfig, spec: RunSpec, overwrite: bool) -> bool:
    """True when ``spec``'s output is finished with this run's settings (it is tidied and
    skipped); an error when it is finished with other settings; False when it must run."""
    if overwrite or not spec.out_path.exists():
        return False
    check_finished(spec.out_path, expected_metadata(mol, cfg, spec))
    LOG.info("%s exists, skipping (use --overwrite to redo)", spec.out_path)
    tidy_finished(spec.out_path)
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    for flag, value, strict in (("--time-ps", args.time_ps, True), ("--equil-ps", args.equil_ps, False)):
        if value is not None and not (value > 0 if strict else value >= 0):
            raise MdkstepError(f"{flag} must be {'> 0' if strict else '>= 0'} ps, got {value}")
    cfg = load_config(MDConfig, args.config, {
        "production_ps": args.time_ps, "equilibration_ps": args.equil_ps,
        "nve_windows": args.nve_windows, "save_forces": args.save_forces,
    }, args.set)
    if args.replicas < 1:
        raise MdkstepError("--replicas must be >= 1")
    check_writable(args.out, "--out")  # before any molecule runs
    dirs = [args.molecule] if args.molecule else find_molecules(args.all)
    if not dirs:
        raise MdkstepError(f"{args.all}: no molecule folders (run src/00_prep_mols.py first)")
    i, n = parse_shard(args.shard)
    dirs = dirs[i::n]
    for d in dirs:
        mol = from_molecule_dir(d)
        out_dir = args.out / mol.name
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "topology.json", (d / "topology.json").read_text())  # for stage 02
        stats: dict = {"molecule": mol.name, "config": to_dict(cfg), "replicas": [], "nve": []}
        for r in range(args.replicas):
            spec = RunSpec(out_dir / f"replica_{r}.npz", args.seed + 1000 * r, cfg.friction_per_ps,
                           cfg.production_ps, cfg.equilibration_ps, label=f"replica{r}")
            if skip_finished(mol, cfg, spec, args.overwrite):
                continue
            res = run_trajectory(mol, cfg, spec)
            res.pop("end_state")
            stats["replicas"].append(res)
            LOG.info("%s: %d frames, %.0f steps/s (%s)", spec.out_path, res["n_frames"], res["steps_per_s"] or 0, res["platform"])
        previous = out_dir / "replica_0.npz"
        for j in range(cfg.nve_windows):
            spec = RunSpec(out_dir / f"nve_{j}.npz", args.seed + 7 + j, 0.0, cfg.nve_window_ps, 0.0, label=f"nve{j}")
            if not skip_finished(mol, cfg, spec, args.overwrite):
                # each window continues from the last frame of the one before (window 0: replica 0),
                # read from disk, so a resumed or rerun stage 01 starts it from the same state
                res = run_trajectory(mol, cfg, spec, start_state=last_frame(previous))
                res.pop("end_state")
                stats["nve"].append(res)
            previous = spec.out_path
        if args.measure_raw:
            raw = raw_steps_per_s(mol, cfg)
            saved = stats["replicas"][0]["steps_per_s"] if stats["replicas"] else None
            stats["raw_steps_per_s"] = raw
            if saved:
                stats["saving_speed_ratio_vs_custom_raw"] = saved / raw["custom_baoab"]
                stats["saving_speed_ratio_vs_langevin_middle_raw"] = saved / raw["langevin_middle"]
            print(f"{mol.name}: saving every {cfg.save_interval} step(s) {saved or float('nan'):.0f} steps/s; "
                  f"no saving: BAOAB {raw['custom_baoab']:.0f}, OpenMM LangevinMiddle {raw['langevin_middle']:.0f} steps/s")
        atomic_write_json(out_dir / "run_stats.json", merge_stats(out_dir / "run_stats.json", stats))
    print(f"baselines written under {args.out}")
    return 0


def run() -> None:
    """Console script ``mdkstep-md``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.md
    run()
