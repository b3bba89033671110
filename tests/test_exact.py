"""Exact mode (mdkstep.model.shear, mdkstep.exact.sampler, mdkstep.exact.train) on analytic engines:
volume preservation, reversibility, momentum, exact Boltzmann sampling with a poor model, and
training that lowers |dH|. Units: nm, ps, kJ/mol, amu, K."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import KT, T_K, DoubleWellDimer, MorseCluster, morse_states, random_kicks, tiny_config

from mdkstep.exact.sampler import ExactConfig, ShearJumper, engine_forces, init_chain, kinetic_energy, nve_config, run_exact
from mdkstep.exact.train import ExactTrainConfig, ExactWindows, fit_scales, teacher_forced_abs_dH, train_exact
from mdkstep.model.shear import (ShearKicks, graph_template, n_forwards_per_stride, outer_kick,
                                 randomize_kick_heads_, shear_map, stride)

torch.set_num_threads(1)


# ------------------------------------------------------------------ analytic engines


# ------------------------------------------------------------------------- helpers


def morse_jumper(kicks: ShearKicks, tau: float) -> ShearJumper:
    return ShearJumper(kicks, MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, tau)


# -------------------------------------------------------------------------- the map

def test_zero_correction_is_velocity_verlet():
    eng, tau = MorseCluster(), 0.004
    kicks = ShearKicks(tiny_config()).double()
    j = morse_jumper(kicks, tau)
    x, v = morse_states(3, np.random.default_rng(0))
    st = init_chain(j, eng, x, v)
    x1, v1, u1, f1, _ = j.propose(eng, st.x, st.v, st.a)
    m = MorseCluster.MASSES[None, :, None]
    vh = v + 0.5 * tau * st.f / m
    xr = x + tau * vh
    ur, fr = engine_forces(eng, xr)
    assert np.abs(x1 - xr).max() < 1e-14 and np.abs(v1 - (vh + 0.5 * tau * fr / m)).max() < 1e-12
    assert np.allclose(u1, ur) and np.allclose(f1, fr)
    assert n_forwards_per_stride(kicks) == 2 and n_forwards_per_stride(ShearKicks(tiny_config(), 2)) == 4


def jacobian_of_map(kicks: ShearKicks, tau: float, seed: int = 1) -> torch.Tensor:
    """d Phi / d(x, v) (24, 24) of the Morse cluster at a thermal-like state, float64 autograd."""
    tmpl = graph_template(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS)
    x, v = (torch.tensor(a[0]) for a in morse_states(1, np.random.default_rng(seed)))

    def phi(z: torch.Tensor) -> torch.Tensor:
        x1, v1 = shear_map(kicks, tmpl, z[:12].view(4, 3), z[12:].view(4, 3), tau, MorseCluster.torch_forces)
        return torch.cat([x1.reshape(-1), v1.reshape(-1)])

    return torch.autograd.functional.jacobian(phi, torch.cat([x.reshape(-1), v.reshape(-1)]))


@pytest.mark.parametrize("n_inner,members", [(1, 1), (2, 1), (1, 2)])
def test_volume_preserving_for_random_corrections(n_inner, members):
    tau = 0.004
    kicks = random_kicks(tau, f_scale=100.0, gain=1.0, n_inner=n_inner, members=members)
    # the corrections are really there (else this would only test Verlet)
    tmpl = graph_template(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS)
    x = torch.tensor(morse_states(1, np.random.default_rng(1))[0][0])
    delta = kicks.delta_outer(tmpl, x, MorseCluster.torch_forces(x.clone())[1]).detach()
    assert delta.abs().max() > 0.05 * kicks.outer.dv_scale
    jac = jacobian_of_map(kicks, tau)
    assert abs(float(torch.linalg.det(jac)) - 1.0) < 1e-9
    assert (jac - torch.eye(24, dtype=jac.dtype)).abs().max() > 1e-2  # and a real map, far from identity


@pytest.mark.parametrize("members", [1, 2])
def test_reversible_and_momentum_conserving(members):
    eng, tau = MorseCluster(), 0.004
    kicks = random_kicks(tau, f_scale=100.0, gain=1.0, n_inner=2, members=members, conserve_angular_momentum=True)
    j = morse_jumper(kicks, tau)
    x, v = morse_states(4, np.random.default_rng(2))
    v += np.array([0.3, -0.2, 0.1])  # a non-zero total momentum, to be kept
    st = init_chain(j, eng, x, v)
    x1, v1, u1, f1, a1 = j.propose(eng, st.x, st.v, st.a)
    assert np.abs(x1 - x).max() > 1e-3  # it moved
    x2, v2, u2, _, _ = j.propose(eng, x1, -v1, a1)
    assert np.abs(x2 - x).max() < 1e-10 and np.abs(v2 + v).max() < 1e-10
    assert np.allclose(u2, st.u, rtol=0, atol=1e-9)
    m = MorseCluster.MASSES
    p0, p1 = np.einsum("i,rij->rj", m, v), np.einsum("i,rij->rj", m, v1)
    assert np.abs(p1 - p0).max() < 1e-11
    # zero torque from the corrections: L changes only through the (torque-free) real forces
    xc = x1 - np.einsum("i,rij->rj", m, x1)[:, None] / m.sum()
    ang = lambda xx, vv: np.einsum("i,rij->rj", m, np.cross(xx, vv))  # noqa: E731
    dv_kick = a1 - 0.5 * tau * f1 / m[None, :, None]
    assert np.abs(ang(xc, dv_kick)).max() < 1e-10


def test_torch_stride_matches_numpy_jumper_and_counts_one_call():
    eng, tau = MorseCluster(), 0.004
    kicks = random_kicks(tau, f_scale=100.0, gain=0.5)
    j = morse_jumper(kicks, tau)
    x, v = morse_states(2, np.random.default_rng(3))
    st = init_chain(j, eng, x, v)
    calls = eng.counters.calls
    x1, v1, _, _, _ = j.propose(eng, st.x, st.v, st.a)
    assert eng.counters.calls - calls == 2  # one call per replica
    tmpl = graph_template(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, 2)
    xt, vt = torch.tensor(x.reshape(-1, 3)), torch.tensor(v.reshape(-1, 3))
    force = lambda xx: MorseCluster.torch_forces(xx.detach().clone(), create_graph=False)  # noqa: E731
    a0 = outer_kick(kicks, tmpl, xt, force(xt)[1], tau)
    xs, vs, _, _, _ = stride(kicks, tmpl, xt, vt, a0, tau, force)
    assert np.abs(xs.detach().numpy().reshape(2, 4, 3) - x1).max() < 1e-12
    assert np.abs(vs.detach().numpy().reshape(2, 4, 3) - v1).max() < 1e-10


# ---------------------------------------------------------------------- exactness

@pytest.mark.slow
def test_metropolis_makes_a_poor_model_sample_boltzmann_exactly():
    """Start 1000 independent chains from the exact Boltzmann distribution of the double-well
    dimer; after 80 strides of a poor model (a large tau and random corrections) the final
    bond lengths follow the exact marginal with the test (KS), and do not without it.
    (Over 16 seeds of this setting the KS p-values with the test were uniform, pooled p = 0.64.)"""
    eng, tau = DoubleWellDimer(), 0.008
    # max_dvel bounds the random kicks, so the chain without the test is biased but finite
    kicks = random_kicks(tau, f_scale=300.0, gain=1.0, seed=3, max_dvel_nm_per_ps=0.3)
    j = ShearJumper(kicks, DoubleWellDimer.Z, DoubleWellDimer.MASSES, DoubleWellDimer.BONDS, tau)
    x0, v0 = DoubleWellDimer.boltzmann_states(1000, np.random.default_rng(4))
    r0 = np.linalg.norm(x0[:, 0] - x0[:, 1], axis=1)
    results = {}
    for metropolis in (True, False):
        cfg = ExactConfig(temperature_K=T_K, friction_per_ps=5.0, metropolis=metropolis)
        run = run_exact(j, eng, x0, v0, 80, cfg, np.random.default_rng(5), record_every=80)
        r = np.linalg.norm(run.positions[-1][:, 0] - run.positions[-1][:, 1], axis=1)
        results[metropolis] = (run, r, stats.kstest(r, DoubleWellDimer.r_cdf).pvalue)
    run, r, p_exact = results[True]
    assert 0.5 < run.acceptance < 0.9, run.acceptance  # a poor model
    assert run.force_calls == 1000 * 81 and run.summary()["median_abs_dH_kJ_mol"] > 0.2 * KT
    assert np.mean(np.abs(r - r0) > DoubleWellDimer.S / 3) > 0.4  # the chains moved
    assert p_exact > 0.05, p_exact
    _, r_plain, p_plain = results[False]
    assert np.isfinite(r_plain).all() and r_plain.max() < 0.3  # biased, not blown up
    assert p_plain < 1e-6, p_plain


def test_acceptance_probability_is_the_metropolis_rule():
    from mdkstep.exact.sampler import acceptance_probability, metropolis_accept

    dH = np.array([-5.0, 0.0, KT, 3 * KT, -1e6, np.nan, np.inf, -np.inf])
    p = acceptance_probability(dH, KT)
    assert np.allclose(p[:5], [1.0, 1.0, np.exp(-1.0), np.exp(-3.0), 1.0]) and np.all(p[5:] == 0.0)
    # the rate at which metropolis_accept accepts
    acc = metropolis_accept(np.full(20000, KT), KT, np.random.default_rng(0))
    assert abs(acc.mean() - np.exp(-1.0)) < 0.02


def test_nve_mode_runs_without_test_or_thermostat():
    eng, tau = MorseCluster(), 0.002
    kicks = ShearKicks(tiny_config()).double()
    x, v = morse_states(2, np.random.default_rng(6))
    run = run_exact(morse_jumper(kicks, tau), eng, x, v, 50, nve_config(T_K), np.random.default_rng(0))
    assert run.acceptance == 1.0 and run.force_calls == 2 * 51
    h0 = MorseCluster.energy(torch.tensor(x)).numpy() + kinetic_energy(v, MorseCluster.MASSES)
    h1 = run.potential[-1] + kinetic_energy(run.velocities[-1], MorseCluster.MASSES)
    assert np.abs(h1 - h0).max() < 0.5  # Verlet at a small step: bounded energy error


# ------------------------------------------------------------------------ training

def morse_windows(n: int, tau: float, rng: np.random.Generator, n_sub: int = 40) -> ExactWindows:
    """Reference windows: velocity Verlet at tau/n_sub from thermal-like states (uncounted calls)."""
    eng = MorseCluster()
    x, v = morse_states(n, rng)
    m = MorseCluster.MASSES[None, :, None]
    force = lambda xx: MorseCluster.torch_forces(torch.tensor(xx), create_graph=False)  # noqa: E731
    u0, f0 = (t.detach().numpy().reshape(s) for t, s in zip(force(x.reshape(-1, 3)), [(n,), (n, 4, 3)]))
    xs, vs, f = x.copy(), v.copy(), f0.copy()
    h = tau / n_sub
    for _ in range(n_sub):
        vs = vs + 0.5 * h * f / m
        xs = xs + h * vs
        u1, f = (t.detach().numpy().reshape(s) for t, s in zip(force(xs.reshape(-1, 3)), [(n,), (n, 4, 3)]))
        vs = vs + 0.5 * h * f / m
    del eng
    return ExactWindows(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, x, v, f0, u0, xs, vs, f, u1)


@pytest.mark.slow
def test_short_training_lowers_the_true_energy_error():
    tau = 0.006
    rng = np.random.default_rng(7)
    train = morse_windows(512, tau, rng)
    torch.manual_seed(0)
    kicks = ShearKicks(tiny_config(hidden=24), n_inner=1).double()
    fit_scales(kicks, [train], tau)
    eng = MorseCluster()
    x, v = morse_states(200, np.random.default_rng(8))

    def true_abs_dH() -> np.ndarray:
        j = morse_jumper(kicks, tau)
        st = init_chain(j, eng, x, v)
        _, v1, u1, _, _ = j.propose(eng, st.x, st.v, st.a)
        m = MorseCluster.MASSES
        return np.abs(u1 + kinetic_energy(v1, m) - st.u - kinetic_energy(v, m))

    before = true_abs_dH()
    tf_before = teacher_forced_abs_dH(kicks, train, tau)
    cfg = ExactTrainConfig(steps=150, batch_size=64, lr=3e-3, lambda_x=0.1, lambda_v=0.1, lambda_energy=1.0,
                           temperature_K=T_K, log_every=50)
    hist = train_exact(kicks, [train], tau, cfg)
    after = true_abs_dH()
    assert hist[-1]["step"] == 150 and all(np.isfinite(h["loss"]) for h in hist)
    assert teacher_forced_abs_dH(kicks, train, tau).mean() < 0.7 * tf_before.mean()
    # measured: median 0.084 -> 0.046 kJ/mol
    assert np.median(after) < 0.7 * np.median(before), (np.median(before), np.median(after))
    assert abs(float(torch.linalg.det(jacobian_of_map(kicks, tau))) - 1.0) < 1e-9  # trained: still volume-preserving


@pytest.mark.slow
def test_on_policy_energy_error_is_the_samplers_and_trains():
    """on_policy_energy_error (the real U, F at the proposal) gives exactly the dH the sampler's
    Metropolis test sees; training with it alone (no teacher-forced terms) lowers that dH."""
    from mdkstep.exact.train import on_policy_energy_error, to_tensors

    tau = 0.006
    train = morse_windows(256, tau, np.random.default_rng(3))
    torch.manual_seed(1)
    kicks = ShearKicks(tiny_config(hidden=24), n_inner=1).double()
    fit_scales(kicks, [train], tau)
    randomize_kick_heads_(kicks, gain=0.3, generator=torch.Generator().manual_seed(2))  # a poor model
    eng = MorseCluster()
    engine_fn = lambda xx: engine_forces(eng, xx)  # noqa: E731
    sub = train.subset(np.arange(32))
    tmpl = graph_template(sub.z, sub.masses, sub.bonds, 32, kicks.config.max_hops, torch.float64)
    with torch.no_grad():
        dh = on_policy_energy_error(kicks, tmpl, to_tensors(sub, torch.float64), tau, engine_fn).numpy()
    j = morse_jumper(kicks, tau)
    st = init_chain(j, eng, sub.x0, sub.v0)
    _, v1, u1, _, _ = j.propose(eng, st.x, st.v, st.a)
    m = MorseCluster.MASSES
    ref = u1 + kinetic_energy(v1, m) - st.u - kinetic_energy(sub.v0, m)
    assert np.allclose(dh, ref, rtol=1e-9, atol=1e-9)
    cfg = ExactTrainConfig(steps=100, batch_size=32, lr=3e-3, lambda_x=0.0, lambda_v=0.0, lambda_energy=0.0,
                           lambda_on_policy=1.0, temperature_K=T_K, log_every=50)
    with pytest.raises(ValueError, match="engine function"):
        train_exact(kicks, [train], tau, cfg)
    hist = train_exact(kicks, [train], tau, cfg, engine_fns=[engine_fn])
    with torch.no_grad():
        after = on_policy_energy_error(kicks, tmpl, to_tensors(sub, torch.float64), tau, engine_fn).numpy()
    assert "abs_dH_on_policy" in hist[-1]
    assert np.median(np.abs(after)) < 0.7 * np.median(np.abs(dh)), (np.median(np.abs(dh)), np.median(np.abs(after)))


# ---------------------------------------------------------------- stage 04 for kind: shear

def _shear_dataset(root):
    """A tiny k = 4 dataset with forces and energies (a synthetic ethanol trajectory)."""
    from helpers import _ethanol_trajectory

    from mdkstep.data.windows import build_dataset, write_split_files

    traj = root / "md" / "ethanol" / "replica_0.npz"
    _ethanol_trajectory(traj, n_frames=200)
    summary = build_dataset([traj], k=4, out_file=root / "d.npz", split="time")
    write_split_files(root / "splits", summary, [str(root / "d.npz")])
    return root / "d.npz", (root / "splits" / "train.json", root / "splits" / "val.json")


def test_train_shear_refuses_cuda_without_a_gpu_and_writes_metrics_atomically(tmp_path, monkeypatch):
    """--device cuda without a visible GPU is a one-line error before any work (it used to fall
    back to the CPU silently); metrics.csv is written through a temporary file (no leftovers)."""
    from mdkstep.exact.train import train_shear
    from mdkstep.utils import MdkstepError

    ds, splits = _shear_dataset(tmp_path)
    mcfg = tiny_config(kind="shear")
    cfg = ExactTrainConfig(steps=4, batch_size=8, log_every=2, val_max_windows=16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MdkstepError, match="--device cuda requested but no CUDA GPU"):
        train_shear(ds, splits, mcfg, cfg, tmp_path / "run", device_name="cuda")
    assert not (tmp_path / "run").exists()
    res = train_shear(ds, splits, mcfg, cfg, tmp_path / "run", device_name="auto")
    assert res["device"] == "cpu"
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["step", "loss", "x"] and [r.split(",")[0] for r in lines[1:]] == ["2", "4"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "final_metrics.json", "last.pt",
                                                                    "metrics.csv"]


def test_metrics_csv_write_that_fails_leaves_the_old_file(tmp_path):
    from mdkstep.exact.train import write_metrics_csv

    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, [{"step": 1, "loss": 0.5}])
    old = path.read_text()
    with pytest.raises(ValueError):  # the second row has a column the header lacks: fails mid-write
        write_metrics_csv(path, [{"step": 1, "loss": 0.4}, {"step": 2, "bogus": 1.0}])
    assert path.read_text() == old and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    write_metrics_csv(path, [{"b": 1, "a": 2}], fieldnames=["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "2,1"]
