"""The QM batch scripts' defaults as a newcomer meets them (DRY_RUN=1 prints the commands)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

SCRIPTS = ("run_qm_trajectories.sh", "make_qm_dataset.sh", "train_qm.sh", "run_hybrid_qm.sh", "eval_qm.sh")


def dry(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", "PY": sys.executable, **env})


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_the_comment_block_and_dry_run_shows_the_command(script):
    h = subprocess.run(["bash", str(ROOT / script), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and ("Settings" in h.stdout or "OUT=" in h.stdout)
    assert "set -euo" not in h.stdout and not any(line.startswith("#") for line in h.stdout.splitlines())
    d = dry(script)
    assert d.returncode == 0, d.stderr
    assert "DRY_RUN=1: would run:" in d.stdout and " src/0" in d.stdout and "done:" not in d.stdout


def test_hybrid_defaults_to_the_shipped_faithful_model():
    out = dry("run_hybrid_qm.sh").stdout
    assert "--checkpoint models/qm_k16.pt" in out and "--k 16" in out
    out = dry("run_hybrid_qm.sh", CHECKPOINT="models/qm_k32.pt").stdout
    assert "--k 32" in out  # the checkpoint's own k
    bad = dry("run_hybrid_qm.sh", K="64")
    assert bad.returncode == 2 and "models/qm_k16.pt" in bad.stderr  # names the shipped models that exist


def test_fine_tuning_from_a_shipped_mm_model_takes_its_architecture():
    out = dry("train_qm.sh", PRETRAINED="models/mm_k8.pt").stdout
    cmd = out.split("would run: ", 1)[1].split()
    cfg_path = cmd[cmd.index("--model-config") + 1]
    cfg = yaml.safe_load(open(cfg_path))
    assert cfg["arch"] == "egnn" and "--pretrained" in cmd and "models/mm_k8.pt" in cmd


def test_a_k_mismatch_names_the_shipped_model_that_fits():
    import torch

    from mdkstep.model.checkpoint import check_compatible
    from mdkstep.utils import MdkstepError

    ck = torch.load(ROOT / "models/qm_k8.pt", map_location="cpu", weights_only=False)
    with pytest.raises(MdkstepError, match=r"k=16 was requested; the shipped model for k=16 is models/qm_k16\.pt$"):
        check_compatible(ck, "models/qm_k8.pt", k=16)
