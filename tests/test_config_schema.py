"""Config loading and the trajectory NPZ contract."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mdkstep.config import load_config
from mdkstep.baselines.openmm_md import MDConfig
from mdkstep.trajectory import Trajectory, load_trajectory, save_trajectory
from mdkstep.utils import MdkstepError, atomic_write_text, parse_shard, remove_com


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "md.yaml"
    p.write_text("dt_fs: 2.0\nbogus_key: 3\n")
    with pytest.raises(MdkstepError, match=r"md.yaml: unknown key 'bogus_key'"):
        load_config(MDConfig, p)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "md.yaml"
    p.write_text("dt_fs: fast\n")
    with pytest.raises(MdkstepError, match=r"key 'dt_fs': expected a number"):
        load_config(MDConfig, p)


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "md.yaml"
    p.write_text("dt_fs: 2.0\n  bad: [\n")
    with pytest.raises(MdkstepError, match=r"md.yaml: line \d+"):
        load_config(MDConfig, p)


def test_overrides_merge(tmp_path):
    p = tmp_path / "md.yaml"
    p.write_text("dt_fs: 2.0\nproduction_ps: 5\n")
    cfg = load_config(MDConfig, p, {"production_ps": 7.0, "seed_unused": None}, ["constraints=none"])
    assert cfg.production_ps == 7.0 and cfg.constraints == "none" and cfg.dt_fs == 2.0


def test_validate_rejects_bad_value(tmp_path):
    p = tmp_path / "md.yaml"
    p.write_text("constraints: allbonds\n")
    with pytest.raises(MdkstepError, match="constraints"):
        load_config(MDConfig, p)


def test_shard_parsing():
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(MdkstepError):
        parse_shard("4/4")


def test_remove_com_zero():
    rng = np.random.default_rng(0)
    x, m = rng.normal(size=(5, 7, 3)), rng.uniform(1, 16, size=7)
    assert np.allclose(np.einsum("fij,i->fj", remove_com(x, m), m), 0)


def _traj(n_frames=4, n_atoms=3) -> Trajectory:
    rng = np.random.default_rng(1)
    meta = {k: 0 for k in ("dt_fs", "save_interval", "engine", "method", "temperature_K", "friction",
                           "seed", "molecule", "smiles", "constraints")}
    return Trajectory(
        positions=rng.normal(size=(n_frames, n_atoms, 3)), velocities=rng.normal(size=(n_frames, n_atoms, 3)),
        energies=rng.normal(size=n_frames), temperature=np.full(n_frames, 300.0),
        atom_types=np.array([6, 1, 8])[:n_atoms], masses=np.array([12.0, 1.0, 16.0])[:n_atoms],
        time_ps=np.arange(1, n_frames + 1) * 0.002, metadata=meta, forces=rng.normal(size=(n_frames, n_atoms, 3)),
    )


def test_roundtrip(tmp_path):
    t = _traj()
    save_trajectory(tmp_path / "t.npz", t)
    u = load_trajectory(tmp_path / "t.npz")
    assert np.array_equal(u.positions, t.positions) and u.metadata == t.metadata and u.forces is not None


@pytest.mark.parametrize("key,value,msg", [
    ("positions", None, "missing key 'positions'"),
    ("energies", np.zeros(3), "key 'energies' has shape"),
    ("velocities", "nan", "key 'velocities' has non-finite"),
    ("metadata", "bad-json", "key 'metadata' is not valid JSON"),
])
def test_corrupted_npz_names_key(tmp_path, key, value, msg):
    t = _traj()
    arrays = t.arrays()
    arrays["metadata"] = np.array(json.dumps(t.metadata))
    if value is None:
        arrays.pop(key)
    elif isinstance(value, str) and value == "nan":
        arrays[key] = arrays[key].copy()
        arrays[key][2, 1, 0] = np.nan
    elif isinstance(value, str):
        arrays[key] = np.array("{not json")
    else:
        arrays[key] = value
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MdkstepError, match=rf"bad.npz: {msg}"):
        load_trajectory(tmp_path / "bad.npz")


def test_truncated_file_is_rejected(tmp_path):
    save_trajectory(tmp_path / "t.npz", _traj())
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(MdkstepError, match=r"t.npz: not a readable NPZ"):
        load_trajectory(tmp_path / "t.npz")


def test_atomic_write_leaves_no_partial(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    with pytest.raises(RuntimeError):
        from mdkstep.utils import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert target.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_set_override_reads_exponent_numbers():
    from mdkstep.config import parse_override

    assert parse_override("lr=1e-3") == ("lr", 1e-3)  # YAML 1.1 alone would give the string '1e-3'
    assert parse_override("ensemble=nve") == ("ensemble", "nve")
    assert parse_override("k=4") == ("k", 4)
