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

The teacher-forced dH is exact only while x' stays near x_{t+k}; far from it (long strides, a
large molecule) the acceptance the sampler sees is lower (QM aspirin at 4 fs: teacher-forced
median |dH| 1.3 kJ/mol, real 3.2). ``lambda_on_policy`` adds the real thing: one engine call
per window at the proposal x' (:func:`on_policy_energy_error`), at the cost of that call.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from mdkstep.config import to_dict
from mdkstep.constraints import DistanceConstraints
from mdkstep.data.windows import KStepDataset, WindowBatch
from mdkstep.model import build_model
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint, save_checkpoint, shear_payload
from mdkstep.model.graph import GraphBatch
from mdkstep.model.shear import ShearKicks, graph_template, inner_path, outer_kick
from mdkstep.progress import Progress
from mdkstep.training.trainer import RunPaths, prepare_run_folder, resolve_device
from mdkstep.utils import KB_KJ_PER_MOL_K, LOG, MdkstepError, atomic_path, atomic_write_json

# --------------------------------------------------------------------------- windows

@dataclass
class ExactWindows:
    """Windows of one molecule: (B,N,3) arrays nm, nm/ps, kJ/(mol nm); u0, u1 (B,) kJ/mol;
    z (N,), masses (N,) amu, bonds (M,2); constraints: the rigid bonds of the data (MM's
    HBonds; :func:`rigid_bonds`) or None."""

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
    constraints: DistanceConstraints | None = None

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def subset(self, idx: np.ndarray) -> "ExactWindows":
        """The windows ``idx``."""
        pick = lambda a: a[idx]  # noqa: E731
        return ExactWindows(self.z, self.masses, self.bonds, *(pick(getattr(self, k)) for k in
                                                                ("x0", "v0", "f0", "u0", "x1", "v1", "f1", "u1")),
                            constraints=self.constraints)


#: a bond whose length varies less than this (relative std over the windows) was constrained
RIGID_REL_STD = 1e-6


def rigid_bonds(z: np.ndarray, masses: np.ndarray, bonds: np.ndarray, x: np.ndarray) -> DistanceConstraints | None:
    """The distance constraints the data were generated with, read off the data: the bonds
    whose length over the frames x (B,N,3) nm is constant to RIGID_REL_STD (OpenMM holds its
    constraints to ~1e-8); their mean lengths. None when no bond is rigid (QM data). The
    datasets do not store the engine's constraint list, and this cannot disagree with it."""
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if len(x) < 2 or not len(bonds):
        return None
    r = np.linalg.norm(x[:, bonds[:, 0]] - x[:, bonds[:, 1]], axis=-1)
    rigid = r.std(axis=0) < RIGID_REL_STD * r.mean(axis=0)
    if not rigid.any():
        return None
    return DistanceConstraints(bonds[rigid], r[:, rigid].mean(axis=0), masses)


def windows_from_batch(wb: WindowBatch, u0: np.ndarray, u1: np.ndarray) -> ExactWindows:
    """ExactWindows from a dataset WindowBatch (which needs forces) and the potential energies
    u0, u1 (B,) kJ/mol of its two ends."""
    if wb.f0 is None or wb.f1 is None:
        raise ValueError(f"{wb.molecule}: exact-mode training needs forces at both ends of every window")
    bonds = np.asarray(wb.topology["bonds"], dtype=np.int64).reshape(-1, 2)
    return ExactWindows(wb.z, wb.masses, bonds, wb.x0, wb.v0, np.asarray(wb.f0), np.asarray(u0, float),
                        wb.x1, wb.v1, np.asarray(wb.f1), np.asarray(u1, float),
                        constraints=rigid_bonds(wb.z, wb.masses, bonds, np.concatenate([wb.x0, wb.x1])))


