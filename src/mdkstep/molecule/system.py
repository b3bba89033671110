"""One molecular system type for every stage and engine: :class:`System`.

Atoms (atomic numbers, masses in amu), a structure (positions in nm), the electronic state
(net charge in e, spin multiplicity 2S+1), the bond graph with its angles and proper
dihedrals (0-based atom indices), and where it came from (name, SMILES, source). A system
prepared by stage 00 also carries its OpenMM System XML (no constraints; the MD stages add
them), its force field and charge method.

Loaders: :func:`from_molecule_dir` (a stage-00 folder), :func:`from_smiles` (RDKit ETKDG
conformer), :func:`from_smi_file` (every line of a ``SMILES name`` file),
:func:`from_trajectory` (the atoms of a trajectory NPZ and the topology beside it) and
:func:`from_structure_file` (an XYZ or PDB file; bonds inferred from distances).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.molecule.prep import TopologyInfo, rdkit_conformer, read_smi_strict
from mdkstep.molecule.topology import infer_bonds, molecule_topology, topology_lists
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import MdkstepError

MOLECULE_FILES = ("topology.json", "system.xml", "molecule.pdb")


def _index_array(values: Any, width: int) -> np.ndarray:
    """An (n, width) int array from a list of index tuples (empty -> shape (0, width))."""
    return np.asarray(values if values is not None else [], dtype=int).reshape(-1, width)


@dataclass
class System:
    """A molecule: atoms, structure, electronic state, topology and provenance.

    Units: positions nm, masses amu, charge e. Index lists are 0-based atom indices.
    """

    name: str
    atomic_numbers: np.ndarray  #: (n_atoms,) int
    masses: np.ndarray  #: (n_atoms,) amu
    positions_nm: np.ndarray  #: (n_atoms, 3) nm
    charge: int = 0  #: net charge, e
    multiplicity: int = 1  #: spin multiplicity 2S+1
    bonds: np.ndarray = field(default_factory=lambda: _index_array(None, 2))  #: (n_bonds, 2)
    angles: np.ndarray = field(default_factory=lambda: _index_array(None, 3))  #: (n_angles, 3) i-j-k
    dihedrals: np.ndarray = field(default_factory=lambda: _index_array(None, 4))  #: (n, 4) proper i-j-k-l
    smiles: str | None = None
    source: str = "smiles"  #: where this system was loaded from: smiles | dir:<name> | trajectory:<file> | file:<f>
    system_xml: str | None = None  #: serialized OpenMM System (stage-00 folders), no constraints
    forcefield: str | None = None
    charge_method: str | None = None
    bonds_from: str = ""  #: where the bond list came from (a file, rdkit, or inferred)
    path: Path | None = None  #: the stage-00 folder, when loaded from one

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=int).reshape(-1)
        self.masses = np.asarray(self.masses, dtype=float).reshape(-1)
        self.positions_nm = np.asarray(self.positions_nm, dtype=float)
        self.bonds, self.angles = _index_array(self.bonds, 2), _index_array(self.angles, 3)
        self.dihedrals = _index_array(self.dihedrals, 4)
        self.charge, self.multiplicity = int(self.charge), int(self.multiplicity)
        n = len(self.atomic_numbers)
        if self.masses.shape != (n,) or self.positions_nm.shape != (n, 3):
            raise MdkstepError(f"system {self.name}: {n} atoms but masses {self.masses.shape} and positions "
                               f"{self.positions_nm.shape}")
        if self.multiplicity < 1:
            raise MdkstepError(f"system {self.name}: multiplicity must be >= 1, got {self.multiplicity}")

    @property
    def n_atoms(self) -> int:
        return int(len(self.atomic_numbers))

    @property
    def n_electrons(self) -> int:
        """Electrons of the molecule: sum of the atomic numbers minus the net charge."""
        return int(self.atomic_numbers.sum()) - self.charge

    def _can_have(self, multiplicity: int) -> bool:
        """2S = multiplicity - 1 unpaired electrons: at least 0, at most all, of the electrons' parity."""
        unpaired = int(multiplicity) - 1
        return 0 <= unpaired <= self.n_electrons and (self.n_electrons - unpaired) % 2 == 0

    def resolve_multiplicity(self, requested: int | None = None) -> int:
        """The spin multiplicity 2S+1 to compute this molecule with: ``requested`` (a config's
        explicit value) when given, else the molecule's own (from a SMILES: RDKit radical
        electrons + 1). One that the electron count cannot have (2S unpaired electrons need the
        parity of the electron count) is a one-line error naming the molecule."""
        m = self.multiplicity if requested is None else int(requested)
        if not self._can_have(m):
            what = self.name + (f" ({self.smiles})" if self.smiles else "")
            whose = "the molecule's" if requested is None else "key 'multiplicity'"
            fix = "set key 'multiplicity' to one that fits"
            if requested is not None and self._can_have(self.multiplicity):
                fix = f"set key 'multiplicity' to {self.multiplicity} (the molecule's) or to null (each molecule's own)"
            raise MdkstepError(f"{what}: {self.n_electrons} electrons (charge {self.charge:+d}) cannot have spin "
                               f"multiplicity {m} ({whose}); {fix}")
        return m

    def topology(self) -> dict[str, list[list[int]]]:
        """Bond, angle and proper-dihedral index lists (the topology.json keys)."""
        return {"bonds": self.bonds.tolist(), "angles": self.angles.tolist(), "dihedrals": self.dihedrals.tolist()}

    def openmm_system(self):
        """A fresh OpenMM System from :attr:`system_xml` (deserialized per call, so callers may modify it)."""
        import openmm

        if self.system_xml is None:
            raise MdkstepError(f"system {self.name} ({self.source}) has no OpenMM system.xml: prepare it with "
                               "src/00_prep_mols.py")
        where = Path(self.path) / "system.xml" if self.path is not None else f"system {self.name} ({self.source})"
        try:
            system = openmm.XmlSerializer.deserialize(self.system_xml)
        except Exception as e:  # OpenMM raises a bare Exception for a truncated or malformed XML
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise MdkstepError(f"{where}: not a readable OpenMM System XML ({msg}); re-run src/00_prep_mols.py "
                               "for this molecule") from None
        complete = self.system_xml.rstrip().endswith("</System>")
        if not complete or system.getNumParticles() != self.n_atoms:
            # a cut-off XML can still parse (OpenMM's parser may stop quietly at the cut)
            why = "truncated: no closing </System>" if not complete else \
                f"{system.getNumParticles()} particles for {self.n_atoms} atoms"
            raise MdkstepError(f"{where}: not a readable OpenMM System XML ({why}); re-run src/00_prep_mols.py "
                               "for this molecule")
        return system


