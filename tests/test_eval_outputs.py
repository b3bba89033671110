"""What stages 05 / 05b leave to look at, and the one rule "faithful" (issue #25).

- mdkstep.analysis.evaluation.faithful on analytic inputs: VACF does not decide, an element
  12 % hot does, the replicas' own spread widens the temperature tolerance;
- mdkstep.analysis.export: DCD + PDB read back by mdtraj (frames, atoms, positions within
  1e-3 nm of the NPZ), the DCD header's time axis in ps, extended XYZ read back by ASE;
- 05 (MM, synthetic ethanol) and 05b (QM, GFN2-xTB water) write the plots and one trajectory a
  viewer opens per run, judge every run at one stated common interval with the shared rule.
Units: nm, ps, K; XYZ in Å.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, load_script
from helpers import _ethanol_trajectory

from mdkstep.analysis.evaluation import (
    ELEMENT_T_TOLERANCE,
    FAITHFUL_RATIO,
    STRUCTURE_KEYS,
    Reference,
    element_temperature_deviation,
    element_temperature_floor,
    faithful,
)
from mdkstep.trajectory import Trajectory, load_trajectory, save_trajectory

FLOOR = {"bond_w1_A": 0.002, "mean_bond_err_A": 0.001, "angle_w1_deg": 0.5, "dihedral_w1_deg": 2.0, "rdf_l1": 0.05,
         "vacf_l2": 0.01}


def at_ratio(r: float, **over: float) -> dict[str, float]:
    """Distances at ``r`` x FLOOR, with per-key ratio overrides."""
    return {k: v * over.get(k, r) for k, v in FLOOR.items()}


# ------------------------------------------------------------------------------ the rule

def test_vacf_alone_does_not_make_a_run_unfaithful():
    v = faithful(at_ratio(1.0, vacf_l2=20.0), FLOOR, element_T_dev=0.02)
    assert v.faithful and v.reasons == [] and v.worst_ratio == pytest.approx(1.0)
    assert tuple(v) == (True, v.worst_ratio, [])  # unpacks as (bool, worst_ratio, reasons)


def test_an_element_12_percent_hot_is_unfaithful():
    dev = element_temperature_deviation({"C": 300.0, "H": 336.0}, {"C": 300.0, "H": 300.0})
    assert dev == pytest.approx(0.12)
    v = faithful(at_ratio(0.8), FLOOR, dev)
    assert not v.faithful and v.worst_ratio == pytest.approx(0.8)
    assert len(v.reasons) == 1 and "12 %" in v.reasons[0] and "10 %" in v.reasons[0]
    # short references whose replicas differ by 10 % themselves: tolerance 1.5 x 10 % = 15 %
    assert faithful(at_ratio(0.8), FLOOR, dev, element_T_floor=0.10).faithful
    assert faithful(at_ratio(0.8), FLOOR, 0.10 * (1 - 1e-12)).faithful and ELEMENT_T_TOLERANCE == 0.10


@pytest.mark.parametrize("key", STRUCTURE_KEYS)
def test_each_structure_distance_decides_at_the_ratio(key):
    v = faithful(at_ratio(1.0, **{key: 1.6}), FLOOR, 0.0)
    assert not v.faithful and v.worst_ratio == pytest.approx(1.6) and v.reasons[0].startswith(key)
    assert faithful(at_ratio(1.0, **{key: 0.99 * FAITHFUL_RATIO}), FLOOR, 0.0).faithful
    assert faithful(at_ratio(1.0, **{key: 1.6}), FLOOR, 0.0, ratio_ok=2.0).faithful


def test_no_floor_no_element_temperature_and_nan_distances():
    v = faithful(at_ratio(1.0), {}, 0.0)
    assert not v.faithful and v.worst_ratio is None and "no replica floor" in v.reasons[0]
    assert "no per-element temperature" in faithful(at_ratio(1.0), FLOOR, None).reasons[0]
    # a distance that is NaN (no fast dihedral: water) is left out, not a failure
    assert faithful(at_ratio(1.0, dihedral_w1_deg=float("nan")), FLOOR, 0.0).faithful
    assert element_temperature_floor([{"H": 300.0}]) is None
    assert element_temperature_floor([{"H": 300.0}, {"H": 330.0}, {"H": 297.0}]) == pytest.approx(0.10)


def _slice(t: Trajectory, sel: slice, step: int = 1) -> Trajectory:
    idx = np.arange(t.n_frames)[sel][::step]
    return Trajectory(positions=t.positions[idx], velocities=t.velocities[idx], energies=t.energies[idx],
                      temperature=t.temperature[idx], atom_types=t.atom_types, masses=t.masses, time_ps=t.time_ps[idx],
                      metadata=dict(t.metadata))


def thermal(t: Trajectory, seed: int, temperature_K: float = 300.0) -> Trajectory:
    """``t`` with Gaussian velocities rescaled so that every element's mean kinetic energy is
    exactly 3/2 k_B T per atom over the frames: equal per-element temperatures in every piece."""
    rng = np.random.default_rng(seed)
    kt = 0.0083144626 * temperature_K  # kJ/mol
    v = rng.normal(size=t.velocities.shape) * np.sqrt(kt / t.masses)[None, :, None]
    for z in np.unique(t.atom_types):
        sel = t.atom_types == z
        ke = 0.5 * np.sum(t.masses[sel][None, :, None] * v[:, sel] ** 2)
        v[:, sel] *= np.sqrt(1.5 * kt * sel.sum() * t.n_frames / ke)
    t.velocities = v
    return t


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    """A synthetic ethanol trajectory (2 fs frames), its topology (bonds, angles, dihedrals,
    atomic_numbers), and three disjoint pieces of it with thermal velocities (equal per-element
    temperatures): two 'replicas' and a 'run' (8 fs frames)."""
    from mdkstep.molecule.topology import infer_bonds, topology_lists

    tmp = tmp_path_factory.mktemp("eth")
    _ethanol_trajectory(tmp / "eth.npz", n_frames=1200)
    t = load_trajectory(tmp / "eth.npz")
    topo = topology_lists(t.n_atoms, infer_bonds(t.atom_types, t.positions[0]))
    topo = {**{k: np.asarray(v).tolist() for k, v in topo.items()}, "atomic_numbers": t.atom_types.tolist()}
    return (t, topo, [thermal(_slice(t, slice(0, 400)), 1), thermal(_slice(t, slice(400, 800)), 2)],
            thermal(_slice(t, slice(800, 1200), 4), 3))


def test_reference_judges_at_one_interval_and_an_element_12_percent_hot_fails(ethanol):
    t, topo, replicas, run = ethanol
    ref = Reference(replicas, topo, 0.008)
    ev = ref.evaluate(run)
    assert ev["interval_ps"] == 0.008 and ev["floor"]["n_pairs"] == 1
    assert ev["faithful"] == (ev["max_structure_ratio"] <= FAITHFUL_RATIO and ev["element_T_max_dev"] <= 0.10)
    assert set(ev) >= {"distances", "ratio_to_floor", "faithful_reasons", "element_T_max_dev_replica"}
    # the same run with every hydrogen's velocities x sqrt(1.12): structure unchanged, H 12 % hot
    hot = _slice(run, slice(None))
    h = hot.atom_types == 1
    hot.velocities = hot.velocities.copy()
    hot.velocities[:, h] *= np.sqrt(1.12)
    ev_hot = ref.evaluate(hot)
    assert ev_hot["max_structure_ratio"] == pytest.approx(ev["max_structure_ratio"])
    assert ev_hot["element_T_max_dev"] > 0.10 and not ev_hot["faithful"]
    assert any("element" in r for r in ev_hot["faithful_reasons"])


# ------------------------------------------------------------------------------ export

def check_viewer_files(files: dict, traj: Trajectory) -> None:
    """mdtraj reads DCD + PDB back (frames, atoms, positions within 1e-3 nm), the DCD header
    gives the NPZ's time axis in ps, ASE reads every XYZ frame (Å) with its time_ps."""
    import ase.io
    import mdtraj

    from mdkstep.analysis.export import dcd_time_ps

    md = mdtraj.load(files["dcd"], top=files["pdb"])
    assert md.n_frames == traj.n_frames and md.n_atoms == traj.n_atoms
    assert np.max(np.abs(md.xyz - traj.positions)) < 1e-3
    assert [a.element.atomic_number for a in md.topology.atoms] == [int(z) for z in traj.atom_types]
    assert np.allclose(dcd_time_ps(files["dcd"]), traj.time_ps, rtol=1e-5, atol=1e-7)
    frames = ase.io.read(files["xyz"], ":")
    assert len(frames) == traj.n_frames and list(frames[0].numbers) == [int(z) for z in traj.atom_types]
    assert np.max(np.abs(np.array([f.positions for f in frames]) / 10.0 - traj.positions)) < 1e-6
    assert np.allclose([f.info["time_ps"] for f in frames], traj.time_ps, atol=1e-6)


