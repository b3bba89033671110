"""QM path: engines (xtb / pyscf / any ASE calculator), units, the QM MD runner (01b / 01c),
checkpoint/resume, optional-backend errors, GPU fallback and the QM/MM example."""
from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest

from conftest import load_script
from mdkstep.engines.units import (ASE_VELOCITY_TO_NM_PS, BOHR_TO_NM, EV_PER_ANGSTROM_TO_KJ_MOL_NM, EV_TO_KJ_MOL,
                                   HARTREE_PER_BOHR_TO_KJ_MOL_NM, HARTREE_TO_KJ_MOL, PS_IN_ASE_TIME)
from mdkstep.baselines.ase_md import QMConfig, QMRunSpec, run_qm_trajectory, temperature_warning
from mdkstep.baselines.pool import limit_threads
from mdkstep.molecule.system import from_smiles as system_from_smiles
from mdkstep.trajectory import METADATA_KEYS, load_trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, center_of_mass

# Crawford group programming project #3 (github.com/CrawfordGroup/ProgrammingProjects, Project03
# input/h2o/STO-3G/geom.dat, in Bohr) and its published RHF/STO-3G total energy, -74.942079928192
# Hartree (Psi4 gives the same to 1e-10; NIST CCCBDB lists STO-3G water at its own geometry).
CRAWFORD_WATER_Z = np.array([8, 1, 1])
CRAWFORD_WATER_BOHR = np.array([
    [0.000000000000, -0.143225816552, 0.000000000000],
    [1.638036840407, 1.136548822547, -0.000000000000],
    [-1.638036840407, 1.136548822547, -0.000000000000],
])
CRAWFORD_RHF_STO3G_HARTREE = -74.942079928192
WATER_MASSES = np.array([15.999, 1.008, 1.008])


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    """One OpenMP thread for the tiny QM systems here (oversubscription costs 100x); restored after."""
    with limit_threads(1):
        yield


def _fd_forces(engine, x_nm: np.ndarray, h_nm: float, coords: list[tuple[int, int]]) -> np.ndarray:
    """-dE/dx by central differences at the given (atom, axis) coordinates, kJ/(mol nm)."""
    out = []
    for i, a in coords:
        xp, xm = x_nm.copy(), x_nm.copy()
        xp[i, a] += h_nm
        xm[i, a] -= h_nm
        out.append(-(engine.compute(xp)[0] - engine.compute(xm)[0]) / (2 * h_nm))
    return np.array(out)


def _tiny_cfg(**kw) -> QMConfig:
    base = dict(production_ps=0.05, equilibration_ps=0.01, chunk_frames=50, minimize_steps=50)
    base.update(kw)
    return QMConfig(**base)


# ------------------------------------------------------------------------------- units

def test_unit_conversions_match_known_constants():
    assert HARTREE_TO_KJ_MOL == pytest.approx(2625.4996, abs=1e-3)
    assert BOHR_TO_NM == pytest.approx(0.0529177, abs=1e-7)
    assert EV_TO_KJ_MOL == pytest.approx(96.485, abs=1e-3)
    assert HARTREE_PER_BOHR_TO_KJ_MOL_NM == pytest.approx(2625.4996 / 0.0529177, rel=1e-6)
    assert EV_PER_ANGSTROM_TO_KJ_MOL_NM == pytest.approx(964.85, abs=1e-2)
    # ASE time: 1 ps = 98.2269 ASE units; 1 Å per ASE time unit = 9.82269 nm/ps
    assert PS_IN_ASE_TIME == pytest.approx(98.2269, abs=1e-3)
    assert ASE_VELOCITY_TO_NM_PS == pytest.approx(9.82269, abs=1e-4)


