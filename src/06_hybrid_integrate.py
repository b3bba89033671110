#!/usr/bin/env python
"""Stage 06: hybrid MD (MM mode), learned k-step jumps corrected with real OpenMM forces.

The command line lives in mdkstep.cli.hybrid (console script ``mdkstep-hybrid``); --help
shows every option, the units and more examples.

Example:
  python src/06_hybrid_integrate.py --checkpoint outputs/train/best.pt --molecule outputs/raw/ethanol \\
      --md-config configs/md_quick.yaml --start-from outputs/md/ethanol/replica_0.npz \\
      --out outputs/hybrid/ethanol/hybrid_k8.npz --time-ps 20
"""
from mdkstep.cli.hybrid import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
