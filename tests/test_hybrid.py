"""The hybrid integrator (mdkstep.hybrid) against an analytic harmonic engine, and script 06's
checkpoint checks. Units: nm, ps, kJ/mol, amu, K."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from helpers import MASSES, HarmonicLattice, Oracle, cfg, run, start

from mdkstep.dynamics import csvr_factor
from mdkstep.hybrid import HybridConfig, checkpoint_path, replica_paths
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K

ROOT = Path(__file__).resolve().parents[1]  #: the repository (configs/ is found from here, not the working directory)


def vv_step(eng, x, v, dt):
    """Reference velocity-Verlet step (uncounted), written independently of mdkstep.hybrid."""
    f0 = eng._compute(x)[1]
    v_half = v + 0.5 * dt * f0 / MASSES[:, None]
    x1 = x + dt * v_half
    return x1, v_half + 0.5 * dt * eng._compute(x1)[1] / MASSES[:, None]


# ------------------------------------------------------------------------------- oracle, NVE

def test_oracle_kick_matches_exact_and_counts_one_call_per_cycle(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="kick")
    x0, v0 = start(2)
    oracle = Oracle(eng, c.cycle_ps)
    stats = run(tmp_path, eng, oracle, c, x0, v0, 40)
    assert oracle.calls == 40  # one jumper call per cycle for both replicas
    assert c.steps_per_cycle == 4 and stats["simulated_ps"] == pytest.approx(40 * 4 * 0.0005)
    assert stats["force_calls"] == eng.counters.calls == 2 + 40 * 2 * 1  # setup + cycles x replicas x 1
    assert stats["force_calls_setup"] == 2 and stats["force_calls_jump"] == 80 and stats["fallbacks"] == 0
    for r, path in enumerate(replica_paths(tmp_path / "h.npz", 2)):
        t = load_trajectory(path)
        assert t.n_frames == 40 and np.allclose(t.time_ps, np.arange(1, 41) * 0.002)
        xe, ve = eng.propagate(np.repeat(x0[r][None], 40, 0), np.repeat(v0[r][None], 40, 0), 0)
        for i in range(40):
            xe[i], ve[i] = eng.propagate(x0[r], v0[r], t.time_ps[i])
        assert np.abs(t.positions - xe).max() < 1e-10 and np.abs(t.velocities - ve).max() < 1e-8
        assert np.allclose(t.forces, [eng._compute(x)[1] for x in t.positions])  # exact forces handed over
        assert t.metadata["method"] == "hybrid_kick" and t.metadata["save_interval"] == 4


def test_kick_swaps_predicted_for_real_forces_in_the_last_half_kick(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="kick")
    x0, v0 = start(1)

    class WithForces(Oracle):  # exact jump; predicted forces F_pred = 0 at the jumped point
        def __call__(self, x, v, f):
            dx, dv = super().__call__(x, v, f)
            return dx, dv, np.zeros_like(x)

    run(tmp_path, eng, WithForces(eng, c.cycle_ps), c, x0, v0, 1)
    t = load_trajectory(tmp_path / "h.npz")
    x1, v1 = eng.propagate(x0[0], v0[0], c.cycle_ps)
    f1 = eng._compute(x1)[1]
    assert np.allclose(t.velocities[0], v1 + 0.5 * c.dt_ps * f1 / MASSES[:, None], atol=1e-10)
    run(tmp_path, HarmonicLattice(), WithForces(eng, c.cycle_ps), cfg(corrector="kick", use_predicted_forces=False),
        x0, v0, 1, name="off.npz")
    assert np.allclose(load_trajectory(tmp_path / "off.npz").velocities[0], v1, atol=1e-10)


def test_oracle_verlet_matches_exact_to_integrator_accuracy(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="verlet")
    x0, v0 = start(1)
    n = 30
    stats = run(tmp_path, eng, Oracle(eng, c.k * c.dt_ps), c, x0, v0, n)
    assert stats["force_calls"] == eng.counters.calls == 1 + n * 2  # 2 calls per (k+1)*dt
    assert stats["calls_per_cycle_nominal"] == 2 and c.cycle_ps == pytest.approx(5 * 0.0005)
    t = load_trajectory(tmp_path / "h.npz")
    # the exact composite: k exact steps, then one velocity-Verlet step, repeated
    x, v = x0[0], v0[0]
    ref = []
    for _ in range(n):
        x, v = eng.propagate(x, v, c.k * c.dt_ps)
        x, v = vv_step(eng, x, v, c.dt_ps)
        ref.append(x)
    assert np.abs(t.positions - np.array(ref)).max() < 1e-10
    # and the analytic solution to second order: the error is that of n Verlet steps
    exact = np.array([eng.propagate(x0[0], v0[0], ti)[0] for ti in t.time_ps])
    err = np.abs(t.positions - exact).max()
    xs, vs, e_vv = x0[0], v0[0], 0.0  # error of n plain Verlet steps of the same dt
    for i in range(n):
        xs, vs = vv_step(eng, xs, vs, c.dt_ps)
        e_vv = max(e_vv, np.abs(xs - eng.propagate(x0[0], v0[0], (i + 1) * c.dt_ps)[0]).max())
    assert 0 < err < 3 * e_vv + 1e-9


# ------------------------------------------------------------------------------- guard

class BadJumper:
    def __init__(self, value):
        self.value = value

    def __call__(self, x, v, f):
        rng = np.random.default_rng(0)
        dx = rng.normal(size=x.shape) * self.value
        return dx, np.zeros_like(v)


def test_bad_jumper_retries_then_falls_back_to_physics(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="kick", max_attempts=3)
    x0, v0 = start(2)
    n = 12
    stats = run(tmp_path, eng, BadJumper(10.0), c, x0, v0, n)
    assert stats["jumps_accepted"] == 0 and stats["fallbacks"] == n * 2
    assert stats["retries"] == n * 2 * 2 and stats["nan_frames"] == 0
    assert sum(stats["reject_reasons"].values()) == n * 2 * 3
    # every attempt reached the engine (1 call), then k physics steps (1 call each)
    assert stats["force_calls"] == eng.counters.calls == 2 + n * 2 * (3 + c.k)
    for r, path in enumerate(replica_paths(tmp_path / "h.npz", 2)):
        t = load_trajectory(path)  # validates: finite everywhere
        assert t.n_frames == n
        x, v = x0[r], v0[r]
        for _ in range(n * c.k):  # the fallback is plain velocity Verlet
            x, v = vv_step(eng, x, v, c.dt_ps)
        assert np.abs(t.positions[-1] - x).max() < 1e-10


def test_nan_jumper_is_rejected_without_force_calls(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="verlet", max_attempts=2)
    x0, v0 = start(1)
    stats = run(tmp_path, eng, BadJumper(np.nan), c, x0, v0, 5)
    assert stats["reject_reasons"]["nonfinite"] == 10 and stats["fallbacks"] == 5
    assert stats["force_calls"] == 1 + 5 * (c.k + 1)  # fallback covers the cycle's k+1 steps
    assert load_trajectory(tmp_path / "h.npz").n_frames == 5


# ------------------------------------------------------------------------------- conservation

def test_energy_filter_and_momentum_conservation(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="kick", energy_filter=True, remove_com=False)
    x0, v0 = start(1, com_velocity=[0.3, -0.2, 0.1])
    stats = run(tmp_path, eng, Oracle(eng, c.cycle_ps, scale=1.03), c, x0, v0, 60)
    assert stats["jumps_accepted"] > 50
    t = load_trajectory(tmp_path / "h.npz")
    etot = t.energies + t.kinetic  # kinetic of the COM-free velocities; the COM part is constant
    assert np.abs(etot - etot[0]).max() / abs(etot[0]) < 1e-8
    p = np.einsum("fij,i->fj", t.velocities, MASSES)
    assert np.abs(p - MASSES @ v0[0]).max() < 1e-10 * MASSES.sum()
    # without the filter the same jumper changes the energy
    eng2 = HarmonicLattice()
    run(tmp_path, eng2, Oracle(eng2, c.cycle_ps, scale=1.03), cfg(corrector="kick"), x0, v0, 60, name="nf.npz")
    t2 = load_trajectory(tmp_path / "nf.npz")
    assert np.abs(t2.energies + t2.kinetic - etot[0]).max() > 1e-3


def test_com_free_kinetic_and_frame_match_a_direct_computation():
    """The integrator's COM-free kinetic energy and frame temperature (through mdkstep.utils'
    centre of mass) equal the direct sums."""
    from mdkstep.hybrid.integrator import HybridIntegrator

    eng = HarmonicLattice()
    x0, v0 = start(2, com_velocity=[0.3, -0.2, 0.1])
    integ = HybridIntegrator(eng, Oracle(eng, 0.002), cfg(remove_com=False), np.random.default_rng(0))
    integ.initialize(x0, v0)
    for r in range(2):
        v = integ.v[r]
        vcm = sum(MASSES[i] * v[i] for i in range(4)) / MASSES.sum()
        k_direct = 0.5 * sum(MASSES[i] * float((v[i] - vcm) @ (v[i] - vcm)) for i in range(4))
        assert integ.internal_kinetic(v) == pytest.approx(k_direct, rel=1e-13)
        fr = integ.frame(r)
        assert float(fr["kinetic"]) == pytest.approx(k_direct, rel=1e-13)
        assert float(fr["temperature"]) == pytest.approx(2 * k_direct / (integ.dof * KB_KJ_PER_MOL_K), rel=1e-13)
    assert np.abs(integ.v[0] - v0[0]).max() < 1e-15  # remove_com=False keeps the COM motion


def test_fix_angular_momentum_restores_pre_jump_value(tmp_path):
    from mdkstep.hybrid import angular_momentum

    eng = HarmonicLattice()
    c = cfg(corrector="kick", fix_angular_momentum=True, max_energy_jump_kj_mol=None)

    class Spinner:  # adds a rigid rotation to dv: changes the angular momentum
        def __call__(self, x, v, f):
            xc = x - (np.einsum("rij,i->rj", x, MASSES) / MASSES.sum())[:, None]
            return v * c.cycle_ps, np.cross([0.0, 0.0, 5.0], xc)  # ballistic dx: a zero jump is "frozen"

    x0, v0 = start(1)
    run(tmp_path, eng, Spinner(), c, x0, v0, 3)
    t = load_trajectory(tmp_path / "h.npz")
    l0 = angular_momentum(x0[0], v0[0], MASSES)
    for x, v in zip(t.positions, t.velocities):
        assert np.allclose(angular_momentum(x, v, MASSES), l0, atol=1e-10)


# ------------------------------------------------------------------------------- resume

def test_resume_after_interruption_gives_same_frames(tmp_path):
    c = cfg(corrector="kick", ensemble="nvt", thermostat="csvr", tau_ps=0.01, chunk_frames=5)
    x0, v0 = start(2)
    eng = HarmonicLattice()
    full = run(tmp_path, eng, Oracle(eng, c.cycle_ps, scale=1.01), c, x0, v0, 30, name="full.npz", seed=7)
    eng = HarmonicLattice()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, eng, Oracle(eng, c.cycle_ps, scale=1.01, fail_at=18), c, x0, v0, 30, name="part.npz", seed=7)
    assert checkpoint_path(tmp_path / "part.npz").is_file()
    eng = HarmonicLattice()
    resumed = run(tmp_path, eng, Oracle(eng, c.cycle_ps, scale=1.01), c, np.zeros_like(x0), np.zeros_like(v0), 30,
                  name="part.npz", seed=7)  # the start state is ignored: it comes from the checkpoint
    assert eng.counters.calls == 2 * 15  # only cycles 16..30 ran in this session
    assert resumed["n_cycles"] == full["n_cycles"] == 30
    assert resumed["force_calls"] == full["force_calls"]
    assert not checkpoint_path(tmp_path / "part.npz").exists()
    for a, b in zip(replica_paths(tmp_path / "full.npz", 2), replica_paths(tmp_path / "part.npz", 2)):
        ta, tb = load_trajectory(a), load_trajectory(b)
        assert ta.n_frames == tb.n_frames == 30
        assert np.array_equal(ta.positions, tb.positions) and np.array_equal(ta.velocities, tb.velocities)
        assert np.array_equal(ta.time_ps, tb.time_ps)


# ------------------------------------------------------------------------------- thermostats

@pytest.mark.slow
def test_csvr_keeps_target_temperature(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="kick", ensemble="nvt", thermostat="csvr", tau_ps=0.02, temperature_K=300.0,
            dt_fs=1.0, save_interval_cycles=10)
    x0, v0 = start(16, temp=80.0)
    stats = run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 600, seed=3)
    t = np.array([load_trajectory(p).temperature for p in replica_paths(tmp_path / "h.npz", 16)])
    assert t[:, 10:].mean() == pytest.approx(300.0, rel=0.05)  # second half, all replicas
    assert stats["temperature_mean_K"] == pytest.approx(300.0, rel=0.08)
    for sym in ("C", "H", "O"):
        assert stats["temperature_per_element_K"][sym] == pytest.approx(300.0, rel=0.15)
    # a slightly wrong jumper: CSVR still bounds the mean, the per-element monitor shows the
    # broken equipartition (light atoms hot, heavy atoms cold)
    eng = HarmonicLattice()
    bad = run(tmp_path, eng, Oracle(eng, c.cycle_ps, scale=1.02), c, x0, v0, 600, name="b.npz", seed=3)
    assert bad["temperature_mean_K"] < 400.0
    per = bad["temperature_per_element_K"]
    assert per["H"] > 2 * per["C"]


def test_langevin_keeps_target_temperature(tmp_path):
    eng = HarmonicLattice()
    c = cfg(corrector="verlet", ensemble="nvt", thermostat="langevin", friction_per_ps=20.0, dt_fs=1.0,
            save_interval_cycles=10)
    x0, v0 = start(16, temp=600.0)
    stats = run(tmp_path, eng, Oracle(eng, c.k * c.dt_ps), c, x0, v0, 400, seed=5)
    assert stats["temperature_mean_K"] == pytest.approx(300.0, rel=0.1)


def test_csvr_factor_samples_canonical_kinetic_energy():
    rng = np.random.default_rng(0)
    nd, target = 9, 9 * 0.5 * 2.5
    k, ks = 5.0, []
    for _ in range(20000):
        k *= csvr_factor(k, target, nd, 0.5, rng) ** 2
        ks.append(k)
    ks = np.array(ks[1000:])
    assert ks.mean() == pytest.approx(target, rel=0.03)
    assert ks.var() == pytest.approx(2 * target**2 / nd, rel=0.1)  # Gamma(nd/2, kT) variance


def test_config_validation():
    with pytest.raises(ValueError, match="thermostat"):
        HybridConfig(ensemble="nvt", thermostat="none").validate()
    with pytest.raises(ValueError, match="corrector"):
        HybridConfig(corrector="rk4").validate()


# ------------------------------------------------------------------------------- script 06

def _water_dir(root):
    """A prepared-molecule folder (stage 00 layout) for a flexible water, built with OpenMM."""
    import openmm
    from openmm import app

    from mdkstep.molecule.prep import TopologyInfo, write_molecule_dir

    masses = [15.999, 1.008, 1.008]
    system = openmm.System()
    for m in masses:
        system.addParticle(m)
    bonds = openmm.HarmonicBondForce()
    bonds.addBond(0, 1, 0.09572, 4.6e5)
    bonds.addBond(0, 2, 0.09572, 4.6e5)
    system.addForce(bonds)
    angle = openmm.HarmonicAngleForce()
    angle.addAngle(1, 0, 2, np.deg2rad(104.52), 836.8)
    system.addForce(angle)
    top = app.Topology()
    res = top.addResidue("HOH", top.addChain())
    atoms = [top.addAtom(n, app.Element.getByAtomicNumber(z), res) for n, z in (("O", 8), ("H1", 1), ("H2", 1))]
    top.addBond(atoms[0], atoms[1])
    top.addBond(atoms[0], atoms[2])
    pos = np.array([[0.0, 0.0, 0.0], [0.09572, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    info = TopologyInfo(name="water", atomic_numbers=[8, 1, 1], masses=masses, net_charge=0, smiles="O",
                        forcefield="test", charge_method="none", bonds=[[0, 1], [0, 2]], angles=[[1, 0, 2]],
                        dihedrals=[], source="test")
    return write_molecule_dir(root / "water", info, system, top, pos)


def _checkpoint(path, k=4, atom_types=(1, 8)):
    from mdkstep.model import ModelConfig, build_model
    from mdkstep.model.checkpoint import save_checkpoint

    mc = ModelConfig(hidden=8, n_layers=1, n_rbf=4, max_hops=3)
    model = build_model(mc)
    save_checkpoint(path, {"model_state": model.state_dict(), "model_config": asdict(mc), "train_config": {},
                           "k": k, "dt_fs": 2.0, "engine": "openmm", "atom_types": list(atom_types)})
    return path


def _run06(argv, capsys):
    from mdkstep.config import run_cli

    mod = load_script("06_hybrid_integrate")
    with pytest.raises(SystemExit) as e:
        run_cli(mod.main, argv)
    return e.value.code, capsys.readouterr()


@pytest.fixture()
def water(tmp_path):
    return _water_dir(tmp_path)


def _base_args(tmp_path, water, ck):
    return ["--checkpoint", str(ck), "--molecule", str(water), "--out", str(tmp_path / "hyb.npz"),
            "--md-config", str(ROOT / "configs/md_quick.yaml"), "--hybrid-config", str(ROOT / "configs/hybrid.yaml"),
            "--no-progress", "--log-level", "WARNING"]


def test_model_jumper_batches_replicas_and_centres_inputs(tmp_path):
    import torch

    from mdkstep.model.checkpoint import model_from_checkpoint
    from mdkstep.model.jumper import ModelJumper

    model, _ = model_from_checkpoint(_checkpoint(tmp_path / "m.pt"))
    with torch.no_grad():  # make the fresh model's output non-trivial
        model.set_normalization(dx_scale=0.01, dv_scale=1.0)
    z, m = np.array([8, 1, 1]), np.array([15.999, 1.008, 1.008])
    jumper = ModelJumper(model, z, m, np.array([[0, 1], [0, 2]]))
    rng = np.random.default_rng(0)
    x = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]]) + rng.normal(0, 0.01, (3, 3, 3))
    v, f = rng.normal(size=(3, 3, 3)), rng.normal(size=(3, 3, 3)) * 100
    dx, dv, fp = jumper(x, v, f)
    assert dx.shape == dv.shape == (3, 3, 3) and fp is None and len(jumper.ms) == 1
    assert np.abs(dx).max() > 0
    # COM-centred inputs: a shift of positions and a common velocity change nothing
    dx2, dv2, _ = jumper(x + 1.5, v + np.array([0.3, 0.0, -0.2]), f)
    assert np.allclose(dx, dx2, atol=1e-5) and np.allclose(dv, dv2, atol=1e-4)
    # one batch of 3 replicas = three single calls
    one = jumper(x[1:2], v[1:2], f[1:2])
    assert np.allclose(one[0][0], dx[1], atol=1e-6)


def test_script_rejects_wrong_k_in_one_line(tmp_path, water, capsys):
    ck = _checkpoint(tmp_path / "m.pt", k=4)
    code, out = _run06(_base_args(tmp_path, water, ck) + ["--k", "8"], capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "trained for k=4, but k=8" in lines[0]


def test_script_rejects_unseen_elements_in_one_line(tmp_path, water, capsys):
    ck = _checkpoint(tmp_path / "m.pt", atom_types=(1, 6))
    code, out = _run06(_base_args(tmp_path, water, ck), capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "elements [8]" in lines[0]


def test_script_runs_end_to_end(tmp_path, water, capsys):
    ck = _checkpoint(tmp_path / "m.pt", k=4, atom_types=(1, 8))
    args = _base_args(tmp_path, water, ck) + ["--time-ps", "0.08", "--equil-ps", "0.02", "--replicas", "2"]
    code, out = _run06(args, capsys)
    assert code == 0, out.err
    stats = json.loads((tmp_path / "hyb.stats.json").read_text())
    assert stats["n_cycles"] == 10 and stats["nan_frames"] == 0  # 0.08 ps / (4 x 2 fs)
    assert stats["force_calls"] == 2 + stats["force_calls_jump"] + stats["force_calls_fallback"]
    for p in replica_paths(tmp_path / "hyb.npz", 2):
        t = load_trajectory(p)
        assert t.n_frames == 10 and t.metadata["molecule"] == "water" and t.metadata["n_constraints"] == 2
        d = np.linalg.norm(t.positions[:, 1] - t.positions[:, 0], axis=-1)
        assert np.allclose(d, 0.09572, atol=1e-6)  # HBonds constraints hold after every jump
    assert "force calls/ps" in out.out


def test_script_runs_a_drawn_stride_schedule(tmp_path, water, capsys):
    """--schedule over several checkpoints (the bench's drawn orders): k is the orders' total,
    one force call per sub-stride, frames every cycle, the orders in the stats."""
    cks = [str(_checkpoint(tmp_path / f"m{k}.pt", k=k, atom_types=(1, 8))) for k in (2, 4, 6)]
    args = _base_args(tmp_path, water, cks[0])
    args[1:2] = cks
    args += ["--schedule", "2+4+6,4+6+2,6+2+4", "--time-ps", "0.096", "--equil-ps", "0.02"]
    code, out = _run06(args, capsys)
    assert code == 0, out.err
    stats = json.loads((tmp_path / "hyb.stats.json").read_text())
    assert stats["n_cycles"] == 4 and stats["hybrid_config"]["k"] == 12  # 0.096 ps / (12 x 2 fs)
    assert stats["schedule"] == [[2, 4, 6], [4, 6, 2], [6, 2, 4]] and stats["checkpoint"] == cks
    assert stats["jumps_attempted"] == 12 and stats["nan_frames"] == 0  # 3 sub-strides per cycle
    t = load_trajectory(tmp_path / "hyb.npz")
    assert t.n_frames == 4 and t.metadata["schedule"] == "2+4+6,4+6+2,6+2+4"


def test_permutation_schedule_expands_every_order():
    from mdkstep.cli.hybrid import parse_schedule
    from mdkstep.hybrid import permutation_orders

    assert permutation_orders([4, 4, 10]) == [[4, 4, 10], [4, 10, 4], [10, 4, 4]]
    assert len(permutation_orders([4, 8, 10, 12])) == 24
    assert parse_schedule("permutations:4+10+12", [4, 10, 12]) == permutation_orders([4, 10, 12])


@pytest.mark.parametrize("extra, message", [
    (["--schedule", "2+4,4+4"], "equal totals"),
    (["--schedule", "2+8"], "no --checkpoint for k = [8]"),
    (["--schedule", "2+x"], "expected orders like"),
    (["--schedule", "permutations:2+4,4+2"], "expected orders like"),
    (["--schedule", "permutations:2+8"], "no --checkpoint for k = [8]"),
    ([], "2 checkpoints need --schedule"),
])
def test_script_schedule_errors_in_one_line(tmp_path, water, capsys, extra, message):
    cks = [str(_checkpoint(tmp_path / f"m{k}.pt", k=k, atom_types=(1, 8))) for k in (2, 4)]
    args = _base_args(tmp_path, water, cks[0])
    args[1:2] = cks
    code, out = _run06(args + extra, capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("corrector,t_start", [("kick", 1200.0)] + [
    pytest.param(c, t, marks=pytest.mark.slow) for t in (150.0, 600.0, 1200.0) for c in ("verlet", "kick")
    if (c, t) != ("kick", 1200.0)])
def test_langevin_with_default_energy_filter_reaches_target(tmp_path, corrector, t_start):
    """Bug (issue 10): with the energy filter on (the shipped default) the filter used to undo
    the Langevin O-step, so the temperature never moved (150/600/1200 K -> 128/328/594 K) and
    U + K stayed exactly constant. The thermostat now acts after the Hamiltonian part."""
    from mdkstep.config import load_config

    shipped = load_config(HybridConfig, ROOT / "configs/hybrid.yaml")
    eng = HarmonicLattice()
    c = replace(shipped, energy_filter=True, thermostat="langevin", ensemble="nvt", k=4, dt_fs=1.0,
                corrector=corrector, temperature_K=300.0, friction_per_ps=20.0, save_interval_cycles=5,
                chunk_frames=1000)
    c.validate()
    x0, v0 = start(16, temp=t_start)
    stats = run(tmp_path, eng, Oracle(eng, c.k * c.dt_ps), c, x0, v0, 400, seed=5)
    t = np.array([load_trajectory(p).temperature for p in replica_paths(tmp_path / "h.npz", 16)])
    assert t[:, 40:].mean() == pytest.approx(300.0, rel=0.1)  # after ~5/friction
    etot = np.array([(lambda tr: tr.energies + tr.kinetic)(load_trajectory(p)) for p in replica_paths(tmp_path / "h.npz", 16)])
    assert etot.std(axis=1).min() > 0.1  # the thermostat exchanges energy with the bath
    assert stats["fallbacks"] == 0


def test_shipped_hybrid_configs_differ_only_in_the_bath_friction():
    """configs/hybrid.yaml (MM, 06) and configs/hybrid_qm.yaml (QM, 06b, the bench's QM part)
    load, validate, and are the same settings but for the bath friction chosen by measurement (README)."""
    from mdkstep.config import load_config, to_dict

    mm, qm = (load_config(HybridConfig, ROOT / f"configs/{n}.yaml") for n in ("hybrid", "hybrid_qm"))
    mm.validate()
    qm.validate()
    mm, qm = to_dict(mm), to_dict(qm)
    assert {k for k in mm if mm[k] != qm[k]} <= {"friction_per_ps"}


# ------------------------------------------------------------------------------- stride schedule

def test_stride_schedule_of_oracles_is_exact_and_costs_one_call_per_sub_stride(tmp_path):
    """Two exact jumpers of k = 1 and 3 in turn (cycle k = 4) land on the exact trajectory with
    two force calls per cycle and replica; a wrong k or corrector is a one-line error."""
    from mdkstep.hybrid import StrideSchedule
    from mdkstep.utils import MdkstepError

    eng = HarmonicLattice()
    c = cfg(corrector="kick")
    x0, v0 = start(2)
    a, b = Oracle(eng, 1 * c.dt_ps), Oracle(eng, 3 * c.dt_ps)
    stats = run(tmp_path, eng, StrideSchedule([(a, 1), (b, 3)]), c, x0, v0, 20)
    assert a.calls == b.calls == 20 and stats["force_calls"] == 2 + 20 * 2 * 2
    assert stats["simulated_ps"] == pytest.approx(20 * 4 * c.dt_ps) and stats["fallbacks"] == 0
    traj = load_trajectory(replica_paths(tmp_path / "h.npz", 2)[0])
    x_exact, v_exact = eng.propagate(x0[0], v0[0], traj.time_ps[-1])
    assert np.allclose(traj.positions[-1], x_exact, atol=1e-10) and np.allclose(traj.velocities[-1], v_exact, atol=1e-8)
    with pytest.raises(MdkstepError, match="sum of its strides"):
        run(tmp_path, eng, StrideSchedule([(a, 1), (b, 2)]), c, x0, v0, 2, name="bad.npz")
    with pytest.raises(MdkstepError, match="corrector 'kick'"):
        run(tmp_path, eng, StrideSchedule([(a, 1), (b, 3)]), cfg(corrector="verlet"), x0, v0, 2, name="bad2.npz")


def test_random_stride_orders_stay_exact_and_evenly_spaced(tmp_path):
    """Orders 1 + 3, 3 + 1 and 2 + 2 drawn at random per cycle (one k = 4 cycle each): oracle jumpers
    land on the exact trajectory, every order is drawn, frames stay 4 steps apart; orders of
    different totals are a one-line error."""
    from mdkstep.hybrid import StrideSchedule
    from mdkstep.utils import MdkstepError

    eng = HarmonicLattice()
    c = cfg(corrector="kick")
    x0, v0 = start(2)
    a, b, h = Oracle(eng, 1 * c.dt_ps), Oracle(eng, 3 * c.dt_ps), Oracle(eng, 2 * c.dt_ps)
    sched = StrideSchedule([(a, 1), (b, 3)], alternatives=[[(b, 3), (a, 1)], [(h, 2), (h, 2)]])
    stats = run(tmp_path, eng, sched, c, x0, v0, 30)
    assert a.calls == b.calls and a.calls > 0 and h.calls > 0 and a.calls + h.calls // 2 == 30
    assert stats["force_calls"] == 2 + 30 * 2 * 2 and stats["fallbacks"] == 0
    traj = load_trajectory(replica_paths(tmp_path / "h.npz", 2)[0])
    assert np.allclose(np.diff(traj.time_ps), 4 * c.dt_ps)
    x_exact, v_exact = eng.propagate(x0[0], v0[0], traj.time_ps[-1])
    assert np.allclose(traj.positions[-1], x_exact, atol=1e-10) and np.allclose(traj.velocities[-1], v_exact, atol=1e-8)
    with pytest.raises(MdkstepError, match="same k"):
        StrideSchedule([(a, 1), (b, 3)], alternatives=[[(h, 2)]])