def test_shipped_qm_configs_and_smiles_files_load():
    from conftest import ROOT
    from mdkstep.config import load_config
    from mdkstep.molecule.system import from_smi_file as systems_from_smiles_file

    cfgs = {p.name: load_config(QMConfig, p) for p in sorted((ROOT / "configs").glob("qm*.yaml"))}
    assert {"qm.yaml", "qm_quick.yaml", "qm_pyscf.yaml", "qm_pyscf_quick.yaml"} <= set(cfgs)
    for name, c in cfgs.items():
        c.validate()
        assert c.engine == ("pyscf" if "pyscf" in name else "xtb"), name  # the file name says the engine
    mols = systems_from_smiles_file(ROOT / "data" / "qm_molecules.smi")
    assert mols and all(3 <= m.n_atoms <= 15 and m.charge == 0 for m in mols)
    small = systems_from_smiles_file(ROOT / "data" / "qm_small_molecules.smi")
    assert all(3 <= m.n_atoms <= 5 for m in small) and "hydrogen_cyanide" in {m.name for m in small}


def test_friction_units_and_temperature_warning():
    from ase import units

    from mdkstep.baselines.ase_md import _langevin, _make_atoms
    from mdkstep.engines.xtb_engine import XTBEngine

    s = system_from_smiles("O", "water")
    atoms = _make_atoms(s, XTBEngine(s.atomic_numbers, s.masses))
    dyn = _langevin(atoms, QMConfig(friction_per_ps=2.0), np.random.default_rng(0))
    assert dyn.fr == pytest.approx(0.002 / units.fs)  # the issue's "0.002" (per fs) is 2/ps
    assert dyn.fix_com is False
    assert temperature_warning(329.0, 300.0, "x") is None
    assert "+12%" in temperature_warning(336.0, 300.0, "x")


# ----------------------------------------------------------------------------- engines

def test_pyscf_rhf_sto3g_water_matches_published_reference():
    from mdkstep.engines.pyscf_engine import PySCFEngine

    eng = PySCFEngine(CRAWFORD_WATER_Z, WATER_MASSES, method="RHF", basis="sto-3g", use_gpu=False, conv_tol=1e-11)
    e, f = eng.compute(CRAWFORD_WATER_BOHR * BOHR_TO_NM)
    assert e / HARTREE_TO_KJ_MOL == pytest.approx(CRAWFORD_RHF_STO3G_HARTREE, abs=1e-5)
    assert f.shape == (3, 3) and np.allclose(f.sum(axis=0), 0.0, atol=1e-6)  # no net force
    assert eng.counters.calls == 1 and eng.method == "RHF/sto-3g"


def test_pyscf_forces_are_minus_energy_gradient():
    from mdkstep.engines.pyscf_engine import PySCFEngine

    eng = PySCFEngine(CRAWFORD_WATER_Z, WATER_MASSES, use_gpu=False, conv_tol=1e-11)
    x = CRAWFORD_WATER_BOHR * BOHR_TO_NM + np.array([[0.0, 0.0, 0.001], [0.002, 0.0, 0.0], [0.0, -0.001, 0.0]])
    _, f = eng.compute(x)
    coords = [(i, a) for i in range(3) for a in range(3)]
    fd = _fd_forces(eng, x, 1e-5, coords)
    assert np.allclose(fd, [f[i, a] for i, a in coords], atol=0.05)  # kJ/(mol nm); |F| ~ 1e3
    assert eng.counters.calls == 1 + 2 * len(coords)


@pytest.mark.parametrize("smiles", ["O", "CCO"])
def test_xtb_forces_are_minus_energy_gradient(smiles):
    from mdkstep.engines.xtb_engine import XTBEngine

    s = system_from_smiles(smiles, "m", seed=1)
    eng = XTBEngine(s.atomic_numbers, s.masses, accuracy=0.01)  # tight SCC for finite differences
    x = s.positions_nm
    e, f = eng.compute(x)
    rng = np.random.default_rng(0)
    coords = [(int(i), int(a)) for i, a in zip(rng.integers(0, s.n_atoms, 6), rng.integers(0, 3, 6))]
    fd = _fd_forces(eng, x, 1e-5, coords)
    assert np.allclose(fd, [f[i, a] for i, a in coords], atol=0.2)  # kJ/(mol nm)
    # GFN2-xTB water energy is about -5.07 Hartree (tblite reference value -5.0705)
    if smiles == "O":
        assert e / HARTREE_TO_KJ_MOL == pytest.approx(-5.07, abs=0.01)
    assert eng.describe()["method"] == "GFN2-xTB" and eng.counters.calls == 1 + 2 * len(coords)


