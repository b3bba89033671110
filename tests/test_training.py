"""Stage 04: checkpoints, exact resume, transfer-learning guards, torchrun DDP on CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_script
from mdkstep.chem import load_molecule
from mdkstep.checkpoint import model_from_checkpoint, read_checkpoint
from mdkstep.dataset import build_dataset, write_split_files
from mdkstep.md import MDConfig, RunSpec, run_trajectory
from mdkstep.model import ModelConfig
from mdkstep.training import TrainConfig, train
from mdkstep.utils import MdkstepError

MODEL = ModelConfig(arch="egnn", hidden=16, n_layers=2, cutoff_nm=None)


@pytest.fixture(scope="module")
def data(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = MDConfig(production_ps=2.0, equilibration_ps=0.2, friction_per_ps=1.0, save_forces=True)
    traj = root / "md" / "ethanol" / "replica_0.npz"
    run_trajectory(load_molecule(prepared / "ethanol"), cfg, RunSpec(traj, 1, 1.0, 2.0, 0.2), progress=False)
    summary = build_dataset([traj], k=4, out_file=root / "dataset_k4.npz", split="time", raw_root=prepared)
    write_split_files(root / "splits", summary, [str(root / "dataset_k4.npz")])
    return root


def _tcfg(**kw) -> TrainConfig:
    base = dict(k=4, epochs=50, max_steps=10, batch_size=32, lr=1e-3, warmup_steps=2, eval_every=5,
                val_max_windows=64, metrics_max_windows=64, norm_max_windows=256, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def _splits(root):
    return root / "splits" / "train.json", root / "splits" / "val.json"


def test_checkpoint_roundtrip_weights_only(data, tmp_path):
    s = train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=5), tmp_path / "run", "cpu", progress=False)
    assert s["steps"] == 5
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["k"] == 4 and ck["model_config"]["arch"] == "egnn" and ck["atom_types"] == [1, 6, 8]
    model, _ = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert model.normalization()["dx_scale"] > 0
    for f in ("metrics.csv", "loss_curve.png", "final_metrics.json"):
        assert (tmp_path / "run" / f).is_file()


def test_resume_reproduces(data, tmp_path, monkeypatch):
    full = train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(), tmp_path / "full", "cpu", progress=False)
    import mdkstep.training as tr

    orig, calls = tr.compute_loss, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(tr, "compute_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(), tmp_path / "part", "cpu", progress=False)
    monkeypatch.setattr(tr, "compute_loss", orig)
    assert read_checkpoint(tmp_path / "part" / "last.pt")["step"] == 5
    res = train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(), tmp_path / "part", "cpu", resume=True, progress=False)
    assert res["steps"] == full["steps"] == 10
    a = read_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    b = read_checkpoint(tmp_path / "part" / "last.pt")["model_state"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_mismatches_are_one_line_errors(data, tmp_path):
    with pytest.raises(MdkstepError, match="dataset has k=4 but the train config says k=8"):
        train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(k=8), tmp_path / "a", "cpu", progress=False)
    train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=2), tmp_path / "b", "cpu", progress=False)
    other = ModelConfig(arch="egnn", hidden=32, n_layers=2, cutoff_nm=None)
    with pytest.raises(MdkstepError, match="architecture mismatch on 'hidden'"):
        train(data / "dataset_k4.npz", _splits(data), other, _tcfg(), tmp_path / "c", "cpu",
              pretrained=tmp_path / "b" / "best.pt", progress=False)


def test_transfer_with_frozen_layers(data, tmp_path):
    train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=2), tmp_path / "pre", "cpu", progress=False)
    s = train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=2, freeze_layers=1, pretrained_lr_scale=0.5),
              tmp_path / "ft", "cpu", pretrained=tmp_path / "pre" / "best.pt", progress=False)
    assert s["n_frozen_parameters"] > 0


def test_torchrun_two_cpu_processes(data, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("k: 4\nmax_steps: 3\nbatch_size: 16\nwarmup_steps: 1\nval_max_windows: 32\nmetrics_max_windows: 32\n")
    mcfg = tmp_path / "m.yaml"
    mcfg.write_text("arch: egnn\nhidden: 16\nn_layers: 2\ncutoff_nm: null\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "src" / "04_train.py"), "--dataset", str(data / "dataset_k4.npz"), "--model-config", str(mcfg),
           "--train-config", str(cfg), "--splits", *map(str, _splits(data)), "--out", str(tmp_path / "ddp"),
           "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "x2 processes" in r.stdout
    assert read_checkpoint(tmp_path / "ddp" / "last.pt")["step"] == 3


def test_cli_bad_config_key(data, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("k: 4\nlearning_rate: 1\n")
    (tmp_path / "none.yaml").write_text("arch: egnn\n")
    mod = load_script("04_train")
    with pytest.raises(MdkstepError, match="t.yaml: unknown key 'learning_rate'"):
        mod.main(["--dataset", str(data / "dataset_k4.npz"), "--model-config", str(tmp_path / "none.yaml"),
                  "--train-config", str(cfg), "--splits", *map(str, _splits(data))])
