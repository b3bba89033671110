"""What every stage's command line shares.

- :data:`REPO_ROOT` / :func:`repo_path`: default configs (configs/*.yaml) are found in the
  repository, not in the working directory, so a stage runs from any folder;
- :func:`make_parser`: the parser of a stage, its module docstring as description and a
  working example (with units) as epilog; :func:`add_log_level`: ``--log-level`` with help;
- :func:`check_finished`: a finished output is skipped only when it was made with this run's
  settings; otherwise a one-line error names the file and the first differing key;
- :func:`hybrid_molecules`: the molecule folders of a hybrid-run root (stages 05 / 05b).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mdkstep.analysis.evaluation import hybrid_runs
from mdkstep.runner import fingerprint_changes
from mdkstep.utils import MdkstepError

#: the repository root (this file is src/mdkstep/cli/common.py): configs/ and data/ live there
REPO_ROOT = Path(__file__).resolve().parents[3]

#: help of every stage's --log-level
LOG_LEVEL_HELP = "how much to log: DEBUG | INFO | WARNING | ERROR (default: %(default)s)"

#: config keys that say how or where a run computes, not what it computes: a finished output
#: is not refused when only these differ (nor when the number of NVE windows does)
RUN_ONLY_KEYS = frozenset({"config.chunk_frames", "config.omp_num_threads", "config.max_memory_mb",
                           "config.use_gpu", "config.platform", "config.nve_windows"})


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


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a trajectory NPZ, without loading its frames."""
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["metadata"]))
    except Exception as e:  # noqa: BLE001 (any unreadable file is the same one-line error)
        raise MdkstepError(f"{path}: exists but its metadata cannot be read ({type(e).__name__}); "
                           f"pass --overwrite to redo it") from None
    if not isinstance(meta, dict):
        raise MdkstepError(f"{path}: exists but its metadata is not a JSON object; pass --overwrite to redo it")
    return meta


def check_finished(path: Path, expected: Mapping[str, Any]) -> None:
    """Refuse a finished trajectory whose recorded settings differ from this run's.

    ``expected``: the metadata this run would write for ``path`` (config, seed, label, molecule,
    ...; the settings of the fingerprint a partial run is resumed against). Keys the file does
    not record (older files) and :data:`RUN_ONLY_KEYS` are not compared. A difference is a
    one-line :class:`MdkstepError` naming the file and the keys."""
    old = _flat(read_metadata(path))
    new = {k: v for k, v in _flat(json.loads(json.dumps(dict(expected), default=str))).items()
           if k in old and k not in RUN_ONLY_KEYS}
    changes = fingerprint_changes({k: old[k] for k in new}, new)
    if changes:
        raise MdkstepError(f"{path}: finished with other settings ({'; '.join(changes)}); pass --overwrite to "
                           f"redo it, or write to another --out")


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
