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
A finished run is refused unless --overwrite.
"""
# This module is also what 06 and 06b (mdkstep.cli.hybrid_qm) share: the common options, the
# model device, the hybrid config checked against the checkpoint and the engine's time step,
# start frames from a baseline trajectory, and the run + stats JSON + summary line
# (finish_run). They stay here, beside the MM stage that is their base case, because callers
# outside the CLI (studies/levers/lever_study.py, tests) import them from mdkstep.cli.hybrid.
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.baselines.openmm_md import MDConfig, equilibrate
from mdkstep.cli.common import add_log_level, make_parser, repo_path
from mdkstep.config import load_config, run_cli, to_dict
from mdkstep.engines import factory
from mdkstep.exact.run import run_exact_chunked
from mdkstep.exact.sampler import ShearJumper
from mdkstep.hybrid.config import HybridConfig
from mdkstep.hybrid.domain import domain_warning
from mdkstep.hybrid.integrator import StrideSchedule, permutation_orders
from mdkstep.hybrid.run import checkpoint_path, replica_paths, run_hybrid
from mdkstep.model.checkpoint import check_compatible, checkpoint_kind, model_from_checkpoint, read_checkpoint
from mdkstep.model.jumper import ModelJumper
from mdkstep.molecule.system import from_molecule_dir
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import (
    LOG,
    MdkstepError,
    atomic_write_json,
    check_writable_file,
    file_sha256,
    seed_everything,
    setup_logging,
)

EXAMPLE = """Example (20 ps of NVT hybrid MD with a k = 8 model: 16 fs per jump at the 2 fs baselines):
  mdkstep-hybrid --checkpoint outputs/train/best.pt --molecule outputs/raw/ethanol --md-config configs/md_quick.yaml \\
      --hybrid-config configs/hybrid_quick.yaml --start-from outputs/md/ethanol/replica_0.npz \\
      --out outputs/hybrid/ethanol/hybrid_k8.npz --time-ps 20 --set friction_per_ps=30
  python src/06_hybrid_integrate.py --checkpoint models/mm_k8.pt models/mm_k10.pt --schedule 8+10,10+8 \\
      --molecule outputs/raw/ethanol --out outputs/hybrid/ethanol/sched.npz --time-ps 5 --replicas 4
Units: --time-ps and --equil-ps in ps; config dt_fs in fs, friction_per_ps in 1/ps, temperature_K in K.
"""


def add_hybrid_arguments(p: argparse.ArgumentParser, default_config: str = "configs/hybrid.yaml") -> None:
    """Options of the hybrid run common to 06 and 06b (not the engine / molecule ones); the
    default hybrid YAML (in the repository) differs by mode (MM configs/hybrid.yaml, QM
    configs/hybrid_qm.yaml: the best-measured bath friction differs)."""
    p.add_argument("--hybrid-config", "--config", type=Path, default=repo_path(default_config),
                   help=f"hybrid integrator YAML (default: {default_config} of the repository)")
    p.add_argument("--time-ps", type=float, default=10.0, help="simulated time per replica, ps (default 10)")
    p.add_argument("--k", type=int, default=None,
                   help="jump length in steps; must equal the checkpoint's k (with --schedule: the orders' total)")
    p.add_argument("--schedule", default=None, metavar="ORDERS",
                   help="stride schedule over several --checkpoint models: orders of jump lengths (each the k of "
                        "one checkpoint) with equal totals, one drawn per cycle, one force call per jump, e.g. "
                        "8+10,9+9,10+8, or permutations:4+8+10+12 (every order of those; the best measured in MM). "
                        "Why: README, 'Stride resonance'")
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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hybrid config key (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace finished outputs and any partial run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_level(p)


def pick_device(name: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MdkstepError("--device cuda: no CUDA device is available")
    return name


def checkpoint_paths(args) -> list[Path]:
    """Every --checkpoint given (one, or several for a --schedule)."""
    return list(getattr(args, "checkpoints", None) or
                (args.checkpoint if isinstance(args.checkpoint, (list, tuple)) else [args.checkpoint]))


def read_checkpoints(args, atom_types: set[int], engine_name: str) -> list[dict]:
    """The --checkpoint file(s), each checked against the molecule's elements (one-line errors);
    a warning for a model trained on another engine's data."""

    cks = []
    for path in checkpoint_paths(args):
        ck = read_checkpoint(path)
        check_compatible(ck, str(path), atom_types=atom_types)
        if ck.get("engine") not in (None, engine_name):
            LOG.warning("%s was trained on %s data; running it with %s forces", path, ck.get("engine"), engine_name)
        cks.append(ck)
    return cks


