"""Training of k-step jump models: losses, normalization, and the trainer (epochs, steps,
validation, checkpoints, exact resume).

The rollout levers that measured as no help (input noise, time reversal, the per-element
kinetic-energy term, the two-jump loss; README "Rollout levers") are gone:
``TrainConfig.REMOVED`` lets configs that hold them at their old defaults still read. One lever
stays, off by default: the mass-weighted velocity term (``dv_weight: mass``).

Losses are computed in normalized units (Δx / dx_scale, Δv / dv_scale) plus structural terms
on the predicted frame x_t + Δx against the target x_{t+k}: bond lengths (scale 0.001 nm),
angles (scale 0.02 rad) and dihedrals (1 - cos Δφ, scale 0.1 rad), and a force-head term in
units of f_scale when the data has forces. Distributed training via torchrun (DDP; gloo on
CPU, nccl on CUDA). Batching and rotation augmentation live in :mod:`mdkstep.data.windows`, the
loss curve in :mod:`mdkstep.analysis.plots`, the one-jump metrics in :mod:`mdkstep.analysis.evaluation`.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mdkstep.analysis.evaluation import one_jump_metrics
from mdkstep.analysis.plots import loss_curve
from mdkstep.config import drop_removed
from mdkstep.data.windows import (
    KStepDataset,
    Targets,
    collate,
    split_name,
    targets_to,
)
from mdkstep.model import GraphBatch, ModelConfig, build_model
from mdkstep.model.checkpoint import check_compatible, read_checkpoint, save_checkpoint
from mdkstep.model.common import freeze_first_layers
from mdkstep.molecule.geometry import bond_angles, bond_lengths, dihedral_angles
from mdkstep.progress import Progress
from mdkstep.runner import fingerprint_changes
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, atomic_write_text, check_writable

BOND_SCALE_NM = 0.001
ANGLE_SCALE_RAD = 0.02
DIHEDRAL_SCALE_RAD = 0.1


@dataclass
class TrainConfig:
    """Training settings (configs/train*.yaml)."""

    k: int = 8  #: jump length in integrator steps; must match the dataset
    epochs: int = 20
    max_steps: int = 0  #: stop after this many optimizer steps (0 = no limit)
    batch_size: int = 256  #: windows per optimizer step (per process, before accumulation)
    grad_accum: int = 1  #: micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  #: cosine floor as a fraction of lr
    grad_clip: float = 1.0
    amp: bool = True  #: bfloat16 autocast on CUDA (ignored on CPU)
    rotation_aug: str = "per_graph"  #: none | batch | per_graph
    lambda_dx: float = 1.0
    lambda_dv: float = 1.0
    lambda_bond: float = 0.1
    lambda_angle: float = 0.05
    lambda_dihedral: float = 0.01
    lambda_force: float = 0.1
    eval_every: int = 0  #: steps between validations (0 = once per epoch)
    val_max_windows: int = 4096  #: validation subsample (deterministic)
    metrics_max_windows: int = 8192  #: one-jump metrics subsample at the end
    norm_max_windows: int = 4096  #: windows used to estimate normalization scales
    seed: int = 0
    #: steps between two train-loss rows of metrics.csv at most; a run records at least ~50:
    #: every min(log_every, max(1, steps // 50)) steps (validation rows come every eval_every)
    log_every: int = 50
    wandb: bool = False  #: log to Weights & Biases (offline unless WANDB_MODE says otherwise)
    wandb_project: str = "md-kstep"
    freeze_layers: int = 0  #: freeze the first N layers (transfer learning)
    pretrained_lr_scale: float = 1.0  #: multiply lr by this when starting from --pretrained
    #: per-atom weight of the dv term: "uniform" (every atom alike, nm/ps) or "mass" (m_i / mean m:
    #: the kinetic energy 0.5 m |dv_err|^2 of the velocity error, the energy each jump injects)
    dv_weight: str = "uniform"

    #: keys of removed levers -> their old (off) default; a stored or old config that has one at
    #: that value still reads (mdkstep.config.drop_removed), any other value is a one-line error
    REMOVED: ClassVar[dict[str, Any]] = {
        "input_noise_x": 0.0, "input_noise_v": 0.0, "input_noise_units": "relative", "time_reverse_prob": 0.0,
        "lambda_ke_element": 0.0, "unroll_jumps": 1, "lambda_jump2": 1.0}

    def validate(self) -> None:
        if self.rotation_aug not in ("none", "batch", "per_graph"):
            raise ValueError(f"key 'rotation_aug': {self.rotation_aug!r} is not one of none|batch|per_graph")
        if self.batch_size < 1 or self.grad_accum < 1 or self.k < 1:
            raise ValueError("keys 'batch_size', 'grad_accum' and 'k' must be >= 1")
        if self.max_steps < 0:
            raise ValueError(f"key 'max_steps' (--max-steps): {self.max_steps} must be >= 0 (0 = no limit)")
        if self.epochs < 1:
            raise ValueError(f"key 'epochs' (--epochs): {self.epochs} must be >= 1")
        for key in ("log_every", "val_max_windows", "metrics_max_windows", "norm_max_windows"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}': {getattr(self, key)} must be >= 1")
        for key in ("warmup_steps", "eval_every", "freeze_layers"):
            if getattr(self, key) < 0:
                raise ValueError(f"key '{key}': {getattr(self, key)} must be >= 0")
        for key in ("weight_decay", "min_lr_ratio", "lambda_dx", "lambda_dv", "lambda_bond", "lambda_angle",
                    "lambda_dihedral", "lambda_force"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ValueError(f"key '{key}': {getattr(self, key)} must be a finite number >= 0")
        for key in ("lr", "grad_clip", "pretrained_lr_scale"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ValueError(f"key '{key}': {getattr(self, key)} must be a finite number > 0")
        if self.dv_weight not in ("uniform", "mass"):
            raise ValueError(f"key 'dv_weight': {self.dv_weight!r} is not one of uniform|mass")


# ----------------------------------------------------------------------------- losses

def compute_loss(out: dict[str, torch.Tensor], gb: GraphBatch, tg: Targets, cfg: TrainConfig,
                 scales: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats). Positions nm, velocities nm/ps, forces kJ/(mol nm)."""
    parts: dict[str, torch.Tensor] = {}
    parts["dx"] = ((out["dx_norm"] - tg.dx / scales["dx_scale"]) ** 2).sum(-1).mean()
    dv_err2 = ((out["dv_norm"] - tg.dv / scales["dv_scale"]) ** 2).sum(-1)
    if cfg.dv_weight == "mass":
        dv_err2 = dv_err2 * (gb.masses / gb.masses.mean())
    parts["dv"] = dv_err2.mean()
    x_pred = gb.pos + out["dx"]
    if cfg.lambda_bond and len(tg.bonds):
        parts["bond"] = (((bond_lengths(x_pred, tg.bonds) - bond_lengths(tg.x1, tg.bonds)) / BOND_SCALE_NM) ** 2).mean()
    if cfg.lambda_angle and len(tg.angles):
        parts["angle"] = (((bond_angles(x_pred, tg.angles) - bond_angles(tg.x1, tg.angles)) / ANGLE_SCALE_RAD) ** 2).mean()
    if cfg.lambda_dihedral and len(tg.dihedrals):
        d = dihedral_angles(x_pred, tg.dihedrals) - dihedral_angles(tg.x1, tg.dihedrals)
        parts["dihedral"] = (2.0 * (1.0 - torch.cos(d)) / DIHEDRAL_SCALE_RAD**2).mean()
    if "forces_norm" in out and tg.f1 is not None and cfg.lambda_force:
        parts["force"] = ((out["forces_norm"] - tg.f1 / scales["f_scale"]) ** 2).sum(-1).mean()
    lam = {"dx": cfg.lambda_dx, "dv": cfg.lambda_dv, "bond": cfg.lambda_bond, "angle": cfg.lambda_angle,
           "dihedral": cfg.lambda_dihedral, "force": cfg.lambda_force}
    total = sum(lam[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def training_loss(net: torch.nn.Module, gb: GraphBatch, tg: Targets, cfg: TrainConfig, scales: dict[str, float],
                  amp: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one training micro-batch: :func:`compute_loss` of the jump t -> t+k, the forward
    under bf16 autocast on CUDA when ``amp``."""
    with torch.autocast(gb.pos.device.type, dtype=torch.bfloat16, enabled=amp):
        outp = net(gb)
    return compute_loss({k: v.float() for k, v in outp.items()}, gb, tg, cfg, scales)


# -------------------------------------------------------------------- normalization

def estimate_scales(ds: KStepDataset, n_max: int, seed: int) -> dict[str, float]:
    """RMS per Cartesian component of v_t, F_t, Δx and Δv over a train subsample."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(n_max, len(ds)), replace=False)
    acc = {"v": [], "f": [], "dx": [], "dv": []}
    for w in ds.batches(idx):
        acc["v"].append(w.v0.ravel())
        acc["dx"].append((w.x1 - w.x0).ravel())
        acc["dv"].append((w.v1 - w.v0).ravel())
        if w.f0 is not None:
            acc["f"].append(w.f0.ravel())
    rms = lambda a: float(np.sqrt(np.mean(np.concatenate(a) ** 2))) if a else 1.0  # noqa: E731
    return {"v_scale": rms(acc["v"]), "f_scale": rms(acc["f"]), "dx_scale": rms(acc["dx"]), "dv_scale": rms(acc["dv"])}


# ------------------------------------------------------------------------- set-up

def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MdkstepError("--device cuda requested but no CUDA GPU is visible")
    return torch.device(name)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    import torch.distributed as dist

    rank, world, local_rank = _dist_info()
    device = resolve_device(device_name)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    return rank, world, device


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        prog = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))
    return f


RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "loss_curve.png", "final_metrics.json")