def test_xtb_python_backend_agrees_with_tblite():
    pytest.importorskip("xtb.interface", reason="xtb-python not installed (pip install xtb==22.1)")
    from mdkstep.engines.xtb_engine import XTBEngine

    s = system_from_smiles("CCO", "ethanol", seed=1)
    e1, f1 = XTBEngine(s.atomic_numbers, s.masses, backend="tblite").compute(s.positions_nm)
    e2, f2 = XTBEngine(s.atomic_numbers, s.masses, backend="xtb-python").compute(s.positions_nm)
    assert e1 == pytest.approx(e2, abs=0.01)  # kJ/mol: the same GFN2-xTB in two codes
    assert np.allclose(f1, f2, atol=0.5)  # kJ/(mol nm)


def test_ase_engine_wraps_any_calculator_with_units_and_counts():
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones

    from mdkstep.engines.ase_engine import ASEEngine

    x = np.array([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.26, 0.02], [0.12, 0.13, 0.22]])  # nm
    for calc, z in ((EMT(), 29), (LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0), 18)):
        eng = ASEEngine(calc, np.full(4, z), np.full(4, 63.5))
        e, f = eng.compute(x)
        assert e == pytest.approx(calc.get_potential_energy(eng.atoms) * EV_TO_KJ_MOL)
        assert np.allclose(f, calc.get_forces(eng.atoms) * EV_PER_ANGSTROM_TO_KJ_MOL_NM)
        coords = [(i, a) for i in range(4) for a in range(3)]
        fd = _fd_forces(eng, x, 1e-6, coords)
        assert np.allclose(fd, [f[i, a] for i, a in coords], atol=1e-3 * max(1.0, np.abs(f).max()))
        assert eng.counters.calls == 1 + 2 * len(coords)


def test_engine_calculator_counts_one_call_per_ase_calculation():
    from ase import Atoms

    from mdkstep.engines.ase_engine import EngineCalculator
    from mdkstep.engines.xtb_engine import XTBEngine

    s = system_from_smiles("O", "water")
    eng = XTBEngine(s.atomic_numbers, s.masses)
    atoms = Atoms(numbers=s.atomic_numbers, positions=s.positions_nm * 10.0)
    atoms.calc = EngineCalculator(eng)
    e_ev, f = atoms.get_potential_energy(), atoms.get_forces()
    assert eng.counters.calls == 1  # energy and forces from one engine call
    e, f_ref = eng.compute(s.positions_nm)
    assert e_ev * EV_TO_KJ_MOL == pytest.approx(e, abs=1e-6)
    assert np.allclose(f * EV_PER_ANGSTROM_TO_KJ_MOL_NM, f_ref, atol=0.05)  # 2nd SCF restarts from the 1st


def test_factory_chooses_engine_by_config():
    from mdkstep.engines import make_engine

    s = system_from_smiles("O", "water")
    assert make_engine(QMConfig().engine, s, QMConfig()).name == "xtb"
    eng = make_engine("pyscf", s, {"method": "RHF", "basis": "sto-3g", "use_gpu": False})
    assert eng.name == "pyscf" and eng.method == "RHF/sto-3g"
    with pytest.raises(MdkstepError, match="unknown engine 'orca'"):
        make_engine("orca", s, {})


# ------------------------------------------------------------- optional backends / GPU

