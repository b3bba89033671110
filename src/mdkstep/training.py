"""Training of k-step jump models: batching, losses, augmentation, the loop, one-jump metrics.

Losses are computed in normalized units (Δx / dx_scale, Δv / dv_scale) plus structural terms
on the predicted frame x_t + Δx against the target x_{t+k}: bond lengths (scale 0.001 nm),
angles (scale 0.02 rad) and dihedrals (1 - cos Δφ, scale 0.1 rad), and a force-head term in
units of f_scale when the data has forces. Distributed training via torchrun (DDP; gloo on
CPU, nccl on CUDA).
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import check_compatible, read_checkpoint, save_checkpoint
from .dataset import KStepDataset, WindowBatch
from .model import GraphBatch, ModelConfig, build_model, make_graph_batch
from .model.common import freeze_first_layers
from .structure import bond_angles, bond_lengths, dihedral_angles, wrap_angle
from .utils import LOG, MdkstepError, atomic_path, atomic_write_json

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
    log_every: int = 50
    wandb: bool = False  #: log to Weights & Biases (offline unless WANDB_MODE says otherwise)
    wandb_project: str = "md-kstep"
    freeze_layers: int = 0  #: freeze the first N layers (transfer learning)
    pretrained_lr_scale: float = 1.0  #: multiply lr by this when starting from --pretrained

    def validate(self) -> None:
        if self.rotation_aug not in ("none", "batch", "per_graph"):
            raise ValueError(f"key 'rotation_aug': {self.rotation_aug!r} is not one of none|batch|per_graph")
        if self.batch_size < 1 or self.grad_accum < 1 or self.k < 1:
            raise ValueError("keys 'batch_size', 'grad_accum' and 'k' must be >= 1")


# --------------------------------------------------------------------------- batching

@dataclass
class Targets:
    """Supervision of one batch (flattened over atoms, like GraphBatch)."""

    dx: torch.Tensor  #: (N,3) nm
    dv: torch.Tensor  #: (N,3) nm/ps
    x1: torch.Tensor  #: (N,3) nm
    f1: torch.Tensor | None  #: (N,3) kJ/(mol nm) at t+k
    bonds: torch.Tensor  #: (M,2) global atom indices
    angles: torch.Tensor  #: (M,3)
    dihedrals: torch.Tensor  #: (M,4)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random proper rotation matrices (n,3,3) via QR of Gaussian matrices."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[det < 0, :, 0] *= -1
    return q


def rotate_windows(wb: WindowBatch, rot: np.ndarray) -> WindowBatch:
    """Apply rotations rot (B,3,3) (or (3,3)) to every vector quantity of the windows."""
    r = np.broadcast_to(rot, (wb.x0.shape[0], 3, 3))
    f = lambda a: None if a is None else np.einsum("bij,bnj->bni", r, a)  # noqa: E731
    return WindowBatch(wb.molecule, wb.z, wb.masses, f(wb.x0), f(wb.v0), f(wb.x1), f(wb.v1), f(wb.f0), f(wb.f1),
                       wb.topology)


def _topology_arrays(topo: dict[str, list[list[int]]]) -> dict[str, np.ndarray]:
    return {k: np.asarray(topo[k], dtype=np.int64).reshape(-1, {"bonds": 2, "angles": 3, "dihedrals": 4}[k])
            for k in ("bonds", "angles", "dihedrals")}


def collate(wbs: list[WindowBatch], use_forces: bool, dtype: torch.dtype = torch.float32,
            aug: str = "none", rng: np.random.Generator | None = None) -> tuple[GraphBatch, Targets]:
    """Turn per-molecule window blocks into one GraphBatch (one graph per window) + targets."""
    if aug == "batch":
        rot = random_rotations(1, rng)[0]
        wbs = [rotate_windows(w, rot) for w in wbs]
    elif aug == "per_graph":
        wbs = [rotate_windows(w, random_rotations(w.x0.shape[0], rng)) for w in wbs]
    z_l, m_l, x_l, v_l, f_l, b_l = [], [], [], [], [], []
    dx_l, dv_l, x1_l, f1_l = [], [], [], []
    idx = {"bonds": [], "angles": [], "dihedrals": []}
    offset = 0
    for w in wbs:
        topo = _topology_arrays(w.topology)
        n = len(w.z)
        for b in range(w.x0.shape[0]):
            z_l.append(w.z)
            m_l.append(w.masses)
            x_l.append(w.x0[b])
            v_l.append(w.v0[b])
            b_l.append(topo["bonds"])
            if use_forces:
                if w.f0 is None:
                    raise MdkstepError(f"model uses forces as input but trajectory of {w.molecule} has none "
                                       "(run stage 01 with save_forces: true)")
                f_l.append(w.f0[b])
            for key in idx:
                idx[key].append(topo[key] + offset)
            offset += n
        dx_l.append((w.x1 - w.x0).reshape(-1, 3))
        dv_l.append((w.v1 - w.v0).reshape(-1, 3))
        x1_l.append(w.x1.reshape(-1, 3))
        f1_l.append(None if w.f1 is None else w.f1.reshape(-1, 3))
    gb = make_graph_batch(z_l, m_l, x_l, v_l, f_l if use_forces else None, b_l, dtype=dtype)
    t = lambda arrs: torch.as_tensor(np.concatenate(arrs), dtype=dtype)  # noqa: E731
    tg = Targets(
        dx=t(dx_l), dv=t(dv_l), x1=t(x1_l),
        f1=None if any(f is None for f in f1_l) else t(f1_l),
        bonds=torch.as_tensor(np.concatenate(idx["bonds"])),
        angles=torch.as_tensor(np.concatenate(idx["angles"])),
        dihedrals=torch.as_tensor(np.concatenate(idx["dihedrals"])),
    )
    return gb, tg


def targets_to(tg: Targets, device: torch.device) -> Targets:
    return Targets(*(None if v is None else v.to(device) for v in (tg.dx, tg.dv, tg.x1, tg.f1, tg.bonds, tg.angles, tg.dihedrals)))


# ----------------------------------------------------------------------------- losses

def compute_loss(out: dict[str, torch.Tensor], gb: GraphBatch, tg: Targets, cfg: TrainConfig,
                 scales: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats). Positions nm, velocities nm/ps, forces kJ/(mol nm)."""
    parts: dict[str, torch.Tensor] = {}
    parts["dx"] = ((out["dx_norm"] - tg.dx / scales["dx_scale"]) ** 2).sum(-1).mean()
    parts["dv"] = ((out["dv_norm"] - tg.dv / scales["dv_scale"]) ** 2).sum(-1).mean()
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


