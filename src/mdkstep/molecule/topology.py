"""A molecule's topology: bonds (from a file or inferred from distances), the angle and proper
dihedral lists they imply, ring bonds and dihedral classes. Positions in nm; indices 0-based."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdkstep.utils import MdkstepError


def angles_from_bonds(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """All bond angles i-j-k (i < k) of the bond graph; shape (n_angles, 3)."""
    nbrs: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in np.asarray(bonds, dtype=int).reshape(-1, 2):
        nbrs[a].append(int(b))
        nbrs[b].append(int(a))
    out = [(i, j, k) for j in range(n_atoms) for i in nbrs[j] for k in nbrs[j] if i < k]
    return np.asarray(sorted(out), dtype=int).reshape(-1, 3)


def dihedrals_from_bonds(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """All proper dihedrals i-j-k-l about each bond j-k (i != k, l != j, i != l); (n, 4)."""
    bonds = np.asarray(bonds, dtype=int).reshape(-1, 2)
    nbrs: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in bonds:
        nbrs[a].append(int(b))
        nbrs[b].append(int(a))
    out = []
    for j, k in bonds:
        j, k = int(j), int(k)
        for i in nbrs[j]:
            if i == k:
                continue
            for l in nbrs[k]:
                if l == j or l == i:
                    continue
                out.append((i, j, k, l))
    return np.asarray(sorted(out), dtype=int).reshape(-1, 4)


def topology_lists(n_atoms: int, bonds: np.ndarray) -> dict[str, list[list[int]]]:
    """Bond, angle and proper-dihedral index lists from a bond list."""
    b = np.sort(np.asarray(bonds, dtype=int).reshape(-1, 2), axis=1)
    b = b[np.lexsort((b[:, 1], b[:, 0]))]
    return {
        "bonds": b.tolist(),
        "angles": angles_from_bonds(n_atoms, b).tolist(),
        "dihedrals": dihedrals_from_bonds(n_atoms, b).tolist(),
    }


def infer_bonds(atomic_numbers: np.ndarray, positions_nm: np.ndarray, scale: float = 1.2) -> np.ndarray:
    """Bonds perceived from 3D positions (nm) by RDKit when no topology.json is available.

    ``rdDetermineBonds.DetermineConnectivity`` with covalent radii x ``scale``; returns the
    sorted (M, 2) int64 array of atom index pairs i < j.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    z = np.asarray(atomic_numbers, dtype=int)
    rw = Chem.RWMol()
    for zi in z:
        rw.AddAtom(Chem.Atom(int(zi)))
    conf = Chem.Conformer(len(z))
    for i, p in enumerate(np.asarray(positions_nm, dtype=float) * 10.0):  # nm -> Angstrom
        conf.SetAtomPosition(i, p.tolist())
    mol = rw.GetMol()
    mol.AddConformer(conf, assignId=True)
    rdDetermineBonds.DetermineConnectivity(mol, useHueckel=False, covFactor=scale, useVdw=True)
    pairs = sorted(tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds())
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def find_topology(traj_path: Path, raw_root: Path | None, molecule: str) -> Path | None:
    """topology.json beside the trajectory, else under ``raw_root/<molecule>/``."""
    for cand in (traj_path.parent / "topology.json", (raw_root / molecule / "topology.json") if raw_root else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def molecule_topology(traj_path: Path, raw_root: Path | None, molecule: str, z: np.ndarray,
                      x0: np.ndarray) -> dict[str, list[list[int]]]:
    """Bond/angle/dihedral index lists of a trajectory's molecule (inferred if no file)."""

    topo = find_topology(traj_path, raw_root, molecule)
    if topo is not None:
        info = json.loads(topo.read_text())
        if len(info["atomic_numbers"]) != len(z) or list(info["atomic_numbers"]) != list(map(int, z)):
            raise MdkstepError(f"{topo}: atoms do not match trajectory {traj_path}")
        return {k: info[k] for k in ("bonds", "angles", "dihedrals")}
    return topology_lists(len(z), infer_bonds(z, x0))


def _neighbors(n_atoms: int, bonds: np.ndarray) -> list[set[int]]:
    nb: list[set[int]] = [set() for _ in range(n_atoms)]
    for a, b in bonds:
        nb[a].add(int(b))
        nb[b].add(int(a))
    return nb


def ring_bonds(n_atoms: int, bonds: np.ndarray) -> set[tuple[int, int]]:
    """Bonds in a ring, as sorted index pairs: the bond graph's edges that are not bridges (networkx)."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(n_atoms))
    g.add_edges_from((int(a), int(b)) for a, b in np.asarray(bonds, dtype=int).reshape(-1, 2))
    bridges = {frozenset(e) for e in nx.bridges(g)}
    return {(min(a, b), max(a, b)) for a, b in g.edges() if frozenset((a, b)) not in bridges}


@dataclass
class DihedralClasses:
    """Dihedral groups: each group is pooled into one distribution; 'slow' = about a rotatable bond."""

    groups: list[list[int]]  #: indices into the dihedral list, pooled per group
    slow: list[bool]  #: per group


def classify_dihedrals(z: np.ndarray, bonds: np.ndarray, dihedrals: np.ndarray) -> DihedralClasses:
    """Pool dihedrals whose end atoms are interchangeable hydrogens (on an atom with >= 3 H:
    methyl, NH3+), and flag groups about rotatable bonds (not in a ring, both central atoms with
    >= 2 neighbours, neither carrying >= 3 H) as slow."""
    n = len(z)
    nb = _neighbors(n, bonds)
    n_h = [sum(1 for w in nb[i] if z[w] == 1) for i in range(n)]
    rings = ring_bonds(n, bonds)

    def end_class(a: int) -> tuple[str, int]:
        if z[a] == 1:
            parent = next(iter(nb[a]))
            if n_h[parent] >= 3:
                return ("H3", parent)
        return ("atom", a)

    keys: dict[tuple, list[int]] = {}
    for idx, (i, j, k, l) in enumerate(np.asarray(dihedrals, dtype=int)):
        keys.setdefault((end_class(i), j, k, end_class(l)), []).append(idx)
    groups, slow = [], []
    for (ci, j, k, cl), members in keys.items():
        rot = ((min(j, k), max(j, k)) not in rings and len(nb[j]) >= 2 and len(nb[k]) >= 2
               and n_h[j] < 3 and n_h[k] < 3)
        groups.append(members)
        slow.append(bool(rot))
    return DihedralClasses(groups, slow)