def parse_schedule(text: str, ks: list[int]) -> list[list[int]]:
    """--schedule "8+10,9+9,10+8" -> [[8, 10], [9, 9], [10, 8]]; "permutations:4+10+12" -> every
    order of 4, 10, 12. Every k one of ``ks`` (the checkpoints'), equal totals; anything else is
    a one-line error naming --schedule."""

    body = text.replace(" ", "")
    perms = body.startswith("permutations:")
    try:
        orders = [[int(k) for k in o.split("+")] for o in body.removeprefix("permutations:").split(",")]
        if perms:
            if len(orders) != 1 or len(orders[0]) < 2:
                raise ValueError
            orders = permutation_orders(orders[0])
    except ValueError:
        raise MdkstepError(f"--schedule {text!r}: expected orders like 8+10,9+9,10+8 (integers joined by +, "
                           f"orders separated by commas) or permutations:4+10+12") from None
    unknown = sorted({k for o in orders for k in o} - set(ks))
    if unknown:
        raise MdkstepError(f"--schedule {text!r}: no --checkpoint for k = {unknown} (checkpoints have k = {sorted(ks)})")
    if len({sum(o) for o in orders}) > 1:
        raise MdkstepError(f"--schedule {text!r}: the orders must have equal totals (frames evenly spaced), "
                           f"got {[sum(o) for o in orders]}")
    return orders


def schedule_checkpoints(args, cks: list[dict]) -> None:
    """Sets ``args.orders`` (None for one model) and ``args.checkpoint_by_k`` from --checkpoint /
    --schedule, with one-line errors for several checkpoints without a schedule, two of one k,
    or a shear (exact-mode) checkpoint in a schedule."""
    paths = checkpoint_paths(args)
    args.orders, args.checkpoint_by_k = None, {}
    if args.schedule is None:
        if len(paths) > 1:
            raise MdkstepError(f"--checkpoint: {len(paths)} checkpoints need --schedule (e.g. 8+10,9+9,10+8)")
        return
    for path, ck in zip(paths, cks):
        if is_exact_checkpoint(ck):
            raise MdkstepError(f"{path}: an exact-mode (shear) checkpoint cannot run in a --schedule")
        k = int(ck["k"])
        if k in args.checkpoint_by_k:
            raise MdkstepError(f"--checkpoint: {args.checkpoint_by_k[k]} and {path} both have k = {k}")
        args.checkpoint_by_k[k] = Path(path)
    args.orders = parse_schedule(args.schedule, list(args.checkpoint_by_k))


