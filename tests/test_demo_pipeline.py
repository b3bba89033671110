"""The pipeline demo (make demo) runs end to end (00 -> 01 -> 02 -> 04 -> 06 -> 05) on a tiny setting."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "qs"), "PY": sys.executable, "MD_PS": "2", "STEPS": "20",
           "HYB_PS": "1", "DEVICE": "cpu", "OMP_NUM_THREADS": "2"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo_pipeline.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    qs = tmp_path / "qs"
    metrics = json.loads((qs / "eval" / "metrics.json").read_text())
    run = metrics["molecules"]["aspirin"]["runs"]["hybrid_k8"]
    assert run["summary"]["nan_frames"] == 0
    assert run["efficiency"]["force_call_reduction"] > 1.0
    assert "model" in metrics["one_jump"]
    assert (qs / "eval" / "report.md").is_file() and (qs / "eval" / "aspirin" / "rdf.png").is_file()
    assert "report:" in r.stdout