def test_export_reads_back_in_mdtraj_and_ase(ethanol, tmp_path):
    from mdkstep.analysis.export import export_trajectory

    t, topo, _, run = ethanol
    files = export_trajectory(run, tmp_path / "v", "run", np.asarray(topo["bonds"]))
    check_viewer_files(files, run)
    assert files["frame_interval_fs"] == pytest.approx(8.0)
    pdb = (tmp_path / "v" / "run.pdb").read_text()
    assert pdb.count("CONECT") >= 1 and " C1 " in pdb and "MOL" in pdb
    assert not list((tmp_path / "v").glob(".*"))  # atomic: no temporaries left


# ------------------------------------------------------------------------------ stages 05 and 05b

def test_05_writes_plots_viewer_files_and_one_interval(ethanol, tmp_path):
    t, topo, replicas, run = ethanol
    base = tmp_path / "md" / "ethanol"
    base.mkdir(parents=True)
    (base / "topology.json").write_text(json.dumps(topo))
    for i, r in enumerate(replicas):
        save_trajectory(base / f"replica_{i}.npz", r)
    save_trajectory(tmp_path / "hybrid" / "ethanol" / "k4.npz", run)  # 8 fs frames, a stand-in: same contract
    save_trajectory(tmp_path / "hybrid" / "ethanol" / "k3.npz", thermal(_slice(t, slice(800, 1200), 3), 4))  # 6 fs
    out = tmp_path / "eval"
    assert load_script("05_eval_drift_rdfs").main(["--baseline", str(tmp_path / "md"), "--hybrid-runs",
                                                   str(tmp_path / "hybrid"), "--out-dir", str(out),
                                                   "--log-level", "WARNING"]) == 0
    m = json.loads((out / "metrics.json").read_text())["molecules"]["ethanol"]
    assert m["compare_interval_ps"] == pytest.approx(0.024)  # lcm(2, 8, 6) fs: every run, one floor
    for name, traj in (("k4", run), ("k3", load_trajectory(tmp_path / "hybrid" / "ethanol" / "k3.npz"))):
        ev = m["runs"][name]
        assert ev["interval_ps"] == m["compare_interval_ps"] and ev["floor"] == m["runs"]["k4"]["floor"]
        v = faithful(ev["distances"], ev["floor"], ev["element_T_max_dev"], 1.5, ev["element_T_max_dev_replica"])
        assert (ev["faithful"], ev["max_structure_ratio"], ev["faithful_reasons"]) == tuple(v)
        check_viewer_files(ev["exported"], traj)
    for png in ("energy_temperature.png", "structure_histograms.png", "rdf.png"):
        assert (out / "ethanol" / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "ONE frame interval: 0.024 ps" in report and "faithful (worst ratio)" in report
    assert "vacf_l2 (floor), not deciding" in report and "within 1.5x" not in report
    assert "vmd k4.pdb k4.dcd" in report


def test_05b_on_xtb_water_writes_plots_and_viewer_files(tmp_path):
    """Two GFN2-xTB water replicas at 0.25 fs frames and a third run saved every 4 steps (a
    stand-in for a 06b run: the same contract); 05b without timing (~1.5 s)."""
    pytest.importorskip("tblite")
    from mdkstep.baselines.ase_md import QMConfig, QMRunSpec, run_qm_trajectory
    from mdkstep.config import load_config
    from mdkstep.molecule.system import from_smiles

    system = from_smiles("O", "water")
    over = {"production_ps": 0.03, "equilibration_ps": 0.005, "minimize_steps": 20, "chunk_frames": 200}
    cfg = load_config(QMConfig, ROOT / "configs/qm_quick.yaml", over)
    for r in range(2):
        run_qm_trajectory(system, cfg, QMRunSpec(tmp_path / "md" / "water" / f"replica_{r}.npz", 1000 * r,
                                                 f"replica{r}", r), progress=False)
    cfg4 = load_config(QMConfig, ROOT / "configs/qm_quick.yaml", {**over, "save_interval": 4})
    run_path = tmp_path / "hybrid" / "water" / "k4.npz"
    run_qm_trajectory(system, cfg4, QMRunSpec(run_path, 7, "run", 0), progress=False)
    out = tmp_path / "eval"
    assert load_script("05b_eval_qm").main(["--baseline", str(tmp_path / "md"), "--hybrid-runs",
                                            str(tmp_path / "hybrid"), "--out-dir", str(out), "--no-timing",
                                            "--log-level", "WARNING"]) == 0
    m = json.loads((out / "metrics.json").read_text())["molecules"]["water"]
    assert m["compare_interval_ps"] == pytest.approx(0.001)  # lcm(0.25, 1) fs
    ev = m["runs"]["k4"]
    traj = load_trajectory(run_path)
    assert traj.n_frames == 30 and np.allclose(np.diff(traj.time_ps), 0.001)
    check_viewer_files(ev["exported"], traj)
    v = faithful(ev["distances"], ev["floor"], ev["element_T_max_dev"], 1.5, ev["element_T_max_dev_replica"])
    assert (ev["faithful"], ev["max_structure_ratio"], ev["faithful_reasons"]) == tuple(v)
    for png in ("energy_temperature.png", "structure_histograms.png", "rdf.png"):
        assert (out / "water" / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "ONE frame interval: 0.001 ps" in report and "faithful: " in report and "ase gui k4.xyz" in report
    assert m["ramachandran"]["backbone"] is None
