"""Adaptation in minutes (issue 24): fine-tune a jump model (a foundation model) on the user's
molecule, with ``make models``' own machinery (:mod:`mdkstep.shipped`).

X ps of the molecule's own MD on the model's engine and step (QM: GFN2-xTB at 0.25 fs, MM:
OpenMM + OpenFF at 2 fs, forces saved), then ``steps`` optimizer steps from the checkpoint
(same architecture, same jump, its normalization kept: step 0 is the pretrained model), time
split 80/10/10. The adapted model and its card (data and training wall time, one-jump test
metrics beside "no move") go to ``out``; everything is cached under ``work_dir`` (rerun =
resume). Units: ps, fs, s.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mdkstep.model import ModelConfig
from mdkstep.model.checkpoint import read_checkpoint
from mdkstep.molecule.prep import read_smi_strict
from mdkstep.shipped import ModelsConfig, data_summary, make_mode, ship, train_one, training_data
from mdkstep.training.trainer import TrainConfig
from mdkstep.utils import LOG, MdkstepError, atomic_write_text

#: default data per mode, ps: QM 2 ps (8k GFN2-xTB calls), MM 20 ps (10k OpenMM steps)
DEFAULT_DATA_PS = {"qm": 2.0, "mm": 20.0}
#: the adaptation's MD seed is seed + this (+ 100, make models' rule): never the seed of a bench run
#: (references seed + 1.., plain seed + 10.., the molecule's own run seed + 100), so an adapted model
#: judged by the bench never trained on a trajectory the bench compares with
SEED_OFFSET = 5000


@dataclass
class AdaptSpec:
    """One adaptation: which model, which molecule, how much data and training."""

    checkpoint: Path  #: the model to start from (e.g. models/foundation/qm_k16.pt)
    smiles: str  #: the molecule (neutral; stereo as written)
    name: str = "molecule"  #: its name in files and cards
    data_ps: float | None = None  #: ps of the molecule's own MD; None = DEFAULT_DATA_PS of the mode
    steps: int = 1000  #: optimizer steps of the fine-tuning
    lr: float = 3.0e-4  #: its learning rate (warm-up 50 steps, cosine decay)
    batch_size: int = 32
    out: Path | None = None  #: adapted checkpoint (default <work_dir>/<name>_<mode>_k<K>.pt)
    work_dir: Path = Path("outputs/adapt")  #: cache of data and training (per molecule and setting)
    threads: int = 1
    seed: int = 0
    config_dir: Path = Path("configs")  #: where configs/{qm,prep,model,model_qm,train,train_qm}.yaml are


def checkpoint_mode(ck: dict[str, Any]) -> str:
    """'mm' for an OpenMM checkpoint, else 'qm'."""
    return "mm" if ck.get("engine") == "openmm" else "qm"


def known_keys(cls, values: dict[str, Any] | None) -> dict[str, Any]:
    """The entries of ``values`` that are fields of dataclass ``cls`` (older checkpoints store more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in (values or {}).items() if k in names}


def adapt_config(spec: AdaptSpec, ck: dict[str, Any]) -> ModelsConfig:
    """The ModelsConfig that makes this adaptation: one molecule, the checkpoint's k, dt,
    architecture and training settings, fine-tuning from it."""
    p = checkpoint_mode(ck)
    k = int(ck["k"])
    data_ps = spec.data_ps if spec.data_ps is not None else DEFAULT_DATA_PS[p]
    if not data_ps > 0:
        raise MdkstepError(f"--data-ps must be > 0, got {data_ps}")
    if spec.steps < 1:
        raise MdkstepError(f"--steps must be >= 1, got {spec.steps}")
    run_dir = Path(spec.work_dir) / f"{spec.name}_{p}_k{k}_{data_ps:g}ps_{spec.steps}steps"
    smi = run_dir / "molecule.smi"
    atomic_write_text(smi, f"{spec.smiles} {spec.name}\n")
    read_smi_strict(smi)  # a bad SMILES is a one-line error here, before any work
    train = {**known_keys(TrainConfig, ck.get("train_config")), "max_steps": spec.steps, "lr": spec.lr,
             "warmup_steps": min(50, spec.steps // 10), "eval_every": max(1, spec.steps // 4),
             "batch_size": spec.batch_size, "seed": spec.seed, "epochs": 10**6}  # max_steps decides
    train.pop("k", None)
    model = known_keys(ModelConfig, ck.get("model_config"))
    c = Path(spec.config_dir)
    return ModelsConfig(out_dir=str(run_dir), work_dir=str(run_dir), threads=spec.threads, seed=spec.seed + SEED_OFFSET,
                        modes=[p], mm_prep_config=str(c / "prep.yaml"), qm_config=str(c / "qm.yaml"),
                        **{f"{p}_model_config": str(c / ("model.yaml" if p == "mm" else "model_qm.yaml")),
                           f"{p}_train_config": str(c / ("train.yaml" if p == "mm" else "train_qm.yaml"))},
                        **{f"{p}_molecules": [str(smi)], f"{p}_train_ps": data_ps, f"{p}_ks": [k],
                                      f"{p}_dt_fs": float(ck["dt_fs"]), f"{p}_model_overrides": model,
                                      f"{p}_train_overrides": train, f"{p}_pretrained": str(spec.checkpoint)})


def adapt(spec: AdaptSpec) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``spec.checkpoint`` on ``spec.smiles``; returns the adapted checkpoint and a
    summary (data and training wall s, one-jump test metrics)."""
    if not Path(spec.checkpoint).is_file():
        raise MdkstepError(f"--checkpoint {spec.checkpoint}: not found")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
        raise MdkstepError(f"--name {spec.name!r}: use letters, digits, '_', '.', '-'")
    ck = read_checkpoint(spec.checkpoint)
    cfg = adapt_config(spec, ck)
    cfg.validate()
    p, k = cfg.modes[0], int(ck["k"])
    t0 = time.perf_counter()
    m = make_mode(cfg, p)
    _, runs = training_data(m, cfg)
    data = data_summary(m, cfg, runs)
    best, final = train_one(m, cfg, k, runs)
    out_dir = Path(spec.out).parent if spec.out else Path(cfg.out_dir)
    name = Path(spec.out).stem if spec.out else f"{spec.name}_{p}_k{k}"
    dst = ship(p, k, best, final, data, out_dir, name=name)
    LOG.info("adapted %s to %s in %.0f s (this session): %s", spec.checkpoint, spec.name, time.perf_counter() - t0, dst)
    return dst, {"checkpoint": str(dst), "card": str(dst.with_suffix(".md")), "data_wall_s": data["wall_s"],
                 "data_force_calls": data["force_calls"], "final": final}
