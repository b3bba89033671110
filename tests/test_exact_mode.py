"""Exact mode end to end (issue 12): the shear model kind in configs and checkpoints, 04's
dispatch, the exact sampler through the chunked run loop (files, resume, stats), the
constraint mismatch refusal, 06b with a shear checkpoint, and the autocorrelation-time estimator.
Contracts only, on analytic engines (and GFN2-xTB water for the 06b CLI); no timings."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from conftest import load_script
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint, save_checkpoint, shear_payload
from mdkstep.exact.sampler import ShearJumper
from mdkstep.exact.run import run_exact_chunked
from mdkstep.hybrid.config import HybridConfig
from mdkstep.analysis.metrics import (autocorrelation, effective_samples_per_force_call, iat_reliable,
                             integrated_autocorr_time, slowest_dihedral_iat)
from mdkstep.model import EGNN, ModelConfig, build_model
from mdkstep.model.shear import ShearKicks, graph_template, randomize_kick_heads_
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import MdkstepError
from helpers import MorseCluster, morse_states, tiny_config

torch.set_num_threads(1)
TAU_FS, K, DT_FS = 2.0, 8, 0.25


def shear_config(**kw) -> ModelConfig:
    return tiny_config(kind="shear", n_inner=2, **kw)


def random_shear(seed: int = 0) -> ShearKicks:
    """A float64 ShearKicks (n_inner 2) with non-zero random corrections."""
    torch.manual_seed(seed)
    kicks = build_model(shear_config()).double()
    kicks.set_scales(f_scale=100.0, kick_scale=0.5 * TAU_FS / 1000 * 100.0 / 12.0)
    randomize_kick_heads_(kicks, gain=0.5, generator=torch.Generator().manual_seed(seed + 1))
    return kicks


def save_shear(kicks: ShearKicks, path, **extra):
    return save_checkpoint(path, shear_payload(kicks, K, DT_FS, "analytic", [6, 7, 8],
                                               train_config={"dtype": "float64"}, **extra))


# ---------------------------------------------------------------- kind + checkpoint

def test_model_config_kind_validates():
    assert ModelConfig().kind == "jump" and ModelConfig().n_inner == 1
    for bad in (dict(kind="flow"), dict(kind="shear", n_inner=0)):
        with pytest.raises(ValueError):
            ModelConfig(**bad).validate()
    assert isinstance(build_model(shear_config()), ShearKicks) and isinstance(build_model(tiny_config()), EGNN)


def test_shear_checkpoint_round_trip(tmp_path):
    kicks = random_shear()
    ck_path = save_shear(kicks, tmp_path / "shear.pt")
    model, ck = model_from_checkpoint(ck_path, dtype=torch.float64)
    assert isinstance(model, ShearKicks) and model.n_inner == 2 and ck["model_config"]["kind"] == "shear"
    assert model.model_config.kind == "shear" and model.config.kind == "jump"  # sub-networks are plain EGNNs
    tmpl = graph_template(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS)
    x = torch.tensor(morse_states(1, np.random.default_rng(0))[0][0])
    f = MorseCluster.torch_forces(x.clone(), create_graph=False)[1].detach()
    with torch.no_grad():
        for lvl in range(2):
            assert torch.equal(model.delta_inner(lvl, tmpl, x), kicks.delta_inner(lvl, tmpl, x))
        d = model.delta_outer(tmpl, x, f)
        assert torch.equal(d, kicks.delta_outer(tmpl, x, f)) and d.abs().max() > 0
    # a jump config against a shear checkpoint is a one-line error
    with pytest.raises(MdkstepError, match="kind mismatch"):
        check_compatible(ck, "shear.pt", model_config=tiny_config())


def test_old_checkpoint_without_kind_is_a_jump_model(tmp_path):
    cfg = tiny_config()
    d = asdict(cfg)
    d.pop("kind"), d.pop("n_inner")  # as written before exact mode
    model = build_model(cfg)
    save_checkpoint(tmp_path / "old.pt", {"model_state": model.state_dict(), "model_config": d, "k": 4})
    loaded, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert isinstance(loaded, EGNN)


# ----------------------------------------------------------------- the run loop

def hcfg(**kw) -> HybridConfig:
    base = dict(k=K, dt_fs=DT_FS, temperature_K=300.0, friction_per_ps=5.0, save_interval_cycles=2, chunk_frames=5)
    base.update(kw)
    return HybridConfig(**base).resolved()


def morse_run(out, seed: int = 3, n_strides: int = 40, resume: bool = True, **kw):
    eng = MorseCluster()
    jumper = ShearJumper(random_shear(), MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, TAU_FS / 1000)
    x0, v0 = morse_states(2, np.random.default_rng(1))
    dihedrals = np.array([[0, 1, 2, 3], [1, 0, 2, 3]])
    stats = run_exact_chunked(eng, jumper, hcfg(**kw), x0, v0, n_strides, out, np.random.default_rng(seed),
                              resume=resume, metadata={"molecule": "morse4"}, dihedrals=dihedrals)
    return stats, eng


def test_exact_run_writes_trajectories_and_stats(tmp_path):
    stats, eng = morse_run(tmp_path / "ex.npz")
    assert stats["n_frames"] == 20 and stats["n_strides"] == 40 and stats["n_replicas"] == 2
    assert stats["force_calls"] == eng.counters.calls == 2 * (40 + 1)  # one call per stride + the set-up call
    assert 0.0 < stats["acceptance"] < 1.0 and stats["metropolis"] is True
    assert stats["jumps_attempted"] == 80 and stats["median_abs_dH_kJ_mol"] <= stats["p90_abs_dH_kJ_mol"]
    assert stats["force_calls_per_ps"] == pytest.approx(82 / (2 * 40 * TAU_FS / 1000))
    for key in ("tau_int_U_frames", "ess_per_force_call_U", "tau_int_slowest_dihedral_frames"):
        assert key in stats
    for r in range(2):
        t = load_trajectory(tmp_path / f"ex_r{r}.npz")
        assert t.n_frames == 20 and t.forces is not None
        assert np.allclose(t.time_ps, np.arange(1, 21) * 2 * TAU_FS / 1000)
        assert t.metadata["method"] == "exact_shear_metropolis" and t.metadata["save_interval"] == 2 * K
        assert t.metadata["metropolis"] is True and t.metadata["molecule"] == "morse4"
        u = MorseCluster.energy(torch.tensor(t.positions)).numpy()
        assert np.allclose(t.energies, u)  # the stored U is the engine's at the stored x
    assert not (tmp_path / "ex.hybrid_ckpt.npz").exists()


def test_exact_run_resumes_bit_for_bit(tmp_path, crash_after_flushes):
    ref, _ = morse_run(tmp_path / "a" / "ex.npz")
    disarm = crash_after_flushes(3)  # chunk 0 committed, killed while writing chunk 1
    with pytest.raises(KeyboardInterrupt):
        morse_run(tmp_path / "b" / "ex.npz")
    disarm()
    assert (tmp_path / "b" / "ex.hybrid_ckpt.npz").is_file()
    res, eng = morse_run(tmp_path / "b" / "ex.npz")
    assert eng.counters.calls < 82  # the resumed session did not start over
    for r in range(2):
        a, b = (load_trajectory(tmp_path / d / f"ex_r{r}.npz") for d in "ab")
        for key in ("positions", "velocities", "forces", "energies", "time_ps"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key
    for key in ("acceptance", "median_abs_dH_kJ_mol", "force_calls", "n_strides"):
        assert res[key] == ref[key], key


def test_exact_run_resume_with_other_settings_is_refused(tmp_path, crash_after_flushes):
    disarm = crash_after_flushes(3)  # chunk 0 committed (2 replicas: 2 flushes per chunk)
    with pytest.raises(KeyboardInterrupt):
        morse_run(tmp_path / "ex.npz")
    disarm()
    with pytest.raises(MdkstepError, match="other settings"):
        morse_run(tmp_path / "ex.npz", metropolis=False)


def test_nve_exact_run_accepts_everything(tmp_path):
    stats, _ = morse_run(tmp_path / "nve.npz", ensemble="nve", n_strides=10)
    assert stats["acceptance"] == 1.0 and stats["metropolis"] is False and stats["friction_per_ps"] == 0.0


class ConstrainedMorse(MorseCluster):
    @property
    def n_constraints(self) -> int:
        return 3


def test_a_jumper_without_the_engines_constraints_is_refused_in_one_line(tmp_path):
    jumper = ShearJumper(random_shear(), MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, TAU_FS / 1000)
    x0, v0 = morse_states(1, np.random.default_rng(1))
    with pytest.raises(MdkstepError) as e:
        run_exact_chunked(ConstrainedMorse(), jumper, hcfg(), x0, v0, 10, tmp_path / "c.npz", np.random.default_rng(0))
    msg = str(e.value)
    assert "\n" not in msg and "3 constraints" in msg and "projects onto 0" in msg
    assert not list(tmp_path.iterdir()) or not (tmp_path / "c.npz").exists()


def test_csvr_thermostat_is_refused(tmp_path):
    jumper = ShearJumper(random_shear(), MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, TAU_FS / 1000)
    x0, v0 = morse_states(1, np.random.default_rng(1))
    with pytest.raises(MdkstepError, match="Langevin"):
        run_exact_chunked(MorseCluster(), jumper, hcfg(thermostat="csvr"), x0, v0, 10, tmp_path / "c.npz",
                          np.random.default_rng(0))


def test_hybrid_yaml_has_metropolis():
    from conftest import ROOT
    from mdkstep.config import load_config

    assert load_config(HybridConfig, ROOT / "configs/hybrid.yaml").metropolis is True


# ------------------------------------------------------------ 06b with a shear model

def test_06b_runs_exact_mode_on_water(tmp_path, monkeypatch):
    pytest.importorskip("tblite")
    from mdkstep.config import load_config, run_cli
    from mdkstep.baselines.ase_md import QMConfig, QMRunSpec, run_qm_trajectory
    from mdkstep.molecule.system import from_smiles

    cfg = load_config(QMConfig, load_script.__globals__["ROOT"] / "configs/qm_quick.yaml",
                      {"production_ps": 0.01, "equilibration_ps": 0.005, "minimize_steps": 20})
    base = tmp_path / "md" / "water" / "replica_0.npz"
    run_qm_trajectory(from_smiles("O", "water"), cfg, QMRunSpec(base, 0, "replica0", 0), progress=False)
    torch.manual_seed(0)
    kicks = build_model(ModelConfig(kind="shear", hidden=8, n_layers=1, n_rbf=4, max_hops=3, cutoff_nm=None)).double()
    ck = save_checkpoint(tmp_path / "shear.pt", shear_payload(kicks, 4, 0.25, "xtb", [1, 8],
                                                              train_config={"dtype": "float64"}))
    out = tmp_path / "ex" / "w.npz"
    mod = load_script("06b_hybrid_integrate_qm")
    argv = ["--checkpoint", str(ck), "--start-from", str(base), "--out", str(out), "--time-ps", "0.02",
            "--qm-config", str(load_script.__globals__["ROOT"] / "configs/qm_quick.yaml"), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        run_cli(mod.main, argv)
    assert e.value.code == 0
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["mode"] == "exact" and stats["tau_fs"] == pytest.approx(1.0) and stats["n_strides"] == 20
    assert stats["acceptance"] > 0.5  # Metropolized Verlet at 1 fs on water
    assert load_trajectory(out).n_frames == 20


# ------------------------------------------------------------------- efficiency

def ar1(phi: float, n: int, n_chains: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, n_chains))
    x = np.zeros_like(e)
    x[0] = e[0] / np.sqrt(1 - phi * phi)  # stationary start
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_iat_of_ar1_matches_the_known_value(phi):
    """AR(1) x_t = phi x_{t-1} + e_t has rho(t) = phi^t, so tau_int = (1 + phi)/(1 - phi)."""
    x = ar1(phi, 50_000, 4, seed=int(phi * 10))
    exact = (1 + phi) / (1 - phi)
    assert integrated_autocorr_time(x) == pytest.approx(exact, rel=0.08)
    assert integrated_autocorr_time(x[:, 0]) == pytest.approx(exact, rel=0.15)
    rho = autocorrelation(x)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(phi, abs=0.02)
    assert iat_reliable(exact, 50_000) and not iat_reliable(5000.0, 50_000)


def test_iat_edge_cases_and_ess_per_call():
    assert np.isnan(integrated_autocorr_time(np.ones(100)))
    assert effective_samples_per_force_call(1000, 10.0, 500) == pytest.approx(0.2)
    assert np.isnan(effective_samples_per_force_call(1000, 10.0, 0))
    # a slowly rotating dihedral is found slower than a fast one
    t = np.arange(4000)
    rng = np.random.default_rng(0)
    pos = np.zeros((len(t), 5, 3))
    pos[:, 1] = [0.15, 0, 0]
    pos[:, 2] = [0.15, 0.15, 0]
    slow, fast = ar1(0.99, len(t), 1, 1)[:, 0] * 0.2, rng.normal(size=len(t))
    pos[:, 0] = np.stack([0 * t, 0.15 * np.cos(slow), 0.15 * np.sin(slow)], axis=1)
    pos[:, 3] = pos[:, 2] + np.stack([0.15 + 0 * t, 0.15 * np.cos(fast), 0.15 * np.sin(fast)], axis=1)
    tau, idx = slowest_dihedral_iat(pos, np.array([[1, 2, 3, 4], [0, 1, 2, 3]]))
    assert idx == 1 and tau > 20
