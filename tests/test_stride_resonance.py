"""mdkstep.analysis.resonance (the command line: scripts/stride_resonance.py): a harmonic mode at
half a period per jump is resonant, at a quarter it is not; the spectrum of a synthetic
trajectory peaks at its frequency."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from mdkstep.analysis import resonance

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("stride_resonance", ROOT / "scripts" / "stride_resonance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_half_period_jump_is_resonant_quarter_period_is_not():
    mod = resonance
    nu_cm, dt_ps = 1042.0, 0.002
    t = np.arange(8192) * dt_ps
    omega = 2 * np.pi * nu_cm / mod.CM_PER_INV_PS  # rad/ps
    # two atoms vibrating against each other (COM at rest), velocities nm/ps
    v1 = np.cos(omega * t)
    vel = np.zeros((len(t), 2, 3))
    vel[:, 0, 0], vel[:, 1, 0] = v1, -v1
    freq, power = mod.vdos(vel, np.array([1.0, 1.0]), dt_ps)
    assert abs(freq[np.argmax(power)] - nu_cm) < 5.0
    half, _ = mod.resonant_fraction(freq, power, tau_ps=0.016, width=0.1, min_cm=200.0)  # 16 fs: pi per jump
    quarter, _ = mod.resonant_fraction(freq, power, tau_ps=0.008, width=0.1, min_cm=200.0)  # 8 fs: pi/2
    assert half > 0.9 and quarter < 0.05


def test_help_and_missing_file(capsys, tmp_path):
    mod = _script()
    assert mod.main([str(tmp_path / "none.npz"), "--dt-fs", "2"]) == 2
    assert "none.npz" in capsys.readouterr().err


def test_bond_peak_is_the_stretch_frequency():
    mod = resonance
    nu_cm, dt_ps = 1842.0, 0.002
    t = np.arange(4096) * dt_ps
    omega = 2 * np.pi * nu_cm / mod.CM_PER_INV_PS
    pos = np.zeros((len(t), 2, 3))
    pos[:, 1, 0] = 0.123 + 0.002 * np.cos(omega * t)  # nm
    peak = mod.bond_peaks(pos, np.array([[0, 1]]), dt_ps, 200.0)
    assert abs(peak[0] - nu_cm) < 10.0


def test_cli_prints_the_resonant_power_and_the_bond_phases(tmp_path, capsys):
    """A C-O stretch at 1042 cm^-1 (2 fs frames): resonant at k = 8 (16 fs, phase 1.00 pi), not at k = 4."""
    import json

    from mdkstep.trajectory import Trajectory, save_trajectory

    nu_cm, dt_ps, n = 1042.0, 0.002, 1024
    t = np.arange(n) * dt_ps
    omega = 2 * np.pi * nu_cm / resonance.CM_PER_INV_PS
    pos, vel = np.zeros((n, 2, 3)), np.zeros((n, 2, 3))
    pos[:, 1, 0] = 0.143 + 0.002 * np.cos(omega * t)
    vel[:, 1, 0] = -0.002 * omega * np.sin(omega * t)
    vel[:, 0, 0] = -vel[:, 1, 0] * 16.0 / 12.0  # COM at rest
    meta = {k: 0 for k in ("dt_fs", "save_interval", "engine", "method", "temperature_K", "friction",
                           "seed", "molecule", "smiles", "constraints")}
    traj = Trajectory(positions=pos, velocities=vel, energies=np.zeros(n), temperature=np.full(n, 300.0),
                      atom_types=np.array([6, 8]), masses=np.array([12.0, 16.0]), time_ps=t + dt_ps, metadata=meta)
    save_trajectory(tmp_path / "t.npz", traj)
    (tmp_path / "topology.json").write_text(json.dumps({"bonds": [[0, 1]], "atomic_numbers": [6, 8]}))
    assert _script().main([str(tmp_path / "t.npz"), "--dt-fs", "2", "--ks", "4", "8",
                           "--bonds", str(tmp_path / "topology.json")]) == 0
    out = capsys.readouterr().out
    assert "k =  8 (16 fs): resonant power 100.0%  [1000-1100 cm^-1 100.0%" in out
    assert "k =  4 (8 fs): resonant power   0.0%" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("C0-O1"))
    assert line.split()[2:] == ["0.50", "1.00*"]
