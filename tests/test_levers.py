"""Training levers: the one left in the trainer (the mass-weighted velocity term, off by
default), the dataset's two-jump windows, and the removed levers (input noise, time reversal,
per-element KE term, two-jump loss, velocity_output, exact mode's abs penalty, midpoint force
matching, grow_members): a config that holds one at its old default still reads (YAML or stored
in a checkpoint), any other value is a one-line error."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from helpers import batch_of, make_model, random_molecule

from mdkstep.config import from_dict, load_config
from mdkstep.data.windows import KStepDataset, build_dataset, collate
from mdkstep.exact.onpolicy import OnPolicyStage
from mdkstep.exact.train import ExactTrainConfig
from mdkstep.model import ModelConfig
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint, save_checkpoint
from mdkstep.training.trainer import TrainConfig, check_resume_settings, compute_loss
from mdkstep.trajectory import Trajectory, save_trajectory
from mdkstep.utils import MdkstepError

F64 = torch.float64
TOPO = {"bonds": [[0, 1], [1, 2], [2, 3]], "angles": [[0, 1, 2], [1, 2, 3]], "dihedrals": [[0, 1, 2, 3]]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def harmonic_flow(x: np.ndarray, v: np.ndarray, omega: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow of the isotropic oscillator x'' = -omega^2 x over time tau (ps): nm, nm/ps."""
    c, s = np.cos(omega * tau), np.sin(omega * tau)
    return x * c + v * s / omega, -x * omega * s + v * c


# ------------------------------------------------------------------------- removed levers

#: every removed key of each config class, with a value other than its old default
REMOVED_NON_DEFAULT = {
    TrainConfig: {"input_noise_x": 0.1, "input_noise_v": 0.1, "input_noise_units": "absolute",
                  "time_reverse_prob": 0.5, "lambda_ke_element": 1.0, "unroll_jumps": 2, "lambda_jump2": 0.7},
    ModelConfig: {"velocity_output": "direct"},
    ExactTrainConfig: {"on_policy_loss": "abs", "lambda_mid_force": 1.0},
    OnPolicyStage: {"on_policy_loss": "abs", "lambda_mid_force": 1.0, "grow_members": 2},
}


@pytest.mark.parametrize("cls", list(REMOVED_NON_DEFAULT), ids=lambda c: c.__name__)
def test_removed_keys_read_at_their_old_default_and_are_refused_otherwise(cls):
    assert set(cls.REMOVED) == set(REMOVED_NON_DEFAULT[cls])
    assert not set(cls.REMOVED) & set(asdict(cls()))  # gone from the dataclass
    assert from_dict(cls, dict(cls.REMOVED), "old.yaml") == cls()  # old defaults: the same config
    for key, value in REMOVED_NON_DEFAULT[cls].items():
        with pytest.raises(MdkstepError, match=rf"^old.yaml: key '{key}' was removed .*{value!r}"):
            from_dict(cls, {key: value}, "old.yaml")
    with pytest.raises(MdkstepError, match="unknown key 'bogus'"):  # unknown keys stay errors
        from_dict(cls, {"bogus": 1}, "old.yaml")


