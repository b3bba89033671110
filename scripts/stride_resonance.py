#!/usr/bin/env python
"""Stride resonance: which vibrations a k-step jump samples at (a multiple of) half a period.

A jump of tau = k dt maps a vibration of frequency nu through a phase theta = 2 pi nu tau.
Where theta is a multiple of pi (m >= 1), the exact flow sends (q, v) to (+-q, +-v): the mode's
displacement at the next jump no longer depends on its velocity, so neither the thermostat
(which acts on v) nor the real forces move its distribution at the jump frames, and the
learned map's small errors decide it (measured: paracetamol's ring-H wags at k = 8, README).

From a reference trajectory with velocities saved every step (e.g. the bench's ref_r0.npz),
the velocity power spectrum (COM motion removed; --weight none: every atom alike, so the
hydrogens' wags and bends that decide the angle and dihedral distributions dominate; mass:
the vibrational density of states) is split by frequency; for each k the fraction of the
power above --min-cm (low frequencies are ballistic at any stride) whose phase per jump lies
within --width pi of m pi is printed, overall and for the 100 cm^-1 bands that carry the most
resonant power. Measured (MM, 2 fs, --weight none): aspirin k = 8 24.9 %, k = 9 8.8 %,
k = 12 15.9 %; the k = 12 model is 2-3x closer to the reference than the k = 8 one (README).

Example:
  python scripts/stride_resonance.py outputs/bench/mm/runs/aspirin/ref_r0.npz --dt-fs 2
  python scripts/stride_resonance.py outputs/bench/mm/runs/aspirin/ref_r0.npz --dt-fs 2 --ks 8 9 10 \\
      --bonds outputs/bench/mm/runs/aspirin/topology.json      # which bond is resonant at which k
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mdkstep.analysis.metrics import remove_com  # noqa: E402
from mdkstep.trajectory import load_trajectory  # noqa: E402
from mdkstep.utils import MdkstepError  # noqa: E402

CM_PER_INV_PS = 1.0 / 0.0299792458  #: 1 /ps = 33.356 cm^-1


def vdos(velocities: np.ndarray, masses: np.ndarray, frame_ps: float,
         weight: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(frequencies cm^-1, velocity power) of frames (F,N,3) nm/ps spaced frame_ps, COM motion
    removed; each atom weighted by 1 (``weight`` "none") or its mass ("mass")."""
    v = remove_com(velocities, masses)
    w = masses if weight == "mass" else np.ones_like(masses)
    spec = (np.abs(np.fft.rfft(v - v.mean(0), axis=0)) ** 2 * w[None, :, None]).sum(axis=(1, 2))
    return np.fft.rfftfreq(len(v), frame_ps) * CM_PER_INV_PS, spec


def resonant_fraction(freq_cm: np.ndarray, power: np.ndarray, tau_ps: float, width: float,
                      min_cm: float) -> tuple[float, np.ndarray]:
    """Fraction of the power above min_cm whose phase 2 nu tau (units of pi) is within width of
    an integer m >= 1, and the boolean mask of those frequencies."""
    phase = 2.0 * freq_cm / CM_PER_INV_PS * tau_ps
    m = np.rint(phase)
    hit = (m >= 1) & (np.abs(phase - m) <= width) & (freq_cm >= min_cm)
    above = freq_cm >= min_cm
    return float(power[hit].sum() / power[above].sum()), hit


def bond_peaks(positions: np.ndarray, bonds: np.ndarray, frame_ps: float, min_cm: float) -> np.ndarray:
    """Dominant frequency (cm^-1, above min_cm) of each bond's length in frames (F,N,3) spaced frame_ps."""
    length = np.linalg.norm(positions[:, bonds[:, 0]] - positions[:, bonds[:, 1]], axis=-1)
    power = np.abs(np.fft.rfft((length - length.mean(0)) * np.hanning(len(length))[:, None], axis=0)) ** 2
    freq = np.fft.rfftfreq(len(length), frame_ps) * CM_PER_INV_PS
    above = freq >= min_cm
    return freq[above][np.argmax(power[above], axis=0)]


