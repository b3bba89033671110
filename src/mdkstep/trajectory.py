"""The trajectory NPZ contract (docs/data-contract.md): save, load, validate, stream.

One file per trajectory, fixed units: positions nm, velocities nm/ps, forces kJ/(mol nm),
energies/kinetic kJ/mol, temperature K, masses amu, time ps. ``metadata`` is a JSON string.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mdkstep.utils import MdkstepError, as_plain_json, atomic_path

#: key -> (shape pattern, unit). "F" = n_frames, "N" = n_atoms.
SCHEMA: dict[str, tuple[tuple[str | int, ...], str]] = {
    "positions": (("F", "N", 3), "nm"),
    "velocities": (("F", "N", 3), "nm/ps"),
    "forces": (("F", "N", 3), "kJ/(mol nm)"),
    "energies": (("F",), "kJ/mol"),
    "kinetic": (("F",), "kJ/mol"),
    "temperature": (("F",), "K"),
    "atom_types": (("N",), "atomic number"),
    "masses": (("N",), "amu"),
    "time_ps": (("F",), "ps"),
}
REQUIRED = ("positions", "velocities", "energies", "temperature", "atom_types", "masses", "time_ps", "metadata")
OPTIONAL = ("forces", "kinetic")
#: metadata keys every trajectory records.
METADATA_KEYS = (
    "dt_fs", "save_interval", "engine", "method", "temperature_K", "friction",
    "seed", "molecule", "smiles", "constraints",
)
def make_metadata(*, dt_fs: float, save_interval: int, engine: str, method: str, temperature_K: float | None,
                  friction: float, seed: int | None, molecule: str, smiles: str | None, constraints: str,
                  **extra: Any) -> dict[str, Any]:
    """The metadata dict of a trajectory: every key of :data:`METADATA_KEYS` (keyword-only,
    so none can be forgotten) plus ``extra``, as plain JSON types. ``dt_fs`` in fs,
    ``save_interval`` in integrator steps, ``temperature_K`` in K, ``friction`` in 1/ps."""
    meta = dict(dt_fs=dt_fs, save_interval=save_interval, engine=engine, method=method,
                temperature_K=temperature_K, friction=friction, seed=seed, molecule=molecule, smiles=smiles,
                constraints=constraints, **extra)
    if not (isinstance(dt_fs, (int, float, np.number)) and float(dt_fs) > 0):
        raise MdkstepError(f"trajectory metadata: key 'dt_fs' must be a positive number of fs, got {dt_fs!r}")
    if int(save_interval) < 1:
        raise MdkstepError(f"trajectory metadata: key 'save_interval' must be >= 1, got {save_interval!r}")
    return as_plain_json(meta)


FRAME_KEYS = ("positions", "velocities", "forces", "energies", "kinetic", "temperature", "time_ps")


@dataclass
class Trajectory:
    """In-memory trajectory; arrays follow :data:`SCHEMA`."""

    positions: np.ndarray
    velocities: np.ndarray
    energies: np.ndarray
    temperature: np.ndarray
    atom_types: np.ndarray
    masses: np.ndarray
    time_ps: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    forces: np.ndarray | None = None
    kinetic: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in SCHEMA if getattr(self, k) is not None}
        return out


def validate_arrays(arrays: Mapping[str, Any], source: str) -> None:
    """Check required keys, shapes and finiteness; raise MdkstepError naming ``source`` and key."""
    for key in REQUIRED:
        if key not in arrays:
            raise MdkstepError(f"{source}: missing key '{key}'")
    pos = np.asarray(arrays["positions"])
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise MdkstepError(f"{source}: key 'positions' has shape {pos.shape}, expected (n_frames, n_atoms, 3)")
    dims = {"F": pos.shape[0], "N": pos.shape[1]}
    for key, (pattern, _unit) in SCHEMA.items():
        if key not in arrays:
            continue
        arr = np.asarray(arrays[key])
        expected = tuple(dims[d] if isinstance(d, str) else d for d in pattern)
        if arr.shape != expected:
            raise MdkstepError(f"{source}: key '{key}' has shape {arr.shape}, expected {expected}")
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            first = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise MdkstepError(f"{source}: key '{key}' has non-finite values (first at index {first})")
    if np.any(np.asarray(arrays["masses"]) <= 0):
        raise MdkstepError(f"{source}: key 'masses' must be positive (amu)")
    meta = arrays["metadata"]
    if not isinstance(meta, dict):
        raise MdkstepError(f"{source}: key 'metadata' is not a JSON object")
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise MdkstepError(f"{source}: key 'metadata' lacks '{missing[0]}'")
    t = np.asarray(arrays["time_ps"])
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise MdkstepError(f"{source}: key 'time_ps' is not strictly increasing")


def save_trajectory(path: str | Path, traj: Trajectory) -> Path:
    """Validate and write ``traj`` atomically as an uncompressed NPZ."""
    path = Path(path)
    arrays: dict[str, Any] = dict(traj.arrays())
    arrays["metadata"] = dict(traj.metadata)
    validate_arrays(arrays, str(path))
    arrays["metadata"] = np.array(json.dumps(traj.metadata))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data: dict[str, Any] = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise MdkstepError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise MdkstepError(f"{path}: not a readable NPZ ({e})") from None
    if "metadata" in data:
        try:
            data["metadata"] = json.loads(str(data["metadata"]))
        except json.JSONDecodeError:
            raise MdkstepError(f"{path}: key 'metadata' is not valid JSON") from None
    return data


def load_trajectory(path: str | Path) -> Trajectory:
    """Load and validate a trajectory NPZ; errors name the file and the key."""
    path = Path(path)
    data = _read_npz(path)
    validate_arrays(data, str(path))
    kwargs = {k: data[k] for k in SCHEMA if k in data}
    return Trajectory(metadata=data["metadata"], **kwargs)


class ChunkedTrajectoryWriter:
    """Streams frames to ``<out>.parts/chunk_NNNNN.npz`` and assembles the final NPZ.

    Memory stays flat: only the current chunk is held; the final file is assembled one
    key at a time through memory-mapped ``.npy`` files. Chunks are written atomically,
    so an interrupted run resumes at the last complete chunk (see :meth:`n_chunks_on_disk`).
    """

    def __init__(self, out_path: str | Path, static: Mapping[str, np.ndarray], metadata: dict[str, Any]):
        self.out_path = Path(out_path)
        self.parts = self.out_path.with_name(self.out_path.name + ".parts")
        self.parts.mkdir(parents=True, exist_ok=True)
        self.static = {k: np.asarray(v) for k, v in static.items()}
        self.metadata = metadata
        self._buf: dict[str, list[np.ndarray]] = {}

    def chunk_path(self, i: int) -> Path:
        return self.parts / f"chunk_{i:05d}.npz"

    def chunk_files(self) -> list[Path]:
        return sorted(self.parts.glob("chunk_*.npz"))

    def append(self, **frame: np.ndarray) -> None:
        """Buffer one frame (keys from :data:`FRAME_KEYS`)."""
        for k, v in frame.items():
            self._buf.setdefault(k, []).append(np.asarray(v))

    def append_block(self, **frames: np.ndarray) -> None:
        """Buffer a block of frames (leading axis = frames)."""
        for k, v in frames.items():
            self._buf.setdefault(k, []).extend(np.asarray(v))

    @property
    def buffered(self) -> int:
        return len(self._buf.get("positions", []))

    def flush(self, chunk_index: int) -> None:
        """Write the buffered frames as chunk ``chunk_index`` (atomically) and clear the buffer."""
        if not self.buffered:
            return
        arrays = {k: np.stack(v) for k, v in self._buf.items()}
        for k, a in arrays.items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise MdkstepError(f"{self.out_path}: non-finite '{k}' in chunk {chunk_index}; not written")
        with atomic_path(self.chunk_path(chunk_index), suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        self._buf.clear()

    def discard_chunks_from(self, first: int) -> None:
        """Delete chunks with index >= ``first`` (written after the last checkpoint)."""
        for p in self.chunk_files():
            if int(p.stem.split("_")[1]) >= first:
                p.unlink()

    def finalize(self, n_frames: int | None = None) -> Path:
        """Assemble all chunks into the final NPZ (validated, atomic); remove the parts folder.

        The file is assembled inside the parts folder and renamed onto ``out_path`` last, so a
        kill leaves nothing beside the outputs. Chunks must be numbered 0, 1, ... without a gap
        and hold ``n_frames`` frames in all when given (the frame index proves continuity)."""
        files = self.chunk_files()
        if not files:
            raise MdkstepError(f"{self.out_path}: no frames were produced")
        indices = [int(p.stem.split("_")[1]) for p in files]
        if indices != list(range(len(files))):
            missing = sorted(set(range(max(indices) + 1)) - set(indices))
            raise MdkstepError(f"{self.parts}: chunk {missing[0]} is missing; the trajectory would have a gap")
        with np.load(files[0]) as z0:
            keys = list(z0.files)
            shapes = {k: z0[k].shape[1:] for k in keys}
            dtypes = {k: z0[k].dtype for k in keys}
        counts = []
        for f in files:
            with np.load(f) as z:
                counts.append(z["positions"].shape[0])
        total = int(sum(counts))
        if n_frames is not None and total != n_frames:
            raise MdkstepError(f"{self.parts}: the chunks hold {total} frames, expected {n_frames}")
        tmpdir = self.parts / "assemble"
        shutil.rmtree(tmpdir, ignore_errors=True)
        tmpdir.mkdir()
        tmp = tmpdir / "final.npz"  # inside the parts folder: a kill leaves nothing beside the outputs
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for k in keys:
                npy = tmpdir / f"{k}.npy"
                mm = np.lib.format.open_memmap(npy, mode="w+", dtype=dtypes[k], shape=(total, *shapes[k]))
                pos = 0
                for f, n in zip(files, counts):
                    with np.load(f) as z:
                        mm[pos:pos + n] = z[k]
                    pos += n
                mm.flush()
                del mm
                zf.write(npy, arcname=f"{k}.npy")
                npy.unlink()
            for k, v in self.static.items():
                np.save(tmpdir / f"{k}.npy", v)
                zf.write(tmpdir / f"{k}.npy", arcname=f"{k}.npy")
            np.save(tmpdir / "metadata.npy", np.array(json.dumps(self.metadata)))
            zf.write(tmpdir / "metadata.npy", arcname="metadata.npy")
        load_trajectory(tmp)  # validate what we are about to publish
        os.replace(tmp, self.out_path)
        shutil.rmtree(self.parts)
        return self.out_path


def memmap_npz(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Read-only memory maps of the (uncompressed) arrays inside an NPZ, without loading them.

    Hand-written because ``np.load(..., mmap_mode=...)`` ignores mmap for .npz archives; our
    writers store members uncompressed (ZIP_STORED), so each member's .npy payload sits at a
    fixed file offset and can be mapped directly. Compressed members are loaded into memory.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if keys is not None and key not in keys:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as member:
                    out[key] = np.lib.format.read_array(member)
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
            if dtype.hasobject or shape == ():
                with zf.open(info) as member:
                    out[key] = np.lib.format.read_array(member)
                continue
            out[key] = np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                                 order="F" if fortran else "C")
    return out
