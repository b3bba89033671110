"""Can the reference be trusted? Per reference replica: its mean kinetic temperature within
±5 % of the thermostat's target, and its kinetic-energy distribution against the canonical
law K ~ Gamma(n_dof / 2, scale kT) (Kolmogorov-Smirnov p-value on frames thinned to about one
per kinetic-energy autocorrelation time, since consecutive frames are not independent).

Units: K, kJ/mol; velocities nm/ps, masses amu.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mdkstep.dynamics import KB_KJ_PER_MOL_K, kinetic_energy, n_dof
from mdkstep.utils import remove_com

#: mean temperature within this fraction of the target
TEMPERATURE_TOLERANCE = 0.05
#: a KS p-value below this is reported as a mismatch with the Gamma law
KS_P_MIN = 0.01


def decorrelation_stride(x: np.ndarray) -> int:
    """Frames per independent sample of series ``x``: 2 x its integrated autocorrelation time
    (summed up to the first negative autocorrelation), at least 1."""
    x = np.asarray(x, dtype=float) - np.mean(x)
    n = len(x)
    if n < 4 or not np.any(x):
        return 1
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    neg = np.nonzero(acf < 0)[0]
    cut = int(neg[0]) if len(neg) else n
    tau = 0.5 + float(np.sum(acf[1:cut]))
    return max(1, int(np.ceil(2.0 * tau)))


def kinetic_check(velocities: np.ndarray, masses: np.ndarray, target_K: float, dof: int | None = None,
                  com_removed: bool = True) -> dict[str, Any]:
    """Mean temperature vs ``target_K`` and the KS test of the kinetic energies (COM motion
    removed when ``com_removed``) against Gamma(dof / 2, kT). ``dof`` defaults to 3N - 3.
    ``mean_temperature_sigma_K``: the canonical standard error of the mean temperature over the
    thinned frames, T sqrt(2 / (dof n)): a 5 % miss well inside it says "run longer", not "broken"."""
    from scipy import stats

    v = np.asarray(velocities, dtype=float)
    if com_removed:
        v = remove_com(v, masses)
    dof = int(dof or n_dof(v.shape[1], com_removed=com_removed))
    ke = kinetic_energy(v, masses)
    temps = 2.0 * ke / (dof * KB_KJ_PER_MOL_K)
    mean_t = float(np.mean(temps))
    stride = decorrelation_stride(ke)
    sample = ke[::stride]
    kt = KB_KJ_PER_MOL_K * target_K
    p = float(stats.kstest(sample, "gamma", args=(dof / 2.0, 0.0, kt)).pvalue) if len(sample) >= 5 else None
    dev = mean_t / target_K - 1.0
    return {"mean_temperature_K": mean_t, "temperature_dev": dev, "n_dof": dof, "ks_p": p, "n_samples": len(sample),
            "mean_temperature_sigma_K": target_K * float(np.sqrt(2.0 / (dof * max(1, len(sample))))),
            "stride_frames": stride, "temperature_ok": abs(dev) <= TEMPERATURE_TOLERANCE,
            "gamma_ok": p is None or p >= KS_P_MIN}


def trajectory_dof(traj: Any) -> int:
    """Degrees of freedom of a trajectory: its metadata ``n_dof``, else 3N - constraints - 3."""
    meta = traj.metadata or {}
    if meta.get("n_dof"):
        return int(meta["n_dof"])
    return n_dof(traj.n_atoms, int(meta.get("n_constraints") or 0))


def reference_check(replicas: list[Any], target_K: float) -> list[dict[str, Any]]:
    """:func:`kinetic_check` of every reference replica (Trajectory objects; degrees of
    freedom from :func:`trajectory_dof`), with its index and a warning line
    where the temperature or the Gamma law is off."""
    out = []
    for i, traj in enumerate(replicas):
        r = {"replica": i, **kinetic_check(traj.velocities, traj.masses, target_K, trajectory_dof(traj))}
        problems = []
        if not r["temperature_ok"]:
            problems.append(f"mean T {r['mean_temperature_K']:.1f} K is {100 * r['temperature_dev']:+.1f}% off "
                            f"{target_K:g} K (limit ±{100 * TEMPERATURE_TOLERANCE:.0f}%)")
        if not r["gamma_ok"]:
            problems.append(f"kinetic energies fail the Gamma({r['n_dof']}/2, kT) law (KS p = {r['ks_p']:.2g} "
                            f"on {r['n_samples']} thinned frames)")
        r["warning"] = "; ".join(problems) or None
        out.append(r)
    return out