def print_bond_phases(t, topology: str, ks: list[int], dt_fs: float, frame_ps: float, width: float,
                      min_cm: float) -> None:
    """Per heavy-atom bond of ``topology`` (a stage-00 topology.json): its length's dominant
    frequency and the phase per jump (units of pi) at each k, * where resonant."""
    import json
    topo = json.loads(Path(topology).read_text())
    bonds = np.asarray(topo["bonds"], dtype=int).reshape(-1, 2)
    z = np.asarray(topo["atomic_numbers"], dtype=int)
    heavy = bonds[(z[bonds[:, 0]] > 1) & (z[bonds[:, 1]] > 1)]
    peaks = bond_peaks(t.positions, heavy, frame_ps, min_cm)
    sym = {6: "C", 7: "N", 8: "O", 9: "F", 15: "P", 16: "S", 17: "Cl"}
    print(f"heavy-atom bonds of {topology}: dominant frequency of the length, phase per jump / pi (* resonant)")
    print("  bond          cm^-1  " + "  ".join(f"k={k:<3d}" for k in ks))
    for (i, j), nu in zip(heavy, peaks):
        cells = []
        for k in ks:
            ph = 2.0 * nu / CM_PER_INV_PS * k * dt_fs / 1000.0
            m = np.rint(ph)
            cells.append(f"{ph:4.2f}{'*' if m >= 1 and abs(ph - m) <= width else ' '}")
        name = f"{sym.get(int(z[i]), z[i])}{i}-{sym.get(int(z[j]), z[j])}{j}"
        print(f"  {name:12s} {nu:6.0f}  " + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trajectory", help="trajectory .npz with velocities, saved every integrator step")
    p.add_argument("--dt-fs", type=float, required=True, help="integrator step of the models, fs (tau = k dt)")
    p.add_argument("--ks", type=int, nargs="+", default=list(range(4, 17)), help="jump lengths to check (default 4-16)")
    p.add_argument("--width", type=float, default=0.1, help="half-width of a resonance, units of pi (default 0.1)")
    p.add_argument("--min-cm", type=float, default=200.0, help="ignore frequencies below this, cm^-1 (default 200)")
    p.add_argument("--weight", choices=("none", "mass"), default="none",
                   help="atom weights of the spectrum: none (default; H-dominated) or mass (the VDOS)")
    p.add_argument("--bonds", metavar="TOPOLOGY_JSON", default=None,
                   help="also list every heavy-atom bond's stretch frequency and phase per k (stage-00 topology.json)")
    a = p.parse_args(argv)
    try:
        t = load_trajectory(a.trajectory)
    except MdkstepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if t.velocities is None or t.n_frames < 256:
        print(f"error: {a.trajectory}: needs velocities and >= 256 frames", file=sys.stderr)
        return 2
    frame_ps = float(np.median(np.diff(t.time_ps)))
    freq, power = vdos(t.velocities, np.asarray(t.masses, dtype=float), frame_ps, a.weight)
    print(f"{a.trajectory}: {t.n_frames} frames every {frame_ps * 1000:.3g} fs; resonance = phase per jump within "
          f"+-{a.width} pi of m pi (m >= 1), power above {a.min_cm:g} cm^-1, atom weights: {a.weight}")
    for k in a.ks:
        tau_ps = k * a.dt_fs / 1000.0
        frac, hit = resonant_fraction(freq, power, tau_ps, a.width, a.min_cm)
        bands = {}
        for f, w in zip(freq[hit], power[hit]):
            bands[int(f // 100) * 100] = bands.get(int(f // 100) * 100, 0.0) + w
        top = sorted(bands.items(), key=lambda kv: -kv[1])[:3]
        total = power[freq >= a.min_cm].sum()
        desc = ", ".join(f"{b}-{b + 100} cm^-1 {100 * w / total:.1f}%" for b, w in top)
        print(f"  k = {k:2d} ({k * a.dt_fs:g} fs): resonant power {100 * frac:5.1f}%  [{desc}]")
    if a.bonds:
        try:
            print_bond_phases(t, a.bonds, a.ks, a.dt_fs, frame_ps, a.width, a.min_cm)
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {a.bonds}: not a topology.json with 'bonds' and 'atomic_numbers' ({e})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