@dataclass
class RunPaths:
    """The files of one run folder."""

    out: Path

    @property
    def best(self) -> Path:
        return self.out / "best.pt"

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    @property
    def csv(self) -> Path:
        return self.out / "metrics.csv"

    def existing(self) -> list[str]:
        """Names of the run files already in the folder."""
        return [n for n in RUN_FILES if (self.out / n).exists()]

    def clear(self) -> None:
        """Remove the run files and their leftover temporaries (``.NAME.*``)."""
        for n in RUN_FILES:
            for p in [self.out / n, *self.out.glob(f".{n}.*")]:
                p.unlink(missing_ok=True)


def prepare_run_folder(paths: RunPaths, resume: bool, overwrite: bool, rank: int = 0) -> None:
    """Refuse to mix a new run into an earlier one; prove the folder writable before any work.

    An earlier run needs ``--resume`` (continue from last.pt) or ``--overwrite`` (its files are
    removed and the run starts clean).
    """
    if resume and overwrite:
        raise MdkstepError("--resume and --overwrite exclude each other: continue the run or start it over")
    if paths.out.exists() and not paths.out.is_dir():
        raise MdkstepError(f"{paths.out}: --out exists and is not a folder")
    old = paths.existing()
    if old and not (resume or overwrite):
        raise MdkstepError(f"{paths.out}: holds an earlier run ({', '.join(old)}); pass --resume to continue it "
                           "or --overwrite to start over")
    if old and resume and not paths.last.is_file():
        raise MdkstepError(f"{paths.out}: --resume but no last.pt to continue from (found {', '.join(old)}); "
                           "pass --overwrite to start over")
    if rank == 0:
        check_writable(paths.out, "run folder (--out)")
        if overwrite and old:
            paths.clear()
            LOG.info("--overwrite: removed the earlier run's %s from %s", ", ".join(old), paths.out)


