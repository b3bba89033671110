#!/usr/bin/env python
"""Stage 01c: plain QM MD baselines with PySCF (RHF/STO-3G) for tiny molecules.

The command line lives in mdkstep.cli.pyscf (console script ``mdkstep-pyscf``); --help
shows every option, the units and more examples.

Example:
  python src/01c_run_pyscf_baselines.py --smiles-file data/qm_small_molecules.smi \\
      --config configs/qm_pyscf.yaml --out data/qm_pyscf_md --num-workers 2 --omp-num-threads 1 --time-ps 2
"""
from mdkstep.cli.pyscf import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
