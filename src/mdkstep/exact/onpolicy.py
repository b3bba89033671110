"""Exact mode fine-tuned on its real proposals (QM, GFN2-xTB): one stage of on-policy training.

The teacher-forced loss of stage 04 puts the data's F_{t+k} where the sampler has F(x'); where
x' leaves x_{t+k} (QM aspirin at 4 fs: median |dH| 1.3 teacher-forced vs 3.2 kJ/mol real) it
stops training the acceptance. A stage here adds ``lambda_on_policy`` times the square of the
*real* dH/kT: one xTB call at each proposal x' per window and step
(mdkstep.exact.train.on_policy_energy_error). Stages chain: each starts from a checkpoint
(a stage-04 run, a shipped model or an earlier stage) and records what trained it before
(``warm_start.json``), so that a card can count every step, second and xTB call.

Used by scripts/exact_onpolicy.py and `make models` (``qm_exact_on_policy``). Molecules are
taken with one net charge (``charge``); the xTB settings come from a QMConfig. Units: nm, ps, kJ/mol.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mdkstep.config import to_dict
from mdkstep.data.windows import KStepDataset
from mdkstep.engines.xtb_engine import XTBEngine
from mdkstep.exact.sampler import engine_forces
from mdkstep.exact.train import (
    ExactTrainConfig,
    _subsample,
    abs_dH_summary,
    dataset_windows,
    teacher_forced_abs_dH,
    train_exact,
    write_metrics_csv,
)
from mdkstep.model.checkpoint import model_from_checkpoint, read_card, save_checkpoint, shear_payload
from mdkstep.utils import MdkstepError, atomic_write_json, file_sha256


@dataclass
class OnPolicyStage:
    """Settings of one on-policy stage (cosine learning-rate decay over ``steps``)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    lambda_on_policy: float = 1.0
    molecule_weights: list[float] | None = None  #: relative frequency of each trajectory's steps; None: round robin
    teacher_scale: float = 1.0  #: factor on the checkpoint's teacher-forced weights lambda_x, lambda_v, lambda_energy
    max_windows: int = 20000  #: training windows (a deterministic subsample)
    seed: int = 0

    #: removed keys -> their old default (mdkstep.config.drop_removed), each measured as no help on QM
    #: aspirin (README "What else was tried on aspirin"): the smooth |dH|/kT penalty, force matching at
    #: the midpoint, and growing every kick to a sum of more networks
    REMOVED: ClassVar[dict[str, Any]] = {"on_policy_loss": "square", "lambda_mid_force": 0.0, "grow_members": 0}

    def validate(self) -> None:
        """Raise ValueError on a bad setting (checked when a config is read, before any training)."""

        for key in ("steps", "batch_size", "max_windows"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}': {getattr(self, key)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"key 'lr': {self.lr} must be > 0")
        for key in ("lambda_on_policy", "teacher_scale"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"key '{key}': {getattr(self, key)} must be >= 0")


def earlier_stages(checkpoint: Path) -> dict[str, Any]:
    """What trained ``checkpoint`` before a stage: its folder's own record when it is an earlier
    on-policy stage (chained), else its shipped card or its stage-04 folder's train_cost.json;
    steps, wall s (None if unknown) and on-policy xTB calls summed over the stages."""

    mine = checkpoint.parent / "final_metrics.json"
    rec = {"checkpoint": str(checkpoint), "sha256": file_sha256(checkpoint), "k": None}
    if mine.is_file() and json.loads(mine.read_text()).get("on_policy"):
        fm, prev = json.loads(mine.read_text()), json.loads((checkpoint.parent / "warm_start.json").read_text())
        wall = prev["wall_s"] + fm["train_seconds"] if prev.get("wall_s") is not None else None
        return {**rec, "k": prev.get("k"), "steps": prev["steps"] + fm["steps"], "wall_s": wall,
                "on_policy_steps": prev.get("on_policy_steps", 0) + fm["steps"],
                "on_policy_force_calls": prev.get("on_policy_force_calls", 0) + fm["engine_force_calls"]}
    card = read_card(checkpoint)
    cost = checkpoint.parent / "train_cost.json"  # a stage-04 run folder without a card
    t = (card or {}).get("training") or (json.loads(cost.read_text()) if cost.is_file() else {})
    k = (card or {}).get("k") or torch.load(checkpoint, map_location="cpu", weights_only=False).get("k")
    return {**rec, "k": k, "steps": t.get("steps"), "wall_s": t.get("wall_s"),
            "on_policy_steps": 0, "on_policy_force_calls": 0}