def load_datasets(dataset_file: Path, splits: tuple[Path, Path], cfg: TrainConfig,
                  model_cfg: ModelConfig) -> tuple[KStepDataset, KStepDataset]:
    """(train, val) datasets, checked against the configs; mismatches are one-line errors."""
    names = [split_name(s) for s in splits]
    if names[0] == names[1]:
        raise MdkstepError(f"--splits {splits[0]} {splits[1]}: train and val are the same split '{names[0]}' "
                           "(pass train.json and val.json)")
    train_ds = KStepDataset(dataset_file, splits[0])
    val_ds = KStepDataset(dataset_file, splits[1])
    if train_ds.k != cfg.k:
        raise MdkstepError(f"{dataset_file}: dataset has k={train_ds.k} but the train config says k={cfg.k}")
    if len(train_ds) == 0:
        raise MdkstepError(f"{splits[0]}: the training split of {dataset_file} is empty")
    if model_cfg.use_forces and not train_ds.spec.has_forces:
        raise MdkstepError(f"{dataset_file}: model uses forces as input but the trajectories have no forces")
    return train_ds, val_ds


#: train-config keys that a --resume may change (the step budget and logging); any other change is refused
RESUME_MAY_CHANGE = frozenset({"max_steps", "epochs", "log_every", "wandb", "wandb_project"})


