"""The one resumable run loop (mdkstep.runner) and the resume defects of issue 13: fingerprints,
locks, one atomic commit, leftovers of killed runs, the NVE window's start state, opt-in
overwrite in the shell drivers, file modes and one-line errors."""
from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT, SRC, load_script
from mdkstep.baselines.openmm_md import MDConfig, RunSpec, run_trajectory
from mdkstep.molecule.system import from_molecule_dir
from mdkstep.trajectory import METADATA_KEYS, load_trajectory, make_metadata
from mdkstep.utils import LOG, MdkstepError, atomic_write_text


def _cfg(**kw) -> MDConfig:
    base = dict(production_ps=0.4, equilibration_ps=0.1, friction_per_ps=5.0, chunk_frames=50)
    base.update(kw)
    return MDConfig(**base)


def _spec(path, seed=5, cfg=None) -> RunSpec:
    cfg = cfg or _cfg()
    return RunSpec(path, seed, cfg.friction_per_ps, cfg.production_ps, cfg.equilibration_ps)


@pytest.fixture
def ethanol(prepared):
    return from_molecule_dir(prepared / "ethanol")


def _killed_md(mol, path, crash_after_flushes, n=2, seed=5, cfg=None):
    disarm = crash_after_flushes(n)
    with pytest.raises(KeyboardInterrupt):
        run_trajectory(mol, cfg or _cfg(), _spec(path, seed, cfg), progress=False)
    disarm()


# ---------------------------------------------------------------- 2: fingerprint on resume

def test_md_resume_with_other_seed_or_temperature_is_refused(ethanol, tmp_path, crash_after_flushes):
    part = tmp_path / "r.npz"
    _killed_md(ethanol, part, crash_after_flushes)
    with pytest.raises(MdkstepError, match=r"other settings \(seed: 5 -> 6\); delete .*r\.npz\.parts to start over"):
        run_trajectory(ethanol, _cfg(), _spec(part, seed=6), progress=False)
    hot = _cfg(temperature_K=350.0)
    with pytest.raises(MdkstepError, match=r"config\.temperature_K: 300\.0 -> 350\.0"):
        run_trajectory(ethanol, hot, _spec(part, cfg=hot), progress=False)
    run_trajectory(ethanol, _cfg(), _spec(part), progress=False)  # same settings: resumes
    full = tmp_path / "full.npz"
    run_trajectory(ethanol, _cfg(), _spec(full), progress=False)
    a, b = load_trajectory(full), load_trajectory(part)
    assert b.metadata["seed"] == 5 and np.array_equal(a.positions, b.positions)


def test_hybrid_resume_with_other_model_or_seed_is_refused(tmp_path):
    from helpers import HarmonicLattice, Oracle, cfg, run, start

    from mdkstep.hybrid import checkpoint_path

    c = cfg(corrector="kick", ensemble="nvt", thermostat="csvr", tau_ps=0.01, chunk_frames=5)
    x0, v0 = start(1)
    eng = HarmonicLattice()
    model_a = {"model_checkpoint_sha256": "aaaa"}
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, eng, Oracle(eng, c.cycle_ps, fail_at=12), c, x0, v0, 30, seed=7, fingerprint=model_a)
    assert checkpoint_path(tmp_path / "h.npz").is_file()
    with pytest.raises(MdkstepError, match=r"model_checkpoint_sha256: 'aaaa' -> 'bbbb'.*--overwrite\) to start over"):
        run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 30, seed=7,
            fingerprint={"model_checkpoint_sha256": "bbbb"})
    with pytest.raises(MdkstepError, match=r"rng_start_sha"):  # another thermostat seed
        run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 30, seed=8, fingerprint=model_a)
    stats = run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 30, seed=7, fingerprint=model_a)
    assert stats["n_cycles"] == 30


def test_cli_fingerprint_hashes_the_model_checkpoint(tmp_path):
    from types import SimpleNamespace

    from mdkstep.cli.hybrid import run_fingerprint

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"model A")
    b.write_bytes(b"model B")
    fa = run_fingerprint(SimpleNamespace(checkpoint=a, seed=0))
    assert fa != run_fingerprint(SimpleNamespace(checkpoint=b, seed=0))
    assert fa != run_fingerprint(SimpleNamespace(checkpoint=a, seed=1))


# ------------------------------------------------------------------ 3: one writer per output

