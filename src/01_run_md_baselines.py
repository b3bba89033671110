#!/usr/bin/env python
"""Stage 01: plain OpenMM MD baselines (MM mode; 2 fs Langevin BAOAB by default).

The command line lives in mdkstep.cli.md (console script ``mdkstep-md``); --help
shows every option, the units and more examples.

Example:
  python src/01_run_md_baselines.py --all outputs/raw --config configs/md_quick.yaml --out outputs/md --replicas 2 --time-ps 20
"""
from mdkstep.cli.md import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