def test_an_old_train_yaml_with_the_lever_block_still_loads(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text("k: 4\ninput_noise_x: 0.0\ninput_noise_v: 0.0\ninput_noise_units: relative\n"
                 "time_reverse_prob: 0.0\nlambda_ke_element: 0.0\nunroll_jumps: 1\nlambda_jump2: 1.0\n")
    assert load_config(TrainConfig, p) == TrainConfig(k=4)
    with pytest.raises(MdkstepError, match="key 'unroll_jumps' was removed"):
        load_config(TrainConfig, p, set_items=["unroll_jumps=2"])


def test_checkpoints_with_removed_keys_load_and_resume(tmp_path):
    """A checkpoint written before the removal (its stored configs hold every removed key at its
    default) loads, checks compatible and may be resumed; one trained with a removed lever on is
    refused in one line."""
    model = make_model("egnn")
    mcfg = model.config
    tcfg = TrainConfig(k=4)
    old_train = {**asdict(tcfg), **TrainConfig.REMOVED}
    payload = {"model_state": {k: v.float() for k, v in model.state_dict().items()},
               "model_config": {**asdict(mcfg), "velocity_output": "delta"}, "train_config": old_train, "k": 4}
    save_checkpoint(tmp_path / "old.pt", payload)
    back, ck = model_from_checkpoint(tmp_path / "old.pt", dtype=F64)
    gb = batch_of([random_molecule(6, 1)])
    model.load_state_dict(payload["model_state"])  # the same float32-rounded weights
    with torch.no_grad():
        assert torch.equal(back(gb)["dv"], model(gb)["dv"])
    check_compatible(ck, "old.pt", k=4, model_config=mcfg)
    check_resume_settings(ck, tcfg, tmp_path / "old.pt")
    with pytest.raises(MdkstepError, match="lr"):  # other changes are still refused
        check_resume_settings(ck, TrainConfig(k=4, lr=1.0), tmp_path / "old.pt")
    direct = dict(payload, model_config={**asdict(mcfg), "velocity_output": "direct"})
    save_checkpoint(tmp_path / "direct.pt", direct)
    with pytest.raises(MdkstepError, match="direct.pt: model_config: key 'velocity_output' was removed"):
        model_from_checkpoint(tmp_path / "direct.pt")
    with pytest.raises(MdkstepError, match="key 'velocity_output' was removed"):
        check_compatible(direct, "direct.pt", model_config=mcfg)
    noisy = dict(payload, train_config={**old_train, "input_noise_x": 0.1})
    with pytest.raises(MdkstepError, match="train_config: key 'input_noise_x' was removed"):
        check_resume_settings(noisy, tcfg, tmp_path / "noisy.pt")


# ------------------------------------------------------------- mass-weighted velocity term

def test_mass_weighted_dv_term_is_the_kinetic_energy_of_the_velocity_error():
    """dv_weight: mass weighs each atom's squared velocity error by m_i / mean m, so the term is
    proportional to sum_i 0.5 m_i |dv_err_i|^2 (the energy a jump injects); uniform is unchanged."""
    gb = batch_of([random_molecule(8, 1)])
    err = torch.as_tensor(np.random.default_rng(3).normal(size=gb.vel.shape), dtype=gb.vel.dtype)
    out = {"dx": torch.zeros_like(gb.pos), "dv": err, "dx_norm": torch.zeros_like(gb.pos), "dv_norm": err}
    _, tg = _targets_for(gb, torch.zeros_like(gb.pos), torch.zeros_like(gb.vel))
    scales = {"dx_scale": 1.0, "dv_scale": 1.0, "f_scale": 1.0}
    uniform = compute_loss(out, gb, tg, TrainConfig(), scales)[1]["dv"]
    mass = compute_loss(out, gb, tg, TrainConfig(dv_weight="mass"), scales)[1]["dv"]
    m = gb.masses
    assert uniform == pytest.approx(float((err**2).sum(-1).mean()))
    kinetic = float((0.5 * m * (err**2).sum(-1)).sum())
    assert mass == pytest.approx(2.0 * kinetic / float(m.sum()))
    with pytest.raises(ValueError, match="dv_weight"):
        TrainConfig(dv_weight="energy").validate()


def _targets_for(gb, dx: torch.Tensor, dv: torch.Tensor):
    from mdkstep.data.windows import Targets

    return gb, Targets(dx=dx, dv=dv, x1=gb.pos + dx, f1=gb.forces, bonds=gb.bond_index.T.contiguous(),
                       angles=torch.zeros((0, 3), dtype=torch.long), dihedrals=torch.zeros((0, 4), dtype=torch.long))


# ----------------------------------------------------------------------- two-jump windows

def _trajectory(path, n_frames: int, time_ps=None) -> None:
    """4 atoms on the exact harmonic flow (omega 30 /ps), a frame every 2 fs; forces."""
    omega, dt = 30.0, 0.002
    m = np.array([12.0, 1.0, 16.0, 1.0])
    rng = np.random.default_rng(0)
    x0 = rng.normal(0, 0.1, (4, 3))
    v0 = rng.normal(0, 1.0, (4, 3))
    x0 -= m @ x0 / m.sum()
    v0 -= m @ v0 / m.sum()
    t = np.arange(n_frames) * dt
    pos = np.stack([harmonic_flow(x0, v0, omega, ti)[0] for ti in t])
    vel = np.stack([harmonic_flow(x0, v0, omega, ti)[1] for ti in t])
    meta = {"dt_fs": 2.0, "save_interval": 1, "engine": "test", "method": "synthetic", "temperature_K": 300.0,
            "friction": 0.0, "seed": 0, "smiles": "C", "constraints": "none", "molecule": "osc"}
    save_trajectory(path, Trajectory(positions=pos, velocities=vel, energies=np.zeros(n_frames),
                                     temperature=np.full(n_frames, 300.0), atom_types=np.array([6, 1, 8, 1]),
                                     masses=m, time_ps=time_ps if time_ps is not None else t + dt, metadata=meta,
                                     forces=-m[:, None] * omega**2 * pos))
    (path.parent / "topology.json").write_text(json.dumps({"atomic_numbers": [6, 1, 8, 1], **TOPO}))


def test_two_jump_windows_from_an_unchanged_dataset_file(tmp_path):
    """with_jumps(2) reads the frame t+2k from the same index (the NPZ format is unchanged): only
    windows whose t+2k exists without a time gap, and x2 is exactly that frame."""
    time_ps = np.r_[np.arange(1, 31), 100 + np.arange(1, 21)] * 0.002  # a gap after frame 29
    _trajectory(tmp_path / "md" / "a.npz", 50, time_ps)
    build_dataset([tmp_path / "md" / "a.npz"], k=4, out_file=tmp_path / "d.npz", split="time", fractions=(1.0, 0.0, 0.0))
    ds = KStepDataset(tmp_path / "d.npz")
    two = ds.with_jumps(2)
    assert len(ds) == (30 - 4) + (20 - 4) and len(two) == (30 - 8) + (20 - 8)
    assert ds.jumps == 1 and ds.batches(np.arange(3))[0].x2 is None
    w = two.batches(np.arange(len(two)))[0]
    starts = two.windows[:, 1]
    raw = np.load(tmp_path / "md" / "a.npz")
    m = raw["masses"]
    com = lambda a: a - (np.einsum("bij,i->bj", a, m) / m.sum())[:, None]  # noqa: E731
    assert np.allclose(w.x2, com(raw["positions"][starts + 8])) and np.allclose(w.v2, com(raw["velocities"][starts + 8]))
    assert np.allclose(w.f2, raw["forces"][starts + 8])
    gb, tg = collate([w], use_forces=True, dtype=F64)
    assert tg.x2 is not None and tg.x2.shape == gb.pos.shape
