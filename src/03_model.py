#!/usr/bin/env python
"""Stage 03: inspect a k-step model (architecture, parameters, equivariance self-check, timings).

The command line lives in mdkstep.cli.model (console script ``mdkstep-model``); --help
shows every option, the units and more examples.

Example:
  python src/03_model.py --config configs/model.yaml --set hidden=128 --threads 2   # timings in ms
"""
from mdkstep.cli.model import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