def resolve_hybrid_config(args, ck: dict | list[dict], dt_fs: float, temperature_K: float,
                          engine_config: str | Path):
    """Hybrid config from YAML + flags, with k / dt_fs checked against the checkpoint(s) and the
    engine config's dt_fs (``engine_config`` names that file in errors); unset k, dt_fs and
    temperature_K are filled from the checkpoint / engine config. Several checkpoints (a list)
    run the --schedule: k is the orders' total (``args.orders`` is set here)."""

    cks = ck if isinstance(ck, list) else [ck]
    paths = checkpoint_paths(args)
    schedule_checkpoints(args, cks)
    hcfg = load_config(HybridConfig, args.hybrid_config, {
        "k": args.k, "corrector": args.corrector, "delta_scale": args.delta_scale,
        "max_attempts": args.max_attempts, "ensemble": args.ensemble,
    }, args.set)
    k = sum(args.orders[0]) if args.orders else int(cks[0]["k"])
    if args.orders:
        if hcfg.k is not None and int(hcfg.k) != k:
            raise MdkstepError(f"k={hcfg.k} was requested, but the --schedule orders span k={k}")
        if hcfg.corrector != "kick":
            raise MdkstepError(f"--schedule runs with the kick corrector only (got {hcfg.corrector!r})")
    else:
        check_compatible(cks[0], str(paths[0]), k=hcfg.k)
    for path, c in zip(paths, cks):
        ck_dt = c.get("dt_fs")
        if ck_dt is not None and abs(float(ck_dt) - dt_fs) > 1e-9:
            raise MdkstepError(f"{path}: trained on dt_fs={ck_dt} data, but {engine_config} has dt_fs={dt_fs}")
    if hcfg.dt_fs is not None and abs(hcfg.dt_fs - dt_fs) > 1e-9:
        raise MdkstepError(f"hybrid dt_fs={hcfg.dt_fs} differs from {engine_config}'s dt_fs={dt_fs}")
    return hcfg.resolved(k=k, dt_fs=dt_fs, temperature_K=temperature_K)


