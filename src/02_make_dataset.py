#!/usr/bin/env python
"""Stage 02: k-step supervision windows from baseline trajectories.

The command line lives in mdkstep.cli.dataset (console script ``mdkstep-dataset``); --help
shows every option, the units and more examples.

Example:
  python src/02_make_dataset.py --md-root outputs/md --out-root outputs/datasets --splits-dir outputs/splits \\
      --ks 8 --split time   # k = 8 steps = 16 fs at 2 fs
"""
from mdkstep.cli.dataset import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
