"""Trajectories a viewer opens (VMD, PyMOL, ASE's GUI, OVITO), written from the NPZ contract;
shared by stage 05 (MM) and 05b (QM).

Per trajectory ``<stem>``, in one folder:
  - ``<stem>.dcd``: positions, Å in the file (mdtraj: nm in memory), CHARMM header with the
    time axis (ISTART, NSAVC, DELTA in AKMA time units), so readers that honour it (VMD's
    timeline, MDAnalysis, cpptraj) show ps; mdtraj ignores the header and numbers frames
    0, 1, ... (:func:`dcd_time_ps` reads the header back in ps);
  - ``<stem>.pdb``: the topology for the DCD (first frame, CONECT records from the bonds):
    the stage-00 ``molecule.pdb``'s residues and atom names when one is given, else one
    residue ``MOL`` with atoms named element + index (C1, H2, ...);
  - ``<stem>.xyz``: multi-frame extended XYZ, Å, each frame's comment line carrying its
    ``time_ps``, potential ``energy_kj_mol`` and ``temperature_K`` (``ase.io.read(path, ":")``
    returns them in ``atoms.info``).
Every file is written atomically.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mdkstep.trajectory import Trajectory
from mdkstep.utils import MdkstepError, atomic_path

#: the CHARMM/AKMA time unit in ps (DCD header DELTA is in these units)
AKMA_TIME_PS = 0.04888821
#: what :func:`export_trajectory` can write
FORMATS = ("dcd", "xyz")
_SYMBOLS = {1: "H", 3: "Li", 5: "B", 6: "C", 7: "N", 8: "O", 9: "F", 11: "Na", 12: "Mg", 14: "Si", 15: "P",
            16: "S", 17: "Cl", 19: "K", 20: "Ca", 35: "Br", 53: "I"}


def element_symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (mdtraj's table beyond the common ones)."""
    if int(z) in _SYMBOLS:
        return _SYMBOLS[int(z)]
    import mdtraj

    return mdtraj.element.Element.getByAtomicNumber(int(z)).symbol


def mdtraj_topology(atom_types: Iterable[int], bonds: np.ndarray | None = None, pdb: Path | None = None):
    """An mdtraj Topology: ``pdb``'s (residues, atom names) when given, else one residue MOL with
    atoms named element + index; ``bonds`` (n, 2) added where the topology has none."""
    import mdtraj

    z = [int(a) for a in atom_types]
    if pdb is not None:
        top = mdtraj.load_pdb(str(pdb)).topology
        if top.n_atoms != len(z):
            raise MdkstepError(f"{pdb}: {top.n_atoms} atoms, but the trajectory has {len(z)}")
    else:
        top = mdtraj.Topology()
        res = top.add_residue("MOL", top.add_chain(), resSeq=1)
        for i, a in enumerate(z):
            sym = element_symbol(a)
            top.add_atom(f"{sym}{i + 1}", mdtraj.element.get_by_symbol(sym), res)
    if bonds is not None and top.n_bonds == 0:
        atoms = list(top.atoms)
        for i, j in np.asarray(bonds, dtype=int).reshape(-1, 2):
            top.add_bond(atoms[i], atoms[j])
    return top


def frame_interval_fs(time_ps: np.ndarray) -> float:
    """Median spacing of the frames in fs (0 for one frame)."""
    return float(np.median(np.diff(time_ps))) * 1000.0 if len(time_ps) > 1 else 0.0