def start_frames(traj, n_rep: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(x0, v0) of shape (R,N,3) from a loaded trajectory: replica 0 its last frame, the others
    frames spaced back over its second half; and the frame indices used."""
    gap = max(1, (traj.n_frames // 2) // n_rep)
    idx = [max(0, traj.n_frames - 1 - r * gap) for r in range(n_rep)]
    return traj.positions[idx].astype(float), traj.velocities[idx].astype(float), idx


def check_run_args(args) -> None:
    """One-line errors for bad run flags; ``args.checkpoints`` (all of --checkpoint) and
    ``args.checkpoint`` (the first) are set here."""
    args.checkpoints = checkpoint_paths(args)
    args.checkpoint = args.checkpoints[0]
    if args.replicas < 1:
        raise MdkstepError("--replicas must be >= 1")
    if not args.time_ps > 0:
        raise MdkstepError("--time-ps must be > 0")
    if args.threads < 1:
        raise MdkstepError("--threads must be >= 1")
    check_writable_file(args.out, "--out")  # before the model, the engine or any cycle


def prepare_outputs(args) -> tuple[list[Path], Path]:
    """Replica output paths and the stats JSON path; an error when finished and not --overwrite."""

    outs = replica_paths(args.out, args.replicas)
    if all(p.exists() for p in outs) and not args.overwrite and not is_resuming(args):  # a resume file: a session
        raise MdkstepError(f"{outs[0]} exists; pass --overwrite to redo it")
    return outs, args.out.with_suffix(".stats.json")


def load_model(args, checkpoint: Path):
    """(model, device) on the chosen device with ``args.threads`` torch threads; seeds everything."""
    import torch

    seed_everything(args.seed)
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(checkpoint, device=device, dtype=model_dtype(read_checkpoint(checkpoint)))
    return model, device


def is_exact_checkpoint(ck: dict) -> bool:
    """True for exact mode's ShearKicks checkpoints (model kind "shear")."""

    return checkpoint_kind(ck) == "shear"


def model_dtype(ck: dict):
    """torch dtype to run a checkpoint in: a shear model in its training dtype (float64 by
    default: the Metropolis test compares energies), a jump model in float32."""
    import torch

    if not is_exact_checkpoint(ck):
        return torch.float32
    return torch.float32 if (ck.get("train_config") or {}).get("dtype") == "float32" else torch.float64


def exact_jumper(model, system, engine, hcfg):
    """The :class:`~mdkstep.exact.sampler.ShearJumper` of a loaded shear model on ``system`` (stride
    k*dt of the resolved hybrid config), RATTLE-projected onto the engine's constraints if any."""

    return ShearJumper.for_engine(model, engine, system.bonds, hcfg.k * hcfg.dt_ps)


def run_model(args, engine, model, ck: dict, system, hcfg, x0: np.ndarray, v0: np.ndarray,
              meta: dict[str, Any], extra_stats: dict[str, Any], device: str) -> dict[str, Any]:
    """06/06b's last step: the exact sampler for a shear checkpoint, else the direct-jump hybrid
    with a :class:`~mdkstep.model.jumper.ModelJumper`; returns the run's stats."""
    if is_exact_checkpoint(ck):  # exact mode: generalized HMC with the learned shear stride
        return run_exact_and_report(args, engine, exact_jumper(model, system, engine, hcfg), hcfg, x0, v0,
                                    system.name, meta, extra_stats, device, system.dihedrals)

    if getattr(args, "orders", None):
        jumper = schedule_jumper(args, engine, system, device)
    else:
        jumper = ModelJumper(model, system.atomic_numbers, engine.masses, system.bonds, device=device)
    return run_and_report(args, engine, jumper, hcfg, x0, v0, system.name, meta, extra_stats, device)


def schedule_jumper(args, engine, system, device: str):
    """The :class:`~mdkstep.hybrid.StrideSchedule` of --schedule: one ModelJumper per checkpoint
    (float32, on ``device``), the first order plus the others drawn per cycle."""
    import torch

    jumpers = {}
    for k, path in sorted(args.checkpoint_by_k.items()):
        model, _ = model_from_checkpoint(path, device=device, dtype=torch.float32)
        jumpers[k] = ModelJumper(model, system.atomic_numbers, engine.masses, system.bonds, device=device)
    orders = [[(jumpers[k], k) for k in o] for o in args.orders]
    return StrideSchedule(orders[0], alternatives=orders[1:])


def checkpoint_field(args) -> str | list[str]:
    """The stats' "checkpoint": the path, or the list of a --schedule's paths."""
    paths = checkpoint_paths(args)
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


def run_exact_and_report(args, engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, name: str,
                         meta: dict[str, Any], extra_stats: dict[str, Any], device: str,
                         dihedrals: np.ndarray | None = None) -> dict[str, Any]:
    """Exact mode for 06/06b: n_strides from --time-ps, :func:`mdkstep.exact.run.run_exact_chunked`,
    the stats JSON beside ``args.out`` and a one-line summary. Returns the stats."""

    stats_path = args.out.with_suffix(".stats.json")
    every = hcfg.save_interval_cycles
    n_strides = max(every, int(round(args.time_ps / hcfg.cycle_ps / every)) * every)
    LOG.info("%s: exact mode, %d replica(s) x %d strides of %.4g fs (metropolis %s), model on %s", name,
             args.replicas, n_strides, hcfg.cycle_ps * 1000, hcfg.metropolis, device)
    stats = run_exact_chunked(engine, jumper, hcfg, x0, v0, n_strides, args.out, np.random.default_rng(args.seed),
                              resume=not args.overwrite, metadata=meta, dihedrals=dihedrals,
                              progress=not args.no_progress, fingerprint=run_fingerprint(args))
    stats.update({"molecule": name, "checkpoint": str(args.checkpoint), **extra_stats,
                  "hybrid_config": to_dict(hcfg), "device": device, "warnings": []})
    atomic_write_json(stats_path, stats)
    print(f"{name}: exact mode, {stats['simulated_ps']:.3g} ps x {args.replicas} replica(s) at tau = "
          f"{stats['tau_fs']:.4g} fs, acceptance {stats['acceptance']:.3f}, |dH| median "
          f"{stats['median_abs_dH_kJ_mol']:.3g} / p90 {stats['p90_abs_dH_kJ_mol']:.3g} kJ/mol, "
          f"{stats['force_calls_per_ps']:.1f} force calls/ps, tau_int(U) {stats['tau_int_U_frames']:.3g} frames, "
          f"{stats['ess_per_force_call_U']:.3g} effective samples/call (U), "
          f"T {stats['temperature_mean_K']:.1f} K -> {stats_path}")
    return stats


def is_resuming(args) -> bool:
    """True when a partial run of ``args.out`` will be resumed (its checkpoint exists, no --overwrite)."""

    return checkpoint_path(args.out).is_file() and not args.overwrite


def run_fingerprint(args) -> dict[str, Any]:
    """What defines a hybrid run beyond its config: the model checkpoint's content hash and
    --seed (compared when a partial run resumes); a --schedule adds its orders and every
    checkpoint's hash."""

    fp = {"model_checkpoint_sha256": file_sha256(args.checkpoint), "seed": args.seed}
    if getattr(args, "start_source", None):  # 06b from --smiles / --xyz / --pdb: the structure defines the run
        fp["start_source"] = args.start_source
    if getattr(args, "orders", None):
        fp.update(schedule=args.orders, schedule_checkpoints_sha256={
            str(k): file_sha256(p) for k, p in sorted(args.checkpoint_by_k.items())})
    return fp


def per_element_line(stats: dict[str, Any]) -> str:
    """Per-element kinetic temperatures of a run's stats, e.g. ``H 301 / C 296 / O 310 K``."""
    per = stats.get("temperature_per_element_K") or {}
    return " / ".join(f"{el} {t:.0f}" for el, t in sorted(per.items())) + " K" if per else "per element n/a"


def run_and_report(args, engine, jumper, hcfg, x0: np.ndarray, v0: np.ndarray, name: str,
                   meta: dict[str, Any], extra_stats: dict[str, Any], device: str) -> dict[str, Any]:
    """n_cycles from --time-ps, :func:`mdkstep.hybrid.run_hybrid`, the stats JSON beside
    ``args.out`` and a one-line summary. Returns the stats."""

    stats_path = args.out.with_suffix(".stats.json")
    n_cycles = max(hcfg.save_interval_cycles,
                   int(round(args.time_ps / hcfg.cycle_ps / hcfg.save_interval_cycles)) * hcfg.save_interval_cycles)
    LOG.info("%s: %d replica(s) x %d cycles of %.4g ps (k=%d, %s, %s), model on %s", name, args.replicas,
             n_cycles, hcfg.cycle_ps, hcfg.k, hcfg.corrector, hcfg.ensemble, device)
    stats = run_hybrid(engine, jumper, hcfg, x0, v0, n_cycles, args.out, np.random.default_rng(args.seed),
                       resume=not args.overwrite, metadata=meta, progress=not args.no_progress,
                       fingerprint=run_fingerprint(args))
    stats.update({"molecule": name, "checkpoint": checkpoint_field(args), **extra_stats,
                  "hybrid_config": to_dict(hcfg), "device": device})
    if getattr(args, "orders", None):
        stats["schedule"] = args.orders
    warning = domain_warning(stats, hcfg.temperature_K, checkpoint_paths(args)[0], meta.get("smiles"))
    stats["fallback_fraction"] = stats["fallbacks"] / stats["jumps_attempted"] if stats["jumps_attempted"] else None
    stats["warnings"] = [warning] if warning else []
    atomic_write_json(stats_path, stats)
    if warning:
        LOG.warning("%s: %s", name, warning)
    print(f"{name}: {stats['simulated_ps']:.3g} ps x {args.replicas} replica(s), "
          f"{stats['force_calls_per_ps']:.1f} force calls/ps (k={hcfg.k}, {hcfg.corrector}), "
          f"accepted {stats['jumps_accepted']}/{stats['jumps_attempted']}, retries {stats['retries']}, "
          f"fallbacks {stats['fallbacks']}, NaN frames {stats['nan_frames']}, "
          f"T {stats['temperature_mean_K']:.1f} +- {stats['temperature_std_K']:.1f} K ({per_element_line(stats)}), "
          f"wall {stats['wall_seconds_per_ps'] or float('nan'):.3g} s/ps, "
          f"model {stats['model_ms_per_jump']:.2f} ms/jump -> {stats_path}" + (f"; {warning}" if warning else ""))
    return stats


def finish_run(args, engine, model, device: str, ck: dict, system, hcfg, start_states, meta: dict[str, Any],
               extra_stats: dict[str, Any]) -> dict[str, Any]:
    """The common tail of 06 and 06b: the start state (``start_states()`` -> (x0, v0, description)
    or (x0, v0, description, details): details, a dict, go into the metadata and the stats; not
    called when resuming: the state then comes from the hybrid checkpoint), the metadata
    (``meta`` with "checkpoint" and "start" filled in where the caller placed them, plus a
    --schedule's checkpoints), then :func:`run_model`. Returns the run's stats."""
    details: dict[str, Any] = {}
    if is_resuming(args):
        x0 = v0 = np.zeros((args.replicas, len(engine.masses), 3))
        start = "resumed (start state: see the trajectory metadata)"
    else:
        x0, v0, start, *more = start_states()
        details = dict(more[0]) if more else {}
    meta = {**meta, **details, "checkpoint": str(args.checkpoint), "start": start}
    extra_stats = {**extra_stats, **details}
    if args.orders:
        meta.update(checkpoints=[str(c) for c in args.checkpoints], schedule=args.schedule)
    return run_model(args, engine, model, ck, system, hcfg, x0, v0, meta, {**extra_stats, "start": start}, device)


# ------------------------------------------------------------------------------------ stage 06

def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="trained model checkpoint (.pt from stage 04); several with --schedule")
    p.add_argument("--molecule", type=Path, required=True, help="prepared molecule folder (from stage 00)")
    p.add_argument("--out", type=Path, required=True, help="output trajectory NPZ (replicas: <stem>_r<i>.npz)")
    p.add_argument("--md-config", type=Path, default=repo_path("configs/md.yaml"),
                   help="MD YAML of the baselines: constraints, HMR, platform, dt (default: configs/md.yaml of the "
                        "repository)")
    p.add_argument("--start-from", type=Path, default=None, metavar="NPZ",
                   help="baseline trajectory to start from: replica 0 its last frame, others earlier frames")
    p.add_argument("--equil-ps", type=float, default=None,
                   help="plain BAOAB equilibration (friction max(MD config's, 1/ps)) before the hybrid run "
                        "when not --start-from, ps (default: the MD config's equilibration_ps)")
    add_hybrid_arguments(p)
    return p


