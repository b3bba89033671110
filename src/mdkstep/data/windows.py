"""k-step supervision windows (x_t, v_t[, F_t]) -> (x_{t+k}, v_{t+k}), their splits, and
their batching into graphs (collate, rotation augmentation).

A dataset file stores only an index of windows (trajectory id, start frame); the arrays stay
in the trajectory NPZs, memory-mapped, so memory does not grow with the number of windows.
Windows never straddle two trajectories or a time discontinuity (e.g. a bad resume): the
time stamps of both ends must differ by exactly k steps. Each source is fingerprinted (size,
frame count, dt, save interval, SHA-256) and checked when the dataset is read, so a dataset
never trains on trajectories that changed after it was built. Samples are COM-centred
(positions) and COM-velocity-free. Units: nm, nm/ps, kJ/(mol nm).
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mdkstep.model import make_graph_batch
from mdkstep.molecule.topology import molecule_topology
from mdkstep.trajectory import load_trajectory, memmap_npz
from mdkstep.utils import LOG, MdkstepError, atomic_path, atomic_write_json, file_sha256, remove_com

if TYPE_CHECKING:
    import torch

    from mdkstep.model import GraphBatch

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ topology


# ------------------------------------------------------------------------------- windows

def valid_starts(time_ps: np.ndarray, offset: int, stride: int, dt_save_ps: float) -> np.ndarray:
    """Start frames t (every ``stride``) whose end t+offset lies exactly offset saves later."""
    n = len(time_ps)
    if n <= offset:
        return np.zeros(0, dtype=np.int64)
    t = np.arange(0, n - offset, stride)
    gap = time_ps[t + offset] - time_ps[t]
    ok = np.abs(gap - offset * dt_save_ps) < 1e-6 * max(1.0, offset * dt_save_ps)
    return t[ok]


def assign_splits(molecules: Sequence[str], traj_mol: np.ndarray, starts_frac: np.ndarray, mode: str,
                  fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Split code (0 train, 1 val, 2 test) per window and a description of the rule.

    molecule: molecules are shuffled (seeded) and divided by ``fractions``; every split gets
    at least one molecule when there are >= 3. time: in every trajectory the first
    ``fractions[0]`` of the time is train, the next val, the last part test.
    """
    f_train, f_val, _ = fractions
    if mode == "molecule":
        names = sorted(set(molecules))
        rng = np.random.default_rng(seed)
        order = [names[i] for i in rng.permutation(len(names))]
        n = len(order)
        n_test = max(1, int(round(n * fractions[2]))) if n >= 3 else 0
        n_val = max(1, int(round(n * f_val))) if n >= 3 else 0
        groups = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        if not groups["train"]:
            raise MdkstepError("molecule split needs at least 3 molecules (use --split time)")
        code_of = {m: SPLITS.index(s) for s, ms in groups.items() for m in ms}
        codes = np.array([code_of[molecules[i]] for i in traj_mol], dtype=np.int8)
        return codes, {"mode": mode, "molecules": groups}
    if mode == "time":
        codes = np.where(starts_frac < f_train, 0, np.where(starts_frac < f_train + f_val, 1, 2)).astype(np.int8)
        return codes, {"mode": mode, "time_fraction": {"train": [0, f_train], "val": [f_train, f_train + f_val],
                                                        "test": [f_train + f_val, 1.0]}}
    raise MdkstepError(f"--split {mode!r}: expected 'molecule' or 'time'")


@dataclass
class DatasetSpec:
    """What a dataset file describes."""

    k: int
    offset: int  #: frames between the two ends of a window (= k / save_interval)
    dt_fs: float
    save_interval: int
    sources: list[str]
    molecules: list[str]
    topologies: dict[str, dict[str, list[list[int]]]]
    temperature_K: float | None
    split: dict[str, Any]
    engine: str
    has_forces: bool
    #: per source: size_bytes, n_frames, dt_fs, save_interval, sha256 (None: built before fingerprints)
    source_fingerprints: list[dict[str, Any]] | None = None


