"""Rollout levers of issue 11 (training.py / dataset.py / model config), each off by default:
input noise, time-reversed windows, the per-element kinetic-energy term, the two-jump
unrolled loss, and the direct-velocity model output. One contract test per lever, plus a
short training run with all of them on."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mdkstep.model.checkpoint import check_compatible
from mdkstep.data.windows import (KStepDataset, WindowBatch, add_input_noise, build_dataset, collate,
                             time_reverse_windows, write_split_files)
from mdkstep.model import ModelConfig
from mdkstep.trajectory import Trajectory, save_trajectory
from mdkstep.training.trainer import (TrainConfig, augment_windows, compute_loss, per_element_ke_loss, train,
                              training_loss)
from mdkstep.utils import MdkstepError
from test_model import batch_of, make_model, random_molecule, random_orthogonal, rel_err

F64 = torch.float64
TOPO = {"bonds": [[0, 1], [1, 2], [2, 3]], "angles": [[0, 1, 2], [1, 2, 3]], "dihedrals": [[0, 1, 2, 3]]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ exact harmonic windows

def harmonic_flow(x: np.ndarray, v: np.ndarray, omega: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow of the isotropic oscillator x'' = -omega^2 x over time tau (ps): nm, nm/ps."""
    c, s = np.cos(omega * tau), np.sin(omega * tau)
    return x * c + v * s / omega, -x * omega * s + v * c


def harmonic_windows(n_windows: int = 5, omega: float = 30.0, tau: float = 0.016, masses=None,
                     two: bool = False, seed: int = 0) -> WindowBatch:
    """Exact k-windows (two-jump windows when ``two``) of 4 atoms in x'' = -omega^2 x, COM-free;
    forces m * (-omega^2 x) in kJ/(mol nm)."""
    rng = np.random.default_rng(seed)
    m = np.array([12.0, 1.0, 16.0, 1.0]) if masses is None else np.asarray(masses)
    com_free = lambda a: a - (np.einsum("bij,i->bj", a, m) / m.sum())[:, None]  # noqa: E731
    x0, v0 = com_free(rng.normal(0, 0.1, (n_windows, 4, 3))), com_free(rng.normal(0, 1.0, (n_windows, 4, 3)))
    x1, v1 = harmonic_flow(x0, v0, omega, tau)
    f = lambda x: -m[:, None] * omega**2 * x  # noqa: E731
    wb = WindowBatch("osc", np.array([6, 1, 8, 1]), m, x0, v0, x1, v1, f(x0), f(x1), TOPO)
    if two:
        x2, v2 = harmonic_flow(x1, v1, omega, tau)
        wb = replace(wb, x2=x2, v2=v2, f2=f(x2))
    return wb


# ------------------------------------------------------------------------- (b) time reversal

def test_time_reversal_of_an_exact_window_is_an_exact_window():
    omega, tau = 30.0, 0.016
    wb = harmonic_windows(omega=omega, tau=tau)
    mask = np.array([True, False, True, True, False])
    rev = time_reverse_windows(wb, mask)
    x1, v1 = harmonic_flow(rev.x0, rev.v0, omega, tau)  # the exact flow from the reversed start
    assert np.allclose(x1, rev.x1, atol=1e-12) and np.allclose(v1, rev.v1, atol=1e-12)
    assert np.allclose(rev.x0[mask], wb.x1[mask]) and np.allclose(rev.v0[mask], -wb.v1[mask])
    assert np.allclose(rev.f0[mask], wb.f1[mask]) and np.allclose(rev.f1[mask], wb.f0[mask])  # forces even
    assert np.allclose(rev.f0, -wb.masses[:, None] * omega**2 * rev.x0)  # the input force is that of the input
    for key in ("x0", "v0", "x1", "v1", "f0", "f1"):  # unselected windows untouched
        assert np.array_equal(getattr(rev, key)[~mask], getattr(wb, key)[~mask])
    u = replace(wb, u0=np.arange(5.0), u1=np.arange(5.0) + 10)  # potential energies swap with their frames
    ru = time_reverse_windows(u, mask)
    assert np.array_equal(ru.u0, np.where(mask, u.u1, u.u0)) and np.array_equal(ru.u1, np.where(mask, u.u0, u.u1))
    again = time_reverse_windows(rev, mask)  # an involution
    assert all(np.allclose(getattr(again, k), getattr(wb, k)) for k in ("x0", "v0", "x1", "v1", "f0", "f1"))


