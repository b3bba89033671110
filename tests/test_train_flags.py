"""scripts/train_flags.sh: the batch scripts keep a finished model, resume an interrupted one and
retrain only with OVERWRITE=1 (04 refuses an existing run folder without --resume / --overwrite)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def flags(folder: Path, overwrite: str | None = None) -> str:
    env = {**os.environ, "OVERWRITE": overwrite} if overwrite else {k: v for k, v in os.environ.items() if k != "OVERWRITE"}
    out = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/train_flags.sh; train_flags {folder}"],
                         capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("files,overwrite,expected", [
    ((), None, ""), (("last.pt",), None, "--resume"), (("last.pt", "final_metrics.json"), None, "skip"),
    (("last.pt", "final_metrics.json"), "1", "--overwrite"), (("last.pt",), "1", "--overwrite"),
])
def test_train_flags(tmp_path, files, overwrite, expected):
    for f in files:
        (tmp_path / f).write_text("x")
    assert flags(tmp_path, overwrite) == expected
