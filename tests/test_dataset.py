"""Stage 02: k-step windows are exactly right and never cross a trajectory or a time gap."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_script
from mdkstep.data.windows import KStepDataset, build_dataset, read_dataset_file, subset_dataset, valid_starts
from mdkstep.molecule.topology import infer_bonds
from mdkstep.trajectory import Trajectory, save_trajectory
from mdkstep.utils import MdkstepError

META = {"dt_fs": 2.0, "save_interval": 1, "engine": "test", "method": "synthetic", "temperature_K": 300.0,
        "friction": 0.0, "seed": 0, "smiles": "O", "constraints": "none"}


def _synthetic(path, molecule: str, n_frames: int, base: float, time_ps=None, **meta):
    """Water-like 3-atom trajectory whose frame t has positions encoding (base + t); ``meta``
    overrides metadata keys (e.g. dt_fs)."""
    t = np.arange(n_frames, dtype=float)
    pos = np.zeros((n_frames, 3, 3))
    pos[:, 1, 0] = 0.1
    pos[:, 2, 1] = 0.1
    pos += (base + t)[:, None, None] * 1e-3  # a rigid translation per frame: COM-centring removes it
    pos[:, 1, 0] += (base + t) * 1e-4  # the O-H1 bond length encodes the frame
    vel = np.broadcast_to((base + t)[:, None, None], (n_frames, 3, 3)).copy()
    vel[:, 0] *= -1.0
    tr = Trajectory(positions=pos, velocities=vel, energies=t.copy(), temperature=np.full(n_frames, 300.0),
                    atom_types=np.array([8, 1, 1]), masses=np.array([16.0, 1.0, 1.0]),
                    time_ps=time_ps if time_ps is not None else (t + 1) * 0.002,
                    metadata={**META, "molecule": molecule, **meta}, forces=-pos.copy())
    save_trajectory(path, tr)
    return path


def test_windows_exact_and_within_trajectory(tmp_path):
    a = _synthetic(tmp_path / "a.npz", "molA", 50, 0.0)
    b = _synthetic(tmp_path / "b.npz", "molB", 30, 1000.0)
    summary = build_dataset([a, b], k=4, out_file=tmp_path / "d.npz", split="time", fractions=(1.0, 0.0, 0.0))
    assert summary["n_windows"] == (50 - 4) + (30 - 4)
    ds = KStepDataset(tmp_path / "d.npz")
    wbs = ds.batches(np.arange(len(ds)))
    assert len(wbs) == 2
    for w, base in zip(wbs, (0.0, 1000.0)):
        # the O-H1 bond length encodes the frame: end frame is start + k
        r0 = np.linalg.norm(w.x0[:, 1] - w.x0[:, 0], axis=-1)
        r1 = np.linalg.norm(w.x1[:, 1] - w.x1[:, 0], axis=-1)
        t0 = np.round((r0 - 0.1) / 1e-4 - base)
        t1 = np.round((r1 - 0.1) / 1e-4 - base)
        assert np.array_equal(t1 - t0, np.full_like(t0, 4))
        assert np.allclose(np.einsum("bij,i->bj", w.x0, w.masses), 0)  # COM-centred
        assert np.allclose(np.einsum("bij,i->bj", w.v0, w.masses), 0)  # COM velocity removed
        assert w.f0 is not None and w.f0.shape == w.x0.shape


def test_time_gap_is_never_straddled():
    time_ps = np.r_[np.arange(1, 11) * 0.002, 0.1 + np.arange(1, 11) * 0.002]  # a gap after frame 9
    starts = valid_starts(time_ps, offset=3, stride=1, dt_save_ps=0.002)
    assert all(not (s <= 9 < s + 3) for s in starts)
    assert len(starts) == (10 - 3) * 2


def test_molecule_split_is_disjoint(tmp_path):
    paths = [_synthetic(tmp_path / f"m{i}.npz", f"mol{i}", 20, 10.0 * i) for i in range(5)]
    rc = load_script("02_make_dataset").main(["--md-root", str(tmp_path), "--pattern", "m*.npz", "--out-root",
                                              str(tmp_path / "ds"), "--splits-dir", str(tmp_path / "sp"), "--ks", "2", "4"])
    assert rc == 0
    mols = {s: json.loads((tmp_path / "sp" / f"{s}.json").read_text())["molecules"] for s in ("train", "val", "test")}
    assert not (set(mols["train"]) & set(mols["test"])) and not (set(mols["train"]) & set(mols["val"]))
    assert sorted(sum(mols.values(), [])) == [f"mol{i}" for i in range(5)]
    for split, names in mols.items():
        ds = KStepDataset(tmp_path / "ds" / "dataset_k4.npz", tmp_path / "sp" / f"{split}.json")
        assert {ds.spec.molecules[t] for t in np.unique(ds.windows[:, 0])} == set(names)
    assert len(paths) == 5


def test_k_not_multiple_of_save_interval(tmp_path):
    p = tmp_path / "a.npz"
    _synthetic(p, "molA", 20, 0.0)
    d = np.load(p)
    arrays = {k: d[k] for k in d.files}
    meta = json.loads(str(arrays["metadata"]))
    meta["save_interval"] = 2
    arrays["metadata"] = np.array(json.dumps(meta))
    np.savez(p, **arrays)
    with pytest.raises(MdkstepError, match="k=3 is not a multiple of save_interval=2"):
        build_dataset([p], k=3, out_file=tmp_path / "d.npz", split="time")


# ----------------------------------------------------------------- stale or damaged inputs

def _one_source_dataset(tmp_path):
    a = _synthetic(tmp_path / "md" / "a.npz", "molA", 50, 0.0)
    build_dataset([a], k=4, out_file=tmp_path / "d.npz", split="time", fractions=(1.0, 0.0, 0.0))
    return a


def test_sources_are_fingerprinted(tmp_path):
    a = _one_source_dataset(tmp_path)
    fp = KStepDataset(tmp_path / "d.npz").spec.source_fingerprints[0]
    assert fp["n_frames"] == 50 and fp["dt_fs"] == 2.0 and fp["save_interval"] == 1
    assert fp["size_bytes"] == a.stat().st_size and len(fp["sha256"]) == 64


def test_rerun_of_stage01_at_another_dt_is_refused(tmp_path):
    a = _one_source_dataset(tmp_path)
    _synthetic(a, "molA", 100, 0.0, time_ps=np.arange(1, 101) * 0.001, dt_fs=1.0)  # 01 rerun at 1 fs
    with pytest.raises(MdkstepError, match=r"a.npz: source trajectory changed since .*d.npz was built "
                                           r"\(dt_fs 2.0 -> 1.0, n_frames 50 -> 100, size_bytes \d+ -> \d+\); rebuild"):
        KStepDataset(tmp_path / "d.npz")


def test_same_size_content_change_is_refused(tmp_path):
    a = _one_source_dataset(tmp_path)
    _synthetic(a, "molA", 50, 7.0)  # same shapes and size, other numbers
    with pytest.raises(MdkstepError, match=r"a.npz: source trajectory changed .*\(content \(SHA-256\)\)"):
        KStepDataset(tmp_path / "d.npz", "train")


def test_truncated_source_is_a_one_line_error(tmp_path):
    a = _one_source_dataset(tmp_path)
    a.write_bytes(a.read_bytes()[:1000])
    with pytest.raises(MdkstepError, match=r"a.npz: source trajectory changed .*\(now not a readable NPZ, size_bytes \d+ -> 1000\)"):
        KStepDataset(tmp_path / "d.npz")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_dataset_file_is_a_one_line_error(tmp_path, keep):
    _one_source_dataset(tmp_path)
    d = tmp_path / "d.npz"
    d.write_bytes(d.read_bytes()[:int(d.stat().st_size * keep)])
    with pytest.raises(MdkstepError, match=r"d.npz: not a readable k-step dataset \(.+\); rebuild it"):
        KStepDataset(d)


def test_data_tree_can_move(tmp_path):
    _one_source_dataset(tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")
    ds = KStepDataset(tmp_path / "new" / "d.npz")
    assert len(ds.batches(np.arange(3))[0].x0) == 3


def test_subset_dataset_keeps_the_chosen_windows_and_its_sources(tmp_path):
    """A subset written one folder deeper still finds its trajectories (sources re-pointed)."""
    a = _synthetic(tmp_path / "md" / "a.npz", "molA", 40, 0.0)
    build_dataset([a], k=2, out_file=tmp_path / "data" / "d.npz", split="time")
    windows, codes, _ = read_dataset_file(tmp_path / "data" / "d.npz")
    keep = np.array([0, 5, 30])
    subset_dataset(tmp_path / "data" / "d.npz", tmp_path / "sub" / "deeper" / "s.npz", keep)
    w2, c2, spec = read_dataset_file(tmp_path / "sub" / "deeper" / "s.npz")
    assert np.array_equal(w2, windows[keep]) and np.array_equal(c2, codes[keep])
    assert spec.sources == ["../../md/a.npz"]
    ds = KStepDataset(tmp_path / "sub" / "deeper" / "s.npz")
    assert len(ds) == 3 and len(ds.batches(np.arange(3))[0].x0) == 3


def test_output_folder_checked_before_any_work(tmp_path, monkeypatch):
    _synthetic(tmp_path / "m0.npz", "mol0", 20, 0.0)
    (tmp_path / "blocker").write_text("a file, not a folder")
    import mdkstep.cli.dataset as cli

    mod = load_script("02_make_dataset")
    monkeypatch.setattr(cli, "build_dataset", lambda *a, **k: pytest.fail("built before the output check"))
    with pytest.raises(MdkstepError, match=r"blocker/ds: --out-root is not writable \(Not a directory\)"):
        mod.main(["--md-root", str(tmp_path), "--pattern", "m*.npz", "--out-root", str(tmp_path / "blocker" / "ds"),
                  "--splits-dir", str(tmp_path / "sp"), "--ks", "2", "--split", "time"])


def test_infer_bonds_on_aspirin():
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    known = sorted(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in mol.GetBonds())
    bonds = infer_bonds(z, mol.GetConformer().GetPositions() / 10.0)  # Angstrom -> nm
    assert bonds.dtype == np.int64 and bonds.shape == (21, 2)
    assert bonds.tolist() == known  # sorted pairs i < j, exactly the SMILES graph
    assert infer_bonds(np.array([8]), np.zeros((1, 3))).shape == (0, 2)
