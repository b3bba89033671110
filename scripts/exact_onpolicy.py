"""Exact mode, fine-tuned on its real proposals: the teacher-forced loss of stage 04 plus
``lambda_on_policy`` (dH/kT)^2 with GFN2-xTB's U, F at each proposal x' (one xTB call per
window and step; mdkstep.exact_training.on_policy_energy_error). Why: the teacher-forced dH
(F(x') := F_{t+k} from the data) underestimates the sampler's dH where x' leaves x_{t+k}
(QM aspirin at 4 fs: median 1.3 vs 3.2 kJ/mol), so it stops training the acceptance.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python scripts/exact_onpolicy.py \\
        --checkpoint models/qm_exact_k16.pt --dataset outputs/models_bench/qm/models/exact_k16/dataset.npz \\
        --split outputs/models_bench/qm/models/exact_k16/splits/train.json --steps 2000 --out outputs/exact_onpolicy

Writes <out>/best.pt (a shear checkpoint like stage 04's), metrics.csv and final_metrics.json.
Measure it with scripts/exact_stride_curve.py (held-out states). Molecules are taken as
neutral singlets (--charge); the xTB settings come from --qm-config. Units: nm, ps, kJ/mol.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch


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
    p.add_argument("--max-windows", type=int, default=20000, help="training windows (deterministic subsample)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from mdkstep.checkpoint import model_from_checkpoint, save_checkpoint, shear_payload
    from mdkstep.config import load_config, to_dict
    from mdkstep.dataset import KStepDataset
    from mdkstep.engines.xtb_engine import XTBEngine
    from mdkstep.exact import engine_forces
    from mdkstep.exact_training import ExactTrainConfig, _subsample, dataset_windows, train_exact
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
    cfg = ExactTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, lr_schedule="cosine",
                           lambda_on_policy=a.lambda_on_policy, seed=a.seed, log_every=50,
                           init_checkpoint=str(a.checkpoint), **{k: v for k, v in (ck.get("train_config") or {}).items()
                                                                 if k in ("lambda_x", "lambda_v", "lambda_energy",
                                                                          "temperature_K", "grad_clip")})
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
    atomic_write_json(a.out / "final_metrics.json", {
        "kind": "shear", "on_policy": True, "tau_fs": tau_ps * 1000.0, "steps": a.steps, "from": str(a.checkpoint),
        "train_seconds": history[-1]["seconds"], "engine_force_calls": calls,
        "last": history[-1], "molecules": [str(m) for m in ds.spec.molecules]})
    print(f"wrote {a.out / 'best.pt'}: {a.steps} on-policy steps, {calls} xTB calls, "
          f"{history[-1]['seconds']:.0f} s; last |dH| on-policy {history[-1].get('abs_dH_on_policy', np.nan):.3g} kJ/mol")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
