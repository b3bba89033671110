"""Stride resonance: which vibrations a k-step jump samples at (a multiple of) half a period.

A jump of tau = k dt maps a vibration of frequency nu through a phase theta = 2 pi nu tau.
Where theta is a multiple of pi (m >= 1), the exact flow sends (q, v) to (+-q, +-v): the mode's
displacement at the next jump no longer depends on its velocity, so neither the thermostat
(which acts on v) nor the real forces move its distribution at the jump frames, and the
learned map's small errors decide it. The command line is scripts/stride_resonance.py.

Units: frequencies cm^-1, times ps, velocities nm/ps, positions nm; phases in units of pi.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mdkstep.utils import remove_com

CM_PER_INV_PS = 1.0 / 0.0299792458  #: 1 /ps = 33.356 cm^-1
#: element symbols of the bond labels (others print as their atomic number)
SYMBOLS = {6: "C", 7: "N", 8: "O", 9: "F", 15: "P", 16: "S", 17: "Cl"}


def vdos(velocities: np.ndarray, masses: np.ndarray, frame_ps: float,
         weight: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(frequencies cm^-1, velocity power) of frames (F,N,3) nm/ps spaced frame_ps, COM motion
    removed; each atom weighted by 1 (``weight`` "none") or its mass ("mass")."""
    v = remove_com(velocities, masses)
    w = masses if weight == "mass" else np.ones_like(masses)
    spec = (np.abs(np.fft.rfft(v - v.mean(0), axis=0)) ** 2 * w[None, :, None]).sum(axis=(1, 2))
    return np.fft.rfftfreq(len(v), frame_ps) * CM_PER_INV_PS, spec


def jump_phase(freq_cm: np.ndarray | float, tau_ps: float) -> np.ndarray | float:
    """Phase per jump of tau_ps of a vibration at freq_cm, units of pi (2 nu tau)."""
    return 2.0 * np.asarray(freq_cm) / CM_PER_INV_PS * tau_ps


def is_resonant(phase: np.ndarray | float, width: float) -> np.ndarray | bool:
    """Phase (units of pi) within ``width`` of an integer m >= 1."""
    m = np.rint(phase)
    return (m >= 1) & (np.abs(phase - m) <= width)


def resonant_fraction(freq_cm: np.ndarray, power: np.ndarray, tau_ps: float, width: float,
                      min_cm: float) -> tuple[float, np.ndarray]:
    """Fraction of the power above min_cm whose phase 2 nu tau (units of pi) is within width of
    an integer m >= 1, and the boolean mask of those frequencies."""
    hit = is_resonant(jump_phase(freq_cm, tau_ps), width) & (freq_cm >= min_cm)
    above = freq_cm >= min_cm
    return float(power[hit].sum() / power[above].sum()), hit


def resonant_bands(freq_cm: np.ndarray, power: np.ndarray, hit: np.ndarray, min_cm: float,
                   top: int = 3, band_cm: int = 100) -> list[tuple[int, float]]:
    """The ``top`` bands of ``band_cm`` width that carry the most resonant power (mask ``hit``):
    (band start cm^-1, fraction of the power above min_cm), largest first."""
    bands: dict[int, float] = {}
    for f, w in zip(freq_cm[hit], power[hit]):
        b = int(f // band_cm) * band_cm
        bands[b] = bands.get(b, 0.0) + w
    total = power[freq_cm >= min_cm].sum()
    return [(b, float(w / total)) for b, w in sorted(bands.items(), key=lambda kv: -kv[1])[:top]]


def bond_peaks(positions: np.ndarray, bonds: np.ndarray, frame_ps: float, min_cm: float) -> np.ndarray:
    """Dominant frequency (cm^-1, above min_cm) of each bond's length in frames (F,N,3) spaced frame_ps."""
    length = np.linalg.norm(positions[:, bonds[:, 0]] - positions[:, bonds[:, 1]], axis=-1)
    power = np.abs(np.fft.rfft((length - length.mean(0)) * np.hanning(len(length))[:, None], axis=0)) ** 2
    freq = np.fft.rfftfreq(len(length), frame_ps) * CM_PER_INV_PS
    above = freq >= min_cm
    return freq[above][np.argmax(power[above], axis=0)]


def heavy_bond_phases(positions: np.ndarray, topology: dict[str, Any], ks: list[int], dt_fs: float,
                      frame_ps: float, width: float, min_cm: float) -> list[dict[str, Any]]:
    """Per heavy-atom bond of ``topology`` (a stage-00 topology.json's 'bonds' and
    'atomic_numbers'): its label, its length's dominant frequency (cm^-1) and, per k, the
    phase per jump of k dt_fs (units of pi) and whether it is resonant."""
    bonds = np.asarray(topology["bonds"], dtype=int).reshape(-1, 2)
    z = np.asarray(topology["atomic_numbers"], dtype=int)
    heavy = bonds[(z[bonds[:, 0]] > 1) & (z[bonds[:, 1]] > 1)]
    rows = []
    for (i, j), nu in zip(heavy, bond_peaks(positions, heavy, frame_ps, min_cm)):
        phases = [float(2.0 * nu / CM_PER_INV_PS * k * dt_fs / 1000.0) for k in ks]
        rows.append({"bond": f"{SYMBOLS.get(int(z[i]), z[i])}{i}-{SYMBOLS.get(int(z[j]), z[j])}{j}",
                     "freq_cm": float(nu), "phases": phases, "resonant": [bool(is_resonant(p, width)) for p in phases]})
    return rows
