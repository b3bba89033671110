#!/usr/bin/env python
"""Stage 00: prepare molecules for MD (RDKit conformer, OpenFF parameters, OpenMM minimisation).

The command line lives in mdkstep.cli.prep (console script ``mdkstep-prep``); --help
shows every option, the units and more examples.

Example:
  python src/00_prep_mols.py --smiles data/quick.smi --out-dir outputs/raw --config configs/prep.yaml
"""
from mdkstep.cli.prep import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