@pytest.mark.parametrize("hidden,kind,hint", [
    ("tblite.interface", "tblite", "pip install tblite"),
    ("xtb.interface", "xtb-python", "pip install xtb==22.1"),
    ("pyscf", "pyscf", "pip install pyscf"),
])
def test_missing_backend_is_one_line_error_with_install_hint(monkeypatch, hidden, kind, hint):
    from mdkstep.engines.pyscf_engine import PySCFEngine
    from mdkstep.engines.xtb_engine import XTBEngine

    monkeypatch.setitem(sys.modules, hidden, None)  # makes `import <hidden>` raise ImportError
    with pytest.raises(MdkstepError) as err:
        if kind == "pyscf":
            PySCFEngine([8, 1, 1], WATER_MASSES)
        else:
            XTBEngine([8, 1, 1], WATER_MASSES, backend=kind)
    assert hint in str(err.value) and "\n" not in str(err.value)


def test_gpu4pyscf_path_falls_back_to_cpu_and_says_why(caplog):
    from mdkstep.engines.pyscf_engine import PySCFEngine, gpu_status

    ok, why = gpu_status()
    if ok:
        pytest.skip(f"a CUDA GPU with GPU4PySCF is present ({why}); the fallback is not exercised")
    attach = not LOG.propagate  # after setup_logging the mdkstep logger stops propagating to root
    if attach:
        LOG.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="mdkstep"):
            eng = PySCFEngine(CRAWFORD_WATER_Z, WATER_MASSES, use_gpu="auto")
    finally:
        if attach:
            LOG.removeHandler(caplog.handler)
    assert not eng.use_gpu and eng.device_note.startswith("cpu")
    msg = [r.getMessage() for r in caplog.records if "pyscf engine" in r.getMessage()]
    assert len(msg) == 1 and "CPU PySCF fallback" in msg[0] and why in msg[0]
    with pytest.raises(MdkstepError, match="use_gpu is true but GPU4PySCF cannot run"):
        PySCFEngine(CRAWFORD_WATER_Z, WATER_MASSES, use_gpu=True)


@pytest.mark.gpu
def test_gpu4pyscf_matches_cpu_when_available():
    from mdkstep.engines.pyscf_engine import PySCFEngine, gpu_status

    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"GPU4PySCF cannot run here: {why}")
    x = CRAWFORD_WATER_BOHR * BOHR_TO_NM
    e_gpu, f_gpu = PySCFEngine(CRAWFORD_WATER_Z, WATER_MASSES, use_gpu=True, conv_tol=1e-11).compute(x)
    e_cpu, f_cpu = PySCFEngine(CRAWFORD_WATER_Z, WATER_MASSES, use_gpu=False, conv_tol=1e-11).compute(x)
    assert e_gpu == pytest.approx(e_cpu, abs=1e-4) and np.allclose(f_gpu, f_cpu, atol=1e-2)


# ---------------------------------------------------------------------- QM MD runner

