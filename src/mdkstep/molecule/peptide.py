"""Peptide backbones from the bond graph, and their phi/psi dihedrals (radians).

The backbone is found from the topology itself (atomic numbers + bond list of
``topology.json``), not from PDB residue names: a molecule prepared from SMILES is one ``UNK``
residue, so mdtraj's name-based ``compute_phi`` finds nothing there. Bond orders are not in
the topology, so the pattern is matched on elements and heavy-atom connectivity, with every
hydrogen an explicit atom (degree ``D`` counts all neighbours):

    C(=O)-N-CA-C(=O)-N    SMARTS  [#6D3](~[#8D1])~[#7D3]~[#6D4]~[#6D3](~[#8D1])~[#7D3]

one match per residue that has both phi (C'(i-1)-N-CA-C) and psi (N-CA-C-N(i+1)); a free
N-terminal NH3+ or C-terminal COO- residue has only one of them and is not counted.

Ramachandran basins, populations and transitions: ``mdkstep.analysis.ramachandran``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mdkstep.molecule.geometry import dihedral_angles
from mdkstep.utils import LOG

#: C(=O)-N-CA-C(=O)-N on the explicit-hydrogen bond graph (no bond orders needed).
BACKBONE_SMARTS = "[#6D3](~[#8D1])~[#7D3]~[#6D4]~[#6D3](~[#8D1])~[#7D3]"


@dataclass
class Backbone:
    """Backbone dihedral quadruplets, one row per residue in N -> C order (0-based atom indices)."""

    phi: np.ndarray  #: (R, 4) C'(i-1), N, CA, C
    psi: np.ndarray  #: (R, 4) N, CA, C, N(i+1)

    @property
    def n_residues(self) -> int:
        return len(self.phi)

    def as_dict(self) -> dict[str, Any]:
        return {"phi_atoms": self.phi.tolist(), "psi_atoms": self.psi.tolist(), "n_residues": self.n_residues}


def _graph_mol(atomic_numbers, bonds):
    """An RDKit molecule of the bond graph: explicit atoms, single bonds, no implicit H, unsanitized."""
    from rdkit import Chem

    rw = Chem.RWMol()
    for z in atomic_numbers:
        a = Chem.Atom(int(z))
        a.SetNoImplicit(True)
        rw.AddAtom(a)
    for i, j in np.asarray(bonds, dtype=int).reshape(-1, 2):
        rw.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    mol = rw.GetMol()
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    return mol


def _chain_order(rows: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Residue matches (C', O, N, CA, C, O, N') sorted N -> C: follow N' of one residue to N of the next."""
    by_n = {r[2]: r for r in rows}
    nexts = {r[6] for r in rows}
    out: list[tuple[int, ...]] = []
    for start in sorted((r for r in rows if r[2] not in nexts), key=lambda r: r[3]):
        r = start
        while r is not None and r not in out:
            out.append(r)
            r = by_n.get(r[6])
    out += sorted((r for r in rows if r not in out), key=lambda r: r[3])  # cyclic peptides
    return out


def find_backbone(atomic_numbers, bonds) -> Backbone | None:
    """phi/psi quadruplets of every residue found in the bond graph, or None when there is none."""
    from rdkit import Chem

    mol = _graph_mol(atomic_numbers, bonds)
    matches = mol.GetSubstructMatches(Chem.MolFromSmarts(BACKBONE_SMARTS), uniquify=False)
    by_ca: dict[int, tuple[int, ...]] = {}
    for m in matches:  # the two O's are interchangeable only in atom order; one row per CA
        by_ca.setdefault(m[3], m)
    if not by_ca:
        return None
    rows = _chain_order(list(by_ca.values()))
    phi = np.array([[r[0], r[2], r[3], r[4]] for r in rows], dtype=np.int64)
    psi = np.array([[r[2], r[3], r[4], r[6]] for r in rows], dtype=np.int64)
    return Backbone(phi, psi)


def backbone_from_topology(topo: dict[str, Any], name: str = "molecule") -> Backbone | None:
    """``find_backbone`` on a ``topology.json`` dict; logs one line when there is no backbone."""
    bb = find_backbone(topo["atomic_numbers"], topo["bonds"])
    if bb is None:
        LOG.info("%s: no peptide backbone C(=O)-N-CA-C(=O)-N in the bond graph: no Ramachandran analysis", name)
    else:
        LOG.info("%s: peptide backbone with %d residue(s) having phi and psi", name, bb.n_residues)
    return bb


def phi_psi(positions_nm: np.ndarray, bb: Backbone) -> tuple[np.ndarray, np.ndarray]:
    """phi, psi (F, R) in radians, (-pi, pi], of positions (F, N, 3) nm — via structure.dihedral_angles."""
    import torch

    x = torch.as_tensor(np.asarray(positions_nm), dtype=torch.float64)
    phi = dihedral_angles(x, torch.as_tensor(bb.phi)).numpy()
    psi = dihedral_angles(x, torch.as_tensor(bb.psi)).numpy()
    return phi, psi