def dataset_windows(ds: KStepDataset, idx: np.ndarray) -> list[ExactWindows]:
    """Windows ``idx`` of a k-step dataset with their potential energies (WindowBatch.u0/u1),
    one entry per trajectory; a trajectory without energies is a one-line error."""
    out = []
    for wb in ds.batches(np.asarray(idx)):
        if wb.u0 is None or wb.u1 is None:
            raise MdkstepError(f"{ds.path}: trajectory of {wb.molecule} has no energies; exact-mode training "
                               "needs U at both ends of every window")
        out.append(windows_from_batch(wb, wb.u0, wb.u1))
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
    k: int | None = None  #: jump length in integrator steps; None = the dataset's (else it must match)
    max_windows: int = 0  #: training windows used (a deterministic subsample; 0 = all)
    val_max_windows: int = 2000  #: validation windows for the teacher-forced |dH| report
    dtype: str = "float64"  #: float64 | float32 (the sampler runs the model in the same dtype)
    lr_schedule: str = "constant"  #: constant | cosine (lr -> 0 over ``steps``)
    init_checkpoint: str | None = None  #: start from this shear checkpoint's weights (same architecture)
    #: weight of the on-policy term (dH/kT)^2 with the engine's U, F at the proposal (1 call per window)
    lambda_on_policy: float = 0.0
    #: relative frequency of each molecule's steps (order of the dataset's molecules); None: round robin
    molecule_weights: list[float] | None = None

    #: removed keys -> their old default (mdkstep.config.drop_removed); both measured as no help on QM
    #: aspirin (README "What else was tried on aspirin"): the smooth |dH|/kT on-policy penalty
    #: (``on_policy_loss: abs``) and force matching of the inner kick at the midpoint (``lambda_mid_force``)
    REMOVED: ClassVar[dict[str, Any]] = {"on_policy_loss": "square", "lambda_mid_force": 0.0}

    def validate(self) -> None:
        """Raise ValueError on an inconsistent configuration."""
        for key in ("steps", "batch_size", "log_every", "val_max_windows"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}': {getattr(self, key)} must be >= 1")
        if self.max_windows < 0 or (self.k is not None and self.k < 1):
            raise ValueError("keys 'max_windows' must be >= 0 and 'k' >= 1 or null")
        if not self.lr > 0 or not self.temperature_K > 0:
            raise ValueError("keys 'lr' and 'temperature_K' must be > 0")
        for key in ("weight_decay", "grad_clip", "lambda_x", "lambda_v", "lambda_energy", "lambda_on_policy"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ValueError(f"key '{key}': {getattr(self, key)} must be a finite number >= 0")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"key 'dtype': {self.dtype!r} is not one of float64|float32")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"key 'lr_schedule': {self.lr_schedule!r} is not one of constant|cosine")
        w = self.molecule_weights
        if w is not None and (not w or any(not (math.isfinite(x) and x >= 0) for x in w) or sum(w) <= 0):
            raise ValueError(f"key 'molecule_weights': {w} must be finite numbers >= 0 with a positive sum")


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