def mm_start_states(args, mol, md_cfg, n_rep: int, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(x0, v0) of shape (R,N,3) and a description of where they came from."""
    if args.start_from is not None:
        t = load_trajectory(args.start_from)
        if list(map(int, t.atom_types)) != list(map(int, mol.atomic_numbers)):
            raise MdkstepError(f"{args.start_from}: atoms do not match molecule {mol.name}")
        if not np.allclose(t.masses, masses):
            LOG.warning("%s: masses differ from the MD config's system (HMR?)", args.start_from)
        x, v, idx = start_frames(t, n_rep)
        return x, v, f"{args.start_from} frames {idx}"
    return *equilibrate(mol, md_cfg, n_rep, args.seed, args.equil_ps), "minimized + Maxwell-Boltzmann + equilibration"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    check_run_args(args)
    md_cfg = load_config(MDConfig, args.md_config)
    mol = from_molecule_dir(args.molecule)
    cks = read_checkpoints(args, set(map(int, mol.atomic_numbers)), "openmm")
    hcfg = resolve_hybrid_config(args, cks, md_cfg.dt_fs, md_cfg.temperature_K, args.md_config)
    prepare_outputs(args)
    model, device = load_model(args, args.checkpoint)
    engine = factory.make_engine("openmm", mol, md_cfg)
    meta = {"molecule": mol.name, "smiles": mol.smiles, "constraints": md_cfg.constraints,
            "hydrogen_mass_amu": md_cfg.hydrogen_mass_amu, "forcefield": mol.forcefield, "seed": args.seed,
            "checkpoint": None, "start": None}
    finish_run(args, engine, model, device, cks[0], mol, hcfg,
               lambda: mm_start_states(args, mol, md_cfg, args.replicas, engine.masses),
               meta, {"md_config": to_dict(md_cfg)})
    return 0


def run() -> None:
    """Console script ``mdkstep-hybrid``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.hybrid
    run()