# ----------------------------------------------------------------------------- loaders

def _read_topology_json(path: Path):
    """``topology.json`` as a :class:`mdkstep.molecule.prep.TopologyInfo`; errors name the file."""

    try:
        return TopologyInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise MdkstepError(f"{path}: invalid topology file ({e})") from None


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def from_molecule_dir(path: str | Path) -> System:
    """A stage-00 folder: ``topology.json``, ``system.xml`` and ``molecule.pdb``; errors name the file."""
    from openmm import app, unit

    path = Path(path)
    if not path.is_dir():
        raise MdkstepError(f"{path}: molecule folder not found (run src/00_prep_mols.py first)")
    files = {k: path / k for k in MOLECULE_FILES}
    for f in files.values():
        if not f.is_file():
            raise MdkstepError(f"{f}: missing (re-run src/00_prep_mols.py for this molecule)")
    info = _read_topology_json(files["topology.json"])
    try:
        pos = app.PDBFile(str(files["molecule.pdb"])).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    except Exception as e:  # noqa: BLE001 - OpenMM's PDB reader raises many kinds
        raise MdkstepError(f"{files['molecule.pdb']}: not a readable PDB ({_first(e)})") from None
    return System(name=info.name, atomic_numbers=info.atomic_numbers, masses=info.masses, positions_nm=np.asarray(pos),
                  charge=info.net_charge, bonds=info.bonds, angles=info.angles, dihedrals=info.dihedrals,
                  smiles=info.smiles, source=f"dir:{path.name}", system_xml=files["system.xml"].read_text(),
                  forcefield=info.forcefield, charge_method=info.charge_method,
                  bonds_from=str(files["topology.json"]), path=path)


def from_smiles(smiles: str, name: str, seed: int = 0) -> System:
    """RDKit ETKDG conformer (seeded); charge is RDKit's formal charge, multiplicity its
    radical electrons + 1, bonds RDKit's (angles and dihedrals from them)."""
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    mol = rdkit_conformer(smiles, seed)
    bonds = np.array([[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] for b in mol.GetBonds()], dtype=int).reshape(-1, 2)
    return System(
        name=name,
        atomic_numbers=[a.GetAtomicNum() for a in mol.GetAtoms()],
        masses=[a.GetMass() for a in mol.GetAtoms()],
        positions_nm=np.asarray(mol.GetConformer().GetPositions(), dtype=float) / 10.0,  # Å -> nm
        charge=Chem.GetFormalCharge(mol),
        multiplicity=int(Descriptors.NumRadicalElectrons(mol)) + 1,
        smiles=smiles, source="smiles", bonds_from="rdkit",
        **topology_lists(mol.GetNumAtoms(), bonds),
    )


def from_smi_file(path: str | Path, seed: int = 0) -> list[System]:
    """Every molecule of a ``SMILES name`` file; the first bad line is a one-line error naming it."""

    out = []
    for e in read_smi_strict(path):
        try:
            out.append(from_smiles(e.smiles, e.name, seed))
        except MdkstepError as err:
            raise MdkstepError(f"{path}:{e.line_no}: {err}") from None
    return out