def teacher_forced_stride(kicks: ShearKicks, tmpl: GraphBatch, b: WindowTensors, tau: float,
                          cons: DistanceConstraints | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x', v') of the stride from (x_t, v_t, F_t) with F(x') := F_{t+k}; tau ps. With
    constraints the RATTLE-projected stride (the data's x_t, v_t lie on the manifold)."""
    a0 = outer_kick(kicks, tmpl, b.x0, b.f0, tau, cons)
    x1, v_mid = inner_path(kicks, tmpl, b.x0, b.v0 + a0, tau, cons)
    return x1, v_mid + outer_kick(kicks, tmpl, x1, b.f1, tau, cons)


def energy_error(tmpl: GraphBatch, b: WindowTensors, x1: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """dH (G,) kJ/mol of the proposal (x', v'), U(x') ~ U_{t+k} - F_{t+k} . (x' - x_{t+k})."""
    g, m = tmpl.n_graphs, tmpl.masses
    u_prop = b.u1 - per_graph_sum((b.f1 * (x1 - b.x1)).sum(-1), g)
    k_prop = per_graph_sum(0.5 * m * (v1 * v1).sum(-1), g)
    k_0 = per_graph_sum(0.5 * m * (b.v0 * b.v0).sum(-1), g)
    return u_prop + k_prop - b.u0 - k_0


def exact_loss(kicks: ShearKicks, tmpl: GraphBatch, b: WindowTensors, tau: float, cfg: ExactTrainConfig,
               scales: dict[str, float], cons: DistanceConstraints | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats; "abs_dH" in kJ/mol). ``scales``: x_scale nm, v_scale nm/ps."""
    x1, v1 = teacher_forced_stride(kicks, tmpl, b, tau, cons)
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


#: the engine at a batch of proposals: x' (G,N,3) nm -> (U (G,) kJ/mol, F (G,N,3) kJ/(mol nm)), no gradient
EngineFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def on_policy_energy_error(kicks: ShearKicks, tmpl: GraphBatch, b: WindowTensors, tau: float, engine_fn: EngineFn,
                           cons: DistanceConstraints | None = None) -> torch.Tensor:
    """dH (G,) kJ/mol of the real proposal from (x_t, v_t, F_t, U_t): the stride's one force
    call is the engine's at x' (as in sampling), not the data's. Differentiable in the model:
    U(x') enters as U* - F*.(x' - stop_grad(x')) (value U*, gradient -F*, exact to first order),
    and the last kick uses F* as a constant (no Hessian)."""
    g = tmpl.n_graphs
    a0 = outer_kick(kicks, tmpl, b.x0, b.f0, tau, cons)
    x1, v_mid = inner_path(kicks, tmpl, b.x0, b.v0 + a0, tau, cons)
    u_np, f_np = engine_fn(x1.detach().to("cpu", torch.float64).numpy().reshape(g, -1, 3))
    u_star = torch.as_tensor(np.asarray(u_np), dtype=x1.dtype, device=x1.device)
    f_star = torch.as_tensor(np.asarray(f_np).reshape(-1, 3), dtype=x1.dtype, device=x1.device)
    v1 = v_mid + outer_kick(kicks, tmpl, x1, f_star, tau, cons)
    m = tmpl.masses
    u1 = u_star - per_graph_sum((f_star * (x1 - x1.detach())).sum(-1), g)
    k1 = per_graph_sum(0.5 * m * (v1 * v1).sum(-1), g)
    k0 = per_graph_sum(0.5 * m * (b.v0 * b.v0).sum(-1), g)
    return u1 + k1 - b.u0 - k0


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
                scales: dict[str, float] | None = None,
                engine_fns: Sequence[EngineFn] | None = None, progress: bool | None = True) -> list[dict[str, float]]:
    """Adam on :func:`exact_loss` for ``cfg.steps`` steps; each step draws one molecule's
    windows (round robin, or at random by ``cfg.molecule_weights``) and ``batch_size`` of them
    at random. ``scales`` None: :func:`fit_scales`.
    With ``cfg.lambda_on_policy`` > 0, ``engine_fns`` (one per entry of ``windows``) give the
    real U, F at the proposals for :func:`on_policy_energy_error` (``abs_dH_on_policy`` logged).
    ``progress``: :mod:`mdkstep.progress` (True: a bar on a terminal, else INFO lines with the
    ETA every 30 s; False: those lines only; None: silent).

    Returns the logged rows (step, loss parts, abs_dH kJ/mol, seconds)."""
    if not windows or any(len(w) == 0 for w in windows):
        raise ValueError("train_exact: need at least one window per molecule")
    if cfg.lambda_on_policy > 0 and (engine_fns is None or len(engine_fns) != len(windows)):
        raise ValueError("train_exact: lambda_on_policy > 0 needs one engine function per molecule")
    if cfg.molecule_weights is not None and len(cfg.molecule_weights) != len(windows):
        raise ValueError(f"train_exact: molecule_weights has {len(cfg.molecule_weights)} entries for "
                         f"{len(windows)} molecules")
    p_mol = None if cfg.molecule_weights is None else np.asarray(cfg.molecule_weights) / sum(cfg.molecule_weights)
    scales = scales or fit_scales(kicks, windows, tau_ps)
    ref = next(kicks.parameters())
    dtype, device = ref.dtype, ref.device
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam([q for q in kicks.parameters() if q.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1.0 + math.cos(math.pi * s / cfg.steps))) if cfg.lr_schedule == "cosine" else
        (lambda s: 1.0))
    templates: dict[tuple[int, int], GraphBatch] = {}
    kicks.train()
    history, t0 = [], time.perf_counter()
    with Progress(cfg.steps, "exact train", "step", progress=progress) as bar:
        for step in range(1, cfg.steps + 1):
            mi = (step - 1) % len(windows) if p_mol is None else int(rng.choice(len(windows), p=p_mol))
            w = windows[mi]
            idx = rng.choice(len(w), size=min(cfg.batch_size, len(w)), replace=False)
            key = (mi, len(idx))
            if key not in templates:
                templates[key] = graph_template(w.z, w.masses, w.bonds, len(idx), kicks.config.max_hops, dtype, device)
            bt = to_tensors(w.subset(idx), dtype, device)
            loss, info = exact_loss(kicks, templates[key], bt, tau_ps, cfg, scales, w.constraints)
            if cfg.lambda_on_policy > 0:
                dh = on_policy_energy_error(kicks, templates[key], bt, tau_ps, engine_fns[mi], w.constraints)
                kT = KB_KJ_PER_MOL_K * cfg.temperature_K
                loss = loss + cfg.lambda_on_policy * torch.square(dh / kT).mean()
                info["abs_dH_on_policy"] = float(dh.detach().abs().mean())
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"train_exact: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(kicks.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "loss": loss_value, **info, "seconds": time.perf_counter() - t0}
                history.append(row)
                LOG.info("exact step %d loss %.4g |dH| %.3g kJ/mol%s", step, row["loss"], row["abs_dH"],
                         f" (on-policy {row['abs_dH_on_policy']:.3g})" if "abs_dH_on_policy" in row else "")
                bar.set_postfix(loss=row["loss"])
            bar.update(1)
    kicks.eval()
    return history


@torch.no_grad()
def teacher_forced_abs_dH(kicks: ShearKicks, w: ExactWindows, tau_ps: float) -> np.ndarray:
    """|dH| (B,) kJ/mol of the teacher-forced proposals on windows ``w`` (a cheap validation;
    the true dH needs the engine: mdkstep.exact.sampler.ShearJumper.propose)."""
    ref = next(kicks.parameters())
    tmpl = graph_template(w.z, w.masses, w.bonds, len(w), kicks.config.max_hops, ref.dtype, ref.device)
    b = to_tensors(w, ref.dtype, ref.device)
    x1, v1 = teacher_forced_stride(kicks, tmpl, b, tau_ps, w.constraints)
    return energy_error(tmpl, b, x1, v1).abs().cpu().double().numpy()


# ------------------------------------------------------------------- the stage-04 run

def _subsample(n: int, n_max: int, seed: int) -> np.ndarray:
    """Indices of a deterministic subsample of at most ``n_max`` of ``n`` (0 = all), sorted."""
    if not n_max or n <= n_max:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_max, replace=False))


def abs_dH_summary(adh: np.ndarray) -> dict[str, float]:
    """Median, 90th percentile and mean of |dH| (kJ/mol) and the mean Metropolis acceptance
    probability min(1, exp(-|dH|/kT)) at 300 K as a rough guide (the sign of dH is lost)."""
    adh = np.asarray(adh, dtype=float)
    if not adh.size:
        return {}
    return {"median_abs_dH_kJ_mol": float(np.median(adh)), "p90_abs_dH_kJ_mol": float(np.quantile(adh, 0.9)),
            "mean_abs_dH_kJ_mol": float(adh.mean()), "n": int(adh.size)}


def write_metrics_csv(path: str | Path, rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """The logged rows as a CSV (columns ``fieldnames``, default the first row's keys), written
    atomically: a crash never leaves a truncated metrics.csv."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fieldnames if fieldnames is not None else rows[0]))
        w.writeheader()
        w.writerows(rows)


def train_shear(dataset_file, splits, model_cfg, cfg: ExactTrainConfig, out, device_name: str = "cpu",
                resume: bool = False, overwrite: bool = False, test_split=None) -> dict:
    """Stage 04 for ``kind: shear``: train exact mode's ShearKicks on a k-step dataset with
    :func:`train_exact` and write ``<out>/best.pt`` (= ``last.pt``: the final weights),
    ``metrics.csv`` and ``final_metrics.json`` (teacher-forced |dH| on val/test before and
    after training, kJ/mol). tau = k * dt of the dataset. ``device_name``: auto | cpu | cuda
    (cuda without a visible GPU is a one-line error, as in the main trainer). ``resume`` is not
    supported yet (one-line error); an earlier run needs ``overwrite``. Returns a summary dict."""
    try:
        cfg.validate()
        model_cfg.validate()
    except ValueError as e:
        raise MdkstepError(f"exact train config: {e}") from None
    if resume:
        raise MdkstepError("--resume is not supported for kind 'shear' yet (training is short): pass --overwrite")
    device = resolve_device(device_name)
    paths = RunPaths(Path(out))
    prepare_run_folder(paths, resume=False, overwrite=overwrite)
    train_ds = KStepDataset(Path(dataset_file), splits[0])
    if cfg.k is not None and cfg.k != train_ds.k:
        raise MdkstepError(f"{dataset_file}: dataset has k={train_ds.k} but the train config says k={cfg.k}")
    if not train_ds.spec.has_forces or len(train_ds) == 0:
        raise MdkstepError(f"{dataset_file}: exact-mode training needs a non-empty training split with forces")
    tau_ps = train_ds.k * train_ds.spec.dt_fs / 1000.0  # k counts integrator steps
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    torch.manual_seed(cfg.seed)
    kicks = build_model(model_cfg).to(device=device, dtype=dtype)
    init_scales = None
    if cfg.init_checkpoint:

        init, ck = model_from_checkpoint(cfg.init_checkpoint, device=device, dtype=dtype)
        check_compatible(ck, cfg.init_checkpoint, k=train_ds.k, model_config=model_cfg)
        kicks.load_state_dict(init.state_dict())  # its input/output scale buffers too
        init_scales = ck.get("scales")
        LOG.info("shear kicks start from %s (step %s)", cfg.init_checkpoint, ck.get("step"))
    train_w = dataset_windows(train_ds, _subsample(len(train_ds), cfg.max_windows, cfg.seed))
    evals = {"val": KStepDataset(Path(dataset_file), splits[1])}
    if test_split is not None:
        evals["test"] = KStepDataset(Path(dataset_file), test_split)
    eval_w = {k: dataset_windows(d, _subsample(len(d), cfg.val_max_windows, cfg.seed + 1))
              for k, d in evals.items() if len(d)}
    scales = init_scales or fit_scales(kicks, train_w, tau_ps)

    def report() -> dict:
        return {k: abs_dH_summary(np.concatenate([teacher_forced_abs_dH(kicks, w, tau_ps) for w in ws]))
                for k, ws in eval_w.items()}

    before = report()
    LOG.info("shear kicks (n_inner %d) at tau = %.4g fs on %d windows; val |dH| median %.3g kJ/mol before",
             model_cfg.n_inner, tau_ps * 1000, sum(len(w) for w in train_w),
             before.get("val", {}).get("median_abs_dH_kJ_mol", float("nan")))
    history = train_exact(kicks, train_w, tau_ps, cfg, scales)
    after = report()
    atom_types = sorted({int(z) for w in train_w for z in w.z})
    payload = shear_payload(kicks, train_ds.k, train_ds.spec.dt_fs,
                            train_ds.spec.engine, atom_types, train_config=to_dict(cfg), scales=scales,
                            step=cfg.steps, tau_fs=tau_ps * 1000.0)
    save_checkpoint(paths.last, payload)
    save_checkpoint(paths.best, payload)
    write_metrics_csv(paths.csv, history)
    final = {"kind": "shear", "tau_fs": tau_ps * 1000.0, "teacher_forced_before": before,
             "teacher_forced_after": after, "train_seconds": history[-1]["seconds"], "steps": cfg.steps}
    atomic_write_json(paths.out / "final_metrics.json", final)
    return {"steps": cfg.steps, "out": str(paths.out), "final_metrics": final, "device": str(device),
            "n_parameters": sum(p.numel() for p in kicks.parameters())}
