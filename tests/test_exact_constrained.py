"""Exact mode with distance constraints (RATTLE-projected shears, mdkstep.constraints): the
projections, reversibility and momentum on the manifold, exact Boltzmann sampling of a
constrained analytic system with a poor model, and MM (OpenMM, HBonds) end to end.
Units: nm, ps, kJ/mol, amu, K."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from helpers import KT, T_K, DoubleWellDimer, MorseCluster, morse_states, random_kicks

from mdkstep.constraints import DistanceConstraints
from mdkstep.engines.base import ForceEngine
from mdkstep.exact.sampler import ExactConfig, ShearJumper, init_chain, kinetic_energy, nve_config, run_exact
from mdkstep.model.shear import ShearKicks

torch.set_num_threads(1)


class ConstrainedMorse(MorseCluster):
    """The Morse cluster with two rigid bonds sharing atom 0 (coupled constraints)."""

    name = "morse4_rigid"
    PAIRS = np.array([[0, 1], [0, 2]])

    @property
    def n_constraints(self) -> int:
        return 2

    def constraint_pairs(self):
        return self.PAIRS.copy()

    def constraint_lengths(self):
        return np.full(2, self.R0)


class RigidArmDoubleWell(ForceEngine):
    """Atoms C0, H1, O2: a rigid C-H arm (d = 0.1 nm) and the double-well bond of
    :class:`DoubleWellDimer` between C0 and O2. In mass-weighted coordinates the manifold's
    volume element is constant in (x0, arm direction n, x2), so exactly: r02 has the dimer's
    marginal r^2 exp(-U/kT) and n is uniform on the sphere (n_z uniform in [-1, 1])."""

    name = "rigid_arm_double_well"
    D_ARM = 0.1
    MASSES = np.array([12.0, 1.008, 16.0])
    Z = np.array([6, 1, 8])
    BONDS = np.array([[0, 1], [0, 2]])

    def __init__(self):
        super().__init__(self.MASSES, self.Z)
        self._dimer = DoubleWellDimer()

    @property
    def n_constraints(self) -> int:
        return 1

    def constraint_pairs(self):
        return np.array([[0, 1]])

    def constraint_lengths(self):
        return np.array([self.D_ARM])

    def _compute(self, x):
        u, f = self._dimer._compute(np.stack([x[0], x[2]]))
        return u, np.stack([f[0], np.zeros(3), f[1]])

    @classmethod
    def boltzmann_states(cls, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n exact samples (x, v) (n,3,3), velocities Maxwell-Boltzmann (projected later)."""
        xd, _ = DoubleWellDimer.boltzmann_states(n, rng)
        arm = rng.normal(size=(n, 3))
        arm *= cls.D_ARM / np.linalg.norm(arm, axis=1, keepdims=True)
        x = np.stack([xd[:, 0], xd[:, 0] + arm, xd[:, 1]], axis=1)
        v = rng.normal(size=(n, 3, 3)) * np.sqrt(KT / cls.MASSES)[None, :, None]
        return x, v


def rigid_morse_jumper(kicks: ShearKicks, tau: float) -> ShearJumper:
    return ShearJumper.for_engine(kicks, ConstrainedMorse(), MorseCluster.BONDS, tau)


