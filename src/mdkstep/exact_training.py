"""Training of the exact-mode shear kicks (mdkstep.model.shear) through the composition.

On a k-step window (x_t, v_t, F_t, U_t) -> (x_{t+k}, v_{t+k}, F_{t+k}, U_{t+k}) the stride is
run exactly as in sampling, except that the one force call is teacher-forced: F(x') := F_{t+k}
from the data. The loss is

    lambda_x |x' - x_{t+k}|^2 / x_scale^2 + lambda_v |v' - v_{t+k}|^2 / v_scale^2
      + lambda_energy (dH / kT)^2,

the first two per atom (mean over atoms of the squared 3-vector norm), and

    dH = [U_{t+k} - F_{t+k} . (x' - x_{t+k})] + K(v') - U_t - K(v_t)

the energy error of the proposal with U(x') to first order around the data frame. dH is
what the Metropolis test sees: this term trains the acceptance rate. Units: nm, ps,
kJ/mol, amu, K.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .dataset import KStepDataset, WindowBatch
from .model.graph import GraphBatch
from .model.shear import ShearKicks, graph_template, inner_path, outer_kick
from .trajectory import memmap_npz
from .utils import KB_KJ_PER_MOL_K, LOG


# --------------------------------------------------------------------------- windows

@dataclass
class ExactWindows:
    """Windows of one molecule: (B,N,3) arrays nm, nm/ps, kJ/(mol nm); u0, u1 (B,) kJ/mol;
    z (N,), masses (N,) amu, bonds (M,2)."""

    z: np.ndarray
    masses: np.ndarray
    bonds: np.ndarray
    x0: np.ndarray
    v0: np.ndarray
    f0: np.ndarray
    u0: np.ndarray
    x1: np.ndarray
    v1: np.ndarray
    f1: np.ndarray
    u1: np.ndarray

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def subset(self, idx: np.ndarray) -> "ExactWindows":
        """The windows ``idx``."""
        pick = lambda a: a[idx]  # noqa: E731
        return ExactWindows(self.z, self.masses, self.bonds, *(pick(getattr(self, k)) for k in
                                                                ("x0", "v0", "f0", "u0", "x1", "v1", "f1", "u1")))


def windows_from_batch(wb: WindowBatch, u0: np.ndarray, u1: np.ndarray) -> ExactWindows:
    """ExactWindows from a dataset WindowBatch (which needs forces) and the potential energies
    u0, u1 (B,) kJ/mol of its two ends."""
    if wb.f0 is None or wb.f1 is None:
        raise ValueError(f"{wb.molecule}: exact-mode training needs forces at both ends of every window")
    bonds = np.asarray(wb.topology["bonds"], dtype=np.int64).reshape(-1, 2)
    return ExactWindows(wb.z, wb.masses, bonds, wb.x0, wb.v0, np.asarray(wb.f0), np.asarray(u0, float),
                        wb.x1, wb.v1, np.asarray(wb.f1), np.asarray(u1, float))


def dataset_windows(ds: KStepDataset, idx: np.ndarray) -> list[ExactWindows]:
    """Windows ``idx`` of a k-step dataset with their potential energies, one entry per
    trajectory. WindowBatch carries no energies yet, so they are read here from the source
    NPZs in the order :meth:`KStepDataset.batches` uses (trajectories ascending, start
    frames sorted)."""
    idx = np.asarray(idx)
    sel = ds.windows[idx]
    out = []
    for ti, wb in zip(np.unique(sel[:, 0]), ds.batches(idx)):
        t0 = np.sort(sel[sel[:, 0] == ti, 1])
        e = memmap_npz(Path(ds.spec.sources[int(ti)]), ("energies",))["energies"]
        out.append(windows_from_batch(wb, np.asarray(e[t0]), np.asarray(e[t0 + ds.spec.offset])))
    return out


# ------------------------------------------------------------------------------ loss

@dataclass
class ExactTrainConfig:
    """Settings of :func:`train_exact`."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lambda_x: float = 1.0
    lambda_v: float = 1.0
    lambda_energy: float = 1.0
    temperature_K: float = 300.0  #: kT sets the energy unit of the dH term
    seed: int = 0
    log_every: int = 100


@dataclass
class WindowTensors:
    """One batch flattened over atoms (like GraphBatch): (B*N,3) tensors and u0, u1 (B,)."""

    x0: torch.Tensor
    v0: torch.Tensor
    f0: torch.Tensor
    u0: torch.Tensor
    x1: torch.Tensor
    v1: torch.Tensor
    f1: torch.Tensor
    u1: torch.Tensor


def to_tensors(w: ExactWindows, dtype: torch.dtype, device: torch.device | str = "cpu") -> WindowTensors:
    """Flatten the windows' arrays into tensors of ``dtype``."""
    t = lambda a, shape: torch.as_tensor(np.asarray(a).reshape(shape), dtype=dtype, device=device)  # noqa: E731
    vec = ("x0", "v0", "f0", "x1", "v1", "f1")
    return WindowTensors(**{k: t(getattr(w, k), (-1, 3)) for k in vec}, u0=t(w.u0, (-1,)), u1=t(w.u1, (-1,)))