def test_short_xtb_md_is_schema_valid_with_engine_forces(tmp_path):
    from mdkstep.engines.xtb_engine import XTBEngine

    cfg = _tiny_cfg()
    s = system_from_smiles("CCO", "ethanol", seed=0)
    stats = run_qm_trajectory(s, cfg, QMRunSpec(tmp_path / "e.npz", 3), progress=False)
    t = load_trajectory(tmp_path / "e.npz")  # validates schema, shapes, finiteness
    assert t.n_frames == 200 == stats["n_frames"] and t.n_atoms == 9 and t.forces is not None
    assert np.allclose(np.diff(t.time_ps), 0.00025)  # ps
    assert all(k in t.metadata for k in METADATA_KEYS)
    m = t.metadata
    assert (m["engine"], m["method"], m["constraints"], m["dt_fs"]) == ("xtb", "GFN2-xTB", "none", 0.25)
    assert m["friction"] == 2.0 and m["friction_unit"] == "1/ps" and m["smiles"] == "CCO" and m["seed"] == 3
    # the production loop costs exactly one engine call per step
    assert stats["force_calls_production"] == 200
    # saved forces are the engine's forces at the saved positions (fresh engine: SCF tolerance only)
    eng = XTBEngine(t.atom_types, t.masses)
    for k in (0, 117, 199):
        e, f = eng.compute(t.positions[k])
        assert e == pytest.approx(t.energies[k], abs=1e-3)  # kJ/mol
        assert np.allclose(f, t.forces[k], atol=0.5)  # kJ/(mol nm); |F| ~ 1e3
    # FixCom: centre of mass fixed, COM velocity zero; kinetic <-> temperature with 3N - 3 dof
    com = center_of_mass(t.positions, t.masses)
    assert np.abs(com - com[0]).max() < 1e-9
    assert np.abs(center_of_mass(t.velocities, t.masses)).max() < 1e-9
    assert np.allclose(t.kinetic, 0.5 * (3 * 9 - 3) * KB_KJ_PER_MOL_K * t.temperature)
    # x and v synchronous: v(t) ~ central difference of positions (0.25 fs steps, nm/ps)
    dx = (t.positions[2:] - t.positions[:-2]) / (2 * 0.00025)
    assert np.abs(dx - t.velocities[1:-1]).max() < 0.05 * np.abs(t.velocities).max()


@pytest.mark.slow
def test_resume_after_interruption_gives_same_frames(tmp_path, crash_after_flushes):
    cfg = _tiny_cfg(chunk_frames=40)
    s = system_from_smiles("O", "water", seed=0)
    full = tmp_path / "full.npz"
    run_qm_trajectory(s, cfg, QMRunSpec(full, 5), progress=False)

    part = tmp_path / "part.npz"
    disarm = crash_after_flushes(3)  # killed after chunk 2 was written, before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_qm_trajectory(s, cfg, QMRunSpec(part, 5), progress=False)
    disarm()
    assert not part.exists() and (tmp_path / "part.npz.parts" / "checkpoint.npz").is_file()
    stats = run_qm_trajectory(s, cfg, QMRunSpec(part, 5), progress=False)
    assert stats["steps_this_session"] == 200 - 2 * 40  # resumed after the last checkpointed chunk
    a, b = load_trajectory(full), load_trajectory(part)
    assert a.n_frames == b.n_frames == 200
    assert np.array_equal(a.time_ps, b.time_ps)
    assert np.array_equal(a.positions[:80], b.positions[:80])  # written before the interruption
    # after it: same state and RNG stream; only the SCF restart guess differs (tiny)
    assert np.allclose(a.positions, b.positions, atol=1e-4)


def _try_dataset_windows(traj_paths, tmp_path) -> str:
    """If the k-step dataset module exists, build windows from our files (check, don't require)."""
    if importlib.util.find_spec("mdkstep.data.windows") is None:
        return "absent"
    import mdkstep.data.windows as ds

    if not (hasattr(ds, "build_dataset") and hasattr(ds, "KStepDataset")):
        return "no known window builder"
    summary = ds.build_dataset(traj_paths, k=4, out_file=tmp_path / "ds.npz", split="time")
    assert summary["n_windows"] > 0
    data = ds.KStepDataset(tmp_path / "ds.npz")
    batches = data.batches(np.arange(len(data)))
    assert sum(len(b.x0) for b in batches) == len(data) and all(b.f0 is not None for b in batches)
    return "built"


