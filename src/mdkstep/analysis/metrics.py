"""Rollout fidelity metrics (docs/metrics.md). Positions nm in, reported in Å / degrees.

Distances between two trajectories of the same molecule at one common frame interval:
Wasserstein-1 of bond, angle and dihedral distributions (averaged per class), mean bond
length error, intramolecular pair-distance RDF L1, VACF L2, temperatures (also per element),
NVE drift. The same distances between independent baseline replicas give the noise floor.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from mdkstep.dynamics import atom_dof, kinetic_energy, linear_drift
from mdkstep.dynamics import per_element_temperature as dyn_per_element_temperature
from mdkstep.molecule.geometry import bond_angles, bond_lengths, dihedral_angles
from mdkstep.molecule.topology import classify_dihedrals
from mdkstep.trajectory import Trajectory
from mdkstep.utils import remove_com

NM_TO_A = 10.0
RAD_TO_DEG = 180.0 / np.pi


# ------------------------------------------------------------------------- topology


# ------------------------------------------------------------------------ series

def internal_coordinates(positions_nm: np.ndarray, topo: dict[str, Any]) -> dict[str, np.ndarray]:
    """Bond lengths (F, Mb) Å, angles (F, Ma) degrees, dihedrals (F, Md) radians."""
    x = torch.as_tensor(np.asarray(positions_nm), dtype=torch.float64)
    out = {}
    for key, fn, scale, width in (("bonds", bond_lengths, NM_TO_A, 2), ("angles", bond_angles, RAD_TO_DEG, 3),
                                  ("dihedrals", dihedral_angles, 1.0, 4)):
        idx = torch.as_tensor(np.asarray(topo[key], dtype=np.int64).reshape(-1, width))
        out[key] = (fn(x, idx) * scale).numpy() if len(idx) else np.zeros((x.shape[0], 0))
    return out


def circular_w1(a: np.ndarray, b: np.ndarray, n_cuts: int = 24) -> float:
    """Wasserstein-1 on the circle (radians): minimum over cut points of the linear W1 of the
    samples unwrapped at that cut. Exact for distributions whose optimal cut is on the grid."""
    best = np.inf
    for c in np.linspace(-np.pi, np.pi, n_cuts, endpoint=False):
        aa = np.mod(a - c, 2 * np.pi)
        bb = np.mod(b - c, 2 * np.pi)
        best = min(best, wasserstein_distance(aa, bb))
    return float(best)


def rotamer_populations(phi: np.ndarray) -> np.ndarray:
    """Fractions in the three staggered wells: g- [-120,0), g+ [0,120), trans (|phi| >= 120 deg)."""
    d = np.degrees(phi)
    return np.array([np.mean((d >= -120) & (d < 0)), np.mean((d >= 0) & (d < 120)), np.mean(np.abs(d) >= 120)])


def pair_distance_hist(positions_nm: np.ndarray, r_max_nm: float = 1.0, bin_nm: float = 0.005) -> np.ndarray:
    """Normalized histogram of all intramolecular pair distances (the molecule's 'RDF')."""
    x = np.asarray(positions_nm)
    i, j = np.triu_indices(x.shape[1], k=1)
    d = np.linalg.norm(x[:, i] - x[:, j], axis=-1).ravel()
    h, _ = np.histogram(d, bins=np.arange(0.0, r_max_nm + bin_nm, bin_nm))
    return h / max(1, h.sum())


def vacf(velocities: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalized velocity autocorrelation <v(0).v(t)>/<v.v> for lags 0..max_lag frames."""
    v = np.asarray(velocities)
    n = v.shape[0]
    out = np.empty(min(max_lag, n - 1) + 1)
    for lag in range(len(out)):
        out[lag] = np.mean(np.sum(v[: n - lag] * v[lag:], axis=-1))
    return out / out[0]


def nve_drift(time_ps: np.ndarray, total_energy: np.ndarray) -> dict[str, float]:
    """Slope (kJ/mol/ps) of a linear fit of total energy vs time, and its fluctuation (std)."""
    return {"drift_kj_mol_ps": linear_drift(time_ps, total_energy), "etot_std_kj_mol": float(np.std(total_energy))}


def constrained_pairs(traj: Trajectory, bonds: np.ndarray) -> np.ndarray:
    """X-H bonds when the trajectory ran with HBonds constraints, else none; (M, 2)."""
    if traj.metadata.get("constraints") != "hbonds":
        return np.zeros((0, 2), dtype=int)
    b = np.asarray(bonds, dtype=int).reshape(-1, 2)
    return b[(traj.atom_types[b[:, 0]] == 1) | (traj.atom_types[b[:, 1]] == 1)]


def per_element_temperature(traj: Trajectory, constraints: np.ndarray | None = None) -> dict[str, float]:
    """Mean kinetic temperature per element symbol, K (equipartition check), of the COM-free
    velocities, with each atom's exact degrees of freedom (:func:`mdkstep.dynamics.atom_dof`:
    centre-of-mass removal and the constraints ``constraints`` (M, 2) at the trajectory's
    geometry, averaged over up to 16 frames)."""
    v = remove_com(traj.velocities, traj.masses)
    frames = np.unique(np.linspace(0, traj.n_frames - 1, min(16, traj.n_frames)).astype(int))
    dof = np.mean([atom_dof(traj.masses, traj.positions[f], constraints) for f in frames], axis=0)
    return dyn_per_element_temperature(v, traj.masses, traj.atom_types, dof)


# ----------------------------------------------------------------- comparisons

def frame_interval_ps(t: Trajectory) -> float:
    """The median time between saved frames, ps (0 for a single frame)."""
    return float(np.median(np.diff(t.time_ps))) if t.n_frames > 1 else 0.0


def subsample_to_interval(traj: Trajectory, interval_ps: float) -> np.ndarray:
    """Frame indices of ``traj`` spaced by ``interval_ps`` (nearest multiple of its own spacing)."""
    dt = frame_interval_ps(traj) if traj.n_frames > 1 else interval_ps
    step = max(1, int(round(interval_ps / dt)))
    return np.arange(0, traj.n_frames, step)


def compare(ref: Trajectory, other: Trajectory, topo: dict[str, Any], interval_ps: float,
            max_frames: int = 5000, vacf_lags: int = 50) -> dict[str, float]:
    """Fidelity distances of ``other`` against ``ref`` at one common frame interval."""
    ia, ib = subsample_to_interval(ref, interval_ps), subsample_to_interval(other, interval_ps)
    ia, ib = ia[:: max(1, len(ia) // max_frames)], ib[:: max(1, len(ib) // max_frames)]
    a, b = internal_coordinates(ref.positions[ia], topo), internal_coordinates(other.positions[ib], topo)
    res: dict[str, float] = {}
    res["bond_w1_A"] = float(np.mean([wasserstein_distance(a["bonds"][:, m], b["bonds"][:, m]) for m in range(a["bonds"].shape[1])]))
    res["mean_bond_err_A"] = float(np.mean(np.abs(a["bonds"].mean(0) - b["bonds"].mean(0))))
    res["angle_w1_deg"] = float(np.mean([wasserstein_distance(a["angles"][:, m], b["angles"][:, m]) for m in range(a["angles"].shape[1])]))
    cls = classify_dihedrals(ref.atom_types, np.asarray(topo["bonds"]), np.asarray(topo["dihedrals"]).reshape(-1, 4))
    fast, slow_pop = [], []
    for members, slow in zip(cls.groups, cls.slow):
        pa, pb = a["dihedrals"][:, members].ravel(), b["dihedrals"][:, members].ravel()
        if slow:
            slow_pop.append(float(np.abs(rotamer_populations(pa) - rotamer_populations(pb)).sum() / 2))
        else:
            fast.append(circular_w1(pa, pb) * RAD_TO_DEG)
    res["dihedral_w1_deg"] = float(np.mean(fast)) if fast else float("nan")
    res["slow_rotamer_tv"] = float(np.mean(slow_pop)) if slow_pop else float("nan")
    res["rdf_l1"] = float(np.abs(pair_distance_hist(ref.positions[ia]) - pair_distance_hist(other.positions[ib])).sum())
    ca = vacf(remove_com(ref.velocities[ia], ref.masses), vacf_lags)
    cb = vacf(remove_com(other.velocities[ib], other.masses), vacf_lags)
    m = min(len(ca), len(cb))
    res["vacf_l2"] = float(np.sqrt(np.mean((ca[:m] - cb[:m]) ** 2)))
    res["temperature_mean_diff_K"] = float(other.temperature.mean() - ref.temperature.mean())
    return res


def summarize_trajectory(traj: Trajectory, bonds: np.ndarray | None = None) -> dict[str, Any]:
    """Temperature mean/std, per-element temperature, and NVE drift when the run is NVE."""
    out: dict[str, Any] = {
        "n_frames": traj.n_frames, "simulated_ps": float(traj.time_ps[-1] - traj.time_ps[0]) if traj.n_frames > 1 else 0.0,
        "temperature_mean_K": float(traj.temperature.mean()), "temperature_std_K": float(traj.temperature.std()),
        "temperature_per_element_K": per_element_temperature(
            traj, constrained_pairs(traj, bonds) if bonds is not None else None),
        "nan_frames": int((~np.isfinite(traj.positions).all(axis=(1, 2))).sum()),
    }
    ke = traj.kinetic if traj.kinetic is not None else kinetic_energy(traj.velocities, traj.masses)
    if traj.metadata.get("ensemble") == "nve" or float(traj.metadata.get("friction") or 0) == 0:
        out.update(nve_drift(traj.time_ps, traj.energies + ke))
        out["drift_kj_mol_ps_per_atom"] = out["drift_kj_mol_ps"] / traj.n_atoms
    return out


# ------------------------------------------------------------------ sampling efficiency

def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalized autocorrelation function rho(t) (T,) of a series x (T,) or of R chains
    (T, R), rho(0) = 1; chains are centred on their common mean and their autocovariances
    averaged before normalizing (FFT, zero-padded to avoid wrap-around). NaN for a constant
    series."""
    x = np.asarray(x, dtype=float)
    x = x[:, None] if x.ndim == 1 else x.reshape(x.shape[0], -1)
    n = x.shape[0]
    y = x - x.mean()
    size = 1 << int(2 * n - 1).bit_length()
    spec = np.fft.rfft(y, n=size, axis=0)
    acov = np.fft.irfft(spec * np.conj(spec), n=size, axis=0)[:n].mean(axis=1) / n
    return acov / acov[0] if acov[0] > 0 else np.full(n, np.nan)


def integrated_autocorr_time(x: np.ndarray, c: float = 5.0) -> float:
    """Integrated autocorrelation time tau_int = 1 + 2 sum_{t=1}^{M} rho(t), in frames, of a
    series (T,) or of R chains (T, R) (:func:`autocorrelation`).

    Sokal's automatic window: the smallest M with M >= c * tau_int(M) (c = 5, as in Sokal
    1996 and emcee). Summing the noisy tail of rho(t) to the end would make the variance of
    the estimate grow with T, a fixed window biases it for slow series; the self-consistent
    window keeps bias ~exp(-c) and variance ~ (2M+1)/T. If no window qualifies (T shorter
    than ~c tau) the estimate at the largest M is returned: a lower bound, flagged by
    :func:`iat_reliable`. A series that never varies gives NaN."""
    rho = autocorrelation(x)
    if not np.isfinite(rho[0]):
        return float("nan")
    taus = 2.0 * np.cumsum(rho) - 1.0  # taus[M] = 1 + 2 sum_{t=1}^{M} rho(t)
    ok = np.arange(len(taus)) >= c * taus
    m = int(np.argmax(ok)) if ok.any() else len(taus) - 1
    return float(taus[m])


def iat_reliable(tau_int: float, n_frames: int, min_ratio: float = 50.0) -> bool:
    """True when the series is at least ``min_ratio`` tau_int long (emcee's rule of thumb:
    shorter series give a biased-low, noisy tau_int)."""
    return bool(np.isfinite(tau_int) and n_frames >= min_ratio * tau_int)


def effective_samples_per_force_call(n_frames: int, tau_int_frames: float, force_calls: int) -> float:
    """Effective samples per force call: n_frames / (tau_int * force calls), with tau_int in
    frames of the same series (n_frames / tau_int = effective sample size; all replicas'
    frames together when tau_int comes from all chains). The force calls are the engine's
    count for the whole run (setup included)."""
    if not (force_calls > 0 and tau_int_frames > 0):
        return float("nan")
    return float(n_frames) / (float(tau_int_frames) * float(force_calls))


def dihedral_series(positions_nm: np.ndarray, dihedrals: np.ndarray) -> np.ndarray:
    """Dihedral angles (T, D) rad of frames (T, N, 3) nm for index quadruples (D, 4)."""
    x = torch.as_tensor(np.asarray(positions_nm, dtype=float))
    idx = torch.as_tensor(np.asarray(dihedrals, dtype=np.int64).reshape(-1, 4))
    return torch.stack([dihedral_angles(f, idx) for f in x]).numpy() if len(x) else np.zeros((0, len(idx)))


def slowest_dihedral_iat(positions_nm: np.ndarray, dihedrals: np.ndarray, c: float = 5.0) -> tuple[float, int]:
    """(tau_int in frames, index) of the slowest dihedral: a dihedral phi is circular, so its
    tau_int is the larger of those of cos(phi) and sin(phi); positions (T, N, 3) for one chain
    or (T, R, N, 3) for R chains (tau from all chains). (nan, -1) without dihedrals."""
    pos = np.asarray(positions_nm, dtype=float)
    chains = [pos] if pos.ndim == 3 else [pos[:, r] for r in range(pos.shape[1])]
    dihedrals = np.asarray(dihedrals, dtype=np.int64).reshape(-1, 4)
    if not len(dihedrals):
        return float("nan"), -1
    phi = np.stack([dihedral_series(p, dihedrals) for p in chains], axis=1)  # (T, R, D)
    taus = [max(integrated_autocorr_time(np.cos(phi[..., d]), c), integrated_autocorr_time(np.sin(phi[..., d]), c))
            for d in range(len(dihedrals))]
    taus = np.where(np.isfinite(taus), taus, -np.inf)
    i = int(np.argmax(taus))
    return (float(taus[i]) if np.isfinite(taus[i]) else float("nan")), i
