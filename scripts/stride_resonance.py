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
The analysis is mdkstep.analysis.resonance; this is its command line.

Example:
  python scripts/stride_resonance.py outputs/bench/mm/runs/aspirin/ref_r0.npz --dt-fs 2
  python scripts/stride_resonance.py outputs/bench/mm/runs/aspirin/ref_r0.npz --dt-fs 2 --ks 8 9 10 \\
      --bonds outputs/bench/mm/runs/aspirin/topology.json      # which bond is resonant at which k
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mdkstep.analysis.metrics import frame_interval_ps  # noqa: E402
from mdkstep.analysis.resonance import heavy_bond_phases, resonant_bands, resonant_fraction, vdos  # noqa: E402
from mdkstep.trajectory import load_trajectory  # noqa: E402
from mdkstep.utils import MdkstepError  # noqa: E402


def print_bond_phases(t, topology: str, ks: list[int], dt_fs: float, frame_ps: float, width: float,
                      min_cm: float) -> None:
    """Per heavy-atom bond of ``topology`` (a stage-00 topology.json): its length's dominant
    frequency and the phase per jump (units of pi) at each k, * where resonant."""
    rows = heavy_bond_phases(t.positions, json.loads(Path(topology).read_text()), ks, dt_fs, frame_ps, width, min_cm)
    print(f"heavy-atom bonds of {topology}: dominant frequency of the length, phase per jump / pi (* resonant)")
    print("  bond          cm^-1  " + "  ".join(f"k={k:<3d}" for k in ks))
    for r in rows:
        cells = [f"{ph:4.2f}{'*' if hit else ' '}" for ph, hit in zip(r["phases"], r["resonant"])]
        print(f"  {r['bond']:12s} {r['freq_cm']:6.0f}  " + "  ".join(cells))


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
    frame_ps = frame_interval_ps(t)
    freq, power = vdos(t.velocities, np.asarray(t.masses, dtype=float), frame_ps, a.weight)
    print(f"{a.trajectory}: {t.n_frames} frames every {frame_ps * 1000:.3g} fs; resonance = phase per jump within "
          f"+-{a.width} pi of m pi (m >= 1), power above {a.min_cm:g} cm^-1, atom weights: {a.weight}")
    for k in a.ks:
        frac, hit = resonant_fraction(freq, power, k * a.dt_fs / 1000.0, a.width, a.min_cm)
        desc = ", ".join(f"{b}-{b + 100} cm^-1 {100 * w:.1f}%" for b, w in resonant_bands(freq, power, hit, a.min_cm))
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