def check_resume_settings(ck: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A --resume with another seed, lr, batch size, loss weight, ... would splice two runs into
    one model: refused in one line that names what changed."""

    stored = drop_removed(TrainConfig, ck.get("train_config") or {}, f"{path}: train_config")
    old = {k: v for k, v in stored.items() if k not in RESUME_MAY_CHANGE}
    new = {k: v for k, v in asdict(cfg).items() if k not in RESUME_MAY_CHANGE and k in old}
    changes = fingerprint_changes(old, new)
    if changes:
        raise MdkstepError(f"{path}: --resume with other training settings ({'; '.join(changes)}); pass the "
                           "settings of the interrupted run, or --overwrite to start over")


def init_model(model_cfg: ModelConfig, cfg: TrainConfig, train_ds: KStepDataset, paths: RunPaths, resume: bool,
               pretrained: Path | None, allow_k_change: bool
               ) -> tuple[torch.nn.Module, dict[str, float], dict[str, Any], dict | None, float]:
    """(model, normalization scales, resumed counters, resumed checkpoint or None, lr): from
    last.pt on resume, else fresh or from ``pretrained`` with scales estimated on the train split."""
    model = build_model(model_cfg)
    lr = cfg.lr
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": float("inf")}
    if resume and paths.last.is_file():
        ck = read_checkpoint(paths.last)
        check_compatible(ck, str(paths.last), k=cfg.k, model_config=model_cfg)
        check_resume_settings(ck, cfg, paths.last)
        model.load_state_dict(ck["model_state"])
        state.update({k: ck[k] for k in state if k in ck})
        LOG.info("resuming from %s at step %d (epoch %d)", paths.last, state["step"], state["epoch"])
        return model, model.normalization(), state, ck, lr
    if pretrained is not None:
        pk = read_checkpoint(pretrained)
        # MM -> QM transfer changes the physical jump (e.g. k=8 x 2 fs -> k=4 x 0.25 fs): allowed only explicitly
        check_compatible(pk, str(pretrained), k=None if allow_k_change else cfg.k, model_config=model_cfg)
        model.load_state_dict(pk["model_state"])
        lr = cfg.lr * cfg.pretrained_lr_scale
        LOG.info("initialized from %s (k=%s, engine=%s); lr %.2e", pretrained, pk["k"], pk.get("engine"), lr)
        same_jump = int(pk["k"]) == int(cfg.k) and abs(float(pk.get("dt_fs") or 0.0) - float(train_ds.spec.dt_fs)) < 1e-9
        if same_jump:  # fine-tuning the same jump: keep the scales its weights were trained with (step 0 = pretrained)
            return model, model.normalization(), state, None, lr
    scales = estimate_scales(train_ds, cfg.norm_max_windows, cfg.seed)
    model.set_normalization(**scales)
    return model, scales, state, None, lr


def freeze(model: torch.nn.Module, n_layers: int) -> int:
    """Freeze the first ``n_layers`` layers; returns the number of frozen parameters."""
    if not n_layers:
        return 0
    try:
        return freeze_first_layers(model, n_layers)
    except ValueError as e:
        raise MdkstepError(f"key 'freeze_layers' (--freeze-layers): {e}") from None


def _drop_rows_after(path: Path, step: int) -> None:
    """Remove the metrics.csv rows after ``step`` (train-loss rows written after the last.pt that
    a --resume continues from), so that the resumed run does not repeat them."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].strip().isdigit()
                        and int(ln.split(",", 1)[0]) <= step]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


