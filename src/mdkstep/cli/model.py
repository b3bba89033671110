"""Stage 03: inspect a k-step model: architecture, parameter count, an equivariance
self-check and forward timings.

The self-check builds a random molecule (chain of --n-atoms atoms, 0.15 nm bonds, random
velocities in nm/ps and forces in kJ/mol/nm), perturbs the freshly initialised weights so
that outputs are far from zero, and compares the model's dx, dv (and forces) after a random
orthogonal transform with a reflection (det -1), a random rotation (det +1), a translation
and a permutation of the atoms, in float64. Errors are relative to the largest output and
should be ~1e-15. Timings are the median of ~50 forward passes after a warm-up, at batch 1
and batch 32 copies of that molecule (the model applies its own distance cutoff).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np

from mdkstep.cli.common import make_parser, repo_path
from mdkstep.config import load_config, run_cli
from mdkstep.model import ModelConfig, build_model, make_graph_batch
from mdkstep.utils import MdkstepError, seed_everything

EXAMPLE = """Example (the default EGNN on a 21-atom chain; timings at batch 1, 32 and 64, 2 CPU threads):
  mdkstep-model --config configs/model.yaml --set hidden=128 --batch 64 --threads 2
  python src/03_model.py --config configs/model_transformer.yaml --device cpu --repeats 20
Units of the test molecule: bonds 0.15 nm, velocities nm/ps, forces kJ/(mol nm); timings in ms.
"""

MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--config", type=Path, default=repo_path("configs/model.yaml"),
                   help="model YAML (configs/model*.yaml; default: configs/model.yaml of the repository)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model-config key, e.g. --set hidden=128 (repeatable)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to time the model: auto = cuda if available (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, molecule and transforms (default: 0)")
    p.add_argument("--n-atoms", type=int, default=21, help="atoms in the random test molecule (default: 21, aspirin)")
    p.add_argument("--batch", type=int, default=1, help="an extra batch size to time besides 1 and 32 (default: 1)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for the timings (default: 2)")
    p.add_argument("--repeats", type=int, default=50, help="timed forward passes per batch size (default: 50)")
    return p


def random_molecule(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Chain molecule: z, masses (amu), pos (nm), vel (nm/ps), forces (kJ/mol/nm), bonds."""
    z = rng.choice([1, 6, 7, 8], size=n)
    steps = rng.normal(size=(n, 3))
    steps *= 0.15 / np.linalg.norm(steps, axis=1, keepdims=True)
    return {
        "z": z, "masses": np.array([MASSES[int(a)] for a in z]), "pos": np.cumsum(steps, axis=0),
        "vel": rng.normal(size=(n, 3)) * 0.6, "forces": rng.normal(size=(n, 3)) * 400.0,
        "bonds": np.array([[i, i + 1] for i in range(n - 1)], dtype=np.int64).reshape(-1, 2),
    }


def to_batch(mol: dict, n_copies: int, cfg: ModelConfig, dtype, device=None):
    return make_graph_batch([mol["z"]] * n_copies, [mol["masses"]] * n_copies, [mol["pos"]] * n_copies,
                            [mol["vel"]] * n_copies, [mol["forces"]] * n_copies if cfg.use_forces else None,
                            [mol["bonds"]] * n_copies, max_hops=cfg.max_hops, dtype=dtype, device=device)


def random_orthogonal(rng: np.random.Generator, det: float) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.sign(np.linalg.det(q)) != det:
        q[:, 0] *= -1.0
    return q


def equivariance_check(model, cfg: ModelConfig, mol: dict, rng: np.random.Generator) -> dict[str, float]:
    """Max relative errors of the outputs under E(3) transforms and a permutation (float64, CPU)."""
    import torch

    m64 = copy.deepcopy(model).to("cpu", torch.float64).eval()
    m64.set_normalization(v_scale=0.6, f_scale=400.0, dx_scale=0.05, dv_scale=1.0)
    with torch.no_grad():
        for p in m64.parameters():
            p.add_(0.3 * torch.randn_like(p))
    keys = ["dx", "dv"] + (["forces"] if cfg.force_head else [])

    def run(m: dict) -> dict:
        with torch.no_grad():
            return m64(to_batch(m, 1, cfg, torch.float64))

    def err(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in keys)

    ref = run(mol)
    errors = {}
    for name, det in (("rotation+reflection (det -1)", -1.0), ("rotation (det +1)", 1.0)):
        q = random_orthogonal(rng, det)
        moved = run(dict(mol, pos=mol["pos"] @ q.T + rng.normal(size=3), vel=mol["vel"] @ q.T,
                         forces=mol["forces"] @ q.T))
        qt = torch.as_tensor(q)
        errors[name + " + translation"] = err(moved, {k: ref[k] @ qt.T for k in keys})
    errors["translation only"] = err(run(dict(mol, pos=mol["pos"] + 5.0)), ref)
    perm = rng.permutation(len(mol["z"]))
    inv = np.argsort(perm)
    pm = {k: mol[k][perm] for k in ("z", "masses", "pos", "vel", "forces")}
    pm["bonds"] = inv[mol["bonds"]]
    errors["permutation"] = err(run(pm), {k: ref[k][perm] for k in keys})
    return errors


def time_forward(model, batch, repeats: int, device) -> tuple[float, float]:
    """(median, minimum) wall milliseconds of one forward pass (inference mode); the minimum
    is the better estimate on a machine shared with other jobs."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for _ in range(10):
            model(batch)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(batch)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_atoms < 2 or args.batch < 1 or args.repeats < 1 or args.threads < 1:
        raise MdkstepError("--n-atoms must be >= 2; --batch, --repeats and --threads >= 1")
    import torch

    cfg = load_config(ModelConfig, args.config, set_items=args.set)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MdkstepError("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_model(cfg)
    print(model)
    print(f"\nconfig: {cfg}")
    print(f"parameters: {model.n_parameters():,}")

    mol = random_molecule(args.n_atoms, rng)
    errors = equivariance_check(model, cfg, mol, rng)
    print(f"\nequivariance self-check ({args.n_atoms} atoms, float64; max relative error of "
          f"{', '.join(['dx', 'dv'] + (['forces'] if cfg.force_head else []))}):")
    for name, e in errors.items():
        print(f"  {name:45s} {e:.2e}")
    worst = max(errors.values())

    model = model.to(device).eval()
    print(f"\nforward timings on {device} ({torch.get_num_threads()} CPU threads, float32, "
          f"median of {args.repeats}):")
    for b in sorted({1, 32, args.batch}):
        batch = to_batch(mol, b, cfg, torch.float32, device)
        ms, ms_min = time_forward(model, batch, args.repeats, device)
        print(f"  batch {b:4d} ({b * args.n_atoms:5d} atoms, {batch.edge_index.shape[1]:6d} pairs before cutoff): "
              f"{ms:8.3f} ms per forward (min {ms_min:.3f}), {ms / b:7.3f} ms per molecule")
    if worst > 1e-6:
        raise MdkstepError(f"equivariance self-check failed: max relative error {worst:.2e} > 1e-6")
    print("\nself-check passed")
    return 0


def run() -> None:
    """Console script ``mdkstep-model``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.model
    run()
