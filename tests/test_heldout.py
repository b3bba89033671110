"""Held-out molecules never train (issue #24): no canonical SMILES of data/heldout_*.smi appears in
any other list under data/ or in any shipped model card, and the foundation lists cover what
they claim (elements, sizes, counts)."""
from __future__ import annotations

import json

import pytest
from rdkit import Chem, RDLogger

from conftest import ROOT

RDLogger.DisableLog("rdApp.*")
DATA = ROOT / "data"
ELEMENTS = {"H", "C", "N", "O", "F", "S", "Cl"}


def read_smi(path) -> dict[str, tuple[str, int, set[str]]]:
    """canonical SMILES -> (name, atoms with hydrogens, elements) of a 'SMILES name' list."""
    out = {}
    for i, line in enumerate(open(path), 1):
        tok = line.split("#")[0].split()
        if not tok:
            continue
        mol = Chem.MolFromSmiles(tok[0])
        assert mol is not None, f"{path}:{i}: unparsable SMILES {tok[0]!r}"
        mh = Chem.AddHs(mol)
        out[Chem.MolToSmiles(mol)] = (tok[-1], mh.GetNumAtoms(), {a.GetSymbol() for a in mh.GetAtoms()})
    return out


def heldout() -> dict[str, tuple[str, str]]:
    return {s: (v[0], p.name) for p in sorted(DATA.glob("heldout_*.smi")) for s, v in read_smi(p).items()}


def test_no_heldout_molecule_in_a_training_list():
    held = heldout()
    assert held, "no data/heldout_*.smi"
    for p in sorted(DATA.rglob("*.smi")):
        if p.name.startswith("heldout_"):
            continue
        leaks = [f"{held[s][0]} ({held[s][1]})" for s in read_smi(p) if s in held]
        assert not leaks, f"{p.relative_to(ROOT)} lists held-out molecules: {leaks}"


def test_no_heldout_molecule_in_a_model_card():
    held = heldout()
    for card in sorted((ROOT / "models").rglob("*.json")):  # foundation models in models/foundation/ too
        mols = (json.loads(card.read_text()).get("data") or {}).get("molecules") or []
        for m in mols:
            mol = Chem.MolFromSmiles(m.get("smiles") or "")
            assert mol is None or Chem.MolToSmiles(mol) not in held, f"{card.name} trained on held-out {m['name']}"


@pytest.mark.parametrize("name, n_min", [("mm_train.smi", 60), ("qm_druglike.smi", 15),
                                         ("heldout_mm.smi", 5), ("heldout_qm.smi", 5)])
def test_foundation_lists_cover_their_claims(name, n_min):
    mols = read_smi(DATA / name)
    assert len(mols) >= n_min
    for s, (mol_name, n_atoms, els) in mols.items():
        assert els <= ELEMENTS and 3 <= n_atoms <= 40, (name, mol_name, n_atoms, els)
    if name == "qm_druglike.smi":
        assert set().union(*(v[2] for v in mols.values())) >= ELEMENTS
    if name == "heldout_qm.smi":
        train = {**read_smi(DATA / "qm_molecules.smi"), **read_smi(DATA / "qm_druglike.smi")}
        assert any("N" in v[2] for v in mols.values()) and any({"S", "Cl"} & v[2] for v in mols.values())
        assert max(v[1] for v in mols.values()) > max(v[1] for v in train.values())  # one larger than any trained
    if name == "heldout_mm.smi":
        assert any(Chem.MolFromSmiles(s).HasSubstructMatch(Chem.MolFromSmarts("CC(=O)NC(*)C(=O)NC")) for s in mols)
