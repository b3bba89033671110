"""QM hybrid (06b) and QM evaluation (05b) on water with GFN2-xTB, plus the QM batch scripts.
Units: nm, ps, kJ/mol, amu, K."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict

import numpy as np
import pytest

from conftest import ROOT, load_script
from helpers import run_06b

pytest.importorskip("tblite")

BATCH_SCRIPTS = ("run_qm_trajectories.sh", "make_qm_dataset.sh", "train_qm.sh", "run_hybrid_qm.sh", "eval_qm.sh")


@pytest.fixture(scope="module")
def qm_water(tmp_path_factory):
    """Two tiny GFN2-xTB water baselines (0.25 fs, 0.03 ps each) and a fresh tiny checkpoint."""
    from mdkstep.model.checkpoint import save_checkpoint
    from mdkstep.config import load_config
    from mdkstep.model import ModelConfig, build_model
    from mdkstep.baselines.ase_md import QMConfig, QMRunSpec, run_qm_trajectory
    from mdkstep.molecule.system import from_smiles as system_from_smiles

    root = tmp_path_factory.mktemp("qm")
    cfg = load_config(QMConfig, ROOT / "configs/qm_quick.yaml",
                      {"production_ps": 0.03, "equilibration_ps": 0.005, "minimize_steps": 20, "chunk_frames": 200})
    system = system_from_smiles("O", "water")
    for r in range(2):
        run_qm_trajectory(system, cfg, QMRunSpec(root / "md" / "water" / f"replica_{r}.npz", 1000 * r, f"replica{r}", r),
                          progress=False)
    mc = ModelConfig(hidden=8, n_layers=1, n_rbf=4, max_hops=3, use_forces=True)
    model = build_model(mc)
    model.set_normalization(v_scale=10.0, f_scale=1000.0, dx_scale=1e-4, dv_scale=1e-2)  # small, sane jumps
    ck = root / "tiny.pt"
    save_checkpoint(ck, {"model_state": model.state_dict(), "model_config": asdict(mc), "train_config": {},
                         "k": 4, "dt_fs": 0.25, "engine": "xtb", "atom_types": [1, 8]})
    return root, ck


def _run06b(argv, monkeypatch):
    """Run 06b in-process; returns the engine it built (to read its own call counter)."""
    code, built = run_06b(argv, monkeypatch)
    assert code == 0
    return built[0]


@pytest.mark.slow
def test_06b_and_05b_on_water(qm_water, tmp_path, monkeypatch):
    from mdkstep.trajectory import load_trajectory

    root, ck = qm_water
    out = root / "hybrid" / "water" / "k4_kick.npz"
    engine = _run06b(["--checkpoint", str(ck), "--start-from", str(root / "md/water/replica_0.npz"),
                      "--qm-config", str(ROOT / "configs/qm_quick.yaml"),
                      "--hybrid-config", str(ROOT / "configs/hybrid_qm.yaml"), "--out", str(out),
                      "--time-ps", "0.006", "--replicas", "2", "--no-progress", "--log-level", "WARNING"], monkeypatch)
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["n_cycles"] == 6 and stats["k"] == 4 and stats["dt_fs"] == 0.25
    # force calls exactly as the engine counted them: setup + jumps (+ retries) + fallbacks
    assert stats["force_calls"] == engine.counters.calls
    assert stats["force_calls"] == stats["force_calls_setup"] + stats["force_calls_jump"] + stats["force_calls_fallback"]
    assert stats["force_calls_setup"] == 2 and stats["nan_frames"] == 0
    for r in range(2):
        t = load_trajectory(out.with_name(f"k4_kick_r{r}.npz"))  # schema-validated on load
        assert t.n_frames == 6 and list(t.atom_types) == [8, 1, 1]
        assert all(np.all(np.isfinite(a)) for a in (t.positions, t.velocities, t.energies))
        assert t.metadata["engine"] == "xtb" and t.metadata["dt_fs"] == 0.25
    assert np.allclose(np.diff(t.time_ps), 0.001)

    ev_dir = tmp_path / "eval"
    mod = load_script("05b_eval_qm")
    assert mod.main(["--baseline", str(root / "md"), "--hybrid-runs", str(root / "hybrid"), "--out-dir", str(ev_dir),
                     "--plain-steps", "10", "--log-level", "WARNING"]) == 0
    m = json.loads((ev_dir / "metrics.json").read_text())["molecules"]["water"]
    assert set(m["plain_md"]) == {"0.25fs", "0.5fs", "1fs"}
    # 10 steps, one counted call each: the warm-up call's forces start every segment
    seg = m["plain_md"]["0.5fs"]
    assert seg["force_calls"] == 10 and seg["force_calls_source"] == "engine_counter" and seg["stable"]
    assert seg["force_calls_per_ps"] == pytest.approx(10 / 0.005)
    for ev in m["runs"].values():
        for key in ("0.25fs", "0.5fs", "1fs"):
            eff = ev["efficiency_vs_plain"][key]
            for k in ("hybrid_force_calls_per_ps", "force_call_reduction", "wall_speedup", "hybrid_wall_s_per_ps",
                      "baseline_wall_s_per_ps"):
                assert np.isfinite(eff[k])
            assert eff["baseline_force_calls_source"] == "engine_counter"
        assert ev["efficiency"]["hybrid_force_calls_per_ps"] == pytest.approx(
            stats["force_calls"] / stats["simulated_ps_total"])
        assert "bond_w1_A" in ev["distances"] and "bond_w1_A" in ev["floor"]
    assert (ev_dir / "report.md").is_file()


@pytest.mark.slow
def test_06b_rejects_wrong_time_step(qm_water, tmp_path, capsys):
    from mdkstep.config import run_cli

    root, ck = qm_water
    start = root / "md/water/replica_0.npz"
    mod = load_script("06b_hybrid_integrate_qm")
    with pytest.raises(SystemExit) as e:
        run_cli(mod.main, ["--checkpoint", str(ck), "--start-from", str(start),
                           "--qm-config", str(ROOT / "configs/qm_quick.yaml"), "--qm-set", "dt_fs=0.5",
                           "--out", str(tmp_path / "x.npz"), "--log-level", "WARNING"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {start}: baseline dt_fs=0.25, but {ROOT / 'configs/qm_quick.yaml'} has dt_fs=0.5"
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("script", BATCH_SCRIPTS)
def test_batch_scripts_syntax_help_and_dry_run(script):
    path = ROOT / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    h = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and h.stdout.strip()
    d = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={**os.environ, "DRY_RUN": "1"})
    assert d.returncode == 0 and "DRY_RUN=1" in d.stdout, d.stderr


def test_01b_rerun_over_finished_output_with_other_settings_is_refused(tmp_path):
    """A finished QM baseline is skipped only when it was made with the same settings (issue 23)."""
    from mdkstep.utils import MdkstepError

    smi = tmp_path / "w.smi"
    smi.write_text("O water\n")
    cfg = tmp_path / "qm.yaml"
    cfg.write_text("engine: xtb\nproduction_ps: 0.005\nequilibration_ps: 0.0\nchunk_frames: 10\nminimize: false\n")
    mod = load_script("01b_run_qm_baselines")
    argv = ["--smiles-file", str(smi), "--config", str(cfg), "--out", str(tmp_path / "md"), "--no-progress",
            "--log-level", "WARNING"]
    assert mod.main(argv) == 0
    assert mod.main(argv + ["--omp-num-threads", "1"]) == 0  # threads change nothing: skipped
    out = tmp_path / "md" / "water" / "replica_0.npz"
    with pytest.raises(MdkstepError, match=rf"^{out}: finished with other settings \(config.temperature_K: "
                                           r"300.0 -> 310.0\); pass --overwrite"):
        mod.main(argv + ["--set", "temperature_K=310"])
