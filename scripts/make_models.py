#!/usr/bin/env python
"""`make models`: generate the training data and train the models shipped under models/.

The command line lives in mdkstep.cli.models (console script ``mdkstep-models``); --help
shows every option, the units and more examples.

Example:
  python scripts/make_models.py --smoke --out-dir /tmp/m   # tiny end-to-end check (minutes)
"""
from mdkstep.cli.models import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
