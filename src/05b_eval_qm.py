#!/usr/bin/env python
"""Stage 05b: evaluate QM hybrid runs (06b) against the plain QM baselines (01b / 01c).

The command line lives in mdkstep.cli.eval_qm (console script ``mdkstep-eval-qm``); --help
shows every option, the units and more examples.

Example:
  python src/05b_eval_qm.py --baseline outputs/qm/md --hybrid-runs outputs/qm/hybrid --out-dir outputs/qm/eval \\
      --plain-dts 0.25 0.5 1.0   # fs
"""
from mdkstep.cli.eval_qm import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
