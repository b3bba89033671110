"""Stage 06b: hybrid MD (QM mode) -- learned k-step jumps corrected with real QM forces.

The same integrator as stage 06 (mdkstep.hybrid.run_hybrid with a ModelJumper; see that
module for the cycle, the guard, the retries and the physics fallback), with the QM engine
of the baselines instead of OpenMM: --qm-config (configs/qm.yaml: engine xtb | pyscf, method,
multiplicity, accuracy, ...; dt_fs and temperature_K are the baselines'). No constraints: all
atoms move, as in the 01b baselines. Force calls are counted by the engine itself.

Start (exactly one of):
  --start-from NPZ  the last frame(s) of a QM baseline trajectory (01b/01c; replica 0 its last
                    frame, others earlier frames). The molecule comes from --molecule (a stage-00
                    folder: atoms, charge, bonds) or from the baseline NPZ itself (atom types and
                    masses; charge from its metadata; bonds from the topology.json beside it, else
                    inferred from covalent radii).
  --smiles SMILES   your molecule, no baseline needed: an RDKit conformer (charge and spin from the
                    SMILES; bonds RDKit's), or
  --xyz FILE / --pdb FILE   a structure file (bonds inferred from covalent radii; charge from the
                    file where it has one, else --charge, default 0; multiplicity 1 unless the QM
                    config's 'multiplicity' key says otherwise).
  These three are minimised with the QM engine (ASE BFGS, --minimize-steps), thermalised by a
  short strong-friction Langevin run at the target temperature (--thermalize-ps,
  --thermalize-friction; one per replica), given fresh Maxwell-Boltzmann velocities, then run
  exactly as from --start-from. The set-up's force calls are not part of the hybrid's count;
  the trajectory metadata records the source, the minimisation steps and the thermalisation ps.

Writes <out> (one replica) or <stem>_r<i>.npz (several), in the trajectory NPZ schema, and
<stem>.stats.json. Interrupted runs resume from <stem>.hybrid_ckpt.npz: rerun the command.
A finished run is refused unless --overwrite.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from mdkstep.baselines.ase_md import QMConfig, relax_and_thermalize
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
from mdkstep.molecule.system import from_molecule_dir, from_smiles, from_structure_file, from_trajectory
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import LOG, MdkstepError, file_sha256, setup_logging

EXAMPLE = """Example (1 ps of QM hybrid MD with a k = 4 model: 1 fs per jump at the 0.25 fs baselines):
  mdkstep-hybrid-qm --checkpoint outputs/qm/train/best.pt --start-from outputs/qm/md/ethanol/replica_0.npz \\
      --out outputs/qm/hybrid/ethanol/k4.npz --time-ps 1
  python src/06b_hybrid_integrate_qm.py --checkpoint models/qm_k16.pt --start-from data/qm_md/water/replica_0.npz \\
      --qm-config configs/qm.yaml --qm-set accuracy=0.5 --out outputs/qm/hybrid/water/k16.npz --time-ps 2 \\
      --set friction_per_ps=20
Example (your molecule in one command: aspirin from its SMILES, no baseline run first):
  python src/06b_hybrid_integrate_qm.py --smiles 'CC(=O)Oc1ccccc1C(=O)O' --name aspirin \\
      --checkpoint models/qm_k16.pt --out outputs/qm/hybrid/aspirin/k16.npz --time-ps 2
  mdkstep-hybrid-qm --xyz my_molecule.xyz --charge 0 --checkpoint models/qm_k16.pt --out my_molecule.npz --time-ps 1