def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(ethanol, tmp_path, caplog):
    out = tmp_path / "r.npz"
    lock = tmp_path / "r.npz.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(f"{other.pid}\n")
        with pytest.raises(MdkstepError, match=rf"r\.npz is being written by process {other.pid} \(lock .*r\.npz\.lock\)"):
            run_trajectory(ethanol, _cfg(), _spec(out), progress=False)
        assert not out.exists() and lock.read_text().strip() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    LOG.propagate = True  # let caplog see the warning
    try:
        with caplog.at_level(logging.WARNING, logger="mdkstep"):
            run_trajectory(ethanol, _cfg(), _spec(out), progress=False)
    finally:
        LOG.propagate = False
    assert f"taking over the stale lock of process {other.pid}" in caplog.text
    assert load_trajectory(out).n_frames == 200 and not lock.exists()


# ------------------------------------------------------------- 4: one atomic resume commit

def test_resume_state_is_one_atomic_file_and_frames_prove_continuity(ethanol, tmp_path, crash_after_flushes):
    out = tmp_path / "r.npz"
    _killed_md(ethanol, out, crash_after_flushes, n=2)  # chunk 1 written, its commit not
    parts = tmp_path / "r.npz.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["checkpoint.npz", "chunk_00000.npz", "chunk_00001.npz"]
    with np.load(parts / "checkpoint.npz") as z:
        manifest = json.loads(str(z["manifest"]))
    assert manifest["done_chunks"] == 1 and manifest["frames_done"] == 50
    (parts / "chunk_00000.npz").unlink()  # a committed chunk lost: resuming would splice a gap
    with pytest.raises(MdkstepError, match=r"chunk_00000\.npz: committed chunk 0 is missing"):
        run_trajectory(ethanol, _cfg(), _spec(out), progress=False)


def test_finalize_refuses_a_gap_in_the_chunks(tmp_path):
    from mdkstep.trajectory import ChunkedTrajectoryWriter

    w = ChunkedTrajectoryWriter(tmp_path / "t.npz", {"atom_types": np.array([1]), "masses": np.array([1.0])},
                                make_metadata(dt_fs=1.0, save_interval=1, engine="x", method="m", temperature_K=300.0,
                                              friction=0.0, seed=0, molecule="h", smiles=None, constraints="none"))
    for i in (0, 2):
        w.append(positions=np.zeros((1, 3)), velocities=np.zeros((1, 3)), energies=np.float64(0.0),
                 temperature=np.float64(0.0), time_ps=np.float64(i + 1))
        w.flush(i)
    with pytest.raises(MdkstepError, match=r"t\.npz\.parts: chunk 1 is missing; the trajectory would have a gap"):
        w.finalize()


# ------------------------------------------------------- 5: a kill during final assembly

_KILL_DURING_ASSEMBLY = """
import os, sys
import mdkstep.trajectory as tr
from mdkstep.baselines.openmm_md import MDConfig, RunSpec, run_trajectory
from mdkstep.molecule.system import from_molecule_dir
tr.load_trajectory = lambda path: os._exit(9)  # SIGKILL-like: the final file is written, nothing cleaned up
cfg = MDConfig(production_ps=0.4, equilibration_ps=0.1, friction_per_ps=5.0, chunk_frames=50)
run_trajectory(from_molecule_dir(sys.argv[1]), cfg, RunSpec(sys.argv[2], 5, 5.0, 0.4, 0.1), progress=False)
"""


def test_kill_during_assembly_leaves_nothing_beside_the_output_and_resume_cleans(ethanol, prepared, tmp_path):
    from mdkstep.analysis.evaluation import hybrid_runs

    out = tmp_path / "r.npz"
    r = subprocess.run([sys.executable, "-c", _KILL_DURING_ASSEMBLY, str(prepared / "ethanol"), str(out)],
                       env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr[-2000:]
    beside = sorted(p.name for p in tmp_path.iterdir())
    assert beside == ["r.npz.lock", "r.npz.parts"]  # no hidden partial file; the dead PID's lock
    assert (tmp_path / "r.npz.parts" / "assemble").is_dir()
    run_trajectory(ethanol, _cfg(), _spec(out), progress=False)  # takes the stale lock over, cleans
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]
    assert load_trajectory(out).n_frames == 200
    # readers ignore leftovers of killed runs (hidden temporaries, checkpoints, locks)
    (tmp_path / ".r.npz.1a2b3c4d.npz").write_bytes(b"half a file")
    (tmp_path / "h.hybrid_ckpt.npz").write_bytes(b"x")
    assert hybrid_runs(tmp_path) == [out]


# -------------------------------------------- 8: the NVE window and run_stats.json on rerun

