"""Stage 06b: hybrid MD (QM mode) -- learned k-step jumps corrected with real QM forces.

The same integrator as stage 06 (mdkstep.hybrid.run_hybrid with a ModelJumper; see that
module for the cycle, the guard, the retries and the physics fallback), with the QM engine
of the baselines instead of OpenMM: --qm-config (configs/qm.yaml: engine xtb | pyscf, method,
multiplicity, accuracy, ...; dt_fs and temperature_K are the baselines'). No constraints: all
atoms move, as in the 01b baselines. Force calls are counted by the engine itself.

Start: the last frame(s) of a QM baseline trajectory (--start-from, required; replica 0 its
last frame, others earlier frames). The molecule comes from --molecule (a stage-00 folder:
atoms, charge, bonds) or from the baseline NPZ itself (atom types and masses; charge from its
metadata; bonds from the topology.json beside it, else inferred from covalent radii).

Writes <out> (one replica) or <stem>_r<i>.npz (several), in the trajectory NPZ schema, and
<stem>.stats.json. Interrupted runs resume from <stem>.hybrid_ckpt.npz: rerun the command.
A finished run is refused unless --overwrite.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from mdkstep.baselines.ase_md import QMConfig
from mdkstep.baselines.pool import limit_threads
from mdkstep.cli.common import make_parser, repo_path
from mdkstep.cli.hybrid import (
    add_hybrid_arguments,
    check_run_args,
    finish_run,
    load_model,
    prepare_outputs,
    read_checkpoints,
    resolve_hybrid_config,
    start_frames,
)
from mdkstep.config import load_config, run_cli, to_dict
from mdkstep.engines import factory
from mdkstep.molecule.system import from_molecule_dir, from_trajectory
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import LOG, MdkstepError, setup_logging

EXAMPLE = """Example (1 ps of QM hybrid MD with a k = 4 model: 1 fs per jump at the 0.25 fs baselines):
  mdkstep-hybrid-qm --checkpoint outputs/qm/train/best.pt --start-from outputs/qm/md/ethanol/replica_0.npz \\
      --out outputs/qm/hybrid/ethanol/k4.npz --time-ps 1
  python src/06b_hybrid_integrate_qm.py --checkpoint models/qm_k16.pt --start-from data/qm_md/water/replica_0.npz \\
      --qm-config configs/qm.yaml --qm-set accuracy=0.5 --out outputs/qm/hybrid/water/k16.npz --time-ps 2 \\
      --set friction_per_ps=20
Units: --time-ps in ps; config dt_fs in fs, friction_per_ps in 1/ps, temperature_K in K.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="trained model checkpoint (.pt from stage 04); several with --schedule")
    p.add_argument("--start-from", type=Path, required=True, metavar="NPZ",
                   help="QM baseline trajectory (01b/01c): replica 0 starts at its last frame, others earlier")
    p.add_argument("--molecule", type=Path, default=None,
                   help="prepared molecule folder (stage 00); default: atoms from the --start-from NPZ")
    p.add_argument("--out", type=Path, required=True, help="output trajectory NPZ (replicas: <stem>_r<i>.npz)")
    p.add_argument("--qm-config", type=Path, default=repo_path("configs/qm.yaml"),
                   help="QM YAML of the baselines: engine, method, dt_fs, temperature (default: configs/qm.yaml of "
                        "the repository)")
    p.add_argument("--qm-set", action="append", default=[], metavar="KEY=VALUE", help="override a QM config key (repeatable)")
    add_hybrid_arguments(p, default_config="configs/hybrid_qm.yaml")
    return p


def qm_system(args, traj):
    """The system to run (:class:`mdkstep.molecule.system.System`): the --molecule folder (its atoms must
    match the trajectory's; masses are the trajectory's), else the atoms of the --start-from NPZ."""
    if args.molecule is None:
        return from_trajectory(args.start_from, traj)
    mol = from_molecule_dir(args.molecule)
    if list(map(int, mol.atomic_numbers)) != list(map(int, traj.atom_types)):
        raise MdkstepError(f"{args.start_from}: atoms do not match molecule {mol.name}")
    return replace(mol, masses=np.asarray(traj.masses, dtype=float))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    check_run_args(args)
    qcfg = load_config(QMConfig, args.qm_config, set_items=args.qm_set)
    traj = load_trajectory(args.start_from)
    base_dt = traj.metadata.get("dt_fs")
    if base_dt is not None and abs(float(base_dt) - qcfg.dt_fs) > 1e-9:
        raise MdkstepError(f"{args.start_from}: baseline dt_fs={base_dt}, but {args.qm_config} has dt_fs={qcfg.dt_fs}")
    base_engine = traj.metadata.get("engine")
    if base_engine not in (None, qcfg.engine):
        LOG.warning("%s was run with engine %s; the hybrid uses %s", args.start_from, base_engine, qcfg.engine)
    mol = qm_system(args, traj)
    cks = read_checkpoints(args, set(map(int, mol.atomic_numbers)), qcfg.engine)
    hcfg = resolve_hybrid_config(args, cks, qcfg.dt_fs, qcfg.temperature_K, args.qm_config)
    prepare_outputs(args)
    limit_threads(qcfg.omp_num_threads or 1)  # oversubscribed OpenMP costs up to 100x (qm_md)
    model, device = load_model(args, args.checkpoint)
    engine = factory.make_engine(qcfg.engine, mol, qcfg)

    def start_states():
        x0, v0, idx = start_frames(traj, args.replicas)
        return x0, v0, f"{args.start_from} frames {idx}"

    meta = {"molecule": mol.name, "smiles": mol.smiles, "constraints": "none", "charge": mol.charge,
            "multiplicity": mol.resolve_multiplicity(qcfg.multiplicity), "seed": args.seed, "checkpoint": None, "start": None,
            "bonds_from": mol.bonds_from, "qm_method": qcfg.method}
    finish_run(args, engine, model, device, cks[0], mol, hcfg, start_states, meta, {"qm_config": to_dict(qcfg)})
    return 0


def run() -> None:
    """Console script ``mdkstep-hybrid-qm``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.hybrid_qm
    run()
