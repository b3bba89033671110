"""06b from your molecule (--smiles / --xyz / --pdb instead of --start-from): minimise and
thermalise with GFN2-xTB, then the hybrid; the source in the metadata; one-line errors.
Tiny fresh checkpoint, ethanol, 0.005 ps. Units: nm, ps, kJ/mol, amu, K."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from conftest import ROOT
from helpers import run_06b

pytest.importorskip("tblite")

FAST = ["--minimize-steps", "10", "--thermalize-ps", "0.005", "--time-ps", "0.005",
        "--qm-config", str(ROOT / "configs/qm.yaml"), "--hybrid-config", str(ROOT / "configs/hybrid_qm.yaml"),
        "--no-progress", "--log-level", "WARNING"]


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    """A fresh tiny QM checkpoint (k = 4 at 0.25 fs, elements H, C, O) with small, sane jumps."""
    from mdkstep.model import ModelConfig, build_model
    from mdkstep.model.checkpoint import save_checkpoint

    mc = ModelConfig(hidden=8, n_layers=1, n_rbf=4, max_hops=3, use_forces=True)
    model = build_model(mc)
    model.set_normalization(v_scale=10.0, f_scale=1000.0, dx_scale=1e-4, dv_scale=1e-2)
    ck = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(ck, {"model_state": model.state_dict(), "model_config": asdict(mc), "train_config": {},
                         "k": 4, "dt_fs": 0.25, "engine": "xtb", "atom_types": [1, 6, 8]})
    return ck


def _run06b(argv, monkeypatch, capsys):
    """06b in-process: (exit code, captured output, engines it built)."""
    code, built = run_06b(argv, monkeypatch)
    return code, capsys.readouterr(), built


def _check_run(out, engine, n_atoms):
    from mdkstep.trajectory import load_trajectory

    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["n_cycles"] == 5 and stats["k"] == 4 and stats["nan_frames"] == 0
    src = stats["start_source"]
    # the hybrid's count excludes the set-up's calls, which the same engine counted
    assert stats["force_calls"] + src["setup_force_calls"] == engine.counters.calls
    assert 1 <= src["minimization_steps"] <= 10 and src["thermalization_ps"] == pytest.approx(0.005)
    assert src["thermalization_friction_per_ps"] == 50.0 and src["setup_s"] > 0
    t = load_trajectory(out)
    assert t.n_frames == 5 and len(t.atom_types) == n_atoms
    assert all(np.all(np.isfinite(a)) for a in (t.positions, t.velocities, t.energies))
    assert t.metadata["start_source"] == json.loads(json.dumps(src))
    return t, stats


def test_06b_from_smiles_records_the_source(tiny_ck, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eth.npz"
    code, cap, built = _run06b(["--smiles", "CCO", "--name", "ethanol", "--checkpoint", str(tiny_ck),
                                "--out", str(out)] + FAST, monkeypatch, capsys)
    assert code == 0, cap.err
    assert len(built) == 1
    t, stats = _check_run(out, built[0], 9)
    src = t.metadata["start_source"]
    assert src["kind"] == "smiles" and src["smiles"] == "CCO"
    assert t.metadata["molecule"] == "ethanol" and t.metadata["smiles"] == "CCO" and t.metadata["charge"] == 0
    assert t.metadata["start"].startswith("SMILES CCO: ")
    assert sorted(stats["temperature_per_element_K"]) == ["C", "H", "O"]
    # the set-up line, then the usual summary with wall s/ps and the per-element temperatures
    assert "ethanol: set-up" in cap.out and "BFGS steps" in cap.out
    summary = cap.out.strip().splitlines()[-1]
    assert "force calls/ps" in summary and " s/ps" in summary and "C " in summary and "fallbacks" in summary


def test_06b_from_xyz_written_by_rdkit(tiny_ck, tmp_path, monkeypatch, capsys):
    from rdkit import Chem

    from mdkstep.molecule.prep import rdkit_conformer

    xyz = tmp_path / "ethanol.xyz"
    xyz.write_text(Chem.MolToXYZBlock(rdkit_conformer("CCO", 0)))
    out = tmp_path / "xyz.npz"
    code, cap, built = _run06b(["--xyz", str(xyz), "--checkpoint", str(tiny_ck), "--out", str(out)] + FAST,
                               monkeypatch, capsys)
    assert code == 0, cap.err
    t, _ = _check_run(out, built[0], 9)
    src = t.metadata["start_source"]
    assert src["kind"] == "xyz" and src["path"] == str(xyz) and len(src["sha256"]) == 64
    assert t.metadata["molecule"] == "ethanol" and t.metadata["bonds_from"].startswith("inferred")
    assert sorted(t.atom_types.tolist()) == [1] * 6 + [6, 6, 8]


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one start"),
    (["--smiles", "CCO", "--xyz", "m.xyz"], "(got --smiles, --xyz)"),
    (["--start-from", "r.npz", "--pdb", "m.pdb"], "(got --start-from, --pdb)"),
    (["--start-from", "r.npz", "--name", "x"], "--name: only with --smiles/--xyz/--pdb"),
    (["--smiles", "CCO", "--molecule", "outputs/raw/ethanol"], "--molecule: only with --start-from"),
    (["--smiles", "CCO", "--charge", "1"], "the SMILES 'CCO' has net charge +0"),
    (["--smiles", "CCN"], "elements [7]"),  # an element the checkpoint never saw: refused before any force call
    (["--xyz", "missing.xyz"], "missing.xyz: file not found"),
    (["--xyz", "m.mol2"], "m.mol2: unknown structure format"),
    (["--smiles", "CCO", "--thermalize-ps", "-1"], "--thermalize-ps must be >= 0"),
])
def test_06b_start_errors_in_one_line(tiny_ck, tmp_path, monkeypatch, capsys, argv, message):
    code, cap, built = _run06b(argv + ["--checkpoint", str(tiny_ck), "--out", str(tmp_path / "o.npz"),
                                       "--no-progress"], monkeypatch, capsys)
    lines = cap.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], cap.err
    assert built == []


def test_structure_files_charge_and_bonds(tmp_path):
    from rdkit import Chem

    from mdkstep.molecule.prep import rdkit_conformer
    from mdkstep.molecule.system import from_smiles, from_structure_file

    mol = rdkit_conformer("CC(=O)[O-]", 0)  # acetate: the PDB carries the formal charge
    pdb = tmp_path / "acetate.pdb"
    pdb.write_text(Chem.MolToPDBBlock(mol))
    ref = from_smiles("CC(=O)[O-]", "acetate")
    s = from_structure_file(pdb)
    assert s.name == "acetate" and s.charge == -1 and s.source == "file:acetate.pdb"
    assert s.atomic_numbers.tolist() == ref.atomic_numbers.tolist()
    assert np.allclose(s.positions_nm, ref.positions_nm, atol=1e-3) and np.allclose(s.masses, ref.masses)
    assert s.bonds.tolist() == ref.bonds.tolist() and len(s.dihedrals) == len(ref.dihedrals)
    assert s.resolve_multiplicity() == 1
    xyz = tmp_path / "acetate.xyz"
    xyz.write_text(Chem.MolToXYZBlock(mol))
    assert from_structure_file(xyz).charge == 0  # plain XYZ has no charge: --charge sets it
    assert from_structure_file(xyz, name="ac", charge=-1).charge == -1
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\n\nO 0 0 0\nH 1 0\n")
    from mdkstep.utils import MdkstepError

    with pytest.raises(MdkstepError, match="bad.xyz: not a readable XYZ file"):
        from_structure_file(bad)