def test_nve_window_resumes_from_replica0_end_and_rerun_keeps_run_stats(prepared, tmp_path):
    cfg = tmp_path / "md.yaml"
    cfg.write_text("production_ps: 0.2\nequilibration_ps: 0.05\nnve_windows: 1\nnve_window_ps: 0.1\n"
                   "friction_per_ps: 5.0\n")
    mod = load_script("01_run_md_baselines")
    argv = ["--molecule", str(prepared / "ethanol"), "--config", str(cfg), "--out", str(tmp_path / "md")]
    assert mod.main(argv) == 0
    out = tmp_path / "md" / "ethanol"
    r0, nve = load_trajectory(out / "replica_0.npz"), load_trajectory(out / "nve_0.npz")
    first_stats = json.loads((out / "run_stats.json").read_text())
    (out / "nve_0.npz").unlink()  # the NVE window was lost (or killed); replica 0 is done
    assert mod.main(argv) == 0
    again = load_trajectory(out / "nve_0.npz")
    assert np.array_equal(again.positions, nve.positions) and np.array_equal(again.velocities, nve.velocities)
    # and it started from replica 0's end: one velocity-Verlet step away from its last frame
    assert np.abs(again.positions[0] - r0.positions[-1]).max() < 0.01
    assert mod.main(argv) == 0  # everything exists: nothing runs, and the statistics survive
    stats = json.loads((out / "run_stats.json").read_text())
    assert [r["out"] for r in stats["replicas"]] == [r["out"] for r in first_stats["replicas"]] != []
    assert [r["out"] for r in stats["nve"]] == [str(out / "nve_0.npz")]


# ------------------------------------------------------- 10: overwrite is opt-in in scripts

