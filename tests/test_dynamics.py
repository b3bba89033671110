"""The physics floor (mdkstep.dynamics): degrees of freedom, per-element temperature, the
O-step, the constrained velocity-Verlet step. Units: nm, ps, kJ/mol, amu, K."""
from __future__ import annotations

import numpy as np
import pytest

from mdkstep.dynamics import atom_dof, kinetic_energy, n_dof, ou_step, velocity_verlet_step
from mdkstep.analysis.metrics import per_element_temperature
from mdkstep.trajectory import Trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K, center_of_mass, remove_com

T = 300.0


def _ethanol():
    """Ethanol geometry (nm), atomic numbers, masses (amu) and its X-H bonds, from RDKit."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    x = mol.GetConformer().GetPositions() / 10.0
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    m = np.array([a.GetMass() for a in mol.GetAtoms()])
    hb = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()
                   if 1 in (z[b.GetBeginAtomIdx()], z[b.GetEndAtomIdx()])])
    return x, z, m, hb


def _constrained_context(x, m, pairs):
    """An OpenMM Context with only particles and distance constraints (no forces)."""
    import openmm

    system = openmm.System()
    for mi in m:
        system.addParticle(mi)
    for i, j in pairs:
        system.addConstraint(int(i), int(j), float(np.linalg.norm(x[i] - x[j])))
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(x)
    return ctx


def _maxwell_boltzmann(m, n_frames, rng):
    return rng.standard_normal((n_frames, len(m), 3)) * np.sqrt(KB_KJ_PER_MOL_K * T / m)[None, :, None]


@pytest.mark.parametrize("hbonds", [False, True])
def test_per_element_temperature_reads_300K_on_maxwell_boltzmann(hbonds):
    """Bug (issue 10): the per-element temperature forgot the centre-of-mass share of each
    atom's dof: on COM-free 300 K ethanol it read C 222 / O 194 / H 295 K."""
    x, z, m, hb = _ethanol()
    rng = np.random.default_rng(0)
    n_frames = 3000
    v = _maxwell_boltzmann(m, n_frames, rng)
    v -= np.einsum("fij,i->fj", v, m)[:, None] / m.sum()
    pairs = hb if hbonds else np.zeros((0, 2), dtype=int)
    if hbonds:
        ctx = _constrained_context(x, m, pairs)
        for f in range(n_frames):
            ctx.setVelocities(v[f])
            ctx.applyVelocityConstraints(1e-10)
            w = ctx.getState(getVelocities=True).getVelocities(asNumpy=True)._value
            v[f] = w - m @ w / m.sum()
    dof = atom_dof(m, x, pairs)
    assert dof.sum() == pytest.approx(n_dof(len(m), len(pairs)), abs=1e-9)
    traj = Trajectory(positions=np.repeat(x[None], n_frames, 0), velocities=v, energies=np.zeros(n_frames),
                      temperature=np.zeros(n_frames), atom_types=z, masses=m, time_ps=np.arange(n_frames) * 1e-3,
                      metadata={"constraints": "hbonds" if hbonds else "none"})
    per = per_element_temperature(traj, pairs)
    for sym, zval in (("C", 6), ("O", 8), ("H", 1)):
        err = 3 * T * np.sqrt(2.0 / (n_frames * dof[z == zval].sum()))  # 3 sigma of the sample mean
        assert per[sym] == pytest.approx(T, abs=err), (sym, per)
    # the total temperature with the total dof agrees too
    t_all = 2 * kinetic_energy(v, m).mean() / (n_dof(len(m), len(pairs)) * KB_KJ_PER_MOL_K)
    assert t_all == pytest.approx(T, rel=0.01)


def test_atom_dof_without_constraints_is_three_minus_com_share():
    m = np.array([12.0, 1.0, 16.0])
    assert np.allclose(atom_dof(m), 3.0 * (1 - m / m.sum()))
    assert np.allclose(atom_dof(m, com_removed=False), 3.0)


def test_ou_step_samples_maxwell_boltzmann_per_atom():
    m = np.array([1.0, 16.0])
    rng = np.random.default_rng(1)
    kT = KB_KJ_PER_MOL_K * T
    v = np.zeros((20000, 2, 3))
    for _ in range(3):
        v = np.stack([ou_step(vi, m, 10.0, 0.1, kT, rng) for vi in v])
    ke = 0.5 * m[None, :] * np.sum(v * v, axis=-1)
    assert ke.mean(axis=0) == pytest.approx(1.5 * kT * (1 - np.exp(-2 * 10.0 * 0.3)), rel=0.02)


def test_velocity_verlet_step_conserves_energy_and_one_call():
    from helpers import MASSES, X_EQ, HarmonicLattice  # analytic engine

    eng = HarmonicLattice()
    rng = np.random.default_rng(2)
    x = X_EQ + rng.normal(scale=0.003, size=X_EQ.shape)
    v = rng.normal(size=X_EQ.shape) * np.sqrt(KB_KJ_PER_MOL_K * T / MASSES)[:, None]
    u, f = eng.compute(x)
    e0 = u + kinetic_energy(v, MASSES)
    calls = eng.counters.calls
    es = []
    for _ in range(2000):
        x, v, f, u = velocity_verlet_step(eng, x, v, f, 0.0002, MASSES)
        es.append(u + kinetic_energy(v, MASSES))
    assert eng.counters.calls - calls == 2000
    assert np.max(np.abs(np.array(es) - e0)) < 0.01 * abs(e0) + 0.05


def test_center_of_mass_is_the_direct_mass_weighted_mean_for_one_frame_and_many():
    """The one centre-of-mass implementation (mdkstep.utils) against sum_i m_i x_i / sum_i m_i
    written out; a stack of frames gives exactly the per-frame results."""
    rng = np.random.default_rng(3)
    m = rng.uniform(1.0, 16.0, 9)
    x = rng.normal(size=(5, 9, 3))
    direct = np.array([[sum(m[i] * x[f, i, d] for i in range(9)) / sum(m) for d in range(3)] for f in range(5)])
    assert np.allclose(center_of_mass(x, m), direct, rtol=1e-14, atol=1e-15)
    assert np.array_equal(center_of_mass(x, m), np.stack([center_of_mass(xf, m) for xf in x]))
    w = remove_com(x, m)
    assert w.shape == x.shape
    assert np.abs(np.einsum("fij,i->fj", w, m)).max() < 1e-12
    assert np.array_equal(remove_com(x[2], m), w[2])
