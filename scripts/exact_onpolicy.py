"""Exact mode, fine-tuned on its real proposals: the teacher-forced loss of stage 04 plus
``lambda_on_policy`` (dH/kT)^2 with GFN2-xTB's U, F at each proposal x' (one xTB call per
window and step; mdkstep.exact_training.on_policy_energy_error). Why: the teacher-forced dH
(F(x') := F_{t+k} from the data) underestimates the sampler's dH where x' leaves x_{t+k}
(QM aspirin at 4 fs: median 1.3 vs 3.2 kJ/mol), so it stops training the acceptance.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python scripts/exact_onpolicy.py \\
        --checkpoint models/qm_exact_k16.pt --dataset outputs/models_bench/qm/models/exact_k16/dataset.npz \\
        --split outputs/models_bench/qm/models/exact_k16/splits/train.json --steps 2000 --out outputs/exact_onpolicy

Writes <out>/best.pt (a shear checkpoint like stage 04's), metrics.csv, final_metrics.json
(teacher-forced |dH| on --test-split before / after), train_cost.json and warm_start.json (the
stages before this one: steps, wall s, on-policy xTB calls), so that ``--ship-as qm_exact_k16``
can ship it into --models-dir with a card (data of the card already there; the on-policy xTB
calls are added to its training force calls). A run may start from another run's best.pt: the
stages chain. Measure it with scripts/exact_stride_curve.py (held-out states). Molecules are
taken as neutral singlets (--charge); the xTB settings come from --qm-config. Units: nm, ps, kJ/mol.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch


def earlier_stages(checkpoint: Path) -> dict:
    """What trained ``checkpoint`` before this run: its folder's own record when it is an earlier
    run of this script (chained), else its shipped card or its stage-04 folder's train_cost.json;
    steps, wall s (None if unknown) and
    on-policy xTB calls summed over the stages."""
    import json

    from mdkstep.shipped import read_card, sha256

    mine = checkpoint.parent / "final_metrics.json"
    rec = {"checkpoint": str(checkpoint), "sha256": sha256(checkpoint), "k": None}
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


def ship_run(a, calls: int) -> None:
    """Ship <out>/best.pt as <models-dir>/<ship-as>.pt; the card's data are those of the card
    already there (same training runs), its training force calls plus every on-policy xTB call."""
    import json

    from mdkstep.shipped import read_card, ship

    old = read_card(a.models_dir / f"{a.ship_as}.pt")
    if old is None:
        raise SystemExit(f"error: {a.models_dir / a.ship_as}.json: no card to take the training data from")
    warm = json.loads((a.out / "warm_start.json").read_text())
    extra = warm.get("on_policy_force_calls", 0) + calls
    data = {**old["data"], "force_calls": old["data"]["force_calls"] + extra, "on_policy_force_calls": extra}
    final = json.loads((a.out / "final_metrics.json").read_text())
    untrained = (old.get("teacher_forced") or {}).get("before")  # the card's "before" is the untrained map's
    if untrained:
        final["teacher_forced_before"] = {"test": untrained}
    ship(old["mode"], int(old["k"]), a.out / "best.pt", final, data, a.models_dir, name=a.ship_as)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="shear checkpoint to start from")
    p.add_argument("--dataset", type=Path, required=True, help="stage-02 dataset (forces and energies), same k")
    p.add_argument("--split", type=Path, required=True, help="training split JSON of that dataset")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--qm-config", type=Path, default=Path("configs/qm.yaml"), help="xTB method and settings")
    p.add_argument("--charge", type=int, default=0, help="net charge of every molecule (the datasets do not store it)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lambda-on-policy", type=float, default=1.0)
    p.add_argument("--on-policy-loss", choices=("square", "abs"), default="square",
                   help="penalty of dH/kT at the real proposal: square, or abs (a smooth |dH|/kT, which weighs "
                        "states as the acceptance does)")
    p.add_argument("--teacher-scale", type=float, default=1.0,
                   help="factor on the checkpoint's teacher-forced loss weights lambda_x, lambda_v, lambda_energy")
    p.add_argument("--max-windows", type=int, default=20000, help="training windows (deterministic subsample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-split", type=Path, default=None, help="split for the teacher-forced |dH| report")
    p.add_argument("--ship-as", default=None, metavar="NAME", help="ship best.pt as <models-dir>/NAME.pt with a card")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    a = p.parse_args(argv)

    from mdkstep.checkpoint import model_from_checkpoint, save_checkpoint, shear_payload
    from mdkstep.config import load_config, to_dict
    from mdkstep.dataset import KStepDataset
    from mdkstep.engines.xtb_engine import XTBEngine
    from mdkstep.exact import engine_forces
    from mdkstep.exact_training import (ExactTrainConfig, _subsample, abs_dH_summary, dataset_windows,
                                        teacher_forced_abs_dH, train_exact)
    from mdkstep.qm_md import QMConfig
    from mdkstep.utils import MdkstepError, atomic_write_json, setup_logging

    setup_logging("INFO")
    torch.set_num_threads(1)
    try:
        qcfg = load_config(QMConfig, a.qm_config)
        kicks, ck = model_from_checkpoint(a.checkpoint, dtype=torch.float64)
        ds = KStepDataset(a.dataset, a.split)
        if int(ck["k"]) != ds.k:
            raise MdkstepError(f"{a.checkpoint}: k={ck['k']}, but {a.dataset} has k={ds.k}")
        windows = dataset_windows(ds, _subsample(len(ds), a.max_windows, a.seed))
    except MdkstepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engines = [XTBEngine(w.z, w.masses, method=qcfg.method, charge=a.charge, accuracy=qcfg.accuracy,
                         electronic_temperature=qcfg.electronic_temperature_K) for w in windows]
    fns = [(lambda x, e=e: engine_forces(e, x)) for e in engines]
    tau_ps = ds.k * ds.spec.dt_fs / 1000.0
    old = ck.get("train_config") or {}
    teacher = {k: a.teacher_scale * old[k] for k in ("lambda_x", "lambda_v", "lambda_energy") if k in old}
    cfg = ExactTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, lr_schedule="cosine",
                           lambda_on_policy=a.lambda_on_policy, on_policy_loss=a.on_policy_loss, seed=a.seed,
                           log_every=50, init_checkpoint=str(a.checkpoint), **teacher,
                           **{k: old[k] for k in ("temperature_K", "grad_clip") if k in old})
    test_w = []
    if a.test_split is not None:
        test_ds = KStepDataset(a.dataset, a.test_split)
        test_w = dataset_windows(test_ds, _subsample(len(test_ds), 2000, a.seed + 1))

    def report() -> dict:
        return {"test": abs_dH_summary(np.concatenate([teacher_forced_abs_dH(kicks, w, tau_ps) for w in test_w]))} \
            if test_w else {}

    before = report()
    history = train_exact(kicks, windows, tau_ps, cfg, scales=ck.get("scales"), engine_fns=fns)
    a.out.mkdir(parents=True, exist_ok=True)
    payload = shear_payload(kicks, ds.k, ds.spec.dt_fs, ds.spec.engine, list(ck.get("atom_types") or []),
                            train_config=to_dict(cfg), scales=ck.get("scales"),
                            step=int(ck.get("step") or 0) + a.steps, tau_fs=tau_ps * 1000.0)
    save_checkpoint(a.out / "best.pt", payload)
    with open(a.out / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in history for k in r}))
        w.writeheader()
        w.writerows(history)
    calls = sum(e.counters.calls for e in engines)
    wall = history[-1]["seconds"]
    atomic_write_json(a.out / "final_metrics.json", {
        "kind": "shear", "on_policy": True, "tau_fs": tau_ps * 1000.0, "steps": a.steps, "from": str(a.checkpoint),
        "train_seconds": wall, "engine_force_calls": calls, "teacher_forced_before": before,
        "teacher_forced_after": report(), "last": history[-1], "molecules": [str(m) for m in ds.spec.molecules]})
    atomic_write_json(a.out / "train_cost.json", {"wall_s": wall, "steps": a.steps, "sessions": 1})
    atomic_write_json(a.out / "warm_start.json", earlier_stages(a.checkpoint))
    if a.ship_as:
        ship_run(a, calls)
    print(f"wrote {a.out / 'best.pt'}: {a.steps} on-policy steps, {calls} xTB calls, "
          f"{history[-1]['seconds']:.0f} s; last |dH| on-policy {history[-1].get('abs_dH_on_policy', np.nan):.3g} kJ/mol")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
