"""Peptide backbones from the bond graph (mdkstep/molecule/peptide.py) and stage 05's Ramachandran analysis."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from conftest import load_script
from mdkstep.analysis import ramachandran
from mdkstep.molecule import peptide
from mdkstep.molecule.peptide import find_backbone
from mdkstep.analysis.ramachandran import BASIN_NAMES, assign_basins, count_transitions

ALA2 = "CC(=O)NC(C)C(=O)NC"  # Ace-Ala-NMe, as in the brief (stereo left to ETKDG)


@pytest.fixture(scope="module")
def ala2(tmp_path_factory):
    """Alanine dipeptide prepared from SMILES (stage 00): the folder."""
    from mdkstep.molecule.prep import PrepConfig, SmiEntry, prepare_from_smiles

    root = tmp_path_factory.mktemp("ala2_raw")
    return prepare_from_smiles(SmiEntry(1, ALA2, "ala2"), root, PrepConfig())


def _topo(folder):
    return json.loads((folder / "topology.json").read_text())


def test_ala2_from_smiles_has_one_phi_psi_pair(ala2):
    topo = _topo(ala2)
    z, bonds = topo["atomic_numbers"], np.asarray(topo["bonds"])
    nbr = {i: set() for i in range(len(z))}
    for i, j in bonds:
        nbr[i].add(j)
        nbr[j].add(i)
    bb = find_backbone(z, bonds)
    assert bb is not None and bb.n_residues == 1
    (c0, n, ca, c), (n2, ca2, c2, n_next) = bb.phi[0], bb.psi[0]
    assert (n, ca, c) == (n2, ca2, c2)
    assert [z[a] for a in bb.phi[0]] == [6, 7, 6, 6] and [z[a] for a in bb.psi[0]] == [7, 6, 6, 7]
    # every consecutive pair is bonded
    for quad in (bb.phi[0], bb.psi[0]):
        assert all(b in nbr[a] for a, b in zip(quad[:-1], quad[1:]))
    # both carbonyl carbons carry a terminal O; CA carries the methyl (3 H) and one H; each N one H
    for cc in (c0, c):
        assert any(z[o] == 8 and len(nbr[o]) == 1 for o in nbr[cc])
    assert sorted(z[a] for a in nbr[ca]) == [1, 6, 6, 7]
    cb = next(a for a in nbr[ca] if z[a] == 6 and a != c)
    assert sorted(z[a] for a in nbr[cb]) == [1, 1, 1, 6]
    for nn in (n, n_next):
        assert sorted(z[a] for a in nbr[nn]) == [1, 6, 6]


def test_phi_psi_match_mdtraj_on_the_same_atoms(ala2):
    import mdtraj

    bb = find_backbone(_topo(ala2)["atomic_numbers"], _topo(ala2)["bonds"])
    md = mdtraj.load_pdb(str(ala2 / "molecule.pdb"))
    rng = np.random.default_rng(0)
    xyz = md.xyz + rng.normal(0, 0.01, (5, *md.xyz.shape[1:])).astype(np.float32)
    phi, psi = peptide.phi_psi(xyz, bb)
    ref = mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz, md.topology), np.vstack([bb.phi, bb.psi]))
    assert np.allclose(np.hstack([phi, psi]), ref, atol=1e-4)
    # name-based mdtraj finds nothing in the SMILES-prepared PDB (one UNK residue): why this module exists
    assert mdtraj.compute_phi(md)[1].shape[1] == 0


def test_no_backbone_in_aspirin(prepared, caplog):
    topo = _topo(prepared / "aspirin")
    assert find_backbone(topo["atomic_numbers"], topo["bonds"]) is None
    with caplog.at_level(logging.INFO, logger="mdkstep"):
        out = ramachandran.ramachandran_evaluation("aspirin", topo, [], {}, None)
    assert out["backbone"] is None
    assert any("aspirin: no peptide backbone" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("phi, psi, basin", [
    (-77.5, 89.9, "C7eq"), (-134.8, 145.9, "C5"), (60.6, -72.4, "C7ax"), (-65.0, -40.0, "alphaR"),
    (-150.0, -170.0, "C5"),  # psi wraps through +-180
    (-150.0, 179.9, "C5"), (0.0, 180.0, "other"), (60.0, 60.0, "other"), (-100.0, 10.0, "other"),
])
def test_basin_assignment_of_known_angles(phi, psi, basin):
    got = assign_basins(np.radians([phi]), np.radians([psi]))
    assert BASIN_NAMES[int(got[0])] == basin


def test_transition_counter_on_a_synthetic_series():
    b = {n: i for i, n in enumerate(BASIN_NAMES)}
    seq = ["C7eq", "C7eq", "other", "C7eq", "C5", "other", "C5", "other", "C7eq", "alphaR", "alphaR"]
    assert count_transitions(np.array([b[s] for s in seq])) == 3  # C7eq->C5->C7eq->alphaR; gaps do not count
    assert count_transitions(np.array([b["other"]] * 5)) == 0
    assert count_transitions(np.array([b["C7ax"]] * 5)) == 0
    labels = np.array([b[s] for s in seq])
    pops = ramachandran.basin_populations(labels)
    assert pops["other"] == pytest.approx(3 / 11) and sum(pops.values()) == pytest.approx(1.0)
    assert ramachandran.total_variation({"C5": 1.0}, {"C7eq": 1.0}) == 1.0


def _md(mol_dir, path, seed):
    from mdkstep.baselines.openmm_md import MDConfig, RunSpec, run_trajectory
    from mdkstep.molecule.system import from_molecule_dir

    cfg = MDConfig(production_ps=0.6, equilibration_ps=0.2, chunk_frames=1000)  # 300 frames at 2 fs
    run_trajectory(from_molecule_dir(mol_dir), cfg, RunSpec(path, seed, cfg.friction_per_ps, 0.6, 0.2), progress=False)


@pytest.mark.slow
def test_05_end_to_end_ramachandran(ala2, tmp_path, monkeypatch):
    base, hyb = tmp_path / "md" / "ala2", tmp_path / "hybrid" / "ala2"
    base.mkdir(parents=True)
    hyb.mkdir(parents=True)
    shutil.copy(ala2 / "topology.json", base / "topology.json")
    for r in range(2):
        _md(ala2, base / f"replica_{r}.npz", seed=r + 1)
    _md(ala2, hyb / "k4.npz", seed=7)  # stands in for a hybrid run: same contract
    out = tmp_path / "eval"
    mod = load_script("05_eval_drift_rdfs")
    assert mod.main(["--baseline", str(tmp_path / "md"), "--hybrid-runs", str(tmp_path / "hybrid"),
                     "--out-dir", str(out), "--no-export", "--log-level", "WARNING"]) == 0
    rama = json.loads((out / "metrics.json").read_text())["molecules"]["ala2"]["ramachandran"]
    assert rama["backbone"]["n_residues"] == 1
    assert (out / "ala2" / "ramachandran.png").stat().st_size > 0 and rama["plot"].endswith("ramachandran.png")
    assert set(rama["replicas"]) == {"baseline r0", "baseline r1"} and set(rama["runs"]) == {"k4"}
    for s in [*rama["replicas"].values(), *rama["runs"].values()]:
        assert s["n_frames"] == 300
        assert sum(s["residues"][0]["populations"].values()) == pytest.approx(1.0)
        assert s["residues"][0]["transitions"] >= 0
    assert 0.0 <= rama["floor"]["basin_tv"] <= 1.0 and rama["floor"]["n_pairs"] == 1
    assert 0.0 <= rama["runs"]["k4"]["basin_tv"] <= 1.0
    report = (out / "report.md").read_text()
    assert "### Ramachandran" in report and "C7eq %" in report and "| k4 | 1 |" in report

    # a molecule with a backbone whose plot fails says why, in metrics and report
    from mdkstep.analysis import plots

    def broken(*a, **k):
        raise RuntimeError("no display")

    monkeypatch.setattr(plots, "ramachandran", broken)
    assert mod.main(["--baseline", str(tmp_path / "md"), "--hybrid-runs", str(tmp_path / "hybrid"),
                     "--out-dir", str(tmp_path / "eval2"), "--no-export", "--log-level", "WARNING"]) == 0
    rama = json.loads((tmp_path / "eval2" / "metrics.json").read_text())["molecules"]["ala2"]["ramachandran"]
    assert rama["plot_error"] == "RuntimeError: no display" and "plot" not in rama
    assert "NOT drawn: RuntimeError: no display" in (tmp_path / "eval2" / "report.md").read_text()
