"""What stages 01b (GFN2-xTB, :mod:`mdkstep.cli.qm`) and 01c (PySCF, :mod:`mdkstep.cli.pyscf`) share:
their options and their body (QM baseline trajectories from SMILES or prepared molecule
folders, through ASE, in a worker pool). Units: nm, ps, K (files); fs for steps."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from mdkstep.baselines.ase_md import TEMPERATURE_TOLERANCE, QMConfig, QMRunSpec
from mdkstep.baselines.pool import QMJob, run_jobs, summary_line
from mdkstep.cli.common import add_log_level, repo_path
from mdkstep.config import load_config, to_dict
from mdkstep.molecule.prep import find_molecules
from mdkstep.molecule.system import System, from_molecule_dir, from_smi_file
from mdkstep.runner import check_finished, tidy_finished
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, check_writable, parse_shard, setup_logging


def add_cli_arguments(p, default_config: str, default_smiles: str | None = None) -> None:
    """The options shared by 01b (xtb) and 01c (pyscf); ``default_config`` and ``default_smiles``
    are paths in the repository."""
    src = p.add_mutually_exclusive_group(required=default_smiles is None)
    src.add_argument("--molecule", type=Path, help="one prepared molecule folder (topology.json + molecule.pdb, stage 00)")
    src.add_argument("--all", type=Path, metavar="RAW_DIR", help="every prepared molecule folder under RAW_DIR")
    src.add_argument("--smiles-file", type=Path, default=repo_path(default_smiles) if default_smiles else None,
                     help="'SMILES name' per line; RDKit ETKDG conformer, formal charge from RDKit"
                          + (f" (default: {default_smiles} of the repository)" if default_smiles else ""))
    p.add_argument("--config", type=Path, default=repo_path(default_config),
                   help=f"QM YAML (default: {default_config} of the repository)")
    p.add_argument("--out", type=Path, required=True, help="output root; writes <out>/<molecule>/replica_<r>.npz")
    p.add_argument("--time-ps", type=float, default=None, help="production length per replica, ps (overrides production_ps)")
    p.add_argument("--equil-ps", type=float, default=None, help="Langevin equilibration, ps (overrides equilibration_ps)")
    p.add_argument("--seed", type=int, default=0, help="base seed (conformer and velocities); replica r uses seed + 1000*r")
    p.add_argument("--replicas", type=int, default=1, help="independent replicas per molecule (>= 2 gives the noise floor)")
    p.add_argument("--num-workers", type=int, default=1, help="parallel processes, one (molecule, replica) each")
    p.add_argument("--omp-num-threads", type=int, default=None,
                   help="OpenMP threads per worker (default: config omp_num_threads, else 1; "
                        "keep workers x threads <= free cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="pyscf: auto uses GPU4PySCF when a CUDA GPU is present; xtb runs on CPU only")
    p.add_argument("--shard", default=None, metavar="i/n", help="run only molecules i, i+n, ... (0-based), for array jobs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="recompute trajectories that already exist")
    p.add_argument("--no-progress", action="store_true", help="no per-trajectory progress bars")
    add_log_level(p)


def load_systems(args) -> list[System]:
    """The molecules named by --molecule / --all / --smiles-file."""

    if args.molecule:
        return [from_molecule_dir(args.molecule)]
    if args.all:
        dirs = find_molecules(args.all)
        if not dirs:
            raise MdkstepError(f"{args.all}: no molecule folders (run src/00_prep_mols.py first)")
        return [from_molecule_dir(d) for d in dirs]
    if args.smiles_file:
        return from_smi_file(args.smiles_file, args.seed)
    raise MdkstepError("give --molecule, --all or --smiles-file")


def expected_metadata(system: System, cfg: QMConfig, spec: QMRunSpec) -> dict[str, Any]:
    """The settings a finished output of ``spec`` must record to be skipped (the settings part
    of the fingerprint :func:`mdkstep.baselines.ase_md.run_qm_trajectory` resumes against)."""
    return {"config": to_dict(cfg), "seed": spec.seed, "label": spec.label, "replica": spec.replica,
            "molecule": system.name, "smiles": system.smiles, "charge": system.charge}


def main_from_args(args, required_engine: str | None = None) -> int:
    """Shared body of 01b / 01c: config, jobs, pool, summary, run_stats.json per molecule."""

    setup_logging(args.log_level)
    for flag, value, strict in (("--time-ps", args.time_ps, True), ("--equil-ps", args.equil_ps, False)):
        if value is not None and not (value > 0 if strict else value >= 0):
            raise MdkstepError(f"{flag} must be {'> 0' if strict else '>= 0'} ps, got {value}")
    overrides: dict[str, Any] = {"production_ps": args.time_ps, "equilibration_ps": args.equil_ps,
                                 "omp_num_threads": args.omp_num_threads}
    if args.device != "auto":
        overrides["use_gpu"] = args.device == "cuda"
    cfg = load_config(QMConfig, args.config, overrides, args.set)
    if required_engine and cfg.engine != required_engine:
        raise MdkstepError(f"{args.config}: key 'engine' is {cfg.engine!r}, but this script runs {required_engine!r}")
    if cfg.engine == "xtb" and args.device == "cuda":
        raise MdkstepError("--device cuda: the xtb engine runs on CPU only")
    if args.replicas < 1 or args.num_workers < 1:
        raise MdkstepError("--replicas and --num-workers must be >= 1")
    check_writable(args.out, "--out")  # before any trajectory runs
    i, n = parse_shard(args.shard)
    systems = load_systems(args)[i::n]
    jobs: list[QMJob] = []
    for s in systems:
        for r in range(args.replicas):
            spec = QMRunSpec(args.out / s.name / f"replica_{r}.npz", args.seed + 1000 * r, f"replica{r}", r)
            if spec.out_path.exists() and not args.overwrite:
                # the metadata records the multiplicity used (the molecule's own when the config has none)
                check_finished(spec.out_path, expected_metadata(
                    s, replace(cfg, multiplicity=s.resolve_multiplicity(cfg.multiplicity)), spec))
                LOG.info("%s exists, skipping (use --overwrite to redo)", spec.out_path)
                tidy_finished(spec.out_path)
                continue
            jobs.append(QMJob(s, spec, cfg, progress=args.num_workers == 1 and not args.no_progress))
    LOG.info("%d trajectories (%d molecules x %d replicas) with %s %s, %d worker(s)", len(jobs), len(systems),
             args.replicas, cfg.engine, cfg.method, args.num_workers)
    results: list[dict[str, Any]] = []
    for res in run_jobs(jobs, args.num_workers, cfg.omp_num_threads, args.log_level):
        results.append(res)
        print(summary_line(res), flush=True)
        if res.get("temperature_warning"):
            LOG.warning(res["temperature_warning"])
    by_mol: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by_mol.setdefault(res["molecule"], []).append(res)
    for name, rs in by_mol.items():
        stats_path = args.out / name / "run_stats.json"
        old = json.loads(stats_path.read_text()).get("replicas", []) if stats_path.is_file() else []
        labels = {r["label"] for r in rs}
        merged = [r for r in old if r.get("label") not in labels] + rs
        atomic_write_json(stats_path, {"molecule": name, "config": to_dict(cfg),
                                       "replicas": sorted(merged, key=lambda r: r.get("label", ""))})
    failed = [r for r in results if "error" in r]
    hot = [r for r in results if r.get("temperature_warning")]
    print(f"{len(results) - len(failed)} trajectories written under {args.out}; {len(failed)} failed; "
          f"{len(hot)} with mean temperature > {TEMPERATURE_TOLERANCE:.0%} off target")
    if failed:
        raise MdkstepError(f"{len(failed)} trajectory(ies) failed, first: {failed[0]['error']}")
    return 0