def test_run_hybrid_qm_sh_resumes_unless_overwrite(tmp_path):
    out = tmp_path / "qm"
    (out / "md" / "water").mkdir(parents=True)
    (out / "md" / "water" / "replica_0.npz").write_bytes(b"")
    env = {**os.environ, "OUT": str(out), "PY": "echo", "MOLECULES": "water"}

    def calls(**extra) -> str:
        r = subprocess.run(["bash", str(ROOT / "run_hybrid_qm.sh")], env={**env, **extra}, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "06b_hybrid_integrate_qm.py" in calls() and "--overwrite" not in calls()
    assert "--overwrite" in calls(OVERWRITE="1")
    done = out / "hybrid" / "water" / "k16_kick.npz"  # the default: the shipped models/qm_k16.pt
    done.parent.mkdir(parents=True)
    done.write_bytes(b"")
    assert "exists, skipping" in calls() and "06b_hybrid_integrate_qm.py" not in calls()


def test_demo_pipeline_passes_overwrite_only_with_overwrite_1():
    text = (ROOT / "scripts" / "demo_pipeline.sh").read_text()
    lines = [ln for ln in text.splitlines() if "--overwrite" in ln and not ln.lstrip().startswith("#")]
    assert lines and all('[ "$OVERWRITE" = 1 ] && echo --overwrite' in ln for ln in lines)


# ------------------------------------------------------------------------------ 12: small

def test_outputs_respect_the_umask(ethanol, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        run_trajectory(ethanol, _cfg(production_ps=0.1), _spec(tmp_path / "r.npz", cfg=_cfg(production_ps=0.1)),
                       progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.npz").stat().st_mode & 0o777 == 0o644


def test_checkpoint_refusal_says_what_was_refused(tmp_path):
    import torch

    from mdkstep.model.checkpoint import read_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"model_state": Evil(), "model_config": {}, "k": 4}, tmp_path / "evil.pt")
    with pytest.raises(MdkstepError) as e:
        read_checkpoint(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "\n" not in msg and "refused unsupported GLOBAL" in msg and "system" in msg and "runs no code" in msg


def test_corrupt_hybrid_checkpoint_is_a_one_line_error(tmp_path):
    from helpers import HarmonicLattice, Oracle, cfg, run, start

    from mdkstep.hybrid import checkpoint_path

    c = cfg(corrector="kick", chunk_frames=5)
    x0, v0 = start(1)
    eng = HarmonicLattice()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, eng, Oracle(eng, c.cycle_ps, fail_at=12), c, x0, v0, 30)
    ck = checkpoint_path(tmp_path / "h.npz")
    data = ck.read_bytes()
    with zipfile.ZipFile(ck) as zf:
        info = zf.infolist()[-1]
    at = info.header_offset + 30 + len(info.filename) + 200  # inside the last member's data
    flipped = data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:]  # one bit flipped inside a member (bad CRC)
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith("meta"))
    meta = json.loads(str(arrays[key]))
    meta["counters"]["retired_counter"] = 1  # a state from another version
    arrays[key] = np.array(json.dumps(meta))
    with open(tmp_path / "other_version.npz", "wb") as fh:
        np.savez(fh, **arrays)
    other_version = (tmp_path / "other_version.npz").read_bytes()
    for bad in (flipped, data[: len(data) // 2], other_version):  # bad CRC, truncated, foreign counters
        ck.write_bytes(bad)
        with pytest.raises(MdkstepError, match=r"h\.hybrid_ckpt\.npz: (unreadable checkpoint|damaged hybrid state) "
                                               r".*; delete .* to start over") as e:
            run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 30)
        assert "\n" not in str(e.value)


def test_make_metadata_enforces_the_metadata_keys():
    params = [p.name for p in inspect.signature(make_metadata).parameters.values() if p.kind == p.KEYWORD_ONLY]
    assert params == list(METADATA_KEYS)
    with pytest.raises(TypeError, match="seed"):
        make_metadata(dt_fs=1.0, save_interval=1, engine="x", method="m", temperature_K=300.0, friction=0.0,
                      molecule="h", smiles=None, constraints="none")
    meta = make_metadata(dt_fs=np.float64(2.0), save_interval=1, engine="x", method="m", temperature_K=300.0,
                         friction=0.0, seed=np.int64(3), molecule="h", smiles=None, constraints="none", k=4)
    assert meta["seed"] == 3 and type(meta["dt_fs"]) is float and meta["k"] == 4


# ------------------------------------------------- the robustness probe's findings (tools/probe_robustness.py)

def test_seed_0_is_reproducible(ethanol, tmp_path):
    """OpenMM reads a seed of 0 as "random": replica 0 of the default --seed 0 differed between
    two identical runs (and so after every resume). openmm_seed maps it to a fixed seed."""
    from mdkstep.engines.openmm_setup import openmm_seed

    assert openmm_seed(0) != 0 and openmm_seed(0) == openmm_seed(0) and openmm_seed(5) == 5
    assert openmm_seed(-1) > 0 and openmm_seed(2**31 - 1) > 0
    cfg = _cfg(production_ps=0.1)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for p in (a, b):
        run_trajectory(ethanol, cfg, _spec(p, seed=0, cfg=cfg), progress=False)
    assert np.array_equal(load_trajectory(a).positions, load_trajectory(b).positions)


def test_kill_after_publishing_is_tidied_by_the_skipping_rerun(ethanol, tmp_path):
    from mdkstep.runner import tidy_finished

    out = tmp_path / "r.npz"
    cfg = _cfg(production_ps=0.1)
    run_trajectory(ethanol, cfg, _spec(out, cfg=cfg), progress=False)
    data = out.read_bytes()
    (tmp_path / "r.npz.parts").mkdir()  # what a kill between the rename and the cleanup leaves
    (tmp_path / "r.npz.parts" / "checkpoint.npz").write_bytes(b"state")
    (tmp_path / "r.npz.lock").write_text("999999999\n")  # a dead PID
    tidy_finished(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"] and out.read_bytes() == data


def test_hybrid_killed_after_publishing_finishes_on_rerun(tmp_path, monkeypatch):
    """Killed after the output was renamed into place but before the resume file was removed:
    the rerun must finish the run (stats) without recomputing or refusing."""
    from helpers import HarmonicLattice, Oracle, cfg, run, start

    from mdkstep.hybrid import checkpoint_path
    from mdkstep.trajectory import ChunkedTrajectoryWriter

    c = cfg(corrector="kick", chunk_frames=5)
    x0, v0 = start(1)
    eng = HarmonicLattice()
    orig = ChunkedTrajectoryWriter.finalize

    def finalize_then_die(self, n_frames=None):
        orig(self, n_frames)
        raise KeyboardInterrupt

    monkeypatch.setattr(ChunkedTrajectoryWriter, "finalize", finalize_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 30)
    monkeypatch.setattr(ChunkedTrajectoryWriter, "finalize", orig)
    out = tmp_path / "h.npz"
    assert out.is_file() and checkpoint_path(out).is_file()
    data = out.read_bytes()
    stats = run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 30)
    assert stats["n_cycles"] == 30 and out.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.npz"]


def test_training_resume_with_other_settings_is_refused():
    from dataclasses import asdict, replace

    from mdkstep.training.trainer import TrainConfig, check_resume_settings

    cfg = TrainConfig(lr=1e-3)
    ck = {"train_config": asdict(cfg)}
    check_resume_settings(ck, replace(cfg, max_steps=cfg.max_steps + 100, epochs=cfg.epochs + 1), "last.pt")
    with pytest.raises(MdkstepError, match=r"last\.pt: --resume with other training settings \(seed: 0 -> 9\); "
                                           r"pass the settings of the interrupted run, or --overwrite"):
        check_resume_settings(ck, replace(cfg, seed=9), "last.pt")
    with pytest.raises(MdkstepError, match=r"lr: 0\.001 -> 0\.01"):
        check_resume_settings(ck, replace(cfg, lr=0.01), "last.pt")
