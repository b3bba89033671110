"""Stage 00: topology lists, energies against an independent parametrization path, bad input."""
from __future__ import annotations

import json

import pytest

from conftest import load_script
from mdkstep.molecule.prep import PrepConfig, SmiEntry, prepare_from_files, prepare_from_smiles, read_smi
from mdkstep.molecule.system import from_molecule_dir as load_molecule
from mdkstep.utils import MdkstepError


def _rdkit_counts(smiles: str) -> tuple[int, int, int]:
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    angles = mol.GetSubstructMatches(Chem.MolFromSmarts("*~*~*"), uniquify=True, maxMatches=100000)
    diheds = mol.GetSubstructMatches(Chem.MolFromSmarts("*~*~*~*"), uniquify=True, maxMatches=100000)
    return mol.GetNumBonds(), len(angles), len(diheds)


def test_topology_counts_match_rdkit(prepared):
    for name, smi in (("ethanol", "CCO"), ("aspirin", "CC(=O)Oc1ccccc1C(=O)O")):
        info = json.loads((prepared / name / "topology.json").read_text())
        assert (len(info["bonds"]), len(info["angles"]), len(info["dihedrals"])) == _rdkit_counts(smi)
        assert len(info["atomic_numbers"]) == len(info["masses"])
        assert info["net_charge"] == 0
    mol = load_molecule(prepared / "ethanol")
    assert mol.positions_nm.shape == (9, 3)
    assert sorted(mol.atomic_numbers.tolist()) == [1] * 6 + [6, 6, 8]


@pytest.mark.slow
def test_energy_matches_openmmforcefields(prepared):
    """OpenMM energy of the written system == SMIRNOFFTemplateGenerator energy (same charges)."""
    import openmm
    from openff.toolkit import Molecule as OFFMolecule
    from openmm import app, unit
    from openmmforcefields.generators import SMIRNOFFTemplateGenerator

    mol = load_molecule(prepared / "aspirin")
    off = OFFMolecule.from_file(str(prepared / "aspirin" / "molecule.sdf"), allow_undefined_stereo=True)
    off.assign_partial_charges("openff-gnn-am1bcc-1.0.0.pt")
    gen = SMIRNOFFTemplateGenerator(molecules=[off], forcefield="openff-2.2.0")
    ff = app.ForceField()
    ff.registerTemplateGenerator(gen.generator)
    top = off.to_topology().to_openmm()
    ref_system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)

    def energy(system):
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(mol.positions_nm)
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    assert energy(mol.openmm_system()) == pytest.approx(energy(ref_system), abs=1e-3)


@pytest.mark.slow
def test_charged_molecule_records_charge(tmp_path):
    out = prepare_from_smiles(SmiEntry(1, "C[NH3+]", "methylammonium"), tmp_path, PrepConfig())
    info = json.loads((out / "topology.json").read_text())
    assert info["net_charge"] == 1


def test_read_smi_errors(tmp_path):
    p = tmp_path / "m.smi"
    p.write_text("# comment\n\nCCO ethanol\nCCC ethanol\nCC bad/name\nC\n")
    entries, errors = read_smi(p)
    assert [e.name for e in entries] == ["ethanol", "mol6"]
    assert any(":4: duplicate name 'ethanol'" in e for e in errors)
    assert any(":5: name" in e for e in errors)


@pytest.mark.slow
def test_bad_molecules_cli(tmp_path, capsys):
    smi = tmp_path / "in.smi"
    smi.write_text("CCO ethanol\nC1CC( broken\n[Xe] xenon\nCCO ethanol\n")
    rc = load_script("00_prep_mols").main(["--smiles", str(smi), "--out-dir", str(tmp_path / "raw")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{smi}:2: broken: unparsable SMILES" in err
    assert ":3: xenon:" in err and "cannot parametrize" in err
    assert ":4: duplicate name 'ethanol'" in err
    assert (tmp_path / "raw" / "ethanol" / "topology.json").is_file()
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 3


def test_user_system_pdb_xml(prepared, tmp_path):
    src = prepared / "ethanol"
    out = prepare_from_files("eth2", tmp_path, pdb=src / "molecule.pdb", xml=src / "system.xml")
    a = json.loads((src / "topology.json").read_text())
    b = json.loads((out / "topology.json").read_text())
    assert b["bonds"] == a["bonds"] and len(b["dihedrals"]) == len(a["dihedrals"])
    with pytest.raises(MdkstepError, match="file not found"):
        prepare_from_files("x", tmp_path, pdb=tmp_path / "nope.pdb", xml=src / "system.xml")


def test_amber_prmtop_input(prepared, tmp_path):
    """A user's Amber system: our ethanol written as prmtop/inpcrd by ParmEd, then imported."""
    import parmed
    from openmm import app

    src = prepared / "ethanol"
    mol = load_molecule(src)
    top = app.PDBFile(str(src / "molecule.pdb")).topology
    struct = parmed.openmm.load_topology(top, mol.openmm_system(), xyz=mol.positions_nm * 10.0)
    struct.save(str(tmp_path / "eth.prmtop"))
    struct.save(str(tmp_path / "eth.inpcrd"))
    out = prepare_from_files("eth_amber", tmp_path / "raw", prmtop=tmp_path / "eth.prmtop", inpcrd=tmp_path / "eth.inpcrd")
    a = json.loads((src / "topology.json").read_text())
    b = json.loads((out / "topology.json").read_text())
    assert b["bonds"] == a["bonds"] and b["atomic_numbers"] == a["atomic_numbers"]
    assert len(b["angles"]) == len(a["angles"]) and len(b["dihedrals"]) == len(a["dihedrals"])
