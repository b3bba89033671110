"""Molecule-disjoint generalization of a jump model (issue 11, Build 5): its one-jump error on
molecules it never saw, beside "no move" and "ballistic", per molecule.

The windows come from a stage-02 dataset of the held-out molecules' stage-01 runs (forces
saved); every window is used (the split does not matter: none of them was trained on). The
goal at MM k = 8 is a bond RMSE at most half that of "no move" (skill <= 0.5).

    # held-out molecules: prep, 20 ps of MD with forces, k = 8 windows
    .venv/bin/python src/00_prep_mols.py --smiles data/molecules.smi --out-dir outputs/gen/raw \\
        --only salicylic_acid caffeine alanine_dipeptide
    .venv/bin/python src/01_run_md_baselines.py --all outputs/gen/raw --out outputs/gen/md --time-ps 20 \\
        --equil-ps 5 --save-forces
    .venv/bin/python src/02_make_dataset.py --md-root outputs/gen/md --out-root outputs/gen/data \\
        --splits-dir outputs/gen/splits --ks 8 --split time --raw-root outputs/gen/raw
    .venv/bin/python studies/generalization/generalization.py --checkpoint models/mm_k8.pt \\
        --dataset outputs/gen/data/dataset_k8.npz --out docs/results/generalization-mm_k8.md

Units: Å, degrees, nm/ps in the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

KEYS = (("bond_rmse_A", "bond RMSE Å"), ("bond_rmse_heavy_A", "heavy-atom bond RMSE Å"),
        ("angle_rmse_deg", "angle RMSE °"), ("dihedral_rmse_deg", "dihedral RMSE °"), ("vel_rmse_nm_ps", "velocity RMSE nm/ps"))


def per_molecule_metrics(model, dataset: Path, max_windows: int) -> dict[str, dict]:
    """{molecule: one_jump_metrics} over every window of each molecule in ``dataset``."""
    from mdkstep.analysis.evaluation import one_jump_metrics
    from mdkstep.data.windows import KStepDataset

    ds = KStepDataset(dataset)
    names = np.asarray(ds.spec.molecules)[ds.windows[:, 0]]
    out = {}
    for name in sorted(set(names)):
        sub = KStepDataset(dataset)
        sub.windows = ds.windows[names == name]
        out[str(name)] = one_jump_metrics(model, sub, max_windows=max_windows)
    return out


def dataset_elements(ds) -> set[int]:
    """Atomic numbers of every trajectory of a KStepDataset."""
    return {int(z) for ti in np.unique(ds.windows[:, 0]) for z in ds._traj(int(ti))["atom_types"]}


def markdown(checkpoint: Path, dataset: Path, res: dict[str, dict], trained_on: list[str]) -> str:
    lines = [f"# Molecule-disjoint one-jump error of `{checkpoint}`", "",
             f"Trained on: {', '.join(trained_on) or 'n/a'}. Held-out windows: `{dataset}` (every window of each "
             "molecule). Skill = model / no move (goal at MM k = 8: bond skill <= 0.5).", "",
             "| molecule | predictor | " + " | ".join(label for _, label in KEYS) + " | windows |",
             "|---|---|" + "---|" * (len(KEYS) + 1)]
    for mol, m in res.items():
        for pred in ("model", "no_move", "ballistic"):
            r = m[pred]
            lines.append(f"| {mol} | {pred} | " + " | ".join(f"{r[k]:.4g}" for k, _ in KEYS) + f" | {r['n_windows']} |")
        skill = {k: m["model"][k] / m["no_move"][k] for k, _ in KEYS if m["no_move"][k] > 0}
        lines.append(f"| {mol} | **skill vs no move** | " + " | ".join(f"**{skill.get(k, float('nan')):.2f}**"
                                                                    for k, _ in KEYS) + " | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="jump-model checkpoint (e.g. models/mm_k8.pt)")
    p.add_argument("--dataset", type=Path, required=True, help="stage-02 dataset of held-out molecules, same k")
    p.add_argument("--max-windows", type=int, default=4096, help="windows per molecule (random subset)")
    p.add_argument("--out", type=Path, default=None, help="markdown report (a .json beside it)")
    a = p.parse_args(argv)
    import torch

    from mdkstep.data.windows import KStepDataset
    from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint, read_card
    from mdkstep.utils import MdkstepError, atomic_write_json, atomic_write_text

    torch.set_num_threads(1)
    try:
        model, ck = model_from_checkpoint(a.checkpoint)
        ds = KStepDataset(a.dataset)
        check_compatible(ck, str(a.checkpoint), k=ds.k, atom_types=dataset_elements(ds))
        card = read_card(a.checkpoint) or {}
        trained_on = [m["name"] for m in (card.get("data") or {}).get("molecules", [])]
        seen = sorted(set(trained_on) & set(ds.spec.molecules))
        if seen:
            raise MdkstepError(f"{a.dataset}: holds {seen}, which {a.checkpoint} was trained on (not held out)")
        res = per_molecule_metrics(model.eval(), a.dataset, a.max_windows)
    except MdkstepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(a.checkpoint, a.dataset, res, trained_on)
    print(text)
    if a.out:
        atomic_write_text(a.out, text)
        atomic_write_json(a.out.with_suffix(".json"), {"checkpoint": str(a.checkpoint), "dataset": str(a.dataset),
                                                       "trained_on": trained_on, "metrics": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
