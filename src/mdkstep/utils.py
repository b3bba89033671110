"""Small shared helpers: seeding, centre-of-mass handling, logging, atomic writes.

Units throughout the project: nm, ps, kJ/mol, amu, K.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy.constants import Avogadro as _NA

#: Boltzmann constant in kJ/(mol K) (CODATA via scipy.constants: k_B * N_A / 1000).
from scipy.constants import Boltzmann as _KB

KB_KJ_PER_MOL_K: float = _KB * _NA / 1000.0

LOG = logging.getLogger("mdkstep")


class MdkstepError(Exception):
    """A user-facing error: its message is printed as one line and the script exits non-zero."""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (survives redirection in tests)."""

    @property  # type: ignore[override]
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str = "INFO") -> logging.Logger:
    """Configure the ``mdkstep`` logger once (timestamped lines on stderr)."""
    if not LOG.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        LOG.addHandler(handler)
    LOG.setLevel(level.upper())
    LOG.propagate = False
    return LOG


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if importable) PyTorch RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is optional for the MD stages
        pass


def element_symbol(z: int) -> str:
    """Chemical symbol of atomic number z (ASE's table); ``Z<z>`` if unknown."""
    try:
        from ase.data import chemical_symbols

        return chemical_symbols[int(z)]
    except (ImportError, IndexError):
        return f"Z{int(z)}"


def center_of_mass(x: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Mass-weighted centre (..., 3) of ``x`` (..., n_atoms, 3) with masses (n_atoms,) in amu:
    positions give the centre of mass, velocities the centre-of-mass velocity. The one
    implementation (the hybrid integrator, the baselines, the datasets and the analysis call it)."""
    m = np.asarray(masses, dtype=float)
    return (m @ np.asarray(x)) / m.sum()


def remove_com(x: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Return ``x`` minus its centre of mass (works for positions and velocities)."""
    return x - center_of_mass(x, masses)[..., None, :]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    A crash mid-write never leaves a truncated file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path, suffix or path.suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temp(path: Path, suffix: str) -> Path:
    """Create an empty hidden ``.<name>.<random><suffix>`` beside ``path``, mode 0666 less the
    umask (like any new file; ``tempfile.mkstemp`` would force 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temporary name")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NumPy scalars/arrays converted)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.ndarray, np.generic)):
        return json_plain(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def json_plain(o: Any) -> Any:
    """``json.dumps`` default for metadata: NumPy scalars -> Python, arrays -> lists, the rest -> str."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def as_plain_json(obj: Any) -> Any:
    """``obj`` as plain JSON types (tuples -> lists, NumPy -> Python, Paths and the rest -> str)."""
    return json.loads(json.dumps(obj, default=json_plain))


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work.

    Raises a one-line :class:`MdkstepError` naming the folder (a path component that is a
    file, no permission, read-only filesystem, ...). Returns the folder as a Path.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise MdkstepError(f"{folder}: {what} is not writable ({e.strerror or e})") from None
    return folder


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """:func:`check_writable` on the folder of ``path``; ``path`` itself must not be a folder."""
    path = Path(path)
    if path.is_dir():
        raise MdkstepError(f"{path}: {what} is a folder, expected a file path")
    check_writable(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    return path


def parse_shard(spec: str | None) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based shard i of n) into a tuple; ``None`` means ``(0, 1)``."""
    if spec is None:
        return 0, 1
    try:
        i_str, n_str = spec.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise MdkstepError(f"--shard {spec!r}: expected 'i/n' with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise MdkstepError(f"--shard {spec!r}: need 0 <= i < n")
    return i, n


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, cached per process by path, size and mtime; errors name the file."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _SHA_CACHE:
            with open(path, "rb") as fh:
                _SHA_CACHE[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as e:
        raise MdkstepError(f"{path}: cannot read ({e.strerror})") from None
    return _SHA_CACHE[key]