def set_dcd_time(path: Path, time_ps: np.ndarray) -> None:
    """Write the time axis into a DCD header as CHARMM does: DELTA a time unit (AKMA) that divides
    both the first frame's time and the frame spacing (the largest, at 0.001 fs resolution: the
    MD step for a baseline, the cycle for a hybrid run), ISTART = the first frame's time and
    NSAVC = the spacing in that unit, NSTEP the last frame's. mdtraj writes ISTART 0, NSAVC 1,
    DELTA 1.0; the header is CHARMM's (84-byte record: 'CORD' + 20 int32, DELTA the 10th, a
    float32). Uneven spacings are written as their median."""
    a, b = int(round(float(time_ps[0]) * 1e6)), int(round(frame_interval_fs(time_ps) * 1e3))  # 0.001 fs units
    b = b or max(a, 1)
    g = math.gcd(a, b)
    if a // g + (len(time_ps) - 1) * (b // g) >= 2**31:  # too fine a unit for int32 step numbers
        g = b
    istart, nsavc = int(round(a / g)), b // g
    with open(path, "r+b") as fh:
        head = fh.read(92)
        if struct.unpack("<i4s", head[:8]) != (84, b"CORD"):
            raise MdkstepError(f"{path}: not a little-endian CHARMM DCD header")
        fh.seek(12)
        fh.write(struct.pack("<3i", istart, nsavc, istart + (len(time_ps) - 1) * nsavc))
        fh.seek(44)
        fh.write(struct.pack("<f", g * 1e-6 / AKMA_TIME_PS))


def dcd_time_ps(path: Path) -> np.ndarray:
    """Frame times (ps) from a DCD header: (ISTART + i NSAVC) DELTA, DELTA in AKMA units."""
    with open(path, "rb") as fh:
        head = fh.read(92)
    if len(head) < 92 or struct.unpack("<i4s", head[:8]) != (84, b"CORD"):
        raise MdkstepError(f"{path}: not a little-endian CHARMM DCD file")
    nset, istart, nsavc = struct.unpack("<3i", head[8:20])
    (delta,) = struct.unpack("<f", head[44:48])
    return (istart + np.arange(nset) * nsavc) * float(delta) * AKMA_TIME_PS


def write_xyz(path: Path, traj: Trajectory) -> Path:
    """Multi-frame extended XYZ (Å) with time_ps, energy_kj_mol and temperature_K per frame."""
    sym = [element_symbol(z) for z in traj.atom_types]
    pos_A = np.asarray(traj.positions, dtype=float) * 10.0
    with atomic_path(path, suffix=".xyz") as tmp, open(tmp, "w") as fh:
        for f in range(traj.n_frames):
            fh.write(f"{traj.n_atoms}\nProperties=species:S:1:pos:R:3 time_ps={float(traj.time_ps[f]):.6f} "
                     f"energy_kj_mol={float(traj.energies[f]):.6f} temperature_K={float(traj.temperature[f]):.3f} "
                     f'pbc="F F F"\n')
            fh.writelines(f"{s:<2s} {x:16.8f} {y:16.8f} {z:16.8f}\n" for s, (x, y, z) in zip(sym, pos_A[f]))
    return path


def export_trajectory(traj: Trajectory, out_dir: Path, stem: str, bonds: np.ndarray | None = None,
                      pdb: Path | None = None, formats: Iterable[str] = FORMATS) -> dict[str, Any]:
    """Write ``traj`` for a viewer under ``out_dir``: ``<stem>.dcd`` + ``<stem>.pdb`` (topology)
    and/or ``<stem>.xyz`` (see the module docstring). Returns {"dcd", "pdb", "xyz": path,
    "frame_interval_fs", "n_frames"}; open the DCD with ``mdtraj.load(dcd, top=pdb)`` or
    ``vmd <stem>.pdb <stem>.dcd``, the XYZ with ``ase.io.read(xyz, ":")`` or ``ase gui``."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise MdkstepError(f"export formats {bad}: unknown (known: {', '.join(FORMATS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"n_frames": traj.n_frames, "frame_interval_fs": frame_interval_fs(traj.time_ps)}
    if "dcd" in formats:
        import mdtraj

        md = mdtraj.Trajectory(np.asarray(traj.positions, dtype=np.float32),
                               mdtraj_topology(traj.atom_types, bonds, pdb), time=np.asarray(traj.time_ps))
        dcd, top = out_dir / f"{stem}.dcd", out_dir / f"{stem}.pdb"
        with atomic_path(dcd, suffix=".dcd") as tmp:
            md.save_dcd(str(tmp))
            set_dcd_time(tmp, traj.time_ps)
        with atomic_path(top, suffix=".pdb") as tmp:
            md[0].save_pdb(str(tmp))
        out.update(dcd=str(dcd), pdb=str(top))
    if "xyz" in formats:
        out["xyz"] = str(write_xyz(out_dir / f"{stem}.xyz", traj))
    return out
