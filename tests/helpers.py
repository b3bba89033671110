"""Shared test helpers (plain functions and classes; fixtures live in conftest.py). Test modules
import these from here, never from one another.

- An analytic harmonic engine for the hybrid integrator: :class:`HarmonicLattice` (with its exact
  propagator), :class:`Oracle` (an exact, optionally wrong, k-step jumper), :func:`start`,
  :func:`cfg`, :func:`run`. Units: nm, ps, kJ/mol, amu, K.
- Small molecules and models for the k-step networks: :func:`random_molecule`, :func:`batch_of`,
  :func:`make_model`, :func:`random_orthogonal`, :func:`rel_err`.
- Exact mode's analytic engines and shear kicks: :class:`MorseCluster`, :class:`DoubleWellDimer`,
  :func:`morse_states`, :func:`tiny_config`, :func:`random_kicks` (T_K, KT).
- A synthetic stage-01 trajectory: :func:`_ethanol_trajectory`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mdkstep.engines.base import ForceEngine
from mdkstep.hybrid import HybridConfig, run_hybrid
from mdkstep.model import GraphBatch, ModelConfig, build_model, make_graph_batch
from mdkstep.model.shear import ShearKicks, randomize_kick_heads_
from mdkstep.trajectory import Trajectory, save_trajectory
from mdkstep.utils import KB_KJ_PER_MOL_K

# ------------------------------------------------------------------ analytic harmonic engine

MASSES = np.array([12.0, 1.008, 15.999, 1.008])  # amu
Z = np.array([6, 1, 8, 1])
X_EQ = np.array([[0.0, 0.0, 0.0], [0.11, 0.0, 0.0], [-0.06, 0.12, 0.0], [-0.14, 0.16, 0.05]])  # nm
SPRINGS = [(0, 1, 3.0e4), (0, 2, 5.0e4), (2, 3, 3.0e4), (1, 2, 1.0e4), (0, 3, 5.0e3)]  # kJ/(mol nm^2)

#: the repository (configs/ is found from here, not the working directory)
ROOT = Path(__file__).resolve().parents[1]


class HarmonicLattice(ForceEngine):
    """U = 1/2 sum_ij k_ij |(x_i - x_j) - (x_eq_i - x_eq_j)|^2: linear forces, pairwise (momentum
    conserving), translation invariant, with an exact solution (:meth:`propagate`)."""

    name = "harmonic"

    def __init__(self):
        super().__init__(MASSES, Z)
        n = len(MASSES)
        k = np.zeros((n, n))
        for i, j, kij in SPRINGS:
            k[i, i] += kij
            k[j, j] += kij
            k[i, j] -= kij
            k[j, i] -= kij
        self.hessian = np.kron(k, np.eye(3))  # (3N, 3N)
        s = 1.0 / np.sqrt(np.repeat(MASSES, 3))
        w2, self.modes = np.linalg.eigh(s[:, None] * self.hessian * s[None, :])
        self.omega = np.sqrt(np.clip(w2, 0.0, None))  # 1/ps

    def _compute(self, x):
        d = (x - X_EQ).reshape(-1)
        g = self.hessian @ d
        return 0.5 * d @ g, -g.reshape(-1, 3)

    def propagate(self, x, v, t):
        """Exact state after time t (ps) from x (...,N,3), v (...,N,3)."""
        sq = np.sqrt(np.repeat(MASSES, 3))
        shape = x.shape
        q = ((x - X_EQ).reshape(-1, 3 * len(MASSES)) * sq) @ self.modes
        p = (v.reshape(-1, 3 * len(MASSES)) * sq) @ self.modes
        w = self.omega
        osc = w > 1e-6
        c, s = np.cos(w * t), np.sin(w * t)
        wsafe = np.where(osc, w, 1.0)
        q1 = np.where(osc, q * c + p * s / wsafe, q + p * t)
        p1 = np.where(osc, -q * wsafe * s + p * c, p)
        x1 = (q1 @ self.modes.T / sq).reshape(shape) + X_EQ
        v1 = (p1 @ self.modes.T / sq).reshape(shape)
        return x1, v1


class Oracle:
    """Exact k-step jump; ``scale`` != 1 makes it slightly wrong; raises at call ``fail_at``."""

    def __init__(self, eng, tau, scale=1.0, fail_at=None):
        self.eng, self.tau, self.scale, self.fail_at, self.calls = eng, tau, scale, fail_at, 0

    def __call__(self, x, v, f):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        x1, v1 = self.eng.propagate(x, v, self.tau)
        return self.scale * (x1 - x), self.scale * (v1 - v)


def start(n_rep, temp=300.0, seed=1, com_velocity=None):
    rng = np.random.default_rng(seed)
    x = X_EQ + rng.normal(scale=0.004, size=(n_rep, 4, 3))
    v = rng.normal(size=(n_rep, 4, 3)) * np.sqrt(KB_KJ_PER_MOL_K * temp / MASSES)[:, None]
    v -= (np.einsum("rij,i->rj", v, MASSES) / MASSES.sum())[:, None]
    if com_velocity is not None:
        v += np.asarray(com_velocity)
    return x, v


def cfg(**kw) -> HybridConfig:
    base = dict(k=4, dt_fs=0.5, ensemble="nve", energy_filter=False, chunk_frames=50, temperature_K=300.0)
    base.update(kw)
    c = HybridConfig(**base)
    c.validate()
    return c


def run(tmp_path, eng, jumper, c, x0, v0, n_cycles, name="h.npz", seed=0, **kw):
    return run_hybrid(eng, jumper, c, x0, v0, n_cycles, tmp_path / name, np.random.default_rng(seed), progress=False, **kw)


# ------------------------------------------------------------- molecules and models

MASS = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
F64 = torch.float64


def random_molecule(n: int, seed: int) -> dict[str, np.ndarray]:
    """A chain of n atoms (random walk, 0.15 nm steps) plus one ring bond; nm, nm/ps, kJ/mol/nm."""
    rng = np.random.default_rng(seed)
    z = rng.choice([1, 6, 7, 8], size=n)
    steps = rng.normal(size=(n, 3))
    steps *= 0.15 / np.linalg.norm(steps, axis=1, keepdims=True)
    pos = np.cumsum(steps, axis=0) + rng.normal(size=3)
    bonds = [[i, i + 1] for i in range(n - 1)] + ([[0, n - 1]] if n > 3 else [])
    return {
        "z": z,
        "masses": np.array([MASS[int(a)] for a in z]),
        "pos": pos,
        "vel": rng.normal(size=(n, 3)) * 0.8,
        "forces": rng.normal(size=(n, 3)) * 400.0,
        "bonds": np.array(bonds, dtype=np.int64).reshape(-1, 2),
    }


def batch_of(mols: list[dict], dtype: torch.dtype = F64) -> GraphBatch:
    return make_graph_batch([m["z"] for m in mols], [m["masses"] for m in mols], [m["pos"] for m in mols],
                            [m["vel"] for m in mols], [m["forces"] for m in mols], [m["bonds"] for m in mols],
                            dtype=dtype)


def make_model(arch: str, seed: int = 0, noise: float = 0.3, **kw) -> torch.nn.Module:
    """Small float64 model with perturbed weights, so that outputs are far from zero."""
    torch.manual_seed(seed)
    opts = dict(arch=arch, hidden=16, n_layers=2, n_heads=2, n_rbf=8, use_forces=True, force_head=True)
    opts.update(kw)
    model = build_model(ModelConfig(**opts)).to(F64)
    model.set_normalization(v_scale=0.7, f_scale=300.0, dx_scale=0.05, dv_scale=1.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def random_orthogonal(seed: int, det: float) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.sign(np.linalg.det(q)) != det:
        q[:, 0] *= -1.0
    return q


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


T_K = 300.0


KT = KB_KJ_PER_MOL_K * T_K


class MorseCluster(ForceEngine):
    """Four atoms, U = sum_{i<j} D (1 - exp(-alpha (r_ij - r0)))^2: anharmonic, pairwise
    (forces sum to zero), rotation and translation invariant. torch inside, so the same
    function gives differentiable forces (:meth:`torch_forces`) for Jacobians."""

    name = "morse4"
    D, ALPHA, R0 = 40.0, 18.0, 0.15  # kJ/mol, 1/nm, nm
    MASSES = np.array([12.0, 14.0, 16.0, 12.0])
    Z = np.array([6, 7, 8, 6])
    BONDS = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])

    def __init__(self):
        super().__init__(self.MASSES, self.Z)

    @classmethod
    def x_eq(cls) -> np.ndarray:
        """Regular tetrahedron of edge R0 (nm), centred."""
        t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
        return t * cls.R0 / (2 * np.sqrt(2))

    @classmethod
    def energy(cls, x: torch.Tensor) -> torch.Tensor:
        """U (...) kJ/mol of x (..., 4, 3) nm."""
        i, j = torch.triu_indices(4, 4, 1)
        r = torch.linalg.vector_norm(x[..., i, :] - x[..., j, :], dim=-1)
        return (cls.D * (1 - torch.exp(-cls.ALPHA * (r - cls.R0))) ** 2).sum(-1)

    @classmethod
    def torch_forces(cls, x: torch.Tensor, create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (G,), F (G*4,3)) of flattened x (G*4,3); differentiable."""
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            u = cls.energy(x.view(-1, 4, 3))
            (g,) = torch.autograd.grad(u.sum(), x, create_graph=create_graph)
        return u, -g

    def _compute(self, x):
        with torch.enable_grad():  # the jumper calls engines under no_grad
            xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            u = self.energy(xt)
            u.backward()
        return float(u.detach()), -xt.grad.numpy()