def per_graph_sum(x: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-window sums (G,) of per-atom values (G*N,) (every graph the same molecule)."""
    return x.view(n_graphs, -1).sum(-1)


def teacher_forced_stride(kicks: ShearKicks, tmpl: GraphBatch, b: WindowTensors,
                          tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x', v') of the stride from (x_t, v_t, F_t) with F(x') := F_{t+k}; tau ps."""
    a0 = outer_kick(kicks, tmpl, b.x0, b.f0, tau)
    x1, v_mid = inner_path(kicks, tmpl, b.x0, b.v0 + a0, tau)
    return x1, v_mid + outer_kick(kicks, tmpl, x1, b.f1, tau)


def energy_error(tmpl: GraphBatch, b: WindowTensors, x1: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """dH (G,) kJ/mol of the proposal (x', v'), U(x') ~ U_{t+k} - F_{t+k} . (x' - x_{t+k})."""
    g, m = tmpl.n_graphs, tmpl.masses
    u_prop = b.u1 - per_graph_sum((b.f1 * (x1 - b.x1)).sum(-1), g)
    k_prop = per_graph_sum(0.5 * m * (v1 * v1).sum(-1), g)
    k_0 = per_graph_sum(0.5 * m * (b.v0 * b.v0).sum(-1), g)
    return u_prop + k_prop - b.u0 - k_0


def exact_loss(kicks: ShearKicks, tmpl: GraphBatch, b: WindowTensors, tau: float, cfg: ExactTrainConfig,
               scales: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats; "abs_dH" in kJ/mol). ``scales``: x_scale nm, v_scale nm/ps."""
    x1, v1 = teacher_forced_stride(kicks, tmpl, b, tau)
    kT = KB_KJ_PER_MOL_K * cfg.temperature_K
    dH = energy_error(tmpl, b, x1, v1)
    parts = {
        "x": ((x1 - b.x1) ** 2).sum(-1).mean() / scales["x_scale"] ** 2,
        "v": ((v1 - b.v1) ** 2).sum(-1).mean() / scales["v_scale"] ** 2,
        "energy": ((dH / kT) ** 2).mean(),
    }
    total = cfg.lambda_x * parts["x"] + cfg.lambda_v * parts["v"] + cfg.lambda_energy * parts["energy"]
    info = {k: float(v.detach()) for k, v in parts.items()}
    info["abs_dH"] = float(dH.detach().abs().mean())
    return total, info


def fit_scales(kicks: ShearKicks, windows: Sequence[ExactWindows], tau: float) -> dict[str, float]:
    """Set the kicks' input/output scales from the data and return the loss scales.

    f_scale: RMS force component; kick_scale: RMS of the Verlet half kick (tau/2) F/m (the
    deltas are learned in this unit); x_scale, v_scale: RMS window displacement and velocity
    change per component (loss units)."""
    cat = lambda key: np.concatenate([np.asarray(getattr(w, key)).ravel() for w in windows])  # noqa: E731
    rms = lambda a: float(np.sqrt(np.mean(a**2))) or 1.0  # noqa: E731
    half_kick = np.concatenate([(0.5 * tau * w.f0 / w.masses[None, :, None]).ravel() for w in windows])
    scales = {"f_scale": rms(cat("f0")), "kick_scale": rms(half_kick),
              "x_scale": rms(cat("x1") - cat("x0")), "v_scale": rms(cat("v1") - cat("v0"))}
    kicks.set_scales(f_scale=scales["f_scale"], kick_scale=scales["kick_scale"])
    return scales


def train_exact(kicks: ShearKicks, windows: Sequence[ExactWindows], tau_ps: float, cfg: ExactTrainConfig,
                scales: dict[str, float] | None = None) -> list[dict[str, float]]:
    """Adam on :func:`exact_loss` for ``cfg.steps`` steps; each step draws one molecule's
    windows (round robin) and ``batch_size`` of them at random. ``scales`` None: :func:`fit_scales`.

    Returns the logged rows (step, loss parts, abs_dH kJ/mol, seconds)."""
    if not windows or any(len(w) == 0 for w in windows):
        raise ValueError("train_exact: need at least one window per molecule")
    scales = scales or fit_scales(kicks, windows, tau_ps)
    ref = next(kicks.parameters())
    dtype, device = ref.dtype, ref.device
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam([q for q in kicks.parameters() if q.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    templates: dict[tuple[int, int], GraphBatch] = {}
    kicks.train()
    history, t0 = [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        mi = (step - 1) % len(windows)
        w = windows[mi]
        idx = rng.choice(len(w), size=min(cfg.batch_size, len(w)), replace=False)
        key = (mi, len(idx))
        if key not in templates:
            templates[key] = graph_template(w.z, w.masses, w.bonds, len(idx), kicks.config.max_hops, dtype, device)
        loss, info = exact_loss(kicks, templates[key], to_tensors(w.subset(idx), dtype, device), tau_ps, cfg, scales)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"train_exact: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(kicks.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "loss": loss_value, **info, "seconds": time.perf_counter() - t0}
            history.append(row)
            LOG.info("exact step %d loss %.4g |dH| %.3g kJ/mol", step, row["loss"], row["abs_dH"])
    kicks.eval()
    return history


@torch.no_grad()
def teacher_forced_abs_dH(kicks: ShearKicks, w: ExactWindows, tau_ps: float) -> np.ndarray:
    """|dH| (B,) kJ/mol of the teacher-forced proposals on windows ``w`` (a cheap validation;
    the true dH needs the engine: mdkstep.exact.ShearJumper.propose)."""
    ref = next(kicks.parameters())
    tmpl = graph_template(w.z, w.masses, w.bonds, len(w), kicks.config.max_hops, ref.dtype, ref.device)
    b = to_tensors(w, ref.dtype, ref.device)
    x1, v1 = teacher_forced_stride(kicks, tmpl, b, tau_ps)
    return energy_error(tmpl, b, x1, v1).abs().cpu().double().numpy()
