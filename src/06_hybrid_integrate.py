#!/usr/bin/env python
"""Stage 06: hybrid MD (MM mode) -- learned k-step jumps corrected with real OpenMM forces.

Each cycle: one model forward jumps all replicas k integrator steps, the state is projected
onto the constraints (and COM/angular momentum), and the real forces correct it: corrector
"kick" = 1 force call per k*dt, "verlet" = 2 calls per (k+1)*dt (see mdkstep/hybrid/integrator.py). A
guard rejects bad jumps (non-finite, huge forces, energy jumps), retries with a shrunk jump,
and falls back to plain physics steps. Force calls are counted by the engine itself.

The OpenMM system is built exactly like the baselines (stage 01, --md-config: constraints,
HMR, platform). Start: the last frame(s) of a baseline trajectory (--start-from), else the
minimized structure with Maxwell-Boltzmann velocities and a short plain equilibration
(its steps are not part of the hybrid's force-call count).

Writes <out> (one replica) or <stem>_r<i>.npz (several), in the trajectory NPZ schema, and
<stem>.stats.json. Interrupted runs resume from <stem>.hybrid_ckpt.npz: rerun the command.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mdkstep.config import load_config, run_cli, to_dict
from mdkstep.cli.hybrid import (add_hybrid_arguments, check_run_args, is_resuming, load_model,
                                prepare_outputs, read_checkpoints, resolve_hybrid_config, run_model, start_frames)
from mdkstep.utils import LOG, MdkstepError, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="trained model checkpoint (.pt from stage 04); several with --schedule")
    p.add_argument("--molecule", type=Path, required=True, help="prepared molecule folder (from stage 00)")
    p.add_argument("--out", type=Path, required=True, help="output trajectory NPZ (replicas: <stem>_r<i>.npz)")
    p.add_argument("--md-config", type=Path, default=Path("configs/md.yaml"),
                   help="MD YAML of the baselines: constraints, HMR, platform, dt (default: configs/md.yaml)")
    p.add_argument("--start-from", type=Path, default=None, metavar="NPZ",
                   help="baseline trajectory to start from: replica 0 its last frame, others earlier frames")
    p.add_argument("--equil-ps", type=float, default=None,
                   help="plain BAOAB equilibration (friction max(MD config's, 1/ps)) before the hybrid run "
                        "when not --start-from, ps (default: the MD config's equilibration_ps)")
    add_hybrid_arguments(p)
    return p


def resolve_config(args, ck: dict | list[dict], md_cfg):
    """Hybrid config from YAML + flags, with k / dt_fs / temperature checked against the checkpoint(s)."""
    return resolve_hybrid_config(args, ck, md_cfg.dt_fs, md_cfg.temperature_K, args.md_config)


def start_states(args, mol, md_cfg, n_rep: int, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(x0, v0) of shape (R,N,3) and a description of where they came from."""
    if args.start_from is not None:
        from mdkstep.trajectory import load_trajectory

        t = load_trajectory(args.start_from)
        if list(map(int, t.atom_types)) != list(map(int, mol.atomic_numbers)):
            raise MdkstepError(f"{args.start_from}: atoms do not match molecule {mol.name}")
        if not np.allclose(t.masses, masses):
            LOG.warning("%s: masses differ from the MD config's system (HMR?)", args.start_from)
        x, v, idx = start_frames(t, n_rep)
        return x, v, f"{args.start_from} frames {idx}"
    from mdkstep.baselines.openmm_md import equilibrate

    return *equilibrate(mol, md_cfg, n_rep, args.seed, args.equil_ps), "minimized + Maxwell-Boltzmann + equilibration"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from mdkstep.engines.factory import make_engine
    from mdkstep.baselines.openmm_md import MDConfig
    from mdkstep.molecule.system import from_molecule_dir

    check_run_args(args)
    md_cfg = load_config(MDConfig, args.md_config)
    mol = from_molecule_dir(args.molecule)
    cks = read_checkpoints(args, set(map(int, mol.atomic_numbers)), "openmm")
    hcfg = resolve_config(args, cks, md_cfg)
    ck = cks[0]
    prepare_outputs(args)
    model, device = load_model(args, args.checkpoint)
    engine = make_engine("openmm", mol, md_cfg)
    if is_resuming(args):  # the state comes from the hybrid checkpoint
        x0 = v0 = np.zeros((args.replicas, len(engine.masses), 3))
        start = "resumed (start state: see the trajectory metadata)"
    else:
        x0, v0, start = start_states(args, mol, md_cfg, args.replicas, engine.masses)
    meta = {"molecule": mol.name, "smiles": mol.smiles, "constraints": md_cfg.constraints,
            "hydrogen_mass_amu": md_cfg.hydrogen_mass_amu, "forcefield": mol.forcefield, "seed": args.seed,
            "checkpoint": str(args.checkpoint), "start": start}
    if args.orders:
        meta.update(checkpoints=[str(c) for c in args.checkpoints], schedule=args.schedule)
    run_model(args, engine, model, ck, mol, hcfg, x0, v0, meta, {"md_config": to_dict(md_cfg), "start": start}, device)
    return 0


if __name__ == "__main__":
    run_cli(main)
