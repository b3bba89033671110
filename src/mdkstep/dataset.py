"""k-step supervision windows (x_t, v_t[, F_t]) -> (x_{t+k}, v_{t+k}) and their splits.

A dataset file stores only an index of windows (trajectory id, start frame); the arrays stay
in the trajectory NPZs, memory-mapped, so memory does not grow with the number of windows.
Windows never straddle two trajectories or a time discontinuity (e.g. a bad resume): the
time stamps of both ends must differ by exactly k steps. Samples are COM-centred (positions)
and COM-velocity-free. Units: nm, nm/ps, kJ/(mol nm).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .trajectory import load_trajectory, memmap_npz
from .utils import MdkstepError, atomic_path, atomic_write_json, remove_com

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ topology

def infer_bonds(atomic_numbers: np.ndarray, positions_nm: np.ndarray, scale: float = 1.2) -> np.ndarray:
    """Bonds from covalent radii (ASE's table) when no topology.json is available; (n, 2)."""
    from ase.data import covalent_radii

    r = covalent_radii[np.asarray(atomic_numbers)] / 10.0  # Angstrom -> nm
    d = np.linalg.norm(positions_nm[:, None] - positions_nm[None], axis=-1)
    i, j = np.where(np.triu(d < scale * (r[:, None] + r[None]), k=1))
    return np.stack([i, j], axis=1)


def find_topology(traj_path: Path, raw_root: Path | None, molecule: str) -> Path | None:
    """topology.json beside the trajectory, else under ``raw_root/<molecule>/``."""
    for cand in (traj_path.parent / "topology.json", (raw_root / molecule / "topology.json") if raw_root else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def molecule_topology(traj_path: Path, raw_root: Path | None, molecule: str, z: np.ndarray,
                      x0: np.ndarray) -> dict[str, list[list[int]]]:
    """Bond/angle/dihedral index lists of a trajectory's molecule (inferred if no file)."""
    from .chem import topology_lists

    topo = find_topology(traj_path, raw_root, molecule)
    if topo is not None:
        info = json.loads(topo.read_text())
        if len(info["atomic_numbers"]) != len(z) or list(info["atomic_numbers"]) != list(map(int, z)):
            raise MdkstepError(f"{topo}: atoms do not match trajectory {traj_path}")
        return {k: info[k] for k in ("bonds", "angles", "dihedrals")}
    return topology_lists(len(z), infer_bonds(z, x0))


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


def build_dataset(traj_paths: Sequence[Path], k: int, out_file: Path, stride: int = 1, split: str = "molecule",
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                  raw_root: Path | None = None) -> dict[str, Any]:
    """Index every valid k-step window of ``traj_paths`` into ``out_file`` (NPZ); returns a summary.

    All trajectories must share dt_fs and save_interval, and k must be a multiple of
    save_interval.
    """
    if not traj_paths:
        raise MdkstepError("no trajectories given")
    rows_traj, rows_t = [], []
    molecules: list[str] = []
    topologies: dict[str, Any] = {}
    dt_fs = save_interval = None
    temps, engines, has_forces = set(), set(), True
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
        del tr
    windows = np.stack([np.concatenate(rows_traj), np.concatenate(rows_t)], axis=1)
    codes, split_desc = assign_splits(molecules, np.concatenate(traj_mol), np.concatenate(frac_all), split, fractions, seed)
    spec = DatasetSpec(
        k=k, offset=k // save_interval, dt_fs=dt_fs, save_interval=save_interval,
        sources=[str(Path(p).resolve()) for p in traj_paths], molecules=molecules, topologies=topologies,
        temperature_K=temps.pop() if len(temps) == 1 else None, split=split_desc,
        engine="+".join(sorted(engines)), has_forces=bool(has_forces),
    )
    with atomic_path(out_file, suffix=".npz") as tmp:
        np.savez(tmp, windows=windows, split=codes, spec=np.array(json.dumps(spec.__dict__)))
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


class KStepDataset:
    """Windows of a dataset file, restricted to one split, read lazily from memory maps."""

    def __init__(self, dataset_file: str | Path, split: str | Path | None = None):
        self.path = Path(dataset_file)
        if not self.path.is_file():
            raise MdkstepError(f"{self.path}: dataset file not found (run src/02_make_dataset.py)")
        with np.load(self.path) as z:
            for key in ("windows", "split", "spec"):
                if key not in z.files:
                    raise MdkstepError(f"{self.path}: missing key '{key}' (not a k-step dataset)")
            windows, codes = z["windows"], z["split"]
            self.spec = DatasetSpec(**json.loads(str(z["spec"])))
        if split is not None:
            name = self._split_name(split)
            windows = windows[codes == SPLITS.index(name)]
        self.windows = windows
        self._maps: dict[int, dict[str, np.ndarray]] = {}

    @staticmethod
    def _split_name(split: str | Path) -> str:
        s = str(split)
        if s in SPLITS:
            return s
        p = Path(s)
        if not p.is_file():
            raise MdkstepError(f"{p}: split file not found")
        name = json.loads(p.read_text()).get("split")
        if name not in SPLITS:
            raise MdkstepError(f"{p}: key 'split' must be one of {list(SPLITS)}")
        return name

    @property
    def k(self) -> int:
        return self.spec.k

    def __len__(self) -> int:
        return len(self.windows)

    def _traj(self, ti: int) -> dict[str, np.ndarray]:
        if ti not in self._maps:
            src = self.spec.sources[ti]
            if not Path(src).is_file():
                raise MdkstepError(f"{self.path}: source trajectory {src} is missing")
            self._maps[ti] = memmap_npz(src, ("positions", "velocities", "forces", "atom_types", "masses"))
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
            out.append(WindowBatch(
                molecule=name, z=np.array(m["atom_types"], dtype=int), masses=masses,
                x0=x0, v0=v0, x1=x1, v1=v1,
                f0=np.asarray(m["forces"][t0]) if has_f else None, f1=np.asarray(m["forces"][t1]) if has_f else None,
                topology=self.spec.topologies[name],
            ))
        return out

    def iter_batches(self, batch_size: int, shuffle: bool, rng: np.random.Generator | None = None,
                     drop_last: bool = False) -> Iterator[list[WindowBatch]]:
        """Mini-batches of ``batch_size`` windows (possibly several molecules each)."""
        n = len(self)
        order = (rng or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
        for s in range(0, n, batch_size):
            chunk = order[s:s + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            yield self.batches(chunk)