Units: --time-ps, --thermalize-ps in ps; --thermalize-friction in 1/ps; --charge in e; config dt_fs in fs,
friction_per_ps in 1/ps, temperature_K in K.
"""

SOURCES = ("start_from", "smiles", "xyz", "pdb")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="trained model checkpoint (.pt from stage 04); several with --schedule")
    start = p.add_argument_group("start (exactly one of --start-from, --smiles, --xyz, --pdb)")
    start.add_argument("--start-from", type=Path, default=None, metavar="NPZ",
                       help="QM baseline trajectory (01b/01c): replica 0 starts at its last frame, others earlier")
    start.add_argument("--smiles", default=None, metavar="SMILES",
                       help="start from a SMILES (RDKit conformer, minimised and thermalised with the QM engine), "
                            "e.g. --smiles 'CC(=O)Oc1ccccc1C(=O)O'")
    start.add_argument("--xyz", type=Path, default=None, metavar="FILE",
                       help="start from an XYZ file (Angstrom; first frame; extended XYZ charge= read), e.g. "
                            "--xyz mol.xyz")
    start.add_argument("--pdb", type=Path, default=None, metavar="FILE",
                       help="start from a PDB file (hydrogens included; formal charges read), e.g. --pdb mol.pdb")
    start.add_argument("--name", default=None,
                       help="molecule name for --smiles/--xyz/--pdb (default: 'molecule', or the file's stem)")
    start.add_argument("--charge", type=int, default=None,
                       help="net charge in e for --xyz/--pdb (default: the file's, else 0); with --smiles it must "
                            "match the SMILES, e.g. --charge -1")
    start.add_argument("--minimize-steps", type=int, default=100,
                       help="at most this many BFGS steps with the QM engine before thermalising (force threshold: "
                            "the QM config's minimize_fmax_kj_mol_nm; 0: none; default 100)")
    start.add_argument("--thermalize-ps", type=float, default=0.2,
                       help="Langevin thermalisation at the QM config's dt_fs and temperature_K before the hybrid, "
                            "ps per replica (default 0.2: 800 steps at 0.25 fs; 0: none)")
    start.add_argument("--thermalize-friction", type=float, default=50.0,
                       help="friction of that thermalisation, 1/ps (default 50: strong, tau 0.02 ps)")
    p.add_argument("--molecule", type=Path, default=None,
                   help="prepared molecule folder (stage 00) for --start-from; default: atoms from the NPZ")
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


def check_start_args(args) -> None:
    """Exactly one start source; the options that only fit some sources; sets ``args.start_source``
    (None for --start-from, else a dict naming the source, which also defines the run on resume).
    Errors are one line."""
    given = [f"--{k.replace('_', '-')}" for k in SOURCES if getattr(args, k) is not None]
    if len(given) != 1:
        raise MdkstepError("give exactly one start: --start-from NPZ, --smiles SMILES, --xyz FILE or --pdb FILE"
                           + (f" (got {', '.join(given)})" if given else ""))
    fresh_only = [o for o, v in (("--name", args.name), ("--charge", args.charge)) if v is not None]
    if args.start_from is not None:
        if fresh_only:
            raise MdkstepError(f"{', '.join(fresh_only)}: only with --smiles/--xyz/--pdb (--start-from takes the "
                               "molecule from the NPZ or --molecule)")
        args.start_source = None
        return
    if args.molecule is not None:
        raise MdkstepError(f"--molecule: only with --start-from (given {given[0]})")
    if args.minimize_steps < 0:
        raise MdkstepError("--minimize-steps must be >= 0")
    if args.thermalize_ps < 0 or (args.thermalize_ps > 0 and not args.thermalize_friction > 0):
        raise MdkstepError("--thermalize-ps must be >= 0 and --thermalize-friction > 0")
    if args.smiles is not None:
        args.start_source = {"kind": "smiles", "smiles": args.smiles}
    else:
        kind = "xyz" if args.xyz is not None else "pdb"
        path = Path(getattr(args, kind))
        args.start_source = {"kind": kind, "path": str(path),
                             "sha256": file_sha256(path) if path.is_file() else None}
    args.start_source.update(charge=args.charge, minimize_steps=args.minimize_steps,
                             thermalize_ps=args.thermalize_ps, thermalize_friction_per_ps=args.thermalize_friction)


def fresh_system(args):
    """The :class:`~mdkstep.molecule.system.System` of --smiles / --xyz / --pdb (one-line errors)."""
    if args.smiles is not None:
        mol = from_smiles(args.smiles, args.name or "molecule", seed=args.seed)
        if args.charge is not None and args.charge != mol.charge:
            raise MdkstepError(f"--charge {args.charge}: the SMILES {args.smiles!r} has net charge {mol.charge:+d} "
                               "(write the charge into the SMILES, e.g. [O-])")
        return mol
    return from_structure_file(args.xyz if args.xyz is not None else args.pdb, args.name, args.charge)


def fresh_start_states(args, engine, mol, qcfg):
    """``start_states`` of a fresh molecule: minimise, thermalise (one per replica), fresh
    Maxwell-Boltzmann velocities (:func:`mdkstep.baselines.ase_md.relax_and_thermalize`).
    Returns (x0, v0, description, details for the metadata)."""
    src = args.start_source
    what = f"SMILES {src['smiles']}" if src["kind"] == "smiles" else f"{src['kind'].upper()} {src['path']}"
    LOG.info("%s (%d atoms): minimising (<= %d steps) and thermalising %.3g ps x %d replica(s) with %s", what,
             mol.n_atoms, args.minimize_steps, args.thermalize_ps, args.replicas, qcfg.method)
    x0, v0, info = relax_and_thermalize(mol, engine, qcfg, n_replicas=args.replicas, seed=args.seed,
                                        minimize_steps=args.minimize_steps, thermalize_ps=args.thermalize_ps,
                                        friction_per_ps=args.thermalize_friction)
    t_th = info["thermalization_temperature_K"]
    print(f"{mol.name}: set-up {info['setup_s']:.1f} s ({info['minimization_steps']} BFGS steps, max |F| "
          f"{info['minimization_fmax_kj_mol_nm']:.0f} kJ/(mol nm); {info['thermalization_ps']:.3g} ps Langevin at "
          f"{info['thermalization_friction_per_ps']:g}/ps" + (f", T {t_th:.0f} K" if t_th is not None else "")
          + f"; {info['setup_force_calls']} force calls, not counted below)")
    start = (f"{what}: {info['minimization_steps']} BFGS steps, {info['thermalization_ps']:.3g} ps Langevin "
             f"({info['thermalization_friction_per_ps']:g}/ps), Maxwell-Boltzmann velocities (seed {args.seed}+replica)")
    source = {k: v for k, v in src.items() if k in ("kind", "smiles", "path", "sha256")}
    return x0, v0, start, {"start_source": {**source, **info}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    check_run_args(args)
    check_start_args(args)
    qcfg = load_config(QMConfig, args.qm_config, set_items=args.qm_set)
    if args.start_from is None:
        return main_fresh(args, qcfg)
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


def main_fresh(args, qcfg: QMConfig) -> int:
    """06b from --smiles / --xyz / --pdb: the molecule, the checkpoint's element check (before any
    force call), then minimise + thermalise + Maxwell-Boltzmann and the same hybrid run."""
    mol = fresh_system(args)
    cks = read_checkpoints(args, set(map(int, mol.atomic_numbers)), qcfg.engine)
    multiplicity = mol.resolve_multiplicity(qcfg.multiplicity)
    hcfg = resolve_hybrid_config(args, cks, qcfg.dt_fs, qcfg.temperature_K, args.qm_config)
    prepare_outputs(args)
    limit_threads(qcfg.omp_num_threads or 1)
    model, device = load_model(args, args.checkpoint)
    engine = factory.make_engine(qcfg.engine, mol, qcfg)
    meta = {"molecule": mol.name, "smiles": mol.smiles, "constraints": "none", "charge": mol.charge,
            "multiplicity": multiplicity, "seed": args.seed, "checkpoint": None, "start": None,
            "bonds_from": mol.bonds_from, "qm_method": qcfg.method}
    finish_run(args, engine, model, device, cks[0], mol, hcfg, lambda: fresh_start_states(args, engine, mol, qcfg),
               meta, {"qm_config": to_dict(qcfg)})
    return 0


def run() -> None:
    """Console script ``mdkstep-hybrid-qm``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.hybrid_qm
    run()
