"""Stage 01c: plain QM MD baselines with PySCF (default RHF/STO-3G) for tiny molecules.

The same runner as 01b (mdkstep.baselines.ase_md) with the PySCF engine: same trajectory
schema, thermostat, chunking, checkpoint/resume and check of finished outputs. Meant for 3-5
atom molecules (water, ammonia, methane, ...): an RHF/STO-3G gradient of water costs ~25 ms on
one CPU core. GPU4PySCF is used when installed and a CUDA GPU is present (--device auto),
else CPU PySCF; the log says which and why. The config must say engine: pyscf.

Writes <out>/<molecule>/replica_<r>.npz (trajectory NPZ schema) and run_stats.json.
Units: nm, ps, kJ/mol, amu, K (config: dt_fs in fs, friction_per_ps in 1/ps).
"""
from __future__ import annotations

import argparse

from mdkstep.cli.common import make_parser
from mdkstep.cli.qm_baselines import add_cli_arguments, main_from_args
from mdkstep.config import run_cli

EXAMPLE = """Example (the molecules of data/qm_small_molecules.smi, RHF/STO-3G, 0.25 fs steps, 2 ps each):
  mdkstep-pyscf --config configs/qm_pyscf.yaml --out data/qm_pyscf_md --num-workers 2 --omp-num-threads 1 \\
      --time-ps 2
  python src/01c_run_pyscf_baselines.py --smiles-file data/qm_small_molecules.smi \\
      --config configs/qm_pyscf_quick.yaml --out outputs/pyscf/md --device cpu
Units: --time-ps / --equil-ps in ps; config dt_fs in fs, friction_per_ps in 1/ps, temperature_K in K.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    add_cli_arguments(p, default_config="configs/qm_pyscf.yaml", default_smiles="data/qm_small_molecules.smi")
    return p


def main(argv: list[str] | None = None) -> int:
    return main_from_args(build_parser().parse_args(argv), required_engine="pyscf")


def run() -> None:
    """Console script ``mdkstep-pyscf``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.pyscf
    run()
