#!/usr/bin/env python
"""Stage 05: evaluate MM hybrid runs against the plain-MD baselines.

The command line lives in mdkstep.cli.eval (console script ``mdkstep-eval``); --help
shows every option, the units and more examples.

Example:
  python src/05_eval_drift_rdfs.py --baseline outputs/md --hybrid-runs outputs/hybrid --out-dir outputs/eval \\
      --raw-root outputs/raw
"""
from mdkstep.cli.eval import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
