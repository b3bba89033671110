#!/usr/bin/env python
"""Stage 06b: hybrid MD (QM mode), learned k-step jumps corrected with real QM forces.

The command line lives in mdkstep.cli.hybrid_qm (console script ``mdkstep-hybrid-qm``); --help
shows every option, the units and more examples.

Example:
  python src/06b_hybrid_integrate_qm.py --checkpoint outputs/qm/train/best.pt \\
      --start-from outputs/qm/md/ethanol/replica_0.npz --out outputs/qm/hybrid/ethanol/k4.npz --time-ps 1
"""
from mdkstep.cli.hybrid_qm import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