class DoubleWellDimer(ForceEngine):
    """Two atoms bound by a double-well bond U(r) = h ((r - r0)^2/s^2 - 1)^2 (wells at r0 +- s).
    The Boltzmann marginal of r is p(r) ~ r^2 exp(-U(r)/kT) (:meth:`r_cdf`)."""

    name = "double_well"
    H, R0, S = 1.5 * KT, 0.2, 0.03  # kJ/mol, nm, nm
    MASSES = np.array([12.0, 16.0])
    Z = np.array([6, 8])
    BONDS = np.array([[0, 1]])

    def __init__(self):
        super().__init__(self.MASSES, self.Z)

    @classmethod
    def u_of_r(cls, r):
        q = (r - cls.R0) ** 2 / cls.S**2 - 1.0
        return cls.H * q * q

    def _compute(self, x):
        d = x[0] - x[1]
        r = np.linalg.norm(d)
        q = (r - self.R0) ** 2 / self.S**2 - 1.0
        du = self.H * 2.0 * q * 2.0 * (r - self.R0) / self.S**2
        f0 = -du * d / r
        return self.H * q * q, np.stack([f0, -f0])

    @classmethod
    def r_grid(cls):
        r = np.linspace(0.05, 0.40, 20001)
        p = r**2 * np.exp(-cls.u_of_r(r) / KT)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(r))])
        return r, cdf / cdf[-1]

    @classmethod
    def r_cdf(cls, r):
        grid, cdf = cls.r_grid()
        return np.interp(r, grid, cdf)

    @classmethod
    def boltzmann_states(cls, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n exact Boltzmann samples (x, v) (n,2,3): r by inverse CDF, random direction, COM at 0."""
        grid, cdf = cls.r_grid()
        r = np.interp(rng.uniform(size=n), cdf, grid)
        u = rng.normal(size=(n, 3))
        d = u / np.linalg.norm(u, axis=1, keepdims=True) * r[:, None]
        m = cls.MASSES
        x = np.stack([d * m[1] / m.sum(), -d * m[0] / m.sum()], axis=1)
        v = rng.normal(size=(n, 2, 3)) * np.sqrt(KT / m)[None, :, None]
        return x, v


def tiny_config(**kw) -> ModelConfig:
    base = dict(hidden=16, n_layers=2, n_rbf=8, cutoff_nm=None, rbf_max_nm=0.5, max_hops=3,
                max_dvel_nm_per_ps=50.0)
    base.update(kw)
    return ModelConfig(**base)


def random_kicks(tau: float, f_scale: float, gain: float, n_inner: int = 1, seed: int = 0, members: int = 1,
                 **kw) -> ShearKicks:
    """A float64 ShearKicks with deliberately non-zero random corrections of size ~gain x the
    Verlet half kick."""
    torch.manual_seed(seed)
    kicks = ShearKicks(tiny_config(**kw), n_inner=n_inner, members=members).double()
    kicks.set_scales(f_scale=f_scale, kick_scale=0.5 * tau * f_scale / 12.0)
    randomize_kick_heads_(kicks, gain=gain, generator=torch.Generator().manual_seed(seed + 1))
    return kicks


def morse_states(n: int, rng: np.random.Generator, sigma_nm: float = 0.008) -> tuple[np.ndarray, np.ndarray]:
    """Thermal-like states of the Morse cluster: jittered tetrahedron, Maxwell-Boltzmann v, no COM motion."""
    m = MorseCluster.MASSES
    x = MorseCluster.x_eq() + rng.normal(scale=sigma_nm, size=(n, 4, 3))
    v = rng.normal(size=(n, 4, 3)) * np.sqrt(KT / m)[None, :, None]
    v -= (np.einsum("rij,i->rj", v, m) / m.sum())[:, None]
    return x, v


def _ethanol_trajectory(path, n_frames: int = 1000, dt_fs: float = 2.0) -> None:
    """A smooth, synthetic ethanol trajectory (RDKit conformer + per-atom harmonic motion), with
    forces: training tests need the shapes and time stamps of stage-01 output, not its physics."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    x0 = mol.GetConformer().GetPositions() / 10.0  # nm
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    m = np.array([a.GetMass() for a in mol.GetAtoms()])
    rng = np.random.default_rng(0)
    amp, omega, phase = rng.uniform(0.002, 0.006, x0.shape), rng.uniform(20, 60, x0.shape), rng.uniform(0, 6.3, x0.shape)
    t = np.arange(n_frames)[:, None, None] * dt_fs / 1000.0  # ps
    pos = x0 + amp * np.sin(omega * t + phase)
    vel = amp * omega * np.cos(omega * t + phase)
    forces = -(m[:, None] * omega**2) * (pos - x0)
    meta = {"dt_fs": dt_fs, "save_interval": 1, "engine": "openmm", "method": "synthetic", "temperature_K": 300.0,
            "friction": 1.0, "seed": 0, "smiles": "CCO", "constraints": "none", "molecule": "ethanol"}
    save_trajectory(path, Trajectory(positions=pos, velocities=vel, energies=np.zeros(n_frames),
                                     temperature=np.full(n_frames, 300.0), atom_types=z, masses=m,
                                     time_ps=t.ravel() + dt_fs / 1000.0, metadata=meta, forces=forces))


def tiny_bench_config(tmp_path) -> dict:
    """The benchmark on a tiny setting (ethanol MM, water QM, minutes -> seconds); writes two .smi files."""
    (tmp_path / "mm.smi").write_text("# tiny\nCCO ethanol\n")
    (tmp_path / "qm.smi").write_text("O water\n")
    tiny_train = {"max_steps": 3, "batch_size": 16, "warmup_steps": 1, "val_max_windows": 64,
                  "metrics_max_windows": 64, "norm_max_windows": 64}
    tiny_model = {"hidden": 16, "n_layers": 1, "use_forces": True}
    c = str(ROOT / "configs")
    return {
        "out_dir": str(tmp_path / "bench"), "threads": 1, "timing_repeats": 2, "ref_replicas": 3,
        "use_shipped_models": False,  # train the tiny models here even where models/ holds shipped ones
        "heldout_one_jump": True,  # the generalization section's one-jump table (on each molecule's own run)
        "mm_smiles": str(tmp_path / "mm.smi"), "mm_prep_config": f"{c}/prep.yaml", "mm_scan_dts_fs": [2, 3],
        "mm_scan_ps": 0.2, "mm_scan_max_drift_per_atom": 1.0e3, "mm_equil_ps": 0.1, "mm_time_ps": 0.4,
        "mm_nve_ps": 0.1, "mm_timing_ps": 0.05, "mm_ks": [4], "mm_train_ps": 0.4,
        "mm_model_config": f"{c}/model.yaml", "mm_model_overrides": tiny_model,
        "mm_train_config": f"{c}/train.yaml", "mm_train_overrides": tiny_train, "mm_hybrid_config": f"{c}/hybrid.yaml",
        "mm_hybrid_overrides_by_k": {4: {"friction_per_ps": 30.0}},
        "mm_schedules": [[4, 4]],  # a stride schedule row (hybrid_k4+4: the k = 4 model twice per cycle)
        "mm_schedule_hybrid_overrides": {"friction_per_ps": 25.0},  # the schedule rows' own bath
        "mm_mvv_dts_fs": [4.0], "mm_exact_ks": [2],  # exact mode on the HBonds system (RATTLE-projected)
        "mm_exact_train_overrides": {"steps": 3, "batch_size": 16, "val_max_windows": 64, "log_every": 1},
        "qm_smiles": str(tmp_path / "qm.smi"), "qm_config": f"{c}/qm.yaml",
        "qm_overrides": {"equilibration_ps": 0.01, "minimize_steps": 3}, "qm_plain_dts_fs": [0.5],
        "qm_time_ps": 0.02, "qm_nve_ps": 0.005, "qm_timing_ps": 0.005, "qm_ks": [4], "qm_train_ps": 0.03,
        "qm_model_config": f"{c}/model_qm.yaml", "qm_model_overrides": {**tiny_model, "arch": "egnn"},
        "qm_train_config": f"{c}/train_qm.yaml", "qm_train_overrides": tiny_train, "qm_hybrid_config": f"{c}/hybrid_qm.yaml",
        "qm_exact_ks": [4], "qm_mvv_dts_fs": [0.5],
        "qm_exact_train_overrides": {"steps": 3, "batch_size": 16, "val_max_windows": 64, "log_every": 1},
    }


def run_06b(argv, monkeypatch) -> tuple[int, list]:
    """Stage 06b in-process: (exit code, the engines it built, to read their own call counters)."""
    import mdkstep.engines.factory as factory
    from mdkstep.config import run_cli

    from conftest import load_script

    built = []
    orig = factory.make_engine

    def spy(*a, **kw):
        built.append(orig(*a, **kw))
        return built[-1]

    monkeypatch.setattr(factory, "make_engine", spy)
    mod = load_script("06b_hybrid_integrate_qm")
    try:
        run_cli(mod.main, argv)
    except SystemExit as e:
        return int(e.code or 0), built
    return 0, built