@torch.no_grad()
def validation_loss(model, ds: KStepDataset, cfg: TrainConfig, scales: dict[str, float], device, dtype) -> float:
    """Mean loss on a deterministic validation subsample (no augmentation)."""
    if len(ds) == 0:
        return float("nan")
    rng = np.random.default_rng(12345)
    idx = np.sort(rng.choice(len(ds), size=min(cfg.val_max_windows, len(ds)), replace=False))
    tot, n = 0.0, 0
    core = model.module if hasattr(model, "module") else model
    for s in range(0, len(idx), cfg.batch_size):
        gb, tg = collate(ds.batches(idx[s:s + cfg.batch_size]), core.config.use_forces, dtype)
        gb, tg = gb.to(device), targets_to(tg, device)
        loss, _ = compute_loss(core(gb), gb, tg, cfg, scales)
        m = len(idx[s:s + cfg.batch_size])
        tot += float(loss) * m
        n += m
    return tot / n


# ------------------------------------------------------------------------ the trainer

@dataclass
class Trainer:
    """One training run: the model and its optimizer, the data, and the counters that make a
    resume exact (``state``: step, epoch, batch_in_epoch, best_val)."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    model: torch.nn.Module
    net: torch.nn.Module  #: the model, wrapped in DDP when distributed
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    train_ds: KStepDataset
    val_ds: KStepDataset
    paths: RunPaths
    device: torch.device
    scales: dict[str, float]  #: normalization scales of the losses (v, f, dx, dv)
    state: dict[str, Any]
    total: int  #: optimizer steps of the whole run
    steps_per_epoch: int
    atom_types: list[int]
    rank: int = 0
    world: int = 1
    wandb_run: Any = None
    dtype: torch.dtype = torch.float32
    running: list[float] = field(default_factory=list)  #: micro-batch losses since the last metrics.csv row
    samples: int = 0  #: windows seen by this process
    t0: float = field(default_factory=time.perf_counter)
    bar: Any = None  #: the mdkstep.progress.Progress of fit()

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    def epoch_groups(self, epoch: int) -> list[list[np.ndarray]]:
        """This process's optimizer steps of ``epoch``: groups of grad_accum micro-batches (seeded)."""
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed * 100003 + epoch)
        order = rng.permutation(len(self.train_ds))[self.rank::self.world]
        micro = [order[i:i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
        return [micro[i:i + cfg.grad_accum] for i in range(0, len(micro) - cfg.grad_accum + 1, cfg.grad_accum)]

    def take_step(self, group: list[np.ndarray], aug_rng: np.random.Generator) -> dict[str, float]:
        """One optimizer step over the micro-batches of ``group``; returns the mean loss parts."""
        cfg, scales = self.cfg, self.scales
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        parts_acc: dict[str, float] = {}
        for mb in group:
            gb, tg = collate(self.train_ds.batches(mb), self.model_cfg.use_forces, self.dtype, cfg.rotation_aug,
                             aug_rng)
            gb, tg = gb.to(self.device), targets_to(tg, self.device)
            loss, parts = training_loss(self.net, gb, tg, cfg, scales, self.amp)
            (loss / cfg.grad_accum).backward()
            for k, v in parts.items():
                parts_acc[k] = parts_acc.get(k, 0.0) + v / cfg.grad_accum
            self.running.append(float(loss.detach()))
            self.samples += len(mb)
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.state["step"] += 1
        return parts_acc

    def train_one_epoch(self) -> bool:
        """The rest of the current epoch (from batch_in_epoch on a resume); True when the run's
        step budget is spent."""
        cfg, state = self.cfg, self.state
        groups = self.epoch_groups(state["epoch"])
        if not groups:
            raise MdkstepError(f"training split has {len(self.train_ds)} windows, fewer than one batch "
                               f"({cfg.batch_size} x {cfg.grad_accum} x {self.world} processes)")
        if state["batch_in_epoch"] >= len(groups):
            raise MdkstepError(f"{self.paths.last}: stopped at batch {state['batch_in_epoch']} of epoch {state['epoch']}, "
                               f"but this config has {len(groups)} per epoch (batch_size changed?); pass --overwrite")
        eval_every = cfg.eval_every or self.steps_per_epoch
        row_every = self.row_every
        for gi in range(state["batch_in_epoch"], len(groups)):
            aug_rng = np.random.default_rng([cfg.seed, state["epoch"], gi, self.rank])  # reproducible on resume
            parts = self.take_step(groups[gi], aug_rng)
            state["batch_in_epoch"] = gi + 1
            last_of_epoch = gi + 1 == len(groups)
            if last_of_epoch:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            if state["step"] % eval_every == 0 or last_of_epoch or state["step"] >= self.total:
                self.evaluate(parts)
            elif state["step"] % row_every == 0:
                self.record(parts)
            self.bar.update(1)
            if state["step"] >= self.total:
                return True
        return False

    @property
    def row_every(self) -> int:
        """Steps between train-loss rows of metrics.csv: min(log_every, max(1, total // 50)),
        so that any run length gives at least ~50 points of the loss curve."""
        return max(1, min(self.cfg.log_every, self.total // 50))

    def _row(self, parts: dict[str, float], val: float | str) -> dict[str, Any]:
        """One metrics.csv row; train_loss is the mean over the micro-batches since the previous row."""
        row = {"step": self.state["step"], "epoch": self.state["epoch"], "lr": self.sched.get_last_lr()[0],
               "train_loss": float(np.mean(self.running)) if self.running else float("nan"), "val_loss": val,
               "samples_per_s": self.samples * self.world / max(1e-9, time.perf_counter() - self.t0),
               **{f"train_{k}": v for k, v in parts.items()}}
        self.running.clear()
        return row

    def record(self, parts: dict[str, float]) -> None:
        """A train-loss row of metrics.csv (val_loss empty): the loss curve between validations.
        Touches neither the optimization nor the checkpoints."""
        if self.rank != 0:
            self.running.clear()
            return
        row = self._row(parts, "")
        _append_csv(self.paths.csv, row)
        self.bar.set_postfix(loss=row["train_loss"])
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "val_loss"}, step=self.state["step"])

    def evaluate(self, parts: dict[str, float]) -> None:
        """Validation loss, one metrics.csv row, best.pt when it improved, last.pt (rank 0)."""
        if self.rank != 0:
            self.running.clear()
            return
        val = validation_loss(self.net, self.val_ds, self.cfg, self.scales, self.device, self.dtype)
        row = self._row(parts, val)
        _append_csv(self.paths.csv, row)
        self.bar.set_postfix(loss=row["train_loss"], val=val)
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=self.state["step"])
        if math.isfinite(val) and val < self.state["best_val"]:
            self.state["best_val"] = val
            self.save(self.paths.best)
        self.save(self.paths.last)

    def save(self, path: Path) -> None:
        """Checkpoint: weights, configs, k, dt, engine, atom types, optimizer/scheduler state, counters."""
        save_checkpoint(path, {
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_config": asdict(self.model_cfg), "train_config": asdict(self.cfg), "k": self.cfg.k,
            "dt_fs": self.train_ds.spec.dt_fs, "engine": self.train_ds.spec.engine, "atom_types": self.atom_types,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), **self.state,
        })

    def fit(self, progress: bool | None = True) -> None:
        """Epochs until the step budget or ``epochs`` is reached. ``progress``: see
        :mod:`mdkstep.progress` (True: a bar on a terminal, else INFO lines with the ETA every
        30 s; False: those lines only; None: silent); only rank 0 shows it."""
        label = f"train {self.paths.out.name}" if self.paths.out.name else "train"
        with Progress(self.total, label, "step", initial=self.state["step"],
                      progress=progress if self.rank == 0 else None) as self.bar:
            done = self.state["step"] >= self.total
            while not done and self.state["epoch"] < self.cfg.epochs:
                done = self.train_one_epoch()

    def final_metrics(self, dataset_file: Path, test_split: Path | None) -> dict[str, Any]:
        """One-jump metrics of the best checkpoint (else last) on val (and test)."""
        best = self.paths.best if self.paths.best.is_file() else self.paths.last
        if best.is_file():
            self.model.load_state_dict(read_checkpoint(best)["model_state"])
        self.model.eval()
        n, dev = self.cfg.metrics_max_windows, self.device
        final = {"val": one_jump_metrics(self.model, self.val_ds, n, device=dev)}
        if test_split is not None:
            final["test"] = one_jump_metrics(self.model, KStepDataset(dataset_file, test_split), n, device=dev)
        return final