def test_time_reversal_of_a_two_jump_window_runs_t2_t1_t0():
    omega, tau = 30.0, 0.016
    wb = harmonic_windows(omega=omega, tau=tau, two=True)
    rev = time_reverse_windows(wb, np.ones(5, dtype=bool))
    assert np.allclose(rev.x0, wb.x2) and np.allclose(rev.x1, wb.x1) and np.allclose(rev.x2, wb.x0)
    for a, b in (("x0", "x1"), ("x1", "x2")):
        va, vb = a.replace("x", "v"), b.replace("x", "v")
        xe, ve = harmonic_flow(getattr(rev, a), getattr(rev, va), omega, tau)
        assert np.allclose(xe, getattr(rev, b), atol=1e-12) and np.allclose(ve, getattr(rev, vb), atol=1e-12)


def test_time_reversal_needs_the_forces_at_t_plus_k():
    wb = replace(harmonic_windows(), f1=None)
    with pytest.raises(MdkstepError, match="forces at t\\+k"):
        time_reverse_windows(wb, np.ones(5, dtype=bool))


# --------------------------------------------------------------------------- (a) input noise

def test_noise_is_applied_to_the_inputs_only():
    wb = harmonic_windows(n_windows=400)
    noisy = add_input_noise(wb, 0.01, 0.5, np.random.default_rng(1))
    for key in ("x1", "v1", "f0", "f1"):
        assert np.array_equal(getattr(noisy, key), getattr(wb, key)), key
    dx, dv = noisy.x0 - wb.x0, noisy.v0 - wb.v0
    assert 0.009 < dx.std() < 0.011 and 0.45 < dv.std() < 0.55
    assert np.allclose(np.einsum("bij,i->bj", dx, wb.masses), 0) and np.allclose(np.einsum("bij,i->bj", dv, wb.masses), 0)
    gb, tg = collate([noisy], use_forces=True, dtype=F64)
    _, tg_clean = collate([wb], use_forces=True, dtype=F64)
    assert torch.equal(tg.x1, tg_clean.x1)  # the targets stay the clean x_{t+k}
    assert torch.allclose(gb.pos + tg.dx, tg.x1) and torch.allclose(gb.vel + tg.dv, torch.as_tensor(wb.v1.reshape(-1, 3)))


def test_levers_off_change_nothing_and_draw_no_random_number():
    wb = harmonic_windows()
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    out = augment_windows([wb], TrainConfig(), {"dx_scale": 0.01, "dv_scale": 1.0}, rng)
    assert out[0] is wb and rng.random() == ref.random()


def test_relative_noise_scales_with_the_data():
    from mdkstep.training.trainer import noise_sigmas

    cfg = TrainConfig(input_noise_x=0.1, input_noise_v=0.2)
    assert noise_sigmas(cfg, {"dx_scale": 0.02, "dv_scale": 3.0}) == pytest.approx((0.002, 0.6))
    cfg = TrainConfig(input_noise_x=0.1, input_noise_v=0.2, input_noise_units="absolute")
    assert noise_sigmas(cfg, {"dx_scale": 0.02, "dv_scale": 3.0}) == (0.1, 0.2)
    with pytest.raises(ValueError, match="input_noise_units"):
        TrainConfig(input_noise_units="percent").validate()


# --------------------------------------------------------------- (c) per-element kinetic energy

