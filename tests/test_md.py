"""Stage 01: short OpenMM runs obey physics and the data contract; resume loses nothing."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_script
from mdkstep.molecule.system import from_molecule_dir as load_molecule
from mdkstep.baselines.openmm_md import MDConfig, RunSpec, run_trajectory
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K, center_of_mass


def _cfg(**kw) -> MDConfig:
    base = dict(production_ps=4.0, equilibration_ps=1.0, friction_per_ps=5.0, chunk_frames=500, save_forces=True)
    base.update(kw)
    return MDConfig(**base)


def test_short_run_physics_and_contract(prepared, tmp_path):
    mol = load_molecule(prepared / "aspirin")
    cfg = _cfg()
    run_trajectory(mol, cfg, RunSpec(tmp_path / "r.npz", 3, cfg.friction_per_ps, 4.0, 1.0), progress=False)
    t = load_trajectory(tmp_path / "r.npz")  # validates schema, shapes, finiteness
    assert t.n_frames == 2000 and t.n_atoms == 21
    assert np.allclose(np.diff(t.time_ps), 0.002)  # ps
    assert 240.0 < t.temperature.mean() < 360.0  # K
    # no COM drift: CMMotionRemover + zero-mean noise keep the centre of mass in place (nm)
    com = center_of_mass(t.positions, t.masses)
    assert np.abs(com - com[0]).max() < 0.02
    # units: kinetic energy (kJ/mol) <-> temperature (K) with dof = 3N - constraints - 3
    dof = 3 * 21 - t.metadata["n_constraints"] - 3
    assert np.allclose(t.kinetic, 0.5 * dof * KB_KJ_PER_MOL_K * t.temperature)
    # X-H constraints hold at every saved frame
    assert t.metadata["constraints"] == "hbonds" and t.metadata["n_constraints"] == 8
    # saved forces are -dE/dx of the saved energy: check one frame by finite differences
    from mdkstep.engines.openmm_engine import OpenMMEngine
    from mdkstep.baselines.openmm_md import build_system

    eng = OpenMMEngine(build_system(mol, _cfg(constraints="none")), mol.atomic_numbers)
    e, f = eng.compute(t.positions[5])
    assert e == pytest.approx(t.energies[5], abs=1e-4)
    assert np.allclose(f, t.forces[5], atol=1e-3)
    assert eng.counters.calls == 1


def test_nve_conserves_energy(prepared, tmp_path):
    mol = load_molecule(prepared / "aspirin")
    cfg = _cfg(dt_fs=1.0, production_ps=2.0)
    run_trajectory(mol, cfg, RunSpec(tmp_path / "n.npz", 1, 0.0, 2.0, 0.0), progress=False)
    t = load_trajectory(tmp_path / "n.npz")
    etot = t.energies + t.kinetic
    assert etot.std() < 0.3  # kJ/mol over 2000 steps at 1 fs (measured here: ~0.2)
    assert t.metadata["method"] == "velocity_verlet"


def test_resume_after_interruption(prepared, tmp_path, crash_after_flushes):
    mol = load_molecule(prepared / "ethanol")
    cfg = _cfg(production_ps=2.0, chunk_frames=200)
    full = tmp_path / "full.npz"
    run_trajectory(mol, cfg, RunSpec(full, 5, cfg.friction_per_ps, 2.0, 0.2), progress=False)

    part = tmp_path / "part.npz"
    disarm = crash_after_flushes(3)  # killed after chunk 2 was written, before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_trajectory(mol, cfg, RunSpec(part, 5, cfg.friction_per_ps, 2.0, 0.2), progress=False)
    disarm()
    assert not part.exists()
    run_trajectory(mol, cfg, RunSpec(part, 5, cfg.friction_per_ps, 2.0, 0.2), progress=False)
    a, b = load_trajectory(full), load_trajectory(part)
    assert a.n_frames == b.n_frames == 1000
    assert np.array_equal(a.time_ps, b.time_ps)
    assert np.allclose(a.positions, b.positions, atol=1e-6)  # checkpoint restores RNG state too


def test_cli_replicas_and_unknown_key(prepared, tmp_path, capsys):
    cfg = tmp_path / "md.yaml"
    cfg.write_text("production_ps: 0.5\nequilibration_ps: 0.1\nnve_windows: 1\nnve_window_ps: 0.2\n")
    mod = load_script("01_run_md_baselines")
    rc = mod.main(["--molecule", str(prepared / "ethanol"), "--config", str(cfg), "--out", str(tmp_path / "md"),
                   "--replicas", "2"])
    assert rc == 0
    out = tmp_path / "md" / "ethanol"
    r0, r1 = load_trajectory(out / "replica_0.npz"), load_trajectory(out / "replica_1.npz")
    assert r0.metadata["seed"] != r1.metadata["seed"] and not np.allclose(r0.positions, r1.positions)
    assert load_trajectory(out / "nve_0.npz").metadata["ensemble"] == "nve"
    cfg.write_text("production_ps: 0.5\ntimestep: 2\n")
    with pytest.raises(Exception, match="unknown key 'timestep'"):
        mod.main(["--molecule", str(prepared / "ethanol"), "--config", str(cfg), "--out", str(tmp_path / "md")])


def test_rerun_over_finished_output_with_other_settings_is_refused(prepared, tmp_path, capsys):
    """Issue 23 defect: a rerun with another --seed used to print "exists, skipping" and keep the
    other seed's trajectory; now a finished output is skipped only with the same settings."""
    from mdkstep.config import run_cli

    cfg = tmp_path / "md.yaml"
    cfg.write_text("production_ps: 0.02\nequilibration_ps: 0.0\nchunk_frames: 5\n")
    mod = load_script("01_run_md_baselines")
    argv = ["--molecule", str(prepared / "ethanol"), "--config", str(cfg), "--out", str(tmp_path / "md"),
            "--log-level", "WARNING"]
    out = tmp_path / "md" / "ethanol" / "replica_0.npz"
    assert mod.main(argv) == 0
    before = out.read_bytes()
    assert mod.main(argv + ["--set", "chunk_frames=7"]) == 0  # same run: skipped (chunking changes nothing)
    with pytest.raises(SystemExit) as e:
        run_cli(mod.main, argv + ["--seed", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {out}: finished with other settings (seed: 0 -> 1)") and "--overwrite" in err[0]
    with pytest.raises(SystemExit):
        run_cli(mod.main, argv + ["--time-ps", "0.04"])
    assert "config.production_ps: 0.02 -> 0.04" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing was rewritten
    assert mod.main(argv + ["--seed", "1", "--overwrite"]) == 0
    assert load_trajectory(out).metadata["seed"] == 1