# ---------------------------------------------------------------- one-jump metrics

@torch.no_grad()
def one_jump_metrics(model: torch.nn.Module | None, ds: KStepDataset, max_windows: int = 8192, seed: int = 0,
                     batch_size: int = 512, device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """DESIGN.md section 5 one-jump accuracy vs the reference frame t+k, for the model and the
    trivial predictors "no_move" (x_t, v_t) and "ballistic" (x_t + k dt v_t, v_t).

    Returns {predictor: {pos_rmse_A, bond_rmse_A, bond_rmse_heavy_A, angle_rmse_deg,
    dihedral_rmse_deg, vel_rmse_nm_ps}} plus "skill" = model / best trivial, per metric.
    """
    if len(ds) == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), size=min(max_windows, len(ds)), replace=False))
    tau_ps = ds.spec.k * ds.spec.dt_fs / 1000.0
    sums: dict[str, dict[str, list[float]]] = {}
    use_forces = bool(model is not None and model.config.use_forces)
    for s in range(0, len(idx), batch_size):
        wbs = ds.batches(idx[s:s + batch_size])
        gb, tg = collate(wbs, use_forces, dtype=torch.float64)
        preds = {
            "no_move": (torch.zeros_like(tg.dx), torch.zeros_like(tg.dv)),
            "ballistic": (tau_ps * gb.vel, torch.zeros_like(tg.dv)),
        }
        if model is not None:
            ref = next(model.parameters())
            out = model(gb.to(device, ref.dtype))
            preds["model"] = (out["dx"].double().cpu(), out["dv"].double().cpu())
        heavy = (gb.z[tg.bonds[:, 0]] > 1) & (gb.z[tg.bonds[:, 1]] > 1)
        for name, (dx, dv) in preds.items():
            xp = gb.pos + dx
            acc = sums.setdefault(name, {})
            db = bond_lengths(xp, tg.bonds) - bond_lengths(tg.x1, tg.bonds)
            acc.setdefault("pos", []).extend(((dx - tg.dx) ** 2).sum(-1).tolist())
            acc.setdefault("bond", []).extend((db**2).tolist())
            acc.setdefault("bond_heavy", []).extend((db[heavy] ** 2).tolist())
            acc.setdefault("angle", []).extend(((bond_angles(xp, tg.angles) - bond_angles(tg.x1, tg.angles)) ** 2).tolist())
            if len(tg.dihedrals):
                dd = wrap_angle(dihedral_angles(xp, tg.dihedrals) - dihedral_angles(tg.x1, tg.dihedrals))
                acc.setdefault("dihedral", []).extend((dd**2).tolist())
            acc.setdefault("vel", []).extend(((dv - tg.dv) ** 2).sum(-1).tolist())
    to_A, to_deg = 10.0, 180.0 / math.pi
    res: dict[str, dict[str, float]] = {}
    for name, acc in sums.items():
        r = lambda k: float(np.sqrt(np.mean(acc[k]))) if acc.get(k) else float("nan")  # noqa: E731
        res[name] = {
            "pos_rmse_A": r("pos") * to_A, "bond_rmse_A": r("bond") * to_A, "bond_rmse_heavy_A": r("bond_heavy") * to_A,
            "angle_rmse_deg": r("angle") * to_deg, "dihedral_rmse_deg": r("dihedral") * to_deg,
            "vel_rmse_nm_ps": r("vel"), "n_windows": int(len(idx)),
        }
    if "model" in res:
        res["skill"] = {k: res["model"][k] / min(res["no_move"][k], res["ballistic"][k])
                        for k in res["model"] if k != "n_windows" and min(res["no_move"][k], res["ballistic"][k]) > 0}
    return res