def from_trajectory(traj_path: str | Path, traj=None) -> System:
    """The atoms of a trajectory NPZ (types, masses; last frame as positions; charge,
    multiplicity and SMILES from its metadata); bonds from the ``topology.json`` beside it,
    else inferred from covalent radii."""

    traj_path = Path(traj_path)
    traj = load_trajectory(traj_path) if traj is None else traj
    meta = traj.metadata
    z = np.asarray(traj.atom_types, dtype=int)
    name = str(meta.get("molecule") or traj_path.parent.name)
    beside = traj_path.parent / "topology.json"
    topo = molecule_topology(traj_path, None, name, z, traj.positions[-1])
    return System(name=name, atomic_numbers=z, masses=traj.masses, positions_nm=traj.positions[-1],
                  charge=int(meta.get("charge", 0) or 0), multiplicity=int(meta.get("multiplicity", 1) or 1),
                  smiles=meta.get("smiles"), source=f"trajectory:{traj_path.name}",
                  bonds_from=str(beside) if beside.is_file() else "inferred (covalent radii)", **topo)


STRUCTURE_SUFFIXES = (".xyz", ".extxyz", ".pdb")


def _read_xyz(path: Path) -> tuple[list[int], np.ndarray, int | None]:
    """Atomic numbers, positions (Angstrom) and the comment line's charge (extended XYZ
    ``charge=``) if any, of the first frame of an XYZ file (ASE)."""
    from ase.io import read

    atoms = read(str(path), index=0, format="extxyz" if path.suffix.lower() in (".xyz", ".extxyz") else None)
    q = atoms.info.get("charge")
    return [int(z) for z in atoms.numbers], np.asarray(atoms.positions, dtype=float), None if q is None else int(q)


def _read_pdb(path: Path) -> tuple[list[int], np.ndarray, int | None]:
    """Atomic numbers, positions (Angstrom) and the sum of the formal charges (columns 79-80)
    of a PDB file (RDKit, hydrogens kept, no sanitisation: the bonds are inferred later)."""
    from rdkit import Chem

    mol = Chem.MolFromPDBFile(str(path), removeHs=False, sanitize=False, proximityBonding=False)
    if mol is None or mol.GetNumConformers() == 0:
        raise ValueError("RDKit could not read it")
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    return ([a.GetAtomicNum() for a in mol.GetAtoms()], np.asarray(mol.GetConformer().GetPositions(), dtype=float),
            int(sum(charges)) if any(charges) else None)


def from_structure_file(path: str | Path, name: str | None = None, charge: int | None = None) -> System:
    """An XYZ (ASE; extended XYZ ``charge=`` read) or PDB (RDKit; formal charges read) file:
    atoms, positions (first frame), masses (RDKit's standard atomic weights), bonds inferred
    from covalent radii (:func:`mdkstep.molecule.topology.infer_bonds`) with their angles and
    dihedrals. ``charge`` (e) overrides the file's (default 0); multiplicity 1 (a config's
    'multiplicity' key sets another). Errors are one line naming the file."""
    from rdkit import Chem

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STRUCTURE_SUFFIXES:
        raise MdkstepError(f"{path}: unknown structure format {suffix or '(no suffix)'!r}; use one of "
                           f"{', '.join(STRUCTURE_SUFFIXES)}")
    if not path.is_file():
        raise MdkstepError(f"{path}: file not found")
    try:
        z, pos_a, file_charge = (_read_pdb if suffix == ".pdb" else _read_xyz)(path)
    except Exception as e:  # noqa: BLE001 - ASE and RDKit readers raise many kinds
        raise MdkstepError(f"{path}: not a readable {suffix[1:].upper()} file ({_first(e)})") from None
    if not z:
        raise MdkstepError(f"{path}: no atoms")
    if not np.all(np.isfinite(pos_a)):
        raise MdkstepError(f"{path}: non-finite coordinates")
    if min(z) < 1:
        raise MdkstepError(f"{path}: unknown element(s) (atomic number 0)")
    pos_nm = pos_a / 10.0  # Angstrom -> nm
    table = Chem.GetPeriodicTable()
    bonds = infer_bonds(np.asarray(z), pos_nm) if len(z) > 1 else np.zeros((0, 2), dtype=int)
    return System(name=name or path.stem, atomic_numbers=z, masses=[table.GetAtomicWeight(int(i)) for i in z],
                  positions_nm=pos_nm, charge=charge if charge is not None else (file_charge or 0),
                  source=f"file:{path.name}", bonds_from="inferred (covalent radii)", path=None,
                  **topology_lists(len(z), bonds))


__all__ = ["System", "from_molecule_dir", "from_smiles", "from_smi_file", "from_structure_file", "from_trajectory"]
