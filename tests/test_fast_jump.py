"""The jumper's fast EGNN path (mdkstep.model.fast) against the model's own forward.

In float64 the two must agree to 1e-10 (the same arithmetic, reordered); in float32 to 2e-6 of
each output's scale: the float32 reference itself is ~1.2e-6 from its float64 twin on these
inputs, so a tighter float32 bound would test rounding, not the path.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mdkstep.model.checkpoint import model_from_checkpoint
from mdkstep.model.fast import FastEGNN, supports
from mdkstep.model.jumper import ModelJumper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("qm_k16", "mm_k8")
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


@pytest.fixture(scope="module")
def aspirin():
    from mdkstep.molecule.system import from_smiles

    return from_smiles(ASPIRIN, "aspirin")


def _inputs(system, rng, stretch: float = 1.0):
    """2 replicas: the conformer (jittered) and one stretched by ``stretch`` so that pairs
    leave, straddle and stay inside the 0.7 nm cutoff; v ~ N(0, 0.5) nm/ps, F ~ N(0, 500)."""
    x0 = np.asarray(system.positions_nm, dtype=float)
    x = np.stack([x0, x0 * stretch]) + rng.normal(0.0, 0.02, (2,) + x0.shape)
    return x, rng.normal(0.0, 0.5, x.shape), rng.normal(0.0, 500.0, x.shape)


def _rel(a, b) -> float:
    """max |a - b| / max |b| over the outputs (dx nm, dv nm/ps [, forces kJ/mol/nm])."""
    return max(float(np.abs(p - q).max() / np.abs(q).max()) for p, q in zip(a, b) if q is not None)


def _load(name: str, dtype=torch.float32):
    path = ROOT / "models" / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{path} not shipped")
    return model_from_checkpoint(path, dtype=dtype)[0]


@pytest.mark.parametrize("name", MODELS)
def test_fast_equals_reference(name, aspirin):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = len(aspirin.atomic_numbers)
    args = (aspirin.atomic_numbers, aspirin.masses, aspirin.bonds)
    m32, m64 = _load(name), _load(name, torch.float64)
    assert supports(m32, n)
    ref32, ref64 = ModelJumper(m32, *args, fast=False), ModelJumper(m64, *args, fast=False)
    fast32, fast64 = ModelJumper(m32, *args), ModelJumper(m64, *args)
    eager32 = FastEGNN(m32, *args, n_rep=2, trace=False)
    assert fast32.fast and fast64.fast and not ref32.fast
    cutoff = m32.config.cutoff_nm
    for stretch in (1.0, 1.0, 1.3, 1.6):
        x, v, f = _inputs(aspirin, rng, stretch)
        if stretch > 1.2:  # the stretched replica has pairs on both sides of the cutoff, inside the envelope
            d = np.linalg.norm(x[1][:, None] - x[1][None], axis=-1)[~np.eye(n, dtype=bool)]
            assert (d > cutoff).any() and ((d < cutoff) & (d > 0.8 * cutoff)).any()
        r32, r64 = ref32(x, v, f), ref64(x, v, f)
        assert _rel(fast64(x, v, f), r64) < 1e-10  # the same arithmetic
        out = fast32(x, v, f)
        assert _rel(out, r32) < 2e-6 and _rel(eager32(x, v, f), r32) < 2e-6
        assert _rel(out, r64) < 2e-6
        assert all(o.shape == (2, n, 3) and o.dtype == np.float64 for o in out if o is not None)
        assert (out[2] is None) == (not m32.config.force_head)
    assert fast32._fast[2].traced


def test_fast_path_falls_back(aspirin):
    """Unsupported models keep the reference forward (e.g. the angular-momentum projection)."""
    m = _load("mm_k8")
    m.config.conserve_angular_momentum = True
    try:
        j = ModelJumper(m, aspirin.atomic_numbers, aspirin.masses, aspirin.bonds)
        assert not j.fast and not supports(m, len(aspirin.atomic_numbers))
    finally:
        m.config.conserve_angular_momentum = False


def test_fast_timing_smoke(aspirin):
    """Interleaved reference vs fast ms/jump (ModelJumper.ms) on qm_k16, one replica; prints."""
    torch.set_num_threads(1)
    m = _load("qm_k16")
    args = (aspirin.atomic_numbers, aspirin.masses, aspirin.bonds)
    ref, fast = ModelJumper(m, *args, fast=False), ModelJumper(m, *args)
    rng = np.random.default_rng(1)
    x = np.asarray(aspirin.positions_nm)[None]
    v, f = rng.normal(0, 0.5, x.shape), rng.normal(0, 500, x.shape)
    t0 = time.perf_counter()
    for _ in range(60):
        ref(x, v, f)
        fast(x, v, f)
    a, b = np.array(ref.ms[10:]), np.array(fast.ms[10:])
    print(f"\nqm_k16 aspirin ms/jump: reference median {np.median(a):.3f} min {a.min():.3f}; "
          f"fast median {np.median(b):.3f} min {b.min():.3f}; fast set-up {fast.setup_ms[0]:.0f} ms "
          f"({time.perf_counter() - t0:.1f} s)")
    assert np.isfinite(b).all()