# ------------------------------------------------------------------------ the loop

def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MdkstepError("--device cuda requested but no CUDA GPU is visible")
    return torch.device(name)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        prog = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))
    return f


@dataclass
class RunPaths:
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


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def plot_loss_curve(csv_path: Path, png: Path) -> None:
    """Train and validation loss vs optimizer step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(step, [float(r["train_loss"]) for r in rows], label="train")
    ax.plot(step, [float(r["val_loss"]) for r in rows], label="val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (normalized units)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{csv_path.parent.name}")
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


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


def train(dataset_file: Path, splits: tuple[Path, Path], model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
          device_name: str = "auto", resume: bool = False, pretrained: Path | None = None,
          test_split: Path | None = None, progress: bool = True, allow_k_change: bool = False) -> dict[str, Any]:
    """Train a k-step model; returns a summary (and writes best.pt, last.pt, metrics.csv,
    loss_curve.png, final_metrics.json under ``out``)."""
    import torch.distributed as dist
    from tqdm import tqdm

    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = resolve_device(device_name)
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed + rank)
    paths = RunPaths(out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    train_ds = KStepDataset(dataset_file, splits[0])
    val_ds = KStepDataset(dataset_file, splits[1])
    if train_ds.k != cfg.k:
        raise MdkstepError(f"{dataset_file}: dataset has k={train_ds.k} but the train config says k={cfg.k}")
    if len(train_ds) == 0:
        raise MdkstepError(f"{splits[0]}: the training split of {dataset_file} is empty")
    if model_cfg.use_forces and not train_ds.spec.has_forces:
        raise MdkstepError(f"{dataset_file}: model uses forces as input but the trajectories have no forces")
    atom_types = sorted(_dataset_elements(train_ds))

    model = build_model(model_cfg)
    lr = cfg.lr
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": float("inf")}
    ck = None
    if resume and paths.last.is_file():
        ck = read_checkpoint(paths.last)
        check_compatible(ck, str(paths.last), k=cfg.k, model_config=model_cfg)
        model.load_state_dict(ck["model_state"])
        state.update({k: ck[k] for k in state if k in ck})
        scales = model.normalization()
        LOG.info("resuming from %s at step %d (epoch %d)", paths.last, state["step"], state["epoch"])
    else:
        if pretrained is not None:
            pk = read_checkpoint(pretrained)
            # MM -> QM transfer changes the physical jump (e.g. k=8 x 2 fs -> k=4 x 0.25 fs): allowed only explicitly
            check_compatible(pk, str(pretrained), k=None if allow_k_change else cfg.k, model_config=model_cfg)
            model.load_state_dict(pk["model_state"])
            lr = cfg.lr * cfg.pretrained_lr_scale
            LOG.info("initialized from %s (k=%s, engine=%s); lr %.2e", pretrained, pk["k"], pk.get("engine"), lr)
        scales = estimate_scales(train_ds, cfg.norm_max_windows, cfg.seed)
        model.set_normalization(**scales)
    n_frozen = freeze_first_layers(model, cfg.freeze_layers) if cfg.freeze_layers else 0
    model.to(device)
    dtype = torch.float32
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_ds) // (cfg.batch_size * cfg.grad_accum * world))
    total = cfg.max_steps if cfg.max_steps else steps_per_epoch * cfg.epochs
    total = min(total, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    if ck is not None and "optimizer" in ck:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    amp = cfg.amp and device.type == "cuda"

    wandb_run = None
    if cfg.wandb and rank == 0:
        try:
            import wandb

            wandb_run = wandb.init(project=cfg.wandb_project, mode=os.environ.get("WANDB_MODE", "offline"),
                                   dir=str(out), config={"model": asdict(model_cfg), "train": asdict(cfg)})
        except ImportError:
            raise MdkstepError("wandb: true in the train config, but wandb is not installed (pip install wandb)") from None

    def payload(extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_config": asdict(model_cfg), "train_config": asdict(cfg), "k": cfg.k,
            "dt_fs": train_ds.spec.dt_fs, "engine": train_ds.spec.engine, "atom_types": atom_types,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), **state, **extra,
        }

    t0 = time.perf_counter()
    samples = 0
    running: list[float] = []
    eval_every = cfg.eval_every or steps_per_epoch
    bar = tqdm(total=total, initial=state["step"], desc="train", unit="step", disable=(not progress or rank != 0) or None)
    done = state["step"] >= total
    while not done and state["epoch"] < cfg.epochs:
        rng = np.random.default_rng(cfg.seed * 100003 + state["epoch"])
        order = rng.permutation(len(train_ds))[rank::world]
        micro = [order[i:i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
        groups = [micro[i:i + cfg.grad_accum] for i in range(0, len(micro) - cfg.grad_accum + 1, cfg.grad_accum)]
        for gi in range(len(groups)):
            if gi < state["batch_in_epoch"]:
                continue  # resumed mid-epoch: these batches were already used
            aug_rng = np.random.default_rng([cfg.seed, state["epoch"], gi, rank])  # reproducible on resume
            net.train()
            opt.zero_grad(set_to_none=True)
            parts_acc: dict[str, float] = {}
            for mb in groups[gi]:
                gb, tg = collate(train_ds.batches(mb), model_cfg.use_forces, dtype, cfg.rotation_aug, aug_rng)
                gb, tg = gb.to(device), targets_to(tg, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    outp = net(gb)
                loss, parts = compute_loss({k: v.float() for k, v in outp.items()}, gb, tg, cfg, scales)
                (loss / cfg.grad_accum).backward()
                for k_, v_ in parts.items():
                    parts_acc[k_] = parts_acc.get(k_, 0.0) + v_ / cfg.grad_accum
                running.append(float(loss.detach()))
                samples += len(mb)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            state["step"] += 1
            state["batch_in_epoch"] = gi + 1
            bar.update(1)
            if state["step"] % cfg.log_every == 0 and rank == 0:
                bar.set_postfix(loss=f"{np.mean(running[-cfg.log_every:]):.4g}")
            last_of_epoch = gi + 1 == len(groups)
            if state["step"] % eval_every == 0 or last_of_epoch or state["step"] >= total:
                if last_of_epoch:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                val = validation_loss(net, val_ds, cfg, scales, device, dtype) if rank == 0 else float("nan")
                if rank == 0:
                    row = {"step": state["step"], "epoch": state["epoch"], "lr": sched.get_last_lr()[0],
                           "train_loss": float(np.mean(running)) if running else float("nan"), "val_loss": val,
                           "samples_per_s": samples * world / max(1e-9, time.perf_counter() - t0),
                           **{f"train_{k}": v for k, v in parts_acc.items()}}
                    running.clear()
                    _append_csv(paths.csv, row)
                    if wandb_run is not None:
                        wandb_run.log(row, step=state["step"])
                    if math.isfinite(val) and val < state["best_val"]:
                        state["best_val"] = val
                        save_checkpoint(paths.best, payload({}))
                    save_checkpoint(paths.last, payload({}))
            if state["step"] >= total:
                done = True
                break
        else:
            if not groups:
                raise MdkstepError(f"training split has {len(train_ds)} windows, fewer than one batch "
                                   f"({cfg.batch_size} x {cfg.grad_accum} x {world} processes)")
    bar.close()
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {"steps": state["step"], "epochs": state["epoch"], "best_val": state["best_val"],
                               "samples_per_s": samples * world / elapsed if elapsed > 0 and samples else None,
                               "n_parameters": model.n_parameters(), "n_frozen_parameters": n_frozen,
                               "device": str(device), "world_size": world, "out": str(out)}
    if rank == 0:
        if paths.csv.exists():
            plot_loss_curve(paths.csv, out / "loss_curve.png")
        best = paths.best if paths.best.is_file() else paths.last
        if best.is_file():
            model.load_state_dict(read_checkpoint(best)["model_state"])
        model.eval()
        final = {"val": one_jump_metrics(model, val_ds, cfg.metrics_max_windows, device=device)}
        if test_split is not None:
            final["test"] = one_jump_metrics(model, KStepDataset(dataset_file, test_split), cfg.metrics_max_windows,
                                             device=device)
        final["train_summary"] = summary
        atomic_write_json(out / "final_metrics.json", final)
        summary["final_metrics"] = final
        if wandb_run is not None:
            wandb_run.finish()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _dataset_elements(ds: KStepDataset) -> set[int]:
    out: set[int] = set()
    for ti in np.unique(ds.windows[:, 0]) if len(ds) else []:
        out |= {int(z) for z in ds._traj(int(ti))["atom_types"]}
    return out