@pytest.mark.slow
def test_01b_and_01c_outputs_load_through_the_same_loader(tmp_path, prepared):
    smi = tmp_path / "m.smi"
    smi.write_text("# tiny\nO water\nC#N hydrogen_cyanide\n")
    xtb_cfg = tmp_path / "qm.yaml"
    xtb_cfg.write_text("engine: xtb\nproduction_ps: 0.02\nequilibration_ps: 0.005\nchunk_frames: 40\n")
    pyscf_cfg = tmp_path / "qm_pyscf.yaml"
    pyscf_cfg.write_text("engine: pyscf\nmethod: RHF\nbasis: sto-3g\nproduction_ps: 0.005\n"
                         "equilibration_ps: 0.0\nchunk_frames: 10\nminimize_steps: 5\n")
    b = load_script("01b_run_qm_baselines")
    assert b.main(["--smiles-file", str(smi), "--config", str(xtb_cfg), "--out", str(tmp_path / "xtb"),
                   "--no-progress", "--replicas", "2"]) == 0
    assert b.main(["--molecule", str(prepared / "ethanol"), "--config", str(xtb_cfg), "--out", str(tmp_path / "xtb"),
                   "--no-progress"]) == 0
    c = load_script("01c_run_pyscf_baselines")
    assert c.main(["--smiles-file", str(smi), "--config", str(pyscf_cfg), "--out", str(tmp_path / "pyscf"),
                   "--no-progress", "--device", "cpu"]) == 0
    paths = [tmp_path / "xtb" / "water" / "replica_0.npz", tmp_path / "xtb" / "water" / "replica_1.npz",
             tmp_path / "xtb" / "hydrogen_cyanide" / "replica_0.npz", tmp_path / "xtb" / "ethanol" / "replica_0.npz",
             tmp_path / "pyscf" / "water" / "replica_0.npz", tmp_path / "pyscf" / "hydrogen_cyanide" / "replica_0.npz"]
    trajs = [load_trajectory(p) for p in paths]
    assert [t.metadata["engine"] for t in trajs] == ["xtb"] * 4 + ["pyscf"] * 2
    assert trajs[4].metadata["method"] == "RHF/sto-3g" and trajs[4].n_frames == 20
    assert trajs[0].metadata["seed"] != trajs[1].metadata["seed"]
    assert trajs[3].metadata["molecule"] == "ethanol" and trajs[3].n_atoms == 9
    assert all(t.forces is not None for t in trajs)
    assert (tmp_path / "xtb" / "water" / "run_stats.json").is_file()
    print("dataset windows:", _try_dataset_windows(paths, tmp_path))
    # a config for the wrong engine and an unknown key are one-line errors
    with pytest.raises(MdkstepError, match="key 'engine' is 'xtb'"):
        c.main(["--smiles-file", str(smi), "--config", str(xtb_cfg), "--out", str(tmp_path / "p2")])
    xtb_cfg.write_text("engine: xtb\nfriction: 0.002\n")
    with pytest.raises(MdkstepError, match="unknown key 'friction'"):
        b.main(["--smiles-file", str(smi), "--config", str(xtb_cfg), "--out", str(tmp_path / "x2")])


@pytest.mark.slow
def test_worker_pool_runs_jobs_in_parallel_processes(tmp_path):
    cfg = tmp_path / "qm.yaml"
    cfg.write_text("engine: xtb\nproduction_ps: 0.01\nequilibration_ps: 0.0\nchunk_frames: 40\nminimize: false\n")
    smi = tmp_path / "m.smi"
    smi.write_text("O water\nN ammonia\n")
    b = load_script("01b_run_qm_baselines")
    assert b.main(["--smiles-file", str(smi), "--config", str(cfg), "--out", str(tmp_path / "o"),
                   "--num-workers", "2", "--omp-num-threads", "1"]) == 0
    assert load_trajectory(tmp_path / "o" / "ammonia" / "replica_0.npz").n_frames == 40


@pytest.mark.slow
def test_ethanol_langevin_mean_temperature_near_target(tmp_path):
    """2 ps of GFN2-xTB ethanol with Langevin (fixcm=False + FixCom): mean T within 10%."""
    cfg = QMConfig(production_ps=2.0, equilibration_ps=0.5)
    s = system_from_smiles("CCO", "ethanol", seed=0)
    stats = run_qm_trajectory(s, cfg, QMRunSpec(tmp_path / "e.npz", 11), progress=False)
    assert stats["temperature_warning"] is None, stats["temperature_warning"]


