#!/usr/bin/env python
"""`make bench`: the hybrid integrator beside every plain-MD alternative, at equal simulated time.

The command line lives in mdkstep.cli.bench (console script ``mdkstep-bench``); --help
shows every option, the units and more examples.

Example:
  python benchmarks/bench.py --set qm_smiles=null   # MM part only (~10 min on 2 CPU cores)
"""
from mdkstep.cli.bench import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