def residual_and_tangency(cons: DistanceConstraints, x: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    xt, vt = torch.tensor(x.reshape(-1, 3)), torch.tensor(v.reshape(-1, 3))
    res = float(cons.residual(xt).abs().max())
    tan = float((cons.velocities(xt, vt) - vt).abs().max())
    return res, tan


def test_projections_land_on_the_manifold_and_its_tangent_space():
    eng = ConstrainedMorse()
    cons = DistanceConstraints.from_engine(eng)
    x, v = morse_states(5, np.random.default_rng(0))
    xt, vt = cons.project_state(torch.tensor(x.reshape(-1, 3)), torch.tensor(v.reshape(-1, 3)))
    res, tan = residual_and_tangency(cons, xt.numpy(), vt.numpy())
    assert res < 1e-12 and tan < 1e-12
    # the projection is a projector in the mass metric: P P = P, and it conserves momentum
    assert float((cons.velocities(xt, vt) - vt).abs().max()) < 1e-12
    m = torch.tensor(MorseCluster.MASSES).repeat(5)[:, None]
    p0 = (m * torch.tensor(v.reshape(-1, 3))).view(5, 4, 3).sum(1)
    assert float(((m * vt).view(5, 4, 3).sum(1) - p0).abs().max()) < 1e-12
    assert DistanceConstraints.from_engine(MorseCluster()) is None


def test_constrained_stride_is_reversible_keeps_constraints_and_momentum():
    eng, tau = ConstrainedMorse(), 0.004
    kicks = random_kicks(tau, f_scale=100.0, gain=1.0, n_inner=2)
    j = rigid_morse_jumper(kicks, tau)
    assert j.n_constraints == 2
    x, v = morse_states(4, np.random.default_rng(2))
    st = init_chain(j, eng, x, v)
    x1, v1, u1, f1, a1, valid = j.propose_checked(eng, st.x, st.v, st.a)
    assert valid.all() and np.abs(x1 - st.x).max() > 1e-3
    res, tan = residual_and_tangency(j.cons, x1, v1)
    assert res < 1e-12 and tan < 1e-10
    x2, v2, u2, _, _ = j.propose(eng, x1, -v1, a1)
    assert np.abs(x2 - st.x).max() < 1e-10 and np.abs(v2 + st.v).max() < 1e-9
    assert np.allclose(u2, st.u, rtol=0, atol=1e-8)
    m = MorseCluster.MASSES
    assert np.abs(np.einsum("i,rij->rj", m, v1) - np.einsum("i,rij->rj", m, st.v)).max() < 1e-10


def test_untrained_constrained_map_is_rattle_verlet_with_bounded_energy_error():
    eng, tau = ConstrainedMorse(), 0.001
    j = rigid_morse_jumper(ShearKicks(random_kicks(tau, 100.0, 0.0).config).double(), tau)
    x, v = morse_states(2, np.random.default_rng(6))
    run = run_exact(j, eng, x, v, 200, nve_config(T_K), np.random.default_rng(0))
    st0 = init_chain(j, ConstrainedMorse(), x, v)
    h0 = st0.u + kinetic_energy(st0.v, MorseCluster.MASSES)
    h1 = run.potential[-1] + kinetic_energy(run.velocities[-1], MorseCluster.MASSES)
    assert run.acceptance == 1.0 and np.abs(h1 - h0).max() < 0.2
    res, tan = residual_and_tangency(j.cons, run.positions[-1], run.velocities[-1])
    assert res < 1e-12 and tan < 1e-10


@pytest.mark.slow
def test_metropolis_makes_a_poor_constrained_model_sample_boltzmann_exactly():
    """1000 chains from the exact distribution of the rigid-arm double well; after 60 strides
    of a poor model the O-C distance follows its exact marginal and the arm direction is
    uniform with the test (KS), and the distance does not without it."""
    eng, tau = RigidArmDoubleWell(), 0.008
    kicks = random_kicks(tau, f_scale=300.0, gain=1.0, seed=3, max_dvel_nm_per_ps=0.3)
    j = ShearJumper.for_engine(kicks, eng, RigidArmDoubleWell.BONDS, tau)
    x0, v0 = RigidArmDoubleWell.boltzmann_states(1000, np.random.default_rng(4))
    out = {}
    for metropolis in (True, False):
        cfg = ExactConfig(temperature_K=T_K, friction_per_ps=5.0, metropolis=metropolis)
        run = run_exact(j, eng, x0, v0, 60, cfg, np.random.default_rng(5), record_every=60)
        xf = run.positions[-1]
        r = np.linalg.norm(xf[:, 2] - xf[:, 0], axis=1)
        nz = (xf[:, 1, 2] - xf[:, 0, 2]) / RigidArmDoubleWell.D_ARM
        out[metropolis] = (run, r, stats.kstest(r, DoubleWellDimer.r_cdf).pvalue,
                           stats.kstest(nz, stats.uniform(-1, 2).cdf).pvalue)
    run, r, p_r, p_n = out[True]
    assert 0.4 < run.acceptance < 0.95, run.acceptance
    assert np.isfinite(run.dH).mean() > 0.99  # almost every proposal is reversible
    arm = np.linalg.norm(run.positions[-1][:, 1] - run.positions[-1][:, 0], axis=1)
    assert np.abs(arm - RigidArmDoubleWell.D_ARM).max() < 1e-12
    assert p_r > 0.01 and p_n > 0.01, (p_r, p_n)
    _, r_plain, p_plain, _ = out[False]
    assert np.isfinite(r_plain).all() and p_plain < 1e-6, p_plain


@pytest.mark.slow
def test_mm_ethanol_hbonds_metropolized_rattle(prepared):
    """Real MM: ethanol with OpenMM + OpenFF and HBonds constraints, Metropolized RATTLE velocity
    Verlet at 2 fs: constraints held to 1e-12, every proposal reversible, high acceptance."""
    from mdkstep.engines.factory import make_engine
    from mdkstep.baselines.openmm_md import MDConfig
    from mdkstep.model.shear import untrained_shear_kicks
    from mdkstep.molecule.system import from_molecule_dir

    mol = from_molecule_dir(prepared / "ethanol")
    eng = make_engine("openmm", mol, MDConfig())
    j = ShearJumper.for_engine(untrained_shear_kicks(), eng, mol.bonds, 0.002)
    assert j.n_constraints == 6
    rng = np.random.default_rng(0)
    v0 = rng.normal(size=(2, mol.n_atoms, 3)) * np.sqrt(KT / eng.masses)[None, :, None]
    run = run_exact(j, eng, np.stack([mol.positions_nm] * 2), v0, 100, ExactConfig(temperature_K=T_K,
                                                                                     friction_per_ps=5.0),
                    np.random.default_rng(1))
    assert run.acceptance > 0.8 and np.isfinite(run.dH).all()
    res, tan = residual_and_tangency(j.cons, run.positions[-1], run.velocities[-1])
    assert res < 1e-12 and tan < 1e-9


@pytest.mark.slow
def test_training_through_the_rattle_stride_reads_the_constraints_off_the_data():
    """Windows of the rigid Morse cluster from RATTLE Verlet at tau/20: rigid_bonds finds the two
    constraints (and no other bond); 120 steps through the projected stride lower the
    teacher-forced |dH| (cosine schedule), and the trained map is still reversible."""
    from mdkstep.exact.train import (ExactTrainConfig, ExactWindows, fit_scales, rigid_bonds,
                                        teacher_forced_abs_dH, train_exact)

    eng, tau, n_sub = ConstrainedMorse(), 0.006, 20
    fine = rigid_morse_jumper(ShearKicks(random_kicks(tau, 100.0, 0.0).config).double(), tau / n_sub)
    x, v = morse_states(384, np.random.default_rng(9))
    st0 = init_chain(fine, eng, x, v)
    end = run_exact(fine, eng, None, None, n_sub, nve_config(T_K), np.random.default_rng(0), state=st0).state
    cons = rigid_bonds(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, np.concatenate([st0.x, end.x]))
    assert cons is not None and sorted(map(tuple, cons.pairs.tolist())) == [(0, 1), (0, 2)]
    assert np.allclose(cons.lengths, MorseCluster.R0, rtol=1e-10)
    w = ExactWindows(MorseCluster.Z, MorseCluster.MASSES, MorseCluster.BONDS, st0.x, st0.v, st0.f, st0.u,
                     end.x, end.v, end.f, end.u, constraints=cons)
    torch.manual_seed(0)
    kicks = ShearKicks(random_kicks(tau, 100.0, 0.0).config).double()
    fit_scales(kicks, [w], tau)
    before = teacher_forced_abs_dH(kicks, w, tau)
    train_exact(kicks, [w], tau, ExactTrainConfig(steps=120, batch_size=64, lr=3e-3, lambda_x=0.1, lambda_v=0.1,
                                                  temperature_K=T_K, log_every=60, lr_schedule="cosine"))
    after = teacher_forced_abs_dH(kicks, w, tau)
    assert np.median(after) < 0.7 * np.median(before), (np.median(before), np.median(after))
    j = rigid_morse_jumper(kicks, tau)
    st = init_chain(j, eng, x[:4], v[:4])
    assert j.propose_checked(eng, st.x, st.v, st.a)[-1].all()


@pytest.mark.slow
def test_06_runs_exact_mode_on_an_hbonds_molecule(prepared, tmp_path):
    """Stage 06 with a shear checkpoint on MM ethanol (OpenMM + OpenFF, HBonds): the
    RATTLE-projected sampler runs end to end and its trajectory records the constraints."""
    import json

    from conftest import ROOT, load_script

    from mdkstep.model.checkpoint import save_checkpoint, shear_payload
    from mdkstep.config import run_cli
    from mdkstep.model.shear import untrained_shear_kicks
    from mdkstep.trajectory import load_trajectory

    ck = save_checkpoint(tmp_path / "mm_shear.pt", shear_payload(untrained_shear_kicks(), 2, 2.0, "openmm", [1, 6, 8],
                                                                 train_config={"dtype": "float64"}))
    out = tmp_path / "ex.npz"
    argv = ["--checkpoint", str(ck), "--molecule", str(prepared / "ethanol"), "--out", str(out),
            "--md-config", str(ROOT / "configs/md_quick.yaml"), "--hybrid-config", str(ROOT / "configs/hybrid.yaml"),
            "--time-ps", "0.1", "--equil-ps", "0.1", "--set", "friction_per_ps=5.0", "--no-progress",
            "--log-level", "WARNING"]
    with pytest.raises(SystemExit) as e:
        run_cli(load_script("06_hybrid_integrate").main, argv)
    assert e.value.code == 0
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["mode"] == "exact" and stats["tau_fs"] == pytest.approx(4.0) and stats["n_strides"] == 25
    assert 0.1 < stats["acceptance"] <= 1.0 and stats["nonfinite_dH"] == 0
    t = load_trajectory(out)
    assert t.metadata["constraints"] == "hbonds" and t.metadata["n_constraints"] == 6


@pytest.mark.slow
def test_metropolis_is_exact_with_coupled_constraints():
    """Two rigid bonds sharing an atom (the manifold's volume element varies with the angle
    between them): a poor model at 6 fs with the test samples the distances 1-2 and 0-3 like
    RATTLE Verlet at 1 fs (acceptance ~1) from the same starts (two-sample KS); without the
    test it does not. (Measured with 600 chains: p = 0.63 / 0.77 with the test, 1e-59 without.)"""
    eng = ConstrainedMorse()
    x0, v0 = morse_states(400, np.random.default_rng(0))

    def distances(run):
        x = run.positions[-1]
        return np.linalg.norm(x[:, 1] - x[:, 2], axis=1), np.linalg.norm(x[:, 0] - x[:, 3], axis=1)

    small = rigid_morse_jumper(ShearKicks(random_kicks(0.001, 100.0, 0.0).config).double(), 0.001)
    ref = run_exact(small, eng, x0, v0, 420, ExactConfig(T_K, friction_per_ps=10.0), np.random.default_rng(1),
                    record_every=420)
    assert ref.acceptance > 0.99
    poor = rigid_morse_jumper(random_kicks(0.006, 100.0, 1.0, seed=3, max_dvel_nm_per_ps=0.5), 0.006)
    p = {}
    for metropolis in (True, False):
        run = run_exact(poor, eng, x0, v0, 70, ExactConfig(T_K, friction_per_ps=10.0, metropolis=metropolis),
                        np.random.default_rng(2), record_every=70)
        p[metropolis] = [stats.ks_2samp(a, b).pvalue for a, b in zip(distances(ref), distances(run))]
        if metropolis:
            assert 0.4 < run.acceptance < 0.9, run.acceptance
    assert min(p[True]) > 0.01, p
    assert max(p[False]) < 1e-6, p
