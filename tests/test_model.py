"""Physics and contract tests of the k-step models (mdkstep.model): E(3) equivariance,
permutation equivariance, batching, exact momentum conservation, clamps, overfitting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import batch_of, make_model, random_molecule, random_orthogonal, rel_err

from mdkstep.model import GraphBatch, ModelConfig, build_model, graph_hops
from mdkstep.model.common import freeze_first_layers

MASS = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
ARCHS = ["egnn", "transformer_egnn"]
F64 = torch.float64


VEC_KEYS = ("dx", "dv", "forces")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny graphs gain nothing from intra-op threads, and on a busy machine OpenMP
    spinning makes them ~20x slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- graph utilities
def test_graph_hops_chain_and_disconnected():
    hops = graph_hops(5, np.array([[0, 1], [1, 2], [3, 4]]), max_hops=8)
    assert hops.dtype == np.int64 and hops.shape == (5, 5)
    assert hops[0, 2] == 2 and hops[2, 0] == 2 and hops[0, 0] == 0
    assert hops[0, 3] == 8 and hops[3, 4] == 1
    assert graph_hops(5, np.array([[0, 1], [1, 2], [2, 3], [3, 4]]), max_hops=3)[0, 4] == 3


def test_make_graph_batch_layout():
    a, b = random_molecule(5, 1), random_molecule(3, 2)
    gb = batch_of([a, b])
    assert gb.n_graphs == 2 and gb.n_atoms == 8
    assert gb.edge_index.shape == (2, 5 * 4 + 3 * 2) and gb.edge_hops.shape == (26,)
    assert torch.equal(gb.batch, torch.tensor([0] * 5 + [1] * 3))
    src, dst = gb.edge_index
    assert bool((gb.batch[src] == gb.batch[dst]).all()) and bool((src != dst).all())
    assert gb.bond_index.shape == (2, 5 + 2) and int(gb.bond_index[:, 5:].min()) >= 5
    # hop of a bonded pair is 1; bond (0,4) closes the ring of molecule a
    hop = {(int(s), int(d)): int(h) for s, d, h in zip(src, dst, gb.edge_hops)}
    assert hop[(0, 4)] == 1 and hop[(0, 2)] == 2 and hop[(5, 7)] == 2
    from mdkstep.model import graph as graph_mod

    cached = graph_mod._molecule_topology(a["z"], a["bonds"], 8)
    assert graph_mod._molecule_topology(a["z"], a["bonds"], 8) is cached  # topology cache hit
    g32 = gb.to(dtype=torch.float32)
    assert g32.pos.dtype == torch.float32 and g32.edge_index.dtype == torch.long and gb.pos.dtype == F64


# ---------------------------------------------------------------- symmetry
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("det", [1.0, -1.0])
@pytest.mark.parametrize("update_geometry", [True, False])
def test_rotation_reflection_translation_equivariance(arch, det, update_geometry):
    model = make_model(arch, conserve_angular_momentum=True, update_geometry=update_geometry)
    mol = random_molecule(12, 3)
    q = random_orthogonal(7, det)
    shift = np.array([3.0, -1.5, 0.7])
    moved = dict(mol, pos=mol["pos"] @ q.T + shift, vel=mol["vel"] @ q.T, forces=mol["forces"] @ q.T)
    with torch.no_grad():
        out, out_m = model(batch_of([mol])), model(batch_of([moved]))
    qt = torch.as_tensor(q)
    for key in VEC_KEYS:
        assert out[key].abs().max() > 1e-3 * {"dx": 0.05, "dv": 1.5, "forces": 300.0}[key]  # non-trivial
        assert rel_err(out_m[key], out[key] @ qt.T) < 1e-6, key


@pytest.mark.parametrize("arch", ARCHS)
def test_translation_invariance(arch):
    model = make_model(arch)
    mol = random_molecule(10, 4)
    with torch.no_grad():
        out = model(batch_of([mol]))
        out_t = model(batch_of([dict(mol, pos=mol["pos"] + np.array([10.0, -20.0, 5.0]))]))
    for key in VEC_KEYS:
        assert rel_err(out_t[key], out[key]) < 1e-6, key


@pytest.mark.parametrize("arch", ARCHS)
def test_permutation_equivariance(arch):
    model = make_model(arch)
    mol = random_molecule(11, 5)
    perm = np.random.default_rng(0).permutation(11)
    inv = np.argsort(perm)
    permuted = {k: mol[k][perm] for k in ("z", "masses", "pos", "vel", "forces")}
    permuted["bonds"] = inv[mol["bonds"]]
    with torch.no_grad():
        out, out_p = model(batch_of([mol])), model(batch_of([permuted]))
    for key in VEC_KEYS:
        assert rel_err(out_p[key], out[key][perm]) < 1e-6, key


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cutoff", [0.4, None])
def test_batch_equals_single_molecules(arch, cutoff):
    model = make_model(arch, cutoff_nm=cutoff, conserve_angular_momentum=True)
    mols = [random_molecule(9, 6), random_molecule(5, 7), random_molecule(1, 8)]
    with torch.no_grad():
        together = model(batch_of(mols))
        alone = [model(batch_of([m])) for m in mols]
    for key in VEC_KEYS:
        ref = torch.cat([o[key] for o in alone])
        assert torch.allclose(together[key], ref, rtol=1e-10, atol=1e-12), key
    assert torch.all(together["dx"][-1] == 0) and torch.all(together["dv"][-1] == 0)  # lone atom


# ---------------------------------------------------------------- conservation and clamps
def _per_molecule(x: torch.Tensor, gb: GraphBatch) -> torch.Tensor:
    return torch.zeros((gb.n_graphs,) + tuple(x.shape[1:]), dtype=x.dtype).index_add_(0, gb.batch, x)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("angular", [False, True])
def test_momentum_conservation(arch, angular):
    model = make_model(arch, conserve_angular_momentum=angular)
    mols = [random_molecule(10, 9), random_molecule(6, 10), random_molecule(2, 11)]  # incl. a linear molecule
    gb = batch_of(mols)
    with torch.no_grad():
        out = model(gb)
    m = gb.masses.unsqueeze(-1)
    assert out["dv"].abs().max() > 0.01
    assert _per_molecule(m * out["dv"], gb).abs().max() < 1e-10  # total momentum change, amu nm/ps
    assert _per_molecule(m * out["dx"], gb).abs().max() < 1e-10  # centre of mass does not move
    com = _per_molecule(m * gb.pos, gb) / _per_molecule(m, gb)
    xc = gb.pos - com[gb.batch]
    ang = _per_molecule(m * torch.linalg.cross(xc, out["dv"]), gb)  # amu nm^2/ps
    if angular:
        assert ang.abs().max() < 1e-10
    else:
        assert ang.abs().max() > 1e-3  # the projection is what makes it vanish
    assert _per_molecule(out["forces"], gb).abs().max() < 1e-8  # zero net predicted force


@pytest.mark.parametrize("arch", ARCHS)
def test_clamps_hold_on_huge_inputs(arch):
    model = make_model(arch, noise=1.0, conserve_angular_momentum=True, max_disp_nm=0.05, max_dvel_nm_per_ps=3.0)
    model.set_normalization(v_scale=1e-3, f_scale=1e-2, dx_scale=100.0, dv_scale=1e4)
    mols = [random_molecule(8, 12), random_molecule(5, 13)]
    for mol in mols:
        mol["vel"] *= 1e4
        mol["forces"] *= 1e5
    gb = batch_of(mols)
    with torch.no_grad():
        out = model(gb)
    dx_norm, dv_norm = out["dx"].norm(dim=-1), out["dv"].norm(dim=-1)
    assert torch.isfinite(out["dx"]).all() and torch.isfinite(out["dv"]).all()
    assert dx_norm.max() < 0.05 and dv_norm.max() < 3.0
    assert dx_norm.max() > 0.04 and dv_norm.max() > 2.4  # the clamp is engaged
    m = gb.masses.unsqueeze(-1)
    assert _per_molecule(m * out["dv"], gb).abs().max() < 1e-10


def test_clamp_is_near_identity_for_small_outputs():
    from mdkstep.model.common import smooth_clamp

    u = torch.randn(6, 3, dtype=F64) * 1e-3
    out = smooth_clamp(u, torch.zeros(6, dtype=torch.long), 1, 0.25)
    assert rel_err(out, u) < 1e-4


# ---------------------------------------------------------------- misc contracts
@pytest.mark.parametrize("arch", ARCHS)
def test_float32_outputs_and_normalized_keys(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, hidden=16, n_layers=2, n_heads=2))
    model.set_normalization(dx_scale=0.02, dv_scale=2.0)
    gb = batch_of([random_molecule(7, 14)], dtype=torch.float32)
    out = model(gb)
    assert out["dx"].dtype == torch.float32 and set(out) == {"dx", "dv", "dx_norm", "dv_norm"}
    assert torch.allclose(out["dx_norm"] * 0.02, out["dx"]) and torch.allclose(out["dv_norm"] * 2.0, out["dv"])
    assert len(model.layers) == 2 and model.config.arch == arch


def test_state_dict_carries_normalization_and_freeze():
    model = build_model(ModelConfig(hidden=16, n_layers=3))
    model.set_normalization(v_scale=1.1, f_scale=200.0, dx_scale=0.03, dv_scale=0.9)
    state = model.state_dict()
    assert float(state["dx_scale"]) == pytest.approx(0.03) and float(state["f_scale"]) == 200.0
    clone = build_model(ModelConfig(hidden=16, n_layers=3))
    clone.load_state_dict(state)
    assert clone.normalization() == model.normalization()
    n_frozen = freeze_first_layers(clone, 2)
    assert n_frozen > 0
    assert not any(p.requires_grad for p in clone.layers[1].parameters())
    assert all(p.requires_grad for p in clone.layers[2].parameters())
    with pytest.raises(ValueError):
        model.set_normalization(dx_scale=0.0)


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(arch="mace").validate()
    with pytest.raises(ValueError):
        ModelConfig(arch="transformer_egnn", hidden=30, n_heads=4).validate()
    with pytest.raises(ValueError):
        ModelConfig(cutoff_nm=-1.0).validate()


@pytest.mark.parametrize("arch", ARCHS)
def test_cutoff_is_smooth(arch):
    """Moving an atom across the cutoff changes the outputs continuously, also when the
    pair is each atom's last neighbour (2 atoms)."""
    model = make_model(arch, cutoff_nm=0.5)
    for n in (3, 2):
        mol = random_molecule(n, 15)
        mol["pos"] = np.array([[0.0, 0.0, 0.0], [0.5 - 1e-9, 0.0, 0.0], [0.12, 0.05, 0.0]])[:n]
        with torch.no_grad():
            inside = model(batch_of([mol]))
            mol["pos"][1, 0] = 0.5 + 1e-9
            outside = model(batch_of([mol]))
        for key in VEC_KEYS:
            assert rel_err(inside[key], outside[key]) < 1e-6, (n, key)


