"""Shared fixtures: the library on sys.path, small prepared molecules built once per session."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))


def load_script(name: str):
    """Import a numbered script (e.g. '00_prep_mols') as a module, for in-process CLI tests."""
    path = SRC / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """Ethanol and aspirin prepared once (stage 00) into a session temp folder."""
    from mdkstep.molecule.prep import PrepConfig, SmiEntry, prepare_from_smiles

    root = tmp_path_factory.mktemp("raw")
    cfg = PrepConfig()
    prepare_from_smiles(SmiEntry(1, "CCO", "ethanol"), root, cfg)
    prepare_from_smiles(SmiEntry(2, "CC(=O)Oc1ccccc1C(=O)O", "aspirin"), root, cfg)
    return root


@pytest.fixture
def crash_after_flushes(monkeypatch):
    """Make ChunkedTrajectoryWriter.flush raise KeyboardInterrupt right after its n-th chunk is
    written (before that chunk's checkpoint): a killed run. Call it with n; undo with the returned function."""
    from mdkstep.trajectory import ChunkedTrajectoryWriter

    orig = ChunkedTrajectoryWriter.flush

    def arm(n: int):
        calls = {"n": 0}

        def crashing_flush(self, i):
            orig(self, i)
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(ChunkedTrajectoryWriter, "flush", crashing_flush)
        return lambda: monkeypatch.setattr(ChunkedTrajectoryWriter, "flush", orig)

    return arm
