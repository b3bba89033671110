"""The one System type (loaders), the one engine factory (every kind that installs here),
the counted force-call span, the threadpoolctl thread limit and the networkx ring bonds."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mdkstep.molecule.prep import PrepConfig
from mdkstep.engines.base import EngineCounters, ForceEngine
from mdkstep.engines.factory import make_engine
from mdkstep.molecule.system import System, from_molecule_dir, from_smi_file, from_smiles
from mdkstep.utils import MdkstepError


# ------------------------------------------------------------------------------ System

def test_molecule_dir_and_smiles_give_the_same_facts(prepared):
    d = from_molecule_dir(prepared / "ethanol")
    s = from_smiles("CCO", "ethanol", seed=PrepConfig().seed)  # stage 00 embeds with the same seed
    assert d.name == s.name == "ethanol" and d.smiles == s.smiles == "CCO"
    assert d.atomic_numbers.tolist() == s.atomic_numbers.tolist()
    assert np.allclose(d.masses, s.masses, atol=2e-3)  # OpenMM's vs RDKit's standard atomic weights
    assert d.charge == s.charge == 0 and d.multiplicity == s.multiplicity == 1
    for key in ("bonds", "angles", "dihedrals"):
        assert getattr(d, key).tolist() == getattr(s, key).tolist(), key
    assert d.positions_nm.shape == s.positions_nm.shape == (9, 3)
    assert d.source == "dir:ethanol" and s.source == "smiles"
    assert d.forcefield == PrepConfig().forcefield and d.bonds_from.endswith("topology.json")
    assert d.openmm_system().getNumParticles() == 9
    with pytest.raises(MdkstepError, match="has no OpenMM system.xml"):
        s.openmm_system()


def test_smiles_charge_multiplicity_and_smi_file(tmp_path):
    assert from_smiles("[NH4+]", "ammonium").charge == 1
    assert from_smiles("[CH3]", "methyl").multiplicity == 2
    smi = tmp_path / "m.smi"
    smi.write_text("# two molecules\nO water\nCC(=O)O acetic_acid\n")
    systems = from_smi_file(smi)
    assert [m.name for m in systems] == ["water", "acetic_acid"] and systems[1].n_atoms == 8
    assert systems[0].topology() == {"bonds": [[0, 1], [0, 2]], "angles": [[1, 0, 2]], "dihedrals": []}
    smi.write_text("O water\nC1CC bad\n")
    with pytest.raises(MdkstepError, match=rf"^{smi}:2: unparsable SMILES"):
        from_smi_file(smi)


def test_system_checks_shapes():
    with pytest.raises(MdkstepError, match="system w: 3 atoms but masses"):
        System("w", [8, 1, 1], [16.0, 1.0], np.zeros((3, 3)))
    with pytest.raises(MdkstepError, match="multiplicity must be >= 1"):
        System("w", [8], [16.0], np.zeros((1, 3)), multiplicity=0)
    s = System("w", [8, 1, 1], [16.0, 1.0, 1.0], np.zeros((3, 3)), bonds=[[0, 1], [0, 2]])
    assert s.bonds.shape == (2, 2) and s.angles.shape == (0, 3) and s.dihedrals.shape == (0, 4)


# ------------------------------------------------------------------------------ make_engine

def test_make_engine_openmm_matches_the_baseline_system(prepared):
    import openmm

    from mdkstep.baselines.openmm_md import MDConfig, build_system

    mol = from_molecule_dir(prepared / "ethanol")
    cfg = MDConfig()
    eng = make_engine("openmm", mol, cfg)
    assert eng.name == "openmm" and eng.n_constraints == 6  # HBonds: every X-H of ethanol
    e, f = eng.compute(mol.positions_nm)
    ctx = openmm.Context(build_system(mol, cfg), openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(mol.positions_nm)
    ref = ctx.getState(getEnergy=True).getPotentialEnergy()._value
    assert e == pytest.approx(ref, abs=1e-6) and f.shape == (9, 3) and eng.counters.calls == 1
    assert make_engine("openmm", mol, {"constraints": "none"}).n_constraints == 0


@pytest.fixture(scope="module")
def water():
    return from_smiles("O", "water")


def test_make_engine_xtb(water):
    eng = make_engine("xtb", water, {"method": "GFN2-xTB"})
    e, f = eng.compute(water.positions_nm)
    assert eng.describe()["method"] == "GFN2-xTB" and eng.charge == 0 and eng.multiplicity == 1
    assert -13_500 < e < -13_300  # GFN2-xTB water: about -5.07 Eh
    assert f.shape == (3, 3) and np.allclose(f.sum(axis=0), 0.0, atol=1e-6) and eng.counters.calls == 1


def test_make_engine_pyscf(water):
    eng = make_engine("pyscf", water, {"method": "RHF", "basis": "sto-3g", "use_gpu": False})
    e, f = eng.compute(water.positions_nm)
    assert eng.method == "RHF/sto-3g" and eng.spin == 0
    assert -75.1 < e / 2625.4996 < -74.8  # RHF/STO-3G water near equilibrium: about -74.96 Eh
    assert np.allclose(f.sum(axis=0), 0.0, atol=1e-3) and eng.counters.calls == 1


def test_make_engine_ase(water):
    from ase.calculators.emt import EMT

    eng = make_engine("ase", water, {"calculator": EMT})  # a factory works as well as an instance
    e, f = eng.compute(water.positions_nm)
    assert eng.describe() == {"engine": "ase", "calculator": "EMT"} and np.isfinite(e) and f.shape == (3, 3)
    assert eng.atoms.info["charge"] == 0 and eng.counters.calls == 1
    with pytest.raises(MdkstepError, match="ase engine: key 'calculator' is missing"):
        make_engine("ase", water, {})


def test_make_engine_unknown_kind(water):
    with pytest.raises(MdkstepError, match=r"unknown engine 'orca' \(key 'engine': use one of"):
        make_engine("orca", water)


# ------------------------------------------------------------------------------ counted span

class _Harmonic(ForceEngine):
    """Two atoms on a spring (k = 1000 kJ/mol/nm^2, r0 = 0.1 nm)."""

    name = "harmonic"

    def __init__(self):
        super().__init__(np.ones(2), np.ones(2, dtype=int))

    def _compute(self, x):
        d = x[1] - x[0]
        r = np.linalg.norm(d)
        f1 = -1000.0 * (r - 0.1) * d / r
        return 0.5 * 1000.0 * (r - 0.1) ** 2, np.array([-f1, f1])


def test_counted_span_counts_only_its_phase():
    eng = _Harmonic()
    x = np.array([[0.0, 0.0, 0.0], [0.11, 0.0, 0.0]])
    eng.compute(x)  # before the span: not counted
    with eng.counters.span() as outer:
        eng.compute(x)
        with eng.counters.span() as inner:
            eng.compute(x)
            eng.compute(x)
        assert outer.calls == 3  # live while open
    eng.compute(x)  # after: not counted
    assert (inner.calls, outer.calls, eng.counters.calls) == (2, 3, 5)
    assert 0 < inner.seconds <= outer.seconds <= outer.wall_s
    assert outer.source == "engine_counter" and outer.ms_per_call > 0
    assert outer.summary()["force_calls"] == 3 and outer.summary()["force_calls_source"] == "engine_counter"
    assert eng.counters.span().close().calls == 0 and eng.counters.span().ms_per_call is None


def test_integrator_steps_are_recorded_as_such(prepared):
    from mdkstep.baselines.openmm_md import MDConfig, build_system
    from mdkstep.baselines.plain import OpenMMRunner

    mol = from_molecule_dir(prepared / "ethanol")
    runner = OpenMMRunner(build_system(mol, MDConfig()), mol.positions_nm, np.zeros((9, 3)), 1.0, 300.0, 1.0)
    seg = runner.run(20)
    assert seg.force_calls == 20 and seg.force_calls_source == "integrator_steps"
    assert seg.summary()["force_calls_source"] == "integrator_steps"
    seg = runner.run(20, record_every=5)
    assert seg.force_calls == 20 and runner.counters.calls == 40
    c = EngineCounters(source="integrator_steps")
    with c.span() as s:
        c.add(7)
    assert (s.calls, s.source) == (7, "integrator_steps")


# ------------------------------------------------------------------------------ library swaps

def test_limit_threads_uses_threadpoolctl(monkeypatch):
    """limit_threads(1) sets every loaded OpenMP/BLAS pool to one thread and restores it on exit.
    The pools are first set to 2 threads, so that the limit is seen whatever OMP_NUM_THREADS the
    tests run with."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from mdkstep.baselines.pool import limit_threads

    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # limit_threads sets them
        monkeypatch.setenv(key, os.environ.get(key, "1"))
    torch.ones(2) @ torch.ones(2)  # numpy's BLAS and torch's OpenMP are loaded
    assert threadpool_info(), "no OpenMP/BLAS pool loaded: nothing to limit"
    with threadpool_limits(limits=2):
        before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
        assert 2 in before.values(), before  # a pool the limit can visibly change
        with limit_threads(1):
            assert all(i["num_threads"] == 1 for i in threadpool_info())
            assert os.environ["OMP_NUM_THREADS"] == "1"
        assert {i["filepath"]: i["num_threads"] for i in threadpool_info()} == before


@pytest.mark.parametrize("smiles", ["CCO", "c1ccccc1", "c1ccc2ccccc2c1", "C1CC12CC2", "CC(=O)Oc1ccccc1C(=O)O"])
def test_ring_bonds_match_rdkit(smiles):
    from rdkit import Chem

    from mdkstep.molecule.topology import ring_bonds

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    bonds = np.array([[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] for b in mol.GetBonds()])
    want = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds() if b.IsInRing()}
    assert ring_bonds(mol.GetNumAtoms(), bonds) == want