# --------------------------------------------------------------------- source fingerprints

_WARNED_UNFINGERPRINTED: set[Path] = set()
FINGERPRINT_KEYS = ("dt_fs", "save_interval", "n_frames", "size_bytes", "sha256")


def source_fingerprint(path: Path, n_frames: int, meta: dict[str, Any]) -> dict[str, Any]:
    """What identifies a source trajectory: size (bytes), frame count, dt (fs), save interval, SHA-256."""
    return {"size_bytes": path.stat().st_size, "n_frames": int(n_frames), "dt_fs": float(meta["dt_fs"]),
            "save_interval": int(meta["save_interval"]), "sha256": file_sha256(path)}


def _current_fingerprint(path: Path) -> dict[str, Any]:
    """The fingerprint of ``path`` now, with None for what cannot be read (a damaged file)."""
    now: dict[str, Any] = {"size_bytes": path.stat().st_size, "sha256": file_sha256(path)}
    try:
        m = memmap_npz(path, ("positions", "metadata"))
        meta = json.loads(str(m["metadata"]))
        now.update(n_frames=int(m["positions"].shape[0]), dt_fs=float(meta["dt_fs"]),
                   save_interval=int(meta["save_interval"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    return now


def check_source(path: Path, stored: dict[str, Any], dataset: Path) -> None:
    """One-line error when the source trajectory ``path`` is missing or differs from ``stored``."""
    if not path.is_file():
        raise MdkstepError(f"{path}: source trajectory of {dataset} is missing (rebuild it with src/02_make_dataset.py)")
    if path.stat().st_size == stored["size_bytes"] and file_sha256(path) == stored["sha256"]:
        return
    now = _current_fingerprint(path)
    changed = [] if "n_frames" in now else ["now not a readable NPZ"]
    changed += [f"{k} {stored[k]} -> {now[k]}" for k in FINGERPRINT_KEYS[:-1] if k in now and now[k] != stored[k]]
    raise MdkstepError(f"{path}: source trajectory changed since {dataset} was built "
                       f"({', '.join(changed) or 'content (SHA-256)'}); rebuild it with src/02_make_dataset.py")


def build_dataset(traj_paths: Sequence[Path], k: int, out_file: Path, stride: int = 1, split: str = "molecule",
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                  raw_root: Path | None = None) -> dict[str, Any]:
    """Index every valid k-step window of ``traj_paths`` into ``out_file`` (NPZ); returns a summary.

    All trajectories must share dt_fs and save_interval, and k must be a multiple of
    save_interval. Sources are stored relative to the dataset's folder, with fingerprints.
    """
    if not traj_paths:
        raise MdkstepError("no trajectories given")
    rows_traj, rows_t = [], []
    molecules: list[str] = []
    topologies: dict[str, Any] = {}
    dt_fs = save_interval = None
    temps, engines, has_forces = set(), set(), True
    fingerprints = []
    traj_mol = []
    frac_all = []
    for ti, p in enumerate(traj_paths):
        tr = load_trajectory(p)
        meta = tr.metadata
        if dt_fs is None:
            dt_fs, save_interval = float(meta["dt_fs"]), int(meta["save_interval"])
        elif (float(meta["dt_fs"]), int(meta["save_interval"])) != (dt_fs, save_interval):
            raise MdkstepError(f"{p}: dt_fs/save_interval {meta['dt_fs']}/{meta['save_interval']} differ from "
                               f"{traj_paths[0]} ({dt_fs}/{save_interval}); build one dataset per setting")
        if k % save_interval:
            raise MdkstepError(f"k={k} is not a multiple of save_interval={save_interval} in {p}")
        offset = k // save_interval
        name = str(meta["molecule"])
        if name not in topologies:
            topologies[name] = molecule_topology(Path(p), raw_root, name, tr.atom_types, tr.positions[0])
        starts = valid_starts(tr.time_ps, offset, stride, dt_fs * save_interval / 1000.0)
        rows_traj.append(np.full(len(starts), ti, dtype=np.int32))
        rows_t.append(starts.astype(np.int64))
        frac_all.append(starts / max(1, tr.n_frames - offset))
        molecules.append(name)
        traj_mol.append(np.full(len(starts), ti, dtype=np.int32))
        temps.add(meta.get("temperature_K"))
        engines.add(str(meta.get("engine")))
        has_forces &= tr.forces is not None
        fingerprints.append(source_fingerprint(Path(p), tr.n_frames, meta))
        del tr
    windows = np.stack([np.concatenate(rows_traj), np.concatenate(rows_t)], axis=1)
    codes, split_desc = assign_splits(molecules, np.concatenate(traj_mol), np.concatenate(frac_all), split, fractions, seed)
    spec = DatasetSpec(
        k=k, offset=k // save_interval, dt_fs=dt_fs, save_interval=save_interval,
        sources=[os.path.relpath(Path(p).resolve(), Path(out_file).resolve().parent) for p in traj_paths],
        molecules=molecules, topologies=topologies,
        temperature_K=temps.pop() if len(temps) == 1 else None, split=split_desc,
        engine="+".join(sorted(engines)), has_forces=bool(has_forces), source_fingerprints=fingerprints,
    )
    write_dataset(out_file, windows, codes, spec)
    counts = {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)}
    return {"file": str(out_file), "k": k, "n_windows": int(len(windows)), "counts": counts, "split": split_desc}


def write_split_files(splits_dir: Path, summary: dict[str, Any], dataset_files: Sequence[str]) -> None:
    """train.json / val.json / test.json: the rule of each split and its window counts."""
    for s in SPLITS:
        desc = dict(summary["split"])
        if desc["mode"] == "molecule":
            desc = {"mode": "molecule", "molecules": desc["molecules"][s]}
        else:
            desc = {"mode": "time", "time_fraction": desc["time_fraction"][s]}
        atomic_write_json(splits_dir / f"{s}.json", {"split": s, **desc, "datasets": list(dataset_files)})


def write_dataset(out_file: Path, windows: np.ndarray, codes: np.ndarray, spec: DatasetSpec) -> None:
    """Write a dataset file (atomically): windows (W,2) (trajectory id, start frame), split
    codes (W,) (indices into SPLITS) and the spec, whose relative sources count from
    ``out_file``'s folder."""
    with atomic_path(out_file, suffix=".npz") as tmp:
        np.savez(tmp, windows=windows, split=codes, spec=np.array(json.dumps(spec.__dict__)))


def subset_dataset(src: Path, dst: Path, keep: np.ndarray) -> None:
    """Copy of dataset ``src`` with only its windows ``keep`` (indices, in that order) at ``dst``;
    relative sources are re-pointed from ``dst``'s folder."""
    windows, codes, spec = read_dataset_file(src)
    base = Path(src).resolve().parent
    sources = [s if Path(s).is_absolute() else os.path.relpath(base / s, Path(dst).resolve().parent)
               for s in spec.sources]
    write_dataset(dst, windows[keep], codes[keep], replace(spec, sources=sources))


# ------------------------------------------------------------------------------- reading

@dataclass
class WindowBatch:
    """Windows of one molecule stacked: arrays (B, N, 3) unless noted (nm, nm/ps, kJ/(mol nm))."""

    molecule: str
    z: np.ndarray  #: (N,)
    masses: np.ndarray  #: (N,) amu
    x0: np.ndarray
    v0: np.ndarray
    x1: np.ndarray
    v1: np.ndarray
    f0: np.ndarray | None
    f1: np.ndarray | None
    topology: dict[str, list[list[int]]]
    #: the second jump's end t+2k (two-jump windows, ``KStepDataset.with_jumps(2)``), else None
    x2: np.ndarray | None = None
    v2: np.ndarray | None = None
    f2: np.ndarray | None = None
    u0: np.ndarray | None = None  #: (B,) potential energy at t, kJ/mol (None: the trajectory has none)
    u1: np.ndarray | None = None  #: (B,) potential energy at t+k, kJ/mol


def split_name(split: str | Path) -> str:
    """'train' | 'val' | 'test', given as such or as a split file from stage 02."""
    s = str(split)
    if s in SPLITS:
        return s
    p = Path(s)
    if not p.is_file():
        raise MdkstepError(f"{p}: split file not found")
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MdkstepError(f"{p}: not a JSON split file (written by src/02_make_dataset.py)") from None
    name = info.get("split") if isinstance(info, dict) else None
    if name not in SPLITS:
        raise MdkstepError(f"{p}: key 'split' must be one of {list(SPLITS)}")
    return name


def read_dataset_file(path: Path) -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    """(windows (W,2), split codes (W,), spec) of a stage-02 file; damage is a one-line error."""
    if not path.is_file():
        raise MdkstepError(f"{path}: dataset file not found (run src/02_make_dataset.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in ("windows", "split", "spec"):
                if key not in z.files:
                    raise MdkstepError(f"{path}: missing key '{key}' (not a k-step dataset)")
            windows, codes, spec = z["windows"], z["split"], json.loads(str(z["spec"]))
        spec = DatasetSpec(**spec)
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MdkstepError(f"{path}: not a readable k-step dataset ({why}); rebuild it with src/02_make_dataset.py") from None
    if windows.ndim != 2 or windows.shape[1:] != (2,) or codes.shape != (len(windows),):
        raise MdkstepError(f"{path}: keys 'windows'/'split' have shapes {windows.shape}/{codes.shape}, "
                           "expected (W,2)/(W,)")
    return windows, codes, spec


class KStepDataset:
    """Windows of a dataset file, restricted to one split, read lazily from memory maps."""

    def __init__(self, dataset_file: str | Path, split: str | Path | None = None):
        self.path = Path(dataset_file)
        windows, codes, self.spec = read_dataset_file(self.path)
        if split is not None:
            name = split_name(split)
            windows = windows[codes == SPLITS.index(name)]
        self.windows = windows
        self.jumps = 1  #: consecutive k-jumps per window (2: also the frame t+2k, see with_jumps)
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._check_sources(np.unique(windows[:, 0]) if len(windows) else [])

    def with_jumps(self, n: int) -> "KStepDataset":
        """The same split as windows of ``n`` consecutive k-jumps (n = 1 or 2): only the windows
        whose frame t + n k exists in the same trajectory exactly n k steps later (no time gap).

        The dataset file stays as it is (an index of k-windows); ``batches`` then also returns
        x2, v2, f2 at t + 2k. Windows near the end of a trajectory or before a gap drop out.
        """
        if n not in (1, 2):
            raise MdkstepError(f"with_jumps({n}): only 1 or 2 consecutive jumps are supported")
        out = object.__new__(KStepDataset)
        out.__dict__.update(self.__dict__)
        out.jumps = n
        if n > 1 and len(self.windows):
            out.windows = self.windows[self._has_jumps(n)]
        return out

    def _has_jumps(self, n: int) -> np.ndarray:
        """(W,) bool: window t's frame t + n*offset exists and lies exactly n*k steps later."""
        ok = np.zeros(len(self.windows), dtype=bool)
        off = n * self.spec.offset
        dt_save_ps = self.spec.dt_fs * self.spec.save_interval / 1000.0
        for ti in np.unique(self.windows[:, 0]):
            rows = np.flatnonzero(self.windows[:, 0] == ti)
            time_ps = np.asarray(memmap_npz(self.source_path(int(ti)), ("time_ps",))["time_ps"])
            t0 = self.windows[rows, 1]
            inside = t0 + off < len(time_ps)
            gap = time_ps[np.minimum(t0 + off, len(time_ps) - 1)] - time_ps[t0]
            ok[rows] = inside & (np.abs(gap - off * dt_save_ps) < 1e-6 * max(1.0, off * dt_save_ps))
        return ok

    def source_path(self, ti: int) -> Path:
        """Trajectory ``ti``'s file (stored relative to the dataset's folder, or absolute)."""
        p = Path(self.spec.sources[ti])
        return p if p.is_absolute() else self.path.resolve().parent / p

    def _check_sources(self, used: Sequence[int]) -> None:
        fps = self.spec.source_fingerprints
        if fps is None:
            if self.path not in _WARNED_UNFINGERPRINTED:
                _WARNED_UNFINGERPRINTED.add(self.path)
                LOG.warning("%s: built without source fingerprints (an older stage 02); rebuild it to have its "
                            "trajectories checked", self.path)
            return
        for ti in used:
            check_source(self.source_path(int(ti)), fps[int(ti)], self.path)

    @property
    def k(self) -> int:
        return self.spec.k

    def __len__(self) -> int:
        return len(self.windows)

    def _traj(self, ti: int) -> dict[str, np.ndarray]:
        if ti not in self._maps:
            src = self.source_path(ti)
            if not src.is_file():
                raise MdkstepError(f"{self.path}: source trajectory {src} is missing")
            self._maps[ti] = memmap_npz(src, ("positions", "velocities", "forces", "energies", "atom_types",
                                              "masses"))
        return self._maps[ti]

    def batches(self, idx: np.ndarray) -> list[WindowBatch]:
        """The windows ``idx`` (indices into this split), grouped per trajectory."""
        idx = np.asarray(idx)
        sel = self.windows[idx]
        out = []
        for ti in np.unique(sel[:, 0]):
            t0 = np.sort(sel[sel[:, 0] == ti, 1])
            t1 = t0 + self.spec.offset
            m = self._traj(int(ti))
            masses = np.array(m["masses"], dtype=float)
            has_f = "forces" in m
            name = self.spec.molecules[int(ti)]
            x0, x1 = remove_com(m["positions"][t0], masses), remove_com(m["positions"][t1], masses)
            v0, v1 = remove_com(m["velocities"][t0], masses), remove_com(m["velocities"][t1], masses)
            wb = WindowBatch(
                molecule=name, z=np.array(m["atom_types"], dtype=int), masses=masses,
                x0=x0, v0=v0, x1=x1, v1=v1,
                f0=np.asarray(m["forces"][t0]) if has_f else None, f1=np.asarray(m["forces"][t1]) if has_f else None,
                topology=self.spec.topologies[name],
                u0=np.asarray(m["energies"][t0], dtype=float) if "energies" in m else None,
                u1=np.asarray(m["energies"][t1], dtype=float) if "energies" in m else None,
            )
            if self.jumps == 2:
                t2 = t1 + self.spec.offset
                wb = replace(wb, x2=remove_com(m["positions"][t2], masses), v2=remove_com(m["velocities"][t2], masses),
                             f2=np.asarray(m["forces"][t2]) if has_f else None)
            out.append(wb)
        return out



# ------------------------------------------------------------------------------ batching

@dataclass
class Targets:
    """Supervision of one batch (flattened over atoms, like GraphBatch)."""

    dx: torch.Tensor  #: (N,3) nm
    dv: torch.Tensor  #: (N,3) nm/ps
    x1: torch.Tensor  #: (N,3) nm
    f1: torch.Tensor | None  #: (N,3) kJ/(mol nm) at t+k
    bonds: torch.Tensor  #: (M,2) global atom indices
    angles: torch.Tensor  #: (M,3)
    dihedrals: torch.Tensor  #: (M,4)
    x2: torch.Tensor | None = None  #: (N,3) nm at t+2k (two-jump windows)
    v2: torch.Tensor | None = None  #: (N,3) nm/ps at t+2k (two-jump windows)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random proper rotation matrices (n,3,3) via QR of Gaussian matrices."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[det < 0, :, 0] *= -1
    return q


def rotate_windows(wb: WindowBatch, rot: np.ndarray) -> WindowBatch:
    """Apply rotations rot (B,3,3) (or (3,3)) to every vector quantity of the windows."""
    r = np.broadcast_to(rot, (wb.x0.shape[0], 3, 3))
    f = lambda a: None if a is None else np.einsum("bij,bnj->bni", r, a)  # noqa: E731
    return replace(wb, **{k: f(getattr(wb, k)) for k in VECTOR_FIELDS})


#: the (B,N,3) vector arrays of a WindowBatch (rotated together)
VECTOR_FIELDS = ("x0", "v0", "x1", "v1", "f0", "f1", "x2", "v2", "f2")


def _topology_arrays(topo: dict[str, list[list[int]]]) -> dict[str, np.ndarray]:
    return {k: np.asarray(topo[k], dtype=np.int64).reshape(-1, {"bonds": 2, "angles": 3, "dihedrals": 4}[k])
            for k in ("bonds", "angles", "dihedrals")}


def collate(wbs: list[WindowBatch], use_forces: bool, dtype: torch.dtype | None = None,
            aug: str = "none", rng: np.random.Generator | None = None) -> tuple[GraphBatch, Targets]:
    """Turn per-molecule window blocks into one GraphBatch (one graph per window) + targets.

    ``aug``: none | batch (one random rotation for all) | per_graph (one per window);
    ``dtype`` defaults to torch.float32.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if aug == "batch":
        rot = random_rotations(1, rng)[0]
        wbs = [rotate_windows(w, rot) for w in wbs]
    elif aug == "per_graph":
        wbs = [rotate_windows(w, random_rotations(w.x0.shape[0], rng)) for w in wbs]
    z_l, m_l, x_l, v_l, f_l, b_l = [], [], [], [], [], []
    dx_l, dv_l, x1_l, f1_l, x2_l, v2_l = [], [], [], [], [], []
    idx = {"bonds": [], "angles": [], "dihedrals": []}
    offset = 0
    for w in wbs:
        topo = _topology_arrays(w.topology)
        n = len(w.z)
        for b in range(w.x0.shape[0]):
            z_l.append(w.z)
            m_l.append(w.masses)
            x_l.append(w.x0[b])
            v_l.append(w.v0[b])
            b_l.append(topo["bonds"])
            if use_forces:
                if w.f0 is None:
                    raise MdkstepError(f"model uses forces as input but trajectory of {w.molecule} has none "
                                       "(run stage 01 with save_forces: true)")
                f_l.append(w.f0[b])
            for key in idx:
                idx[key].append(topo[key] + offset)
            offset += n
        dx_l.append((w.x1 - w.x0).reshape(-1, 3))
        dv_l.append((w.v1 - w.v0).reshape(-1, 3))
        x1_l.append(w.x1.reshape(-1, 3))
        f1_l.append(None if w.f1 is None else w.f1.reshape(-1, 3))
        x2_l.append(None if w.x2 is None else w.x2.reshape(-1, 3))
        v2_l.append(None if w.v2 is None else w.v2.reshape(-1, 3))
    gb = make_graph_batch(z_l, m_l, x_l, v_l, f_l if use_forces else None, b_l, dtype=dtype)
    t = lambda arrs: torch.as_tensor(np.concatenate(arrs), dtype=dtype)  # noqa: E731
    tg = Targets(
        dx=t(dx_l), dv=t(dv_l), x1=t(x1_l),
        f1=None if any(f is None for f in f1_l) else t(f1_l),
        bonds=torch.as_tensor(np.concatenate(idx["bonds"])),
        angles=torch.as_tensor(np.concatenate(idx["angles"])),
        dihedrals=torch.as_tensor(np.concatenate(idx["dihedrals"])),
        x2=None if any(a is None for a in x2_l) else t(x2_l),
        v2=None if any(a is None for a in v2_l) else t(v2_l),
    )
    return gb, tg


def targets_to(tg: Targets, device: torch.device) -> Targets:
    """The same targets on ``device``."""
    return Targets(**{f.name: None if getattr(tg, f.name) is None else getattr(tg, f.name).to(device)
                      for f in fields(tg)})