def build_trainer(dataset_file: Path, splits: tuple[Path, Path], model_cfg: ModelConfig, cfg: TrainConfig,
                  paths: RunPaths, device: torch.device, rank: int, world: int, resume: bool,
                  pretrained: Path | None, allow_k_change: bool) -> tuple[Trainer, int]:
    """A ready Trainer (resumed from last.pt when asked) and its number of frozen parameters."""
    torch.manual_seed(cfg.seed + rank)
    train_ds, val_ds = load_datasets(dataset_file, splits, cfg, model_cfg)
    model, scales, state, ck, lr = init_model(model_cfg, cfg, train_ds, paths, resume, pretrained, allow_k_change)
    n_frozen = freeze(model, cfg.freeze_layers)
    model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_ds) // (cfg.batch_size * cfg.grad_accum * world))
    total = min(cfg.max_steps or steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    if ck is not None and "optimizer" in ck:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    if ck is not None and rank == 0:
        _drop_rows_after(paths.csv, int(state["step"]))
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    trainer = Trainer(cfg=cfg, model_cfg=model_cfg, model=model, net=net, opt=opt, sched=sched, train_ds=train_ds,
                      val_ds=val_ds, paths=paths, device=device, scales=scales, state=state, total=total,
                      steps_per_epoch=steps_per_epoch, atom_types=sorted(_dataset_elements(train_ds)),
                      rank=rank, world=world)
    return trainer, n_frozen


def _init_wandb(cfg: TrainConfig, model_cfg: ModelConfig, out: Path):
    try:
        import wandb
    except ImportError:
        raise MdkstepError("wandb: true in the train config, but wandb is not installed (pip install wandb)") from None
    return wandb.init(project=cfg.wandb_project, mode=os.environ.get("WANDB_MODE", "offline"),
                      dir=str(out), config={"model": asdict(model_cfg), "train": asdict(cfg)})


def train(dataset_file: Path, splits: tuple[Path, Path], model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
          device_name: str = "auto", resume: bool = False, pretrained: Path | None = None,
          test_split: Path | None = None, progress: bool = True, allow_k_change: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Train a k-step model; returns a summary (and writes best.pt, last.pt, metrics.csv,
    loss_curve.png, final_metrics.json under ``out``).

    An ``out`` that holds an earlier run is refused unless ``resume`` (continue from last.pt)
    or ``overwrite`` (remove its files, start clean).
    """
    import torch.distributed as dist

    if model_cfg.kind != "jump":
        raise MdkstepError(f"model kind {model_cfg.kind!r} trains with mdkstep.exact.train.train_shear "
                           "(src/04_train.py dispatches on the kind)")
    try:
        cfg.validate()
    except ValueError as e:
        raise MdkstepError(f"train config: {e}") from None
    rank, world, device = setup_distributed(device_name)
    paths = RunPaths(Path(out))
    prepare_run_folder(paths, resume, overwrite, rank)
    trainer, n_frozen = build_trainer(dataset_file, splits, model_cfg, cfg, paths, device, rank, world, resume,
                                      pretrained, allow_k_change)
    if cfg.wandb and rank == 0:
        trainer.wandb_run = _init_wandb(cfg, model_cfg, paths.out)
    trainer.t0 = time.perf_counter()
    trainer.fit(progress)
    elapsed = time.perf_counter() - trainer.t0
    samples = trainer.samples
    summary: dict[str, Any] = {"steps": trainer.state["step"], "epochs": trainer.state["epoch"],
                               "best_val": trainer.state["best_val"],
                               "samples_per_s": samples * world / elapsed if elapsed > 0 and samples else None,
                               "n_parameters": trainer.model.n_parameters(), "n_frozen_parameters": n_frozen,
                               "device": str(device), "world_size": world, "out": str(out)}
    if rank == 0:
        if paths.csv.exists():
            loss_curve(paths.csv, paths.out / "loss_curve.png")
        final = trainer.final_metrics(dataset_file, test_split)
        final["worse_than_no_move"] = warn_if_worse_than_no_move(final, paths.out)
        final["train_summary"] = summary
        atomic_write_json(paths.out / "final_metrics.json", final)
        summary["final_metrics"] = final
        if trainer.wandb_run is not None:
            trainer.wandb_run.finish()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def worse_than_no_move(final: dict[str, Any]) -> tuple[str, dict[str, float], dict[str, float]] | None:
    """(split, model, no_move) one-jump metrics when the model's bond RMSE or position RMSE on
    the test split (else val) is worse than predicting no move at all, else None."""
    split = next((s for s in ("test", "val") if "model" in (final.get(s) or {})), None)
    if split is None:
        return None
    model, still = final[split]["model"], final[split]["no_move"]
    worse = any(model[key] > still[key] for key in ("bond_rmse_A", "pos_rmse_A")
                if math.isfinite(model.get(key, math.nan)) and math.isfinite(still.get(key, math.nan)))
    bad = worse or not all(math.isfinite(model.get(key, math.nan)) for key in ("bond_rmse_A", "pos_rmse_A"))
    return (split, model, still) if bad else None


def warn_if_worse_than_no_move(final: dict[str, Any], out: Path) -> bool | None:
    """One WARNING line when :func:`worse_than_no_move`; returns the flag for final_metrics.json
    (None when there are no one-jump metrics to judge)."""
    if not any("model" in (final.get(s) or {}) for s in ("test", "val")):
        return None
    bad = worse_than_no_move(final)
    if bad is None:
        return False
    split, model, still = bad
    LOG.warning("%s: the trained model is worse than no move on %s (bond RMSE %.4g A vs %.4g A for no move; "
                "position RMSE %.4g A vs %.4g A): not usable as a jumper; train or fine-tune longer, check the data, "
                "or use a shipped model (models/)", out, split, model["bond_rmse_A"], still["bond_rmse_A"],
                model["pos_rmse_A"], still["pos_rmse_A"])
    return True


def _dataset_elements(ds: KStepDataset) -> set[int]:
    out: set[int] = set()
    for ti in np.unique(ds.windows[:, 0]) if len(ds) else []:
        out |= {int(z) for z in ds._traj(int(ti))["atom_types"]}
    return out
