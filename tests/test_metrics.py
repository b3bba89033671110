"""Analytic tests of the rollout fidelity distances (docs/metrics.md) and the replica floor.

Small synthetic trajectories whose distances are known by construction: positions in nm,
distances reported in Å (bonds) and degrees (angles, dihedrals).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import random_orthogonal

from mdkstep.analysis.evaluation import replica_floor
from mdkstep.analysis.metrics import compare
from mdkstep.molecule.topology import topology_lists
from mdkstep.trajectory import Trajectory

F = 120  # frames; more than the 50 VACF lags
DT_PS = 0.01
DISTANCE_KEYS = ("bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1", "vacf_l2",
                 "temperature_mean_diff_K")

# methanol C0 O1 H2 H3 H4 (on C) H5 (on O): the three H-C-O-H dihedrals are pooled (methyl
# hydrogens) and fast (the C carries 3 H), so they are scored by circular W1.
Z_MEOH = np.array([6, 8, 1, 1, 1, 1])
MASSES_MEOH = np.array([12.011, 15.999, 1.008, 1.008, 1.008, 1.008])
BONDS_MEOH = [[0, 1], [0, 2], [0, 3], [0, 4], [1, 5]]
TOPO_MEOH = topology_lists(6, np.array(BONDS_MEOH))


def unit(polar_deg: float, azimuth_deg: float) -> np.ndarray:
    t, p = np.radians(polar_deg), np.radians(azimuth_deg)
    return np.array([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)])


def methanol_frames(oh_shift_nm: float = 0.0, psi_offset_deg: float = 0.0) -> np.ndarray:
    """(F, 6, 3) nm: C at the origin, O on +z; per frame the bond lengths breathe and the
    hydroxyl H turns about C-O by up to +-15 deg. ``oh_shift_nm`` lengthens O-H in every
    frame, ``psi_offset_deg`` turns the hydroxyl H further (every H-C-O-H dihedral shifts by it)."""
    f = np.arange(F)
    s = np.sin(2 * np.pi * f / 37.0)
    x = np.zeros((F, 6, 3))
    x[:, 1] = np.outer(0.1430 + 0.0030 * s, [0, 0, 1])
    for i, az in zip((2, 3, 4), (0.0, 120.0, 240.0)):
        x[:, i] = np.outer(0.1090 + 0.0020 * np.cos(2 * np.pi * f / 23.0 + i), unit(109.47, az))
    psi = 60.0 + 15.0 * np.sin(2 * np.pi * f / 29.0) + psi_offset_deg
    r_oh = 0.0960 + 0.0025 * np.cos(2 * np.pi * f / 31.0) + oh_shift_nm
    x[:, 5] = x[:, 1] + r_oh[:, None] * np.stack([unit(71.5, p) for p in psi])
    return x


def random_velocities(n_atoms: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.5, size=(F, n_atoms, 3))


def make_traj(positions: np.ndarray, velocities: np.ndarray, z: np.ndarray, masses: np.ndarray,
              temperature_K: float = 300.0) -> Trajectory:
    n = positions.shape[0]
    return Trajectory(positions=positions, velocities=velocities, energies=np.zeros(n),
                      temperature=np.full(n, temperature_K), atom_types=z, masses=masses,
                      time_ps=np.arange(n) * DT_PS, metadata={})


def methanol(oh_shift_nm: float = 0.0, psi_offset_deg: float = 0.0, velocities: np.ndarray | None = None,
             temperature_K: float = 300.0) -> Trajectory:
    v = random_velocities(6) if velocities is None else velocities
    return make_traj(methanol_frames(oh_shift_nm, psi_offset_deg), v, Z_MEOH, MASSES_MEOH, temperature_K)


def test_identical_trajectories_are_at_distance_zero():
    d = compare(methanol(), methanol(), TOPO_MEOH, DT_PS)
    for k in DISTANCE_KEYS:
        assert d[k] == pytest.approx(0.0, abs=1e-12), k
    assert np.isnan(d["slow_rotamer_tv"])  # methanol has no dihedral about a rotatable bond


def test_rigid_rotation_and_translation_change_nothing():
    ref = methanol()
    rot = random_orthogonal(1, det=1.0)
    moved = make_traj(ref.positions @ rot.T + np.array([0.7, -1.3, 2.1]), ref.velocities @ rot.T,
                      Z_MEOH, MASSES_MEOH)
    d = compare(ref, moved, TOPO_MEOH, DT_PS)
    for k in DISTANCE_KEYS:
        assert d[k] == pytest.approx(0.0, abs=1e-9), k
    # a different rotation and translation per frame leaves every structure distance unchanged too
    per_frame = np.stack([x @ random_orthogonal(10 + i, det=1.0).T + 0.1 * i for i, x in enumerate(ref.positions)])
    d = compare(ref, make_traj(per_frame, ref.velocities, Z_MEOH, MASSES_MEOH), TOPO_MEOH, DT_PS)
    for k in ("bond_w1_A", "mean_bond_err_A", "angle_w1_deg", "dihedral_w1_deg", "rdf_l1"):
        assert d[k] == pytest.approx(0.0, abs=1e-9), k


def test_uniform_shift_of_one_bond_gives_known_bond_w1_and_mean_error_in_angstrom():
    shift_nm = 0.005  # O-H 0.05 Å longer in every frame: W1 of that bond = 0.05 Å, the others 0
    d = compare(methanol(), methanol(oh_shift_nm=shift_nm), TOPO_MEOH, DT_PS)
    expected_A = shift_nm * 10.0 / len(BONDS_MEOH)  # averaged over the 5 bonds
    assert d["bond_w1_A"] == pytest.approx(expected_A, rel=1e-9)
    assert d["mean_bond_err_A"] == pytest.approx(expected_A, rel=1e-9)
    # moving H along O->H changes no angle and no dihedral
    assert d["angle_w1_deg"] == pytest.approx(0.0, abs=1e-7)
    assert d["dihedral_w1_deg"] == pytest.approx(0.0, abs=1e-7)


def test_dihedral_offset_gives_known_circular_w1_in_degrees():
    # turning the hydroxyl H by 10 deg shifts the pooled H-C-O-H distribution (three arcs 30 deg
    # wide, 120 deg apart) by 10 deg: circular W1 = 10 deg; bonds and angles are untouched
    d = compare(methanol(), methanol(psi_offset_deg=10.0), TOPO_MEOH, DT_PS)
    assert d["dihedral_w1_deg"] == pytest.approx(10.0, rel=1e-6)
    assert d["bond_w1_A"] == pytest.approx(0.0, abs=1e-9)
    assert d["angle_w1_deg"] == pytest.approx(0.0, abs=1e-6)
    # across the +-180 deg seam the circular distance stays the shortest way round
    d = compare(methanol(psi_offset_deg=110.0), methanol(psi_offset_deg=130.0), TOPO_MEOH, DT_PS)
    assert d["dihedral_w1_deg"] == pytest.approx(20.0, rel=1e-6)


def test_angle_w1_in_degrees_and_rdf_l1_of_disjoint_pair_histograms():
    # water-like, rigid: H-O-H 104.5 deg vs 90 deg. Angle W1 = 14.5 deg; the two O-H pairs
    # (1/3 of the pair mass) sit in the same bin in both, the H-H pair moves to another bin:
    # L1 = 1/3 + 1/3.
    z, m = np.array([8, 1, 1]), np.array([15.999, 1.008, 1.008])
    topo = topology_lists(3, np.array([[0, 1], [0, 2]]))

    def water(angle_deg: float) -> np.ndarray:
        x = np.zeros((F, 3, 3))
        x[:, 1] = 0.0957 * unit(90.0, 0.0)
        x[:, 2] = 0.0957 * unit(90.0, angle_deg)
        return x

    v = random_velocities(3)
    d = compare(make_traj(water(104.5), v, z, m), make_traj(water(90.0), v, z, m), topo, DT_PS)
    assert d["angle_w1_deg"] == pytest.approx(14.5, rel=1e-6)
    assert d["bond_w1_A"] == pytest.approx(0.0, abs=1e-12)
    assert d["rdf_l1"] == pytest.approx(2.0 / 3.0, rel=1e-12)
    assert np.isnan(d["dihedral_w1_deg"])  # no dihedral: no figure rather than a fake 0


def test_vacf_distance_is_normalized_and_known_for_alternating_velocities():
    rng = np.random.default_rng(3)
    v0 = rng.normal(size=(6, 3))
    steady = np.broadcast_to(v0, (F, 6, 3)).copy()  # VACF = 1 at every lag
    alternating = steady * ((-1.0) ** np.arange(F))[:, None, None]  # VACF = (-1)^lag
    ref = methanol(velocities=steady)
    # the VACF is normalized: scaling every velocity does not change it
    assert compare(ref, methanol(velocities=3.0 * steady), TOPO_MEOH, DT_PS)["vacf_l2"] == pytest.approx(0.0, abs=1e-12)
    d = compare(ref, methanol(velocities=alternating), TOPO_MEOH, DT_PS)
    lags = np.arange(51)  # lags 0..50 frames
    expected = np.sqrt(np.mean((1.0 - (-1.0) ** lags) ** 2))
    assert d["vacf_l2"] == pytest.approx(expected, rel=1e-9)


def test_slow_dihedral_is_scored_by_rotamer_populations():
    # H-O-O-H: the dihedral is about a rotatable bond, so it is "slow": total variation of the
    # g-/g+/trans populations. All trans vs half g+ half trans: TV = 0.5.
    z, m = np.array([1, 8, 8, 1]), np.array([1.008, 15.999, 15.999, 1.008])
    topo = topology_lists(4, np.array([[0, 1], [1, 2], [2, 3]]))

    def hooh(phis_deg: np.ndarray) -> np.ndarray:
        x = np.zeros((len(phis_deg), 4, 3))
        x[:, 2] = [0.0, 0.0, 0.1475]
        x[:, 0] = 0.0965 * unit(80.0, 0.0)
        x[:, 3] = x[:, 2] + 0.0965 * np.stack([unit(100.0, p) for p in phis_deg])
        return x

    v = random_velocities(4)
    trans = hooh(np.full(F, 180.0))
    mixed = hooh(np.where(np.arange(F) % 2 == 0, 60.0, 180.0))
    d = compare(make_traj(trans, v, z, m), make_traj(mixed, v, z, m), topo, DT_PS)
    assert d["slow_rotamer_tv"] == pytest.approx(0.5)
    assert np.isnan(d["dihedral_w1_deg"])  # no fast dihedral in H-O-O-H
    assert compare(make_traj(trans, v, z, m), make_traj(trans, v, z, m), topo, DT_PS)["slow_rotamer_tv"] == 0.0


def test_replica_floor_of_identical_replicas_is_zero():
    floor = replica_floor([methanol(), methanol(), methanol()], TOPO_MEOH, DT_PS)
    assert floor["n_pairs"] == 3
    for k in DISTANCE_KEYS:
        assert floor[k] == pytest.approx(0.0, abs=1e-12), k
        assert floor[f"{k}_replica"] == pytest.approx([0.0, 0.0], abs=1e-12), k
    assert "slow_rotamer_tv" not in floor  # NaN for every pair: no floor
    assert replica_floor([methanol()], TOPO_MEOH, DT_PS) == {}  # one replica: no floor


def test_replica_floor_with_a_known_bond_bias_is_the_largest_pair_distance():
    shift_nm = 0.004
    per_pair_A = shift_nm * 10.0 / len(BONDS_MEOH)
    floor = replica_floor([methanol(), methanol(oh_shift_nm=shift_nm)], TOPO_MEOH, DT_PS)
    assert floor["n_pairs"] == 1
    assert floor["bond_w1_A"] == pytest.approx(per_pair_A, rel=1e-9)
    assert floor["mean_bond_err_A"] == pytest.approx(per_pair_A, rel=1e-9)
    # three replicas biased 0, 1, 2 x: pairs at 1, 1, 2 x; the floor is the max, the range [min, max]
    reps = [methanol(oh_shift_nm=i * shift_nm, temperature_K=300.0 + 5.0 * i) for i in range(3)]
    floor = replica_floor(reps, TOPO_MEOH, DT_PS)
    assert floor["n_pairs"] == 3
    assert floor["bond_w1_A"] == pytest.approx(2 * per_pair_A, rel=1e-9)
    assert floor["bond_w1_A_replica"] == pytest.approx([per_pair_A, 2 * per_pair_A], rel=1e-9)
    assert floor["mean_bond_err_A"] == pytest.approx(2 * per_pair_A, rel=1e-9)
    # the signed temperature difference enters the floor as its largest magnitude
    assert floor["temperature_mean_diff_K"] == pytest.approx(10.0)
    assert floor["temperature_mean_diff_K_replica"] == pytest.approx([5.0, 10.0])