def test_per_element_ke_term_zero_when_perfect_positive_when_h_is_heated():
    rng = np.random.default_rng(0)
    z = torch.tensor([6, 1, 1, 1, 8, 1, 6, 1] * 4)
    m = torch.tensor([{1: 1.008, 6: 12.011, 8: 15.999}[int(a)] for a in z], dtype=F64)
    v = torch.as_tensor(rng.normal(size=(len(z), 3)), dtype=F64) / m.sqrt().unsqueeze(-1)
    assert float(per_element_ke_loss(z, m, v, v)) == 0.0
    h = (z == 1).unsqueeze(-1)
    ke = lambda u, sel: float((0.5 * m * (u**2).sum(-1))[sel].sum())  # noqa: E731
    k_h, k_heavy = ke(v, h[:, 0]), ke(v, ~h[:, 0])
    a = 1.2  # heat H by a^2 and cool heavy atoms so that the total kinetic energy is unchanged
    b = np.sqrt((k_h + k_heavy - a**2 * k_h) / k_heavy)
    hot = torch.where(h, a * v, b * v)
    assert ke(hot, slice(None)) == pytest.approx(k_h + k_heavy)
    term = float(per_element_ke_loss(z, m, hot, v))
    assert term > 0.01
    # in compute_loss: zero weight -> no part; a weight -> the part, with a perfect prediction zero
    gb = batch_of([random_molecule(8, 1)])
    out = {"dx": torch.zeros_like(gb.pos), "dv": torch.zeros_like(gb.vel), "dx_norm": torch.zeros_like(gb.pos),
           "dv_norm": torch.zeros_like(gb.vel)}
    _, tg = _targets_for(gb, torch.zeros_like(gb.pos), torch.zeros_like(gb.vel))
    scales = {"dx_scale": 1.0, "dv_scale": 1.0, "f_scale": 1.0}
    assert "ke_element" not in compute_loss(out, gb, tg, TrainConfig(), scales)[1]
    assert compute_loss(out, gb, tg, TrainConfig(lambda_ke_element=1.0), scales)[1]["ke_element"] == 0.0



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

def _targets_for(gb, dx: torch.Tensor, dv: torch.Tensor, x2=None, v2=None):
    from mdkstep.data.windows import Targets

    return gb, Targets(dx=dx, dv=dv, x1=gb.pos + dx, f1=gb.forces, bonds=gb.bond_index.T.contiguous(),
                       angles=torch.zeros((0, 3), dtype=torch.long), dihedrals=torch.zeros((0, 4), dtype=torch.long),
                       x2=x2, v2=v2)


# ------------------------------------------------------------------------- (d) two-jump loss

@pytest.mark.parametrize("use_forces", [True, False])
def test_two_jump_loss_equals_one_jump_loss_when_the_second_jump_is_exact(use_forces):
    """Targets at t+2k = the model's own second jump from its first (F_{t+k} teacher-forced):
    the second jump's loss is zero and the two-jump loss is the one-jump loss."""
    model = make_model("egnn", use_forces=use_forces, force_head=False)
    gb = batch_of([random_molecule(7, 2), random_molecule(5, 3)])
    rng = np.random.default_rng(4)
    dx_t = torch.as_tensor(rng.normal(0, 0.02, gb.pos.shape))
    dv_t = torch.as_tensor(rng.normal(0, 1.0, gb.vel.shape))
    _, tg = _targets_for(gb, dx_t, dv_t)
    scales = {"dx_scale": 0.05, "dv_scale": 1.5, "f_scale": 300.0}
    cfg1, cfg2 = TrainConfig(), TrainConfig(unroll_jumps=2, lambda_jump2=0.7)
    with torch.no_grad():
        out1 = model(gb)
        gb2 = replace(gb, pos=gb.pos + out1["dx"], vel=gb.vel + out1["dv"], forces=tg.f1 if use_forces else None)
        out2 = model(gb2)
    tg = replace(tg, x2=gb2.pos + out2["dx"], v2=gb2.vel + out2["dv"])
    one, _ = training_loss(model, gb, tg, cfg1, scales, use_forces)
    two, parts = training_loss(model, gb, tg, cfg2, scales, use_forces)
    one, two = float(one.detach()), float(two.detach())
    assert one > 0.1
    assert two == pytest.approx(one, rel=1e-9, abs=1e-12)
    assert parts["j2_dx"] == pytest.approx(0.0, abs=1e-10) and parts["j2_bond"] == pytest.approx(0.0, abs=1e-8)
    # a wrong second-jump target makes it larger, and gradients reach the first jump through x_t + dx
    tg_bad = replace(tg, x2=tg.x2 + 0.01)
    model.zero_grad()
    bad, _ = training_loss(model, gb, tg_bad, cfg2, scales, use_forces)
    assert float(bad.detach()) > one
    bad.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_two_jump_needs_two_jump_windows():
    model = make_model("egnn", force_head=False)
    gb = batch_of([random_molecule(5, 3)])
    _, tg = _targets_for(gb, torch.zeros_like(gb.pos), torch.zeros_like(gb.vel))
    with pytest.raises(MdkstepError, match="two-jump windows"):
        training_loss(model, gb, tg, TrainConfig(unroll_jumps=2), {"dx_scale": 1, "dv_scale": 1, "f_scale": 1}, True)


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


