#!/usr/bin/env python
"""Stage 01b: plain QM MD baselines with GFN2-xTB at 0.25 fs (QM mode).

The command line lives in mdkstep.cli.qm (console script ``mdkstep-qm``); --help
shows every option, the units and more examples.

Example:
  python src/01b_run_qm_baselines.py --smiles-file data/qm_molecules.smi --config configs/qm.yaml \\
      --out data/qm_md --num-workers 2 --omp-num-threads 1 --replicas 2 --time-ps 10
"""
from mdkstep.cli.qm import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
