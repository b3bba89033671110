"""Stage 01b: plain QM MD baselines with GFN2-xTB (tblite) at 0.25 fs (QM mode).

Molecules come from prepared stage-00 folders (--molecule / --all; topology.json +
molecule.pdb) or straight from a SMILES file (--smiles-file; RDKit ETKDG conformer, formal
charge from RDKit). Each replica: BFGS relaxation with the QM engine (minimize: true), Maxwell-
Boltzmann velocities, ASE Langevin equilibration (fixcm=False + FixCom constraint), then
production (Langevin, or velocity Verlet with thermostat: nve) saved every save_interval steps
with positions, velocities (synchronous), forces and energies, streamed in chunks and
checkpointed after each chunk: a killed run resumes with no lost or duplicated frame (run the
same command again). A finished replica_<r>.npz is skipped when it was made with the same
settings (config, seed, molecule); with other settings the run stops with an error naming the
file and the key (--overwrite redoes it). The mean temperature of every trajectory is printed,
with a loud warning when it is more than 10% off the target.

Writes <out>/<molecule>/replica_<r>.npz (trajectory NPZ schema) and run_stats.json.
Units: nm, ps, kJ/mol, amu, K (config: dt_fs in fs, friction_per_ps in 1/ps).
"""
from __future__ import annotations

import argparse

from mdkstep.cli.common import make_parser
from mdkstep.cli.qm_baselines import add_cli_arguments, main_from_args
from mdkstep.config import run_cli

EXAMPLE = """Example (2 replicas of 10 ps each at 0.25 fs, 2 worker processes of 1 OpenMP thread):
  mdkstep-qm --smiles-file data/qm_molecules.smi --config configs/qm.yaml --out data/qm_md \\
      --num-workers 2 --omp-num-threads 1 --replicas 2 --time-ps 10
  python src/01b_run_qm_baselines.py --smiles-file data/qm_small_molecules.smi --config configs/qm_quick.yaml \\
      --out outputs/qm/md --equil-ps 0.1 --set temperature_K=350
Units: --time-ps / --equil-ps in ps; config dt_fs in fs, friction_per_ps in 1/ps, temperature_K in K.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    add_cli_arguments(p, default_config="configs/qm.yaml")
    return p


def main(argv: list[str] | None = None) -> int:
    return main_from_args(build_parser().parse_args(argv))


def run() -> None:
    """Console script ``mdkstep-qm``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.qm
    run()
