#!/usr/bin/env python
"""MM -> QM transfer-learning curve: QM one-jump error vs number of QM training windows,
for a model pretrained on MM data of the same molecules vs the same model from scratch.

Pipeline (each stage skipped when its output exists; everything under --out):
  1. stage 00 prep of the molecules (--smiles, default: ethanol, methanol, acetaldehyde);
  2. QM baselines with GFN2-xTB (01b, configs/qm_quick.yaml, --qm-ps per molecule, 0.25 fs);
  3. MM baselines with OpenMM (01, configs/md_quick.yaml with constraints=none and dt 0.5 fs, so
     the MM jump k_mm * 0.5 fs covers the same time as the QM jump k_qm * 0.25 fs);
  4. datasets (02, split 'time': the last 10% of every QM trajectory is the fixed test split);
  5. MM pretraining (04) with the QM model config (configs/model_qm.yaml + --model-set, the same
     architecture for both arms);
  6. for each N in --sizes: a QM dataset with N training windows (random, seeded, from the train
     split; val/test untouched), fine-tuned from the MM checkpoint (--allow-k-change) and trained
     from scratch, the same --steps optimizer steps and learning rate each;
  7. one-jump test metrics (pos / bond / angle RMSE beside "no move", "ballistic" and the MM
     model without fine-tuning) -> <out>/curve_<tag>.json and <out>/curve_<tag>.png (log x),
     tag = kq<k_qm>_km<k_mm>_s<steps>.

All torch and xTB work runs with 1 thread. Units: Å and degrees in the metrics, fs, ps.

Example (small, ~15 min on 2 busy CPU cores):
  python studies/qm_transfer/qm_transfer_curve.py --out outputs/qm_transfer
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_k] = "1"
ROOT = Path(__file__).resolve().parents[2]

import numpy as np  # noqa: E402  (after the thread limits above)

DEFAULT_SMI = "CCO ethanol\nCO methanol\nCC=O acetaldehyde\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/qm_transfer"), help="work folder (default: %(default)s)")
    p.add_argument("--smiles", type=Path, default=None, help="'SMILES name' file (default: ethanol, methanol, acetaldehyde)")
    p.add_argument("--qm-ps", type=float, default=3.0, help="QM production per molecule, ps (default 3)")
    p.add_argument("--mm-ps", type=float, default=10.0, help="MM production per molecule, ps (default 10)")
    p.add_argument("--k-qm", type=int, default=4, help="QM jump, steps of 0.25 fs (default 4 = 1 fs)")
    p.add_argument("--k-mm", type=int, default=2, help="MM jump, steps of 0.5 fs (default 2 = 1 fs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 0],
                   help="QM training windows per run; 0 = all (default: 250 500 1000 2000 0)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per QM run (default 300)")
    p.add_argument("--mm-steps", type=int, default=600, help="optimizer steps of the MM pretraining (default 600)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate of every QM run (default 5e-4)")
    p.add_argument("--freeze", type=int, default=0, help="layers frozen when fine-tuning (default 0)")
    p.add_argument("--model-config", type=Path, default=ROOT / "configs/model_qm.yaml")
    p.add_argument("--model-set", action="append", default=["hidden=32", "n_layers=2", "n_heads=2"],
                   metavar="KEY=VALUE", help="model overrides for BOTH arms (default: a small variant of model_qm)")
    p.add_argument("--seed", type=int, default=0)
    return p


def sh(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def subset_dataset(src: Path, dst: Path, n_train: int, seed: int) -> int:
    """Copy of a dataset file keeping ``n_train`` random train windows (all val/test windows)."""
    from mdkstep.data.windows import SPLITS, read_dataset_file
    from mdkstep.data.windows import subset_dataset as write_subset

    _, codes, _ = read_dataset_file(src)
    train = SPLITS.index("train")
    tr = np.flatnonzero(codes == train)
    keep = np.arange(len(codes))
    if 0 < n_train < len(tr):
        keep_tr = np.sort(np.random.default_rng(seed).choice(tr, n_train, replace=False))
        keep = np.sort(np.concatenate([keep_tr, np.flatnonzero(codes != train)]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_subset(src, dst, keep)
    return int(np.sum(codes[keep] == train))


def train_run(dataset: Path, splits: Path, out: Path, args, steps: int, k: int, pretrained: Path | None,
              freeze: int) -> dict:
    import torch

    from mdkstep.config import load_config
    from mdkstep.model import ModelConfig
    from mdkstep.training.trainer import TrainConfig, train

    torch.set_num_threads(1)
    if (out / "final_metrics.json").is_file():
        return json.loads((out / "final_metrics.json").read_text())
    mcfg = load_config(ModelConfig, args.model_config, set_items=args.model_set)
    tcfg = load_config(TrainConfig, ROOT / "configs/train_qm.yaml", {
        "k": k, "max_steps": steps, "epochs": 10**6, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_steps": max(1, steps // 10), "eval_every": max(1, steps // 3), "val_max_windows": 512,
        "metrics_max_windows": 2048, "norm_max_windows": 2048, "seed": args.seed, "freeze_layers": freeze,
        "log_every": 10**6,
    })
    t0 = time.perf_counter()
    train(dataset, (splits / "train.json", splits / "val.json"), mcfg, tcfg, out, "cpu", False, pretrained,
          splits / "test.json", progress=False, allow_k_change=pretrained is not None, overwrite=True)
    fm = json.loads((out / "final_metrics.json").read_text())
    fm["train_seconds"] = time.perf_counter() - t0
    (out / "final_metrics.json").write_text(json.dumps(fm, indent=1))
    return fm


def mm_zero_shot(mm_ck: Path, qm_ds: Path, test_split: Path) -> dict:
    """The MM checkpoint on the QM test windows, no fine-tuning (its MM normalization scales)."""
    import torch

    from mdkstep.analysis.evaluation import one_jump_metrics
    from mdkstep.data.windows import KStepDataset
    from mdkstep.model.checkpoint import model_from_checkpoint

    torch.set_num_threads(1)
    model, _ = model_from_checkpoint(mm_ck, dtype=torch.float64)
    return one_jump_metrics(model, KStepDataset(qm_ds, test_split), 2048).get("model", {})


def plot(curve: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("bond_rmse_A", "bond RMSE (Å)"), ("angle_rmse_deg", "angle RMSE (°)"), ("pos_rmse_A", "position RMSE (Å)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, keys):
        for arm, style in (("pretrained", "o-"), ("scratch", "s--")):
            pts = [(r["n_train"], r[arm]["model"][key]) for r in curve["runs"]]
            ax.plot(*zip(*pts), style, label=f"{arm} (MM→QM)" if arm == "pretrained" else arm)
        ax.axhline(curve["no_move"][key], color="gray", ls=":", label="no move")
        ax.axhline(curve["ballistic"][key], color="gray", ls="-.", label="ballistic")
        if curve.get("mm_zero_shot_on_qm_test"):
            ax.axhline(curve["mm_zero_shot_on_qm_test"][key], color="tab:red", ls=":", label="MM model, no fine-tune")
        ax.set_xscale("log")
        ax.set_xlabel("QM training windows")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"QM one-jump error on the fixed test split (k={curve['k_qm']}, {curve['steps']} steps each)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    smi = args.smiles or out / "mols.smi"
    if args.smiles is None and not smi.is_file():
        smi.write_text(DEFAULT_SMI)
    t_all = time.perf_counter()
    quiet = ["--log-level", "WARNING"]
    sh(["src/00_prep_mols.py", "--smiles", str(smi), "--out-dir", str(out / "raw"), "--skip-existing", *quiet])
    sh(["src/01b_run_qm_baselines.py", "--all", str(out / "raw"), "--config", "configs/qm_quick.yaml",
        "--out", str(out / "qm_md"), "--time-ps", str(args.qm_ps), "--equil-ps", "0.2", "--no-progress", *quiet])
    sh(["src/01_run_md_baselines.py", "--all", str(out / "raw"), "--config", "configs/md_quick.yaml",
        "--out", str(out / "mm_md"), "--time-ps", str(args.mm_ps), "--equil-ps", "1", "--nve-windows", "0",
        "--set", "constraints=none", "--set", "dt_fs=0.5", "--set", "platform=CPU", *quiet])
    for kind, k in (("mm", args.k_mm), ("qm", args.k_qm)):
        if not (out / f"{kind}_data/dataset_k{k}.npz").is_file():
            sh(["src/02_make_dataset.py", "--md-root", str(out / f"{kind}_md"), "--out-root", str(out / f"{kind}_data"),
                "--splits-dir", str(out / f"{kind}_data/splits"), "--ks", str(k), "--split", "time",
                "--raw-root", str(out / "raw"), *quiet])
    t_data = time.perf_counter() - t_all
    tag = f"kq{args.k_qm}_km{args.k_mm}_s{args.steps}"
    mm_dir = out / f"train_mm_km{args.k_mm}_s{args.mm_steps}"
    mm_ck = mm_dir / "best.pt"
    t0 = time.perf_counter()
    mm_fm = train_run(out / f"mm_data/dataset_k{args.k_mm}.npz", out / "mm_data/splits", mm_dir, args,
                      args.mm_steps, args.k_mm, None, 0)
    t_mm = time.perf_counter() - t0
    qm_ds, splits = out / f"qm_data/dataset_k{args.k_qm}.npz", out / "qm_data/splits"
    zero_shot = mm_zero_shot(mm_ck, qm_ds, splits / "test.json")
    runs = []
    base = None
    for n in args.sizes:
        sub = out / "subsets" / f"dataset_k{args.k_qm}_n{n or 'all'}.npz"
        n_train = subset_dataset(qm_ds, sub, n, args.seed)
        row: dict = {"n_train": n_train, "requested": n or "all"}
        for arm, pre in (("pretrained", mm_ck), ("scratch", None)):
            fm = train_run(sub, splits, out / f"runs_{tag}" / f"{arm}_n{n or 'all'}", args, args.steps, args.k_qm, pre,
                           args.freeze if pre is not None else 0)
            row[arm] = {"model": fm["test"]["model"], "train_seconds": fm.get("train_seconds")}
            base = fm["test"]
        runs.append(row)
        print(f"N={n_train}: " + ", ".join(
            f"{arm} bond {row[arm]['model']['bond_rmse_A']:.4f} Å angle {row[arm]['model']['angle_rmse_deg']:.2f}° "
            f"pos {row[arm]['model']['pos_rmse_A']:.4f} Å" for arm in ("pretrained", "scratch")), flush=True)
    curve = {"k_qm": args.k_qm, "k_mm": args.k_mm, "qm_dt_fs": 0.25, "mm_dt_fs": 0.5, "steps": args.steps,
             "mm_steps": args.mm_steps, "batch_size": args.batch_size, "lr": args.lr, "freeze_layers": args.freeze,
             "model_config": str(args.model_config), "model_set": args.model_set,
             "n_test_windows": base["model"]["n_windows"], "no_move": base["no_move"], "ballistic": base["ballistic"],
             "mm_pretrain_test": mm_fm.get("test", {}).get("model"), "mm_zero_shot_on_qm_test": zero_shot,
             "runs": runs,
             "seconds": {"data": t_data, "mm_pretrain": t_mm, "total": time.perf_counter() - t_all}}
    (out / f"curve_{tag}.json").write_text(json.dumps(curve, indent=1))
    plot(curve, out / f"curve_{tag}.png")
    print(f"wrote {out / f'curve_{tag}.json'} and {out / f'curve_{tag}.png'} ({curve['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