# ---------------------------------------------------------------- learning
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_batch_overfits(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, hidden=32, n_layers=2, n_heads=4, n_rbf=8))
    model.set_normalization(v_scale=0.8, dx_scale=0.02, dv_scale=0.5)
    mols = [random_molecule(8, 20 + i) for i in range(4)]
    gb = batch_of(mols, dtype=torch.float32)
    # an equivariant, momentum-free target: dx ~ v dt plus a pull to the neighbours
    gen = torch.Generator().manual_seed(1)
    target_dx = 0.02 * gb.vel + 0.01 * torch.randn(gb.pos.shape, generator=gen)
    target_dv = 0.3 * torch.randn(gb.pos.shape, generator=gen)
    with torch.no_grad():
        from mdkstep.model.common import remove_mass_weighted_mean

        tot = torch.zeros(gb.n_graphs).index_add_(0, gb.batch, gb.masses)
        target_dx = remove_mass_weighted_mean(target_dx, gb.masses, gb.batch, gb.n_graphs, tot)
        target_dv = remove_mass_weighted_mean(target_dv, gb.masses, gb.batch, gb.n_graphs, tot)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        out = model(gb)
        return ((out["dx_norm"] - target_dx / 0.02) ** 2).mean() + ((out["dv_norm"] - target_dv / 0.5) ** 2).mean()

    with torch.no_grad():
        first = float(loss_fn())
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(loss_fn())
    print(f"overfit {arch}: {first:.3g} -> {last:.3g}")
    assert last < first / 10.0, (first, last)
