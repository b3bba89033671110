"""Stage 04: checkpoints, exact resume, transfer-learning guards, run-folder guards, torchrun DDP on CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_script
from helpers import _ethanol_trajectory

from mdkstep.data.windows import build_dataset, write_split_files
from mdkstep.model import ModelConfig, build_model
from mdkstep.model.checkpoint import model_from_checkpoint, read_checkpoint
from mdkstep.model.common import freeze_first_layers
from mdkstep.training.trainer import TrainConfig, train
from mdkstep.utils import MdkstepError

MODEL = ModelConfig(arch="egnn", hidden=16, n_layers=2, cutoff_nm=None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    traj = root / "md" / "ethanol" / "replica_0.npz"
    _ethanol_trajectory(traj)
    summary = build_dataset([traj], k=4, out_file=root / "dataset_k4.npz", split="time")  # bonds by infer_bonds
    write_split_files(root / "splits", summary, [str(root / "dataset_k4.npz")])
    return root


def _tcfg(**kw) -> TrainConfig:
    base = dict(k=4, epochs=50, max_steps=10, batch_size=32, lr=1e-3, warmup_steps=2, eval_every=5,
                val_max_windows=64, metrics_max_windows=64, norm_max_windows=256, log_every=5)
    base.update(kw)
    return TrainConfig(**base)


def _splits(root):
    return root / "splits" / "train.json", root / "splits" / "val.json"


@pytest.mark.slow
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
    import mdkstep.training.trainer as tr

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
    steps = [ln.split(",")[0] for ln in (tmp_path / "part" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [ln.split(",")[0] for ln in (tmp_path / "full" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 11)]  # the rows written after last.pt (steps 6, 7) not repeated
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
    train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=4), tmp_path / "pre", "cpu", progress=False)
    s = train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=3, freeze_layers=1, pretrained_lr_scale=0.5),
              tmp_path / "ft", "cpu", pretrained=tmp_path / "pre" / "best.pt", progress=False)
    torch.manual_seed(0)  # train() seeds like this before it builds the model: the weights without --pretrained
    fresh = build_model(MODEL)
    freeze_first_layers(fresh, 1)
    frozen = {n for n, p in fresh.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    pre = read_checkpoint(tmp_path / "pre" / "best.pt")["model_state"]
    ft = read_checkpoint(tmp_path / "ft" / "last.pt")["model_state"]
    assert frozen and s["n_frozen_parameters"] == sum(pre[n].numel() for n in frozen)
    assert all(torch.equal(ft[n], pre[n]) for n in frozen)  # frozen weights bitwise unchanged by fine-tuning
    assert all(not torch.equal(pre[n], fresh.state_dict()[n]) for n in frozen if pre[n].abs().sum() > 0)  # pretrained, not init
    assert any(not torch.equal(ft[n], pre[n]) for n in trainable)  # the rest did train


@pytest.mark.slow
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


# ---------------------------------------------------------------- run-folder and input guards

def _cli(data, tmp_path, *extra):
    (tmp_path / "t.yaml").write_text("k: 4\nmax_steps: 2\nbatch_size: 32\nwarmup_steps: 1\nval_max_windows: 32\n"
                                      "metrics_max_windows: 32\nnorm_max_windows: 64\n")
    (tmp_path / "m.yaml").write_text("arch: egnn\nhidden: 16\nn_layers: 2\ncutoff_nm: null\n")
    args = ["--dataset", str(data / "dataset_k4.npz"), "--model-config", str(tmp_path / "m.yaml"),
            "--train-config", str(tmp_path / "t.yaml"), "--splits", *map(str, _splits(data)), "--device", "cpu",
            "--log-level", "WARNING", *extra]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "run")]
    return load_script("04_train").main(args)


def test_rerun_into_an_earlier_run_is_refused(data, tmp_path):
    run = tmp_path / "run"
    train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=5), run, "cpu", progress=False)
    before = {f: (run / f).read_bytes() for f in ("best.pt", "last.pt", "metrics.csv")}
    with pytest.raises(MdkstepError, match=r"run: holds an earlier run \(best.pt, last.pt, metrics.csv, loss_curve.png, "
                                           r"final_metrics.json\); pass --resume to continue it or --overwrite to start over"):
        _cli(data, tmp_path)
    assert {f: (run / f).read_bytes() for f in before} == before  # nothing of the earlier run touched
    assert _cli(data, tmp_path, "--overwrite") == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,") and rows[2].startswith("2,")  # the new run's rows only
    assert read_checkpoint(run / "last.pt")["step"] == 2
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --resume
        _cli(data, tmp_path, "--resume", "--overwrite")


def test_output_folder_checked_before_any_work(data, tmp_path, monkeypatch):
    import mdkstep.training.trainer as tr

    (tmp_path / "blocker").write_text("a file, not a folder")
    monkeypatch.setattr(tr, "load_datasets", lambda *a, **k: pytest.fail("data loaded before the output check"))
    with pytest.raises(MdkstepError, match=r"blocker/run: run folder \(--out\) is not writable \(Not a directory\)"):
        _cli(data, tmp_path, "--out", str(tmp_path / "blocker" / "run"))


def test_negative_max_steps_is_an_error(data, tmp_path):
    with pytest.raises(MdkstepError, match=r"t.yaml: key 'max_steps' \(--max-steps\): -5 must be >= 0 \(0 = no limit\)"):
        _cli(data, tmp_path, "--max-steps", "-5")
    with pytest.raises(MdkstepError, match=r"train config: key 'max_steps' \(--max-steps\): -5 must be >= 0"):
        train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=-5), tmp_path / "a", "cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_split_equal_to_val_split_is_an_error(data, tmp_path):
    tr_json = str(data / "splits" / "train.json")
    with pytest.raises(MdkstepError, match=r"train.json: train and val are the same split 'train' "
                                           r"\(pass train.json and val.json\)"):
        load_script("04_train").main(["--dataset", str(data / "dataset_k4.npz"),
                                      "--model-config", str(ROOT / "configs/model_quick.yaml"),
                                      "--train-config", str(ROOT / "configs/train_quick.yaml"),
                                      "--splits", tr_json, tr_json, "--out", str(tmp_path / "run"), "--device", "cpu"])


def _copy_data(data, dst):
    import shutil

    shutil.copytree(data, dst)
    return dst


def test_changed_source_trajectory_is_a_one_line_error(data, tmp_path):
    d = _copy_data(data, tmp_path / "data")
    _ethanol_trajectory(d / "md" / "ethanol" / "replica_0.npz", n_frames=2000, dt_fs=1.0)  # stage 01 rerun at 1 fs
    with pytest.raises(MdkstepError, match=r"replica_0.npz: source trajectory changed since .*dataset_k4.npz was built "
                                           r"\(dt_fs 2.0 -> 1.0, n_frames 1000 -> 2000, size_bytes \d+ -> \d+\)"):
        _cli(d, tmp_path)


def test_truncated_dataset_file_is_a_one_line_error(data, tmp_path):
    d = _copy_data(data, tmp_path / "data")
    f = d / "dataset_k4.npz"
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
    with pytest.raises(MdkstepError, match=r"dataset_k4.npz: not a readable k-step dataset \(.+\); rebuild it"):
        _cli(d, tmp_path)


# ------------------------------------------------- feedback on long work (issue #25)

def _records(caplog):
    """Attach caplog to the mdkstep logger (it does not propagate); returns a detach function."""
    import logging

    from mdkstep.utils import LOG

    old = (LOG.level, LOG.propagate)
    LOG.addHandler(caplog.handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False

    def detach():
        LOG.removeHandler(caplog.handler)
        LOG.setLevel(old[0])
        LOG.propagate = old[1]
    return detach


def test_tiny_run_logs_progress_and_records_a_readable_loss_curve(data, tmp_path, caplog, monkeypatch):
    """Without a terminal the trainer logs step/total, rate and ETA; metrics.csv gets a train-loss
    row every max(1, min(log_every, steps // 50)) steps (>= 20 rows for 40 steps, not 1-2), with
    the validation on its own cadence; final_metrics.json says whether the model beats no move."""
    import csv
    import json

    monkeypatch.setenv("MDKSTEP_PROGRESS_EVERY_S", "0")  # every step: the tiny run is faster than 30 s
    detach = _records(caplog)
    try:
        train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=40, eval_every=0, log_every=50),
              tmp_path / "run", "cpu", progress=True)  # True on a non-terminal (pytest's stderr): log lines
    finally:
        detach()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train run: step")]
    assert lines[0] == "train run: step 0/40 (0 %)" and lines[-1].startswith("train run: step 40/40 (100 %), ")
    assert any("step/s, elapsed" in ln and ", ETA " in ln for ln in lines)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) >= 20 and [int(r["step"]) for r in rows] == list(range(1, 41))
    assert all(r["train_loss"] for r in rows) and 1 <= sum(bool(r["val_loss"]) for r in rows) < len(rows)
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0
    assert isinstance(json.loads((tmp_path / "run" / "final_metrics.json").read_text())["worse_than_no_move"], bool)


def test_a_model_worse_than_no_move_is_warned_and_flagged(data, tmp_path, caplog, monkeypatch):
    """A broken model (its jumps 100x too long) scores worse than no move: one WARNING naming the
    run folder and both numbers, and worse_than_no_move: true in final_metrics.json."""
    import json

    import mdkstep.training.trainer as tr

    real = tr.one_jump_metrics

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def forward(self, gb):
            out = self.model(gb)
            return {**out, "dx": 100.0 * out["dx"] + 0.01}

    monkeypatch.setattr(tr, "one_jump_metrics", lambda model, *a, **k: real(Broken(model), *a, **k))
    detach = _records(caplog)
    try:
        train(data / "dataset_k4.npz", _splits(data), MODEL, _tcfg(max_steps=2), tmp_path / "bad", "cpu",
              test_split=data / "splits" / "test.json", progress=None)
    finally:
        detach()
    final = json.loads((tmp_path / "bad" / "final_metrics.json").read_text())
    assert final["worse_than_no_move"] is True
    warn = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    m, nm = final["test"]["model"], final["test"]["no_move"]
    assert len(warn) == 1 and str(tmp_path / "bad") in warn[0] and "worse than no move on test" in warn[0]
    assert f"{m['bond_rmse_A']:.4g} A vs {nm['bond_rmse_A']:.4g} A" in warn[0] and "not usable as a jumper" in warn[0]
    assert not [r for r in caplog.records if "train bad: step" in r.getMessage()]  # progress=None: silent


def test_worse_than_no_move_rule():
    from mdkstep.training.trainer import worse_than_no_move

    def m(bond, pos):
        return {"bond_rmse_A": bond, "pos_rmse_A": pos}

    good, nm = m(0.01, 0.05), m(0.02, 0.10)
    assert worse_than_no_move({"val": {"model": good, "no_move": nm}}) is None
    assert worse_than_no_move({"val": {"model": m(0.03, 0.05), "no_move": nm}})[0] == "val"  # bonds worse
    assert worse_than_no_move({"val": {"model": m(0.01, 0.2), "no_move": nm}})  # positions worse
    assert worse_than_no_move({"val": {"model": m(float("nan"), 0.05), "no_move": nm}})  # a NaN model
    both = {"val": {"model": m(0.03, 0.2), "no_move": nm}, "test": {"model": good, "no_move": nm}}
    assert worse_than_no_move(both) is None  # test decides when there is one
    assert worse_than_no_move({}) is None