# ----------------------------------------------------------------------- (e) v(t+k) directly

@pytest.mark.parametrize("arch", ["egnn", "transformer_egnn"])
@pytest.mark.parametrize("det", [1.0, -1.0])
def test_direct_velocity_output_is_equivariant_and_conserves_momentum(arch, det):
    model = make_model(arch, velocity_output="direct", conserve_angular_momentum=True)
    mol = random_molecule(10, 5)
    q = random_orthogonal(3, det)
    moved = dict(mol, pos=mol["pos"] @ q.T + 1.0, vel=mol["vel"] @ q.T, forces=mol["forces"] @ q.T)
    with torch.no_grad():
        out, out_m = model(batch_of([mol])), model(batch_of([moved]))
    qt = torch.as_tensor(q)
    for key in ("dx", "dv", "forces"):
        assert rel_err(out_m[key], out[key] @ qt.T) < 1e-6, key
    m = torch.as_tensor(mol["masses"]).unsqueeze(-1)
    assert float((m * out["dv"]).sum(0).abs().max()) < 1e-9 * float((m * out["dv"].abs()).sum())
    delta = make_model(arch, velocity_output="delta", conserve_angular_momentum=True)
    with torch.no_grad():
        assert not torch.allclose(delta(batch_of([mol]))["dv"], out["dv"])  # same weights, another meaning


def test_direct_velocity_output_with_a_zero_channel_means_at_rest():
    """The direct head's zero is v(t+k) = 0 (dv = -v_t, COM-free), the delta head's is dv = 0."""
    model = make_model("egnn", velocity_output="direct", force_head=False)
    gb = batch_of([random_molecule(6, 1)])
    p = model.prepare(gb)
    dv = model.velocity_change(torch.zeros_like(gb.vel), p)
    assert torch.allclose(dv, -gb.vel)
    delta = make_model("egnn", force_head=False)
    assert torch.equal(delta.velocity_change(torch.zeros_like(gb.vel), delta.prepare(gb)), torch.zeros_like(gb.vel))


def test_velocity_output_in_checkpoints_old_ones_mean_delta():
    old = {"k": 8, "model_config": {"arch": "egnn", "hidden": 64}}  # written before the option
    check_compatible(old, "old.pt", model_config=ModelConfig(hidden=64))
    with pytest.raises(MdkstepError, match="velocity_output"):
        check_compatible(old, "old.pt", model_config=ModelConfig(hidden=64, velocity_output="direct"))
    with pytest.raises(ValueError, match="velocity_output"):
        ModelConfig(velocity_output="absolute").validate()


# ------------------------------------------------------------------------ all levers, trained

def test_training_with_every_lever_on(tmp_path):
    _trajectory(tmp_path / "md" / "osc" / "replica_0.npz", 400)
    summary = build_dataset([tmp_path / "md" / "osc" / "replica_0.npz"], k=4, out_file=tmp_path / "d.npz", split="time")
    write_split_files(tmp_path / "splits", summary, [str(tmp_path / "d.npz")])
    cfg = TrainConfig(k=4, epochs=5, max_steps=6, batch_size=16, lr=1e-3, warmup_steps=1, eval_every=3,
                      val_max_windows=32, metrics_max_windows=32, norm_max_windows=64, log_every=3,
                      input_noise_x=0.1, input_noise_v=0.1, time_reverse_prob=0.5, lambda_ke_element=0.1,
                      unroll_jumps=2)
    mcfg = ModelConfig(hidden=16, n_layers=2, cutoff_nm=None, use_forces=True, velocity_output="direct")
    res = train(tmp_path / "d.npz", (tmp_path / "splits" / "train.json", tmp_path / "splits" / "val.json"), mcfg,
                cfg, tmp_path / "run", device_name="cpu", progress=False, test_split=tmp_path / "splits" / "test.json")
    assert res["steps"] == 6
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train_ke_element" in header and "train_j2_dx" in header
    assert "model" in res["final_metrics"]["test"]
    from mdkstep.model.checkpoint import model_from_checkpoint

    model, ck = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert model.config.velocity_output == "direct" and ck["train_config"]["unroll_jumps"] == 2
