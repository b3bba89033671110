"""Exact mode, fine-tuned on its real proposals (one stage of mdkstep.exact.onpolicy): the
teacher-forced loss of stage 04 plus ``lambda_on_policy`` times (dH/kT)^2 with GFN2-xTB's U, F
at each proposal x' (one xTB call per window and step; mdkstep.exact.train.on_policy_energy_error).
Why: the teacher-forced dH (F(x') := F_{t+k} from the data) underestimates the sampler's dH where
x' leaves x_{t+k} (QM aspirin at 4 fs: median 1.3 vs 3.2 kJ/mol), so it stops training the acceptance.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python scripts/exact_onpolicy.py \\
        --checkpoint models/qm_exact_k16.pt --dataset outputs/models_bench/qm/models/exact_k16/dataset.npz \\
        --split outputs/models_bench/qm/models/exact_k16/splits/train.json --steps 2000 --out outputs/exact_onpolicy

Writes <out>/best.pt (a shear checkpoint like stage 04's), metrics.csv, final_metrics.json
(teacher-forced |dH| on --test-split before / after), train_cost.json and warm_start.json (the
stages before this one: steps, wall s, on-policy xTB calls), so that ``--ship-as qm_exact_k16``
can ship it into --models-dir with a card (data of the card already there; the on-policy xTB
calls are added to its training force calls). A run may start from another run's best.pt: the
stages chain (`make models` runs them too: key qm_exact_on_policy). Measure it with studies/exact/exact_stride_curve.py (held-out states). Molecules are
taken as neutral singlets (--charge); the xTB settings come from --qm-config. Units: nm, ps, kJ/mol.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def ship_run(a) -> None:
    """Ship <out>/best.pt as <models-dir>/<ship-as>.pt; the card's data are those of the card
    already there (same training runs), its training force calls plus every on-policy xTB call."""
    import json

    from mdkstep.exact.onpolicy import on_policy_force_calls
    from mdkstep.model.checkpoint import read_card
    from mdkstep.shipped import ship

    old = read_card(a.models_dir / f"{a.ship_as}.pt")
    if old is None:
        raise SystemExit(f"error: {a.models_dir / a.ship_as}.json: no card to take the training data from")
    extra = on_policy_force_calls(a.out)
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
    p.add_argument("--molecule-weights", type=float, nargs="+", default=None, metavar="W",
                   help="relative frequency of each molecule's steps, in the dataset's order (default: round robin)")
    p.add_argument("--teacher-scale", type=float, default=1.0,
                   help="factor on the checkpoint's teacher-forced loss weights lambda_x, lambda_v, lambda_energy")
    p.add_argument("--max-windows", type=int, default=20000, help="training windows (deterministic subsample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-split", type=Path, default=None, help="split for the teacher-forced |dH| report")
    p.add_argument("--ship-as", default=None, metavar="NAME", help="ship best.pt as <models-dir>/NAME.pt with a card")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    a = p.parse_args(argv)

    from mdkstep.baselines.ase_md import QMConfig
    from mdkstep.config import load_config
    from mdkstep.exact.onpolicy import OnPolicyStage, fine_tune
    from mdkstep.utils import MdkstepError, setup_logging

    setup_logging("INFO")
    torch.set_num_threads(1)
    stage = OnPolicyStage(steps=a.steps, batch_size=a.batch_size, lr=a.lr, lambda_on_policy=a.lambda_on_policy,
                          molecule_weights=a.molecule_weights,
                          teacher_scale=a.teacher_scale, max_windows=a.max_windows, seed=a.seed)
    try:
        final = fine_tune(a.checkpoint, a.dataset, a.split, a.out, stage, load_config(QMConfig, a.qm_config),
                          charge=a.charge, test_split=a.test_split)
    except (MdkstepError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    calls = final["engine_force_calls"]
    if a.ship_as:
        ship_run(a)
    print(f"wrote {a.out / 'best.pt'}: {a.steps} on-policy steps, {calls} xTB calls, {final['train_seconds']:.0f} s; "
          f"last |dH| on-policy {final['last'].get('abs_dH_on_policy', float('nan')):.3g} kJ/mol")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
