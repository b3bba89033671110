"""What every stage's command line shares.

- :data:`REPO_ROOT` / :func:`repo_path`: default configs (configs/*.yaml) are found in the
  repository, not in the working directory, so a stage runs from any folder;
- :func:`make_parser`: the parser of a stage, its module docstring as description and a
  working example (with units) as epilog; :func:`add_log_level`: ``--log-level`` with help;
- :func:`hybrid_molecules`: the molecule folders of a hybrid-run root (stages 05 / 05b).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdkstep.analysis.evaluation import hybrid_runs
from mdkstep.utils import MdkstepError

#: the repository root (this file is src/mdkstep/cli/common.py): configs/ and data/ live there
REPO_ROOT = Path(__file__).resolve().parents[3]

#: help of every stage's --log-level
LOG_LEVEL_HELP = "how much to log: DEBUG | INFO | WARNING | ERROR (default: %(default)s)"

def repo_path(relative: str) -> Path:
    """``relative`` (e.g. "configs/md.yaml") in the repository; the working directory's file
    instead when the package runs from outside the repository (a non-editable install)."""
    p = REPO_ROOT / relative
    return p if p.exists() or not Path(relative).exists() else Path(relative)


def make_parser(doc: str | None, example: str) -> argparse.ArgumentParser:
    """A stage's parser: ``doc`` (its module docstring) as description, ``example`` as epilog."""
    return argparse.ArgumentParser(description=doc, epilog=example, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO", help=LOG_LEVEL_HELP)


def hybrid_molecules(root: Path) -> list[str]:
    """Names of the molecule folders under ``root`` that hold hybrid runs (checkpoints and
    leftovers of killed runs do not count); a one-line error when there are none."""
    names = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            try:
                hybrid_runs(p)
            except MdkstepError:
                continue
            names.append(p.name)
    if not names:
        raise MdkstepError(f"{root}: no <molecule>/*.npz hybrid runs")
    return names
