#!/usr/bin/env python
"""Stage 06: hybrid MD (MM mode) -- learned k-step jumps corrected with real OpenMM forces.

Each cycle: one model forward jumps all replicas k integrator steps, the state is projected
onto the constraints (and COM/angular momentum), and the real forces correct it: corrector
"kick" = 1 force call per k*dt, "verlet" = 2 calls per (k+1)*dt (see mdkstep/hybrid.py). A
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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from mdkstep.config import load_config, run_cli, to_dict  # noqa: E402
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, seed_everything, setup_logging  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="trained model checkpoint (.pt from stage 04)")
    p.add_argument("--molecule", type=Path, required=True, help="prepared molecule folder (from stage 00)")
    p.add_argument("--out", type=Path, required=True, help="output trajectory NPZ (replicas: <stem>_r<i>.npz)")
    p.add_argument("--md-config", type=Path, default=Path("configs/md.yaml"),
                   help="MD YAML of the baselines: constraints, HMR, platform, dt (default: configs/md.yaml)")
    p.add_argument("--hybrid-config", "--config", type=Path, default=Path("configs/hybrid.yaml"),
                   help="hybrid integrator YAML (default: configs/hybrid.yaml)")
    p.add_argument("--time-ps", type=float, default=10.0, help="simulated time per replica, ps (default 10)")
    p.add_argument("--k", type=int, default=None, help="jump length in steps; must equal the checkpoint's k")
    p.add_argument("--corrector", choices=("kick", "verlet"), default=None,
                   help="kick: 1 force call per k*dt; verlet: 2 calls per (k+1)*dt")
    p.add_argument("--delta-scale", type=float, default=None, help="multiply the predicted jump (dx, dv)")
    p.add_argument("--max-attempts", type=int, default=None, help="jump attempts per cycle before the physics fallback")
    p.add_argument("--ensemble", choices=("nve", "nvt"), default=None, help="nve (energy filter) or nvt (thermostat)")
    p.add_argument("--replicas", type=int, default=1, help="replicas advanced together, one model forward per jump")
    p.add_argument("--seed", type=int, default=0, help="seed for velocities, equilibration and thermostat noise")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="model device (auto: CUDA if present)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on ~20-atom graphs more threads cost more than they save, "
                        "and on a busy machine they can make a forward 100x slower)")
    p.add_argument("--start-from", type=Path, default=None, metavar="NPZ",
                   help="baseline trajectory to start from: replica 0 its last frame, others earlier frames")
    p.add_argument("--equil-ps", type=float, default=None,
                   help="plain BAOAB equilibration (friction max(MD config's, 1/ps)) before the hybrid run "
                        "when not --start-from, ps (default: the MD config's equilibration_ps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hybrid config key (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace finished outputs and any partial run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO")
    return p


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MdkstepError("--device cuda: no CUDA device is available")
    return name


def resolve_config(args, ck: dict, md_cfg):
    """Hybrid config from YAML + flags, with k / dt_fs / temperature checked against the checkpoint."""
    from mdkstep.checkpoint import check_compatible
    from mdkstep.hybrid import HybridConfig

    hcfg = load_config(HybridConfig, args.hybrid_config, {
        "k": args.k, "corrector": args.corrector, "delta_scale": args.delta_scale,
        "max_attempts": args.max_attempts, "ensemble": args.ensemble,
    }, args.set)
    check_compatible(ck, str(args.checkpoint), k=hcfg.k)
    ck_dt = ck.get("dt_fs")
    if ck_dt is not None and abs(float(ck_dt) - md_cfg.dt_fs) > 1e-9:
        raise MdkstepError(f"{args.checkpoint}: trained on dt_fs={ck_dt} data, but {args.md_config} has dt_fs={md_cfg.dt_fs}")
    if hcfg.dt_fs is not None and abs(hcfg.dt_fs - md_cfg.dt_fs) > 1e-9:
        raise MdkstepError(f"hybrid dt_fs={hcfg.dt_fs} differs from the MD config's dt_fs={md_cfg.dt_fs}")
    return hcfg.resolved(k=int(ck["k"]), dt_fs=md_cfg.dt_fs, temperature_K=md_cfg.temperature_K)


def start_states(args, mol, md_cfg, n_rep: int, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(x0, v0) of shape (R,N,3) and a description of where they came from."""
    if args.start_from is not None:
        from mdkstep.trajectory import load_trajectory

        t = load_trajectory(args.start_from)
        if list(map(int, t.atom_types)) != list(map(int, mol.atomic_numbers)):
            raise MdkstepError(f"{args.start_from}: atoms do not match molecule {mol.name}")
        if not np.allclose(t.masses, masses):
            LOG.warning("%s: masses differ from the MD config's system (HMR?)", args.start_from)
        gap = max(1, (t.n_frames // 2) // n_rep)
        idx = [max(0, t.n_frames - 1 - r * gap) for r in range(n_rep)]
        return t.positions[idx].astype(float), t.velocities[idx].astype(float), f"{args.start_from} frames {idx}"
    return *equilibrate(mol, md_cfg, n_rep, args.seed, args.equil_ps), "minimized + Maxwell-Boltzmann + equilibration"


def equilibrate(mol, md_cfg, n_rep: int, seed: int, equil_ps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Minimize, draw Maxwell-Boltzmann velocities and run plain BAOAB (the baseline integrator)."""
    import openmm

    from mdkstep.md import build_system
    from mdkstep.mm import choose_platform, make_integrator

    t_eq = md_cfg.equilibration_ps if equil_ps is None else equil_ps
    n_eq = int(round(t_eq * 1000.0 / md_cfg.dt_fs))
    xs, vs = [], []
    for r in range(n_rep):
        system = build_system(mol, md_cfg)
        integ = make_integrator(md_cfg.dt_fs, md_cfg.temperature_K, max(md_cfg.friction_per_ps, 1.0),
                                md_cfg.constraint_tolerance)
        integ.setRandomNumberSeed(seed + 1000 * r + 1)
        ctx = openmm.Context(system, integ, choose_platform(md_cfg.platform, system.getNumParticles()))
        ctx.setPositions(mol.positions_nm)
        ctx.applyConstraints(md_cfg.constraint_tolerance)
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 2000)
        ctx.setVelocitiesToTemperature(md_cfg.temperature_K, seed + 1000 * r + 1)
        ctx.applyVelocityConstraints(md_cfg.constraint_tolerance)
        if n_eq:
            integ.step(n_eq)
        st = ctx.getState(getPositions=True, getVelocities=True)
        xs.append(np.asarray(st.getPositions(asNumpy=True)._value))
        vs.append(np.asarray(st.getVelocities(asNumpy=True)._value))
    return np.stack(xs), np.stack(vs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from mdkstep.checkpoint import check_compatible, model_from_checkpoint, read_checkpoint
    from mdkstep.chem import load_molecule
    from mdkstep.engines.openmm_engine import OpenMMEngine
    from mdkstep.hybrid import ModelJumper, checkpoint_path, replica_paths, run_hybrid
    from mdkstep.md import MDConfig, build_system

    if args.replicas < 1:
        raise MdkstepError("--replicas must be >= 1")
    if not args.time_ps > 0:
        raise MdkstepError("--time-ps must be > 0")
    md_cfg = load_config(MDConfig, args.md_config)
    ck = read_checkpoint(args.checkpoint)
    mol = load_molecule(args.molecule)
    check_compatible(ck, str(args.checkpoint), atom_types=set(map(int, mol.atomic_numbers)))
    hcfg = resolve_config(args, ck, md_cfg)
    if ck.get("engine") not in (None, "openmm"):
        LOG.warning("%s was trained on %s data; running it with OpenMM forces", args.checkpoint, ck.get("engine"))

    outs = replica_paths(args.out, args.replicas)
    stats_path = args.out.with_suffix(".stats.json")
    if all(p.exists() for p in outs) and not args.overwrite:
        raise MdkstepError(f"{outs[0]} exists; pass --overwrite to redo it")

    seed_everything(args.seed)
    device = pick_device(args.device)
    if args.threads < 1:
        raise MdkstepError("--threads must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(args.checkpoint, device=device)
    engine = OpenMMEngine(build_system(mol, md_cfg), mol.atomic_numbers, md_cfg.platform, md_cfg.constraint_tolerance)
    if checkpoint_path(args.out).is_file() and not args.overwrite:  # resuming: the state comes from there
        x0 = v0 = np.zeros((args.replicas, len(engine.masses), 3))
        start = "resumed (start state: see the trajectory metadata)"
    else:
        x0, v0, start = start_states(args, mol, md_cfg, args.replicas, engine.masses)
    jumper = ModelJumper(model, mol.atomic_numbers, engine.masses, np.asarray(mol.info.bonds), device=device)
    n_cycles = max(hcfg.save_interval_cycles,
                   int(round(args.time_ps / hcfg.cycle_ps / hcfg.save_interval_cycles)) * hcfg.save_interval_cycles)
    meta = {"molecule": mol.name, "smiles": mol.info.smiles, "constraints": md_cfg.constraints,
            "hydrogen_mass_amu": md_cfg.hydrogen_mass_amu, "forcefield": mol.info.forcefield, "seed": args.seed,
            "checkpoint": str(args.checkpoint), "start": start}
    LOG.info("%s: %d replica(s) x %d cycles of %.4g ps (k=%d, %s, %s), model on %s", mol.name, args.replicas,
             n_cycles, hcfg.cycle_ps, hcfg.k, hcfg.corrector, hcfg.ensemble, device)
    stats = run_hybrid(engine, jumper, hcfg, x0, v0, n_cycles, args.out, np.random.default_rng(args.seed),
                       resume=not args.overwrite, metadata=meta, progress=not args.no_progress)
    stats.update({"molecule": mol.name, "checkpoint": str(args.checkpoint), "md_config": to_dict(md_cfg),
                  "hybrid_config": to_dict(hcfg), "device": device, "start": start})
    atomic_write_json(stats_path, stats)
    print(f"{mol.name}: {stats['simulated_ps']:.3g} ps x {args.replicas} replica(s), "
          f"{stats['force_calls_per_ps']:.1f} force calls/ps (k={hcfg.k}, {hcfg.corrector}), "
          f"accepted {stats['jumps_accepted']}/{stats['jumps_attempted']}, retries {stats['retries']}, "
          f"fallbacks {stats['fallbacks']}, NaN frames {stats['nan_frames']}, "
          f"T {stats['temperature_mean_K']:.1f} +- {stats['temperature_std_K']:.1f} K, "
          f"model {stats['model_ms_per_jump']:.2f} ms/jump -> {stats_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