def on_policy_force_calls(out: Path) -> int:
    """Every on-policy xTB call behind the stage in ``out`` (its own and its earlier stages')."""
    warm = json.loads((out / "warm_start.json").read_text())
    return int(warm.get("on_policy_force_calls", 0)) + int(json.loads((out / "final_metrics.json").read_text())
                                                          ["engine_force_calls"])


def fine_tune(checkpoint: Path, dataset: Path, split: Path, out: Path, stage: OnPolicyStage, qcfg,
              charge: int = 0, test_split: Path | None = None) -> dict[str, Any]:
    """One on-policy stage from ``checkpoint`` (a shear checkpoint at the dataset's k) on the
    windows of ``split``; writes <out>/best.pt, metrics.csv, final_metrics.json (teacher-forced
    |dH| on ``test_split`` before / after), train_cost.json and warm_start.json. Returns the
    final metrics. Bad inputs raise MdkstepError."""

    stage.validate()
    kicks, ck = model_from_checkpoint(checkpoint, dtype=torch.float64)
    if (ck.get("model_config") or {}).get("kind") != "shear":
        raise MdkstepError(f"{checkpoint}: not a shear (exact-mode) checkpoint")
    ds = KStepDataset(dataset, split)
    if int(ck["k"]) != ds.k:
        raise MdkstepError(f"{checkpoint}: k={ck['k']}, but {dataset} has k={ds.k}")
    windows = dataset_windows(ds, _subsample(len(ds), stage.max_windows, stage.seed))
    if stage.molecule_weights is not None and len(stage.molecule_weights) != len(windows):
        raise MdkstepError(f"molecule_weights: {len(stage.molecule_weights)} weights for the {len(windows)} "
                           f"trajectories of {dataset} ({', '.join(str(m) for m in ds.spec.molecules)})")
    engines = [XTBEngine(w.z, w.masses, method=qcfg.method, charge=charge, accuracy=qcfg.accuracy,
                         electronic_temperature=qcfg.electronic_temperature_K) for w in windows]
    fns = [(lambda x, e=e: engine_forces(e, x)) for e in engines]
    tau_ps = ds.k * ds.spec.dt_fs / 1000.0
    old = ck.get("train_config") or {}
    teacher = {k: stage.teacher_scale * old[k] for k in ("lambda_x", "lambda_v", "lambda_energy") if k in old}
    cfg = ExactTrainConfig(steps=stage.steps, batch_size=stage.batch_size, lr=stage.lr, lr_schedule="cosine",
                           lambda_on_policy=stage.lambda_on_policy, molecule_weights=stage.molecule_weights,
                           seed=stage.seed, log_every=50,
                           init_checkpoint=str(checkpoint), **teacher,
                           **{k: old[k] for k in ("temperature_K", "grad_clip") if k in old})
    cfg.validate()
    test_w = []
    if test_split is not None:
        test_ds = KStepDataset(dataset, test_split)
        test_w = dataset_windows(test_ds, _subsample(len(test_ds), 2000, stage.seed + 1))

    def report() -> dict:
        return {"test": abs_dH_summary(np.concatenate([teacher_forced_abs_dH(kicks, w, tau_ps) for w in test_w]))} \
            if test_w else {}

    before = report()
    history = train_exact(kicks, windows, tau_ps, cfg, scales=ck.get("scales"), engine_fns=fns)
    out.mkdir(parents=True, exist_ok=True)
    payload = shear_payload(kicks, ds.k, ds.spec.dt_fs, ds.spec.engine, list(ck.get("atom_types") or []),
                            train_config=to_dict(cfg), scales=ck.get("scales"),
                            step=int(ck.get("step") or 0) + stage.steps, tau_fs=tau_ps * 1000.0)
    save_checkpoint(out / "best.pt", payload)
    write_metrics_csv(out / "metrics.csv", history, fieldnames=sorted({k for r in history for k in r}))
    wall = history[-1]["seconds"]
    final = {"kind": "shear", "on_policy": True, "tau_fs": tau_ps * 1000.0, "steps": stage.steps,
             "from": str(checkpoint), "stage": asdict(stage), "train_seconds": wall,
             "engine_force_calls": sum(e.counters.calls for e in engines), "teacher_forced_before": before,
             "teacher_forced_after": report(), "last": history[-1],
             "molecules": [str(m) for m in ds.spec.molecules]}
    atomic_write_json(out / "final_metrics.json", final)
    atomic_write_json(out / "train_cost.json", {"wall_s": wall, "steps": stage.steps, "sessions": 1})
    atomic_write_json(out / "warm_start.json", earlier_stages(checkpoint))
    return final
