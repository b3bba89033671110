"""mdkstep-adapt: fine-tune a jump model (e.g. a foundation model) on your molecule, in minutes.

Runs X ps of the molecule's own MD on the model's engine and step (QM: GFN2-xTB at 0.25 fs;
MM: OpenMM + OpenFF at 2 fs), then fine-tunes the model on it (same architecture and jump,
starting from its weights and normalization) and writes the adapted checkpoint with a model
card: data and training wall time, one-jump test metrics beside "no move". Cached under
--work-dir: rerun the same command after an interruption and it resumes. Then run the hybrid
with it (06b --checkpoint <adapted>.pt --smiles ...). Use this when a hybrid run warns that the
model is outside its training domain for your molecule.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdkstep.adapt import AdaptSpec, adapt
from mdkstep.cli.common import add_log_level, make_parser, repo_path
from mdkstep.config import run_cli
from mdkstep.pipeline.machine import set_threads
from mdkstep.utils import setup_logging

EXAMPLE = """Example (QM foundation model, 2 ps of GFN2-xTB data, 1000 steps: a few CPU minutes):
  mdkstep-adapt --checkpoint models/foundation/qm_k16.pt --smiles 'Nc1nccs1' --name aminothiazole
  mdkstep-hybrid-qm --checkpoint outputs/adapt/aminothiazole_qm_k16_2ps_1000steps/aminothiazole_qm_k16.pt \\
      --smiles 'Nc1nccs1' --time-ps 2
Units: --data-ps in ps (default QM 2, MM 20).
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--checkpoint", type=Path, required=True, help="model to fine-tune (.pt, e.g. models/foundation/qm_k16.pt)")
    p.add_argument("--smiles", required=True, help="your molecule (neutral; write stereo into the SMILES to choose it)")
    p.add_argument("--name", default="molecule", help="its name in files and cards (letters, digits, _ . -)")
    p.add_argument("--data-ps", type=float, default=None, help="ps of the molecule's own MD (default QM 2, MM 20)")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning optimizer steps (default 1000)")
    p.add_argument("--lr", type=float, default=3.0e-4, help="fine-tuning learning rate (default 3e-4)")
    p.add_argument("--out", type=Path, default=None, help="adapted checkpoint .pt (default: in the work dir)")
    p.add_argument("--work-dir", type=Path, default=Path("outputs/adapt"), help="cache of data and training")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the MD and the training")
    add_log_level(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    set_threads(args.threads)
    spec = AdaptSpec(checkpoint=args.checkpoint, smiles=args.smiles, name=args.name, data_ps=args.data_ps,
                     steps=args.steps, lr=args.lr, out=args.out, work_dir=args.work_dir, threads=args.threads,
                     seed=args.seed, config_dir=repo_path("configs"))
    dst, summary = adapt(spec)
    oj = (summary["final"].get("test") or summary["final"].get("val") or {})
    line = ""
    if "model" in oj and "no_move" in oj:
        line = (f"; one-jump test bond RMSE {oj['model']['bond_rmse_A']:.4f} Å vs no move "
                f"{oj['no_move']['bond_rmse_A']:.4f} Å")
    print(f"{dst}  (card: {summary['card']}; data {summary['data_wall_s'] or float('nan'):.0f} s wall{line})")
    return 0


def run() -> None:
    """Console script ``mdkstep-adapt``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.adapt
    run()