# ------------------------------------------------------------------------------ QM/MM

@pytest.mark.slow
def test_qmmm_example_runs_and_conserves_energy(capsys):
    mod = load_script("qmmm_example")
    out = mod.run_qmmm(n_steps=6, n_side=2, relax_steps=5, verbose=False)
    assert np.all(np.isfinite(out["E_total"])) and out["qm_engine_calls"] > 0
    # subtractive QM/MM: E = E_QM(QM) + E_MM(all) - E_MM(QM region), all in kJ/mol
    assert np.allclose(out["E_pot"], out["E_QM"] + out["E_MM_all"] - out["E_MM_QMregion"])
    assert np.abs(out["E_total"] - out["E_total"][0]).max() < 1.0  # NVE, 0.5 fs, kJ/mol
    assert mod.main(["--steps", "2", "--n-side", "2", "--relax-steps", "2"]) == 0
    assert "E_QM" in capsys.readouterr().out


# ---------------------------------------------------------------------- spin multiplicity

def test_radical_takes_the_smiles_multiplicity_unless_the_config_sets_one(tmp_path, caplog):
    """[CH3] (9 electrons): no 'multiplicity' key -> RDKit's radical electrons + 1 = 2 (xTB uhf 1,
    PySCF spin 1), recorded in the metadata; an explicit 1 is a one-line error naming the molecule
    before any engine call; an explicit value the electrons allow is honoured with a warning."""
    from dataclasses import replace

    from mdkstep.engines.factory import make_engine

    s = system_from_smiles("[CH3]", "methyl", seed=0)
    cfg = _tiny_cfg(production_ps=0.0005, equilibration_ps=0.0, minimize=False)  # 2 steps of 0.25 fs
    assert cfg.multiplicity is None and s.multiplicity == 2 and s.n_electrons == 9
    run_qm_trajectory(s, cfg, QMRunSpec(tmp_path / "m.npz", 1), progress=False)
    t = load_trajectory(tmp_path / "m.npz")
    assert t.n_frames == 2 and t.metadata["multiplicity"] == 2 and t.metadata["config"]["multiplicity"] == 2
    eng = make_engine("xtb", s, cfg)
    assert eng.multiplicity == 2 and eng.describe()["multiplicity"] == 2
    if importlib.util.find_spec("pyscf") is not None:
        assert make_engine("pyscf", s, QMConfig(engine="pyscf")).spin == 1

    with pytest.raises(MdkstepError) as e:
        run_qm_trajectory(s, replace(cfg, multiplicity=1), QMRunSpec(tmp_path / "m1.npz", 1), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("methyl ([CH3]): 9 electrons") and "multiplicity 1" in msg
    assert "multiplicity' to 2" in msg and not (tmp_path / "m1.npz").exists()
    with pytest.raises(MdkstepError, match="methyl"):
        make_engine("xtb", s, {"multiplicity": 1})

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        run_qm_trajectory(s, replace(cfg, multiplicity=4), QMRunSpec(tmp_path / "m4.npz", 1), progress=False)
    assert load_trajectory(tmp_path / "m4.npz").metadata["multiplicity"] == 4
    assert "the molecule's multiplicity is 2" in caplog.text and "config's is 4" in caplog.text


def test_closed_shell_multiplicity_is_one_and_an_odd_spin_is_refused():
    w = system_from_smiles("O", "water", seed=0)
    assert w.resolve_multiplicity(None) == 1 == w.resolve_multiplicity(1) and w.resolve_multiplicity(3) == 3
    for bad in (2, 12):  # wrong parity; more unpaired electrons than electrons
        with pytest.raises(MdkstepError, match=rf"^water \(O\): 10 electrons \(charge \+0\) cannot have spin "
                                               rf"multiplicity {bad} \(key 'multiplicity'\)"):
            w.resolve_multiplicity(bad)
    assert system_from_smiles("[NH4+]", "ammonium").resolve_multiplicity(None) == 1  # 10 electrons
