"""Stage 04: train a k-step jump model (EGNN or Transformer-EGNN) on a stage-02 dataset.

Loss: Δx and Δv in normalized units + structural terms (bond lengths, angles, dihedrals of
x_t + Δx vs x_{t+k}) + a force-head term when the data has forces; lambdas in the train
config. AdamW, warm-up + cosine schedule, gradient clipping and accumulation, bf16 autocast on
CUDA, random rotation augmentation (batch / per_graph). Writes best.pt and last.pt (atomic;
model config, normalization, optimizer and scheduler state, step), metrics.csv,
loss_curve.png and final_metrics.json (one-jump metrics on val/test beside the trivial
predictors "no move" and "ballistic"). A run folder that holds an earlier run is refused
unless --resume (continue it) or --overwrite (remove its files, start over) is given.

Transfer learning: --pretrained CKPT (e.g. MM -> QM) with --freeze-layers N and the config's
pretrained_lr_scale. Multi-GPU / multi-node: torchrun --nproc_per_node=N src/04_train.py ...
(DDP; gloo on CPU, nccl on CUDA).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdkstep.cli.common import add_log_level, make_parser
from mdkstep.config import load_config, run_cli
from mdkstep.exact.train import ExactTrainConfig, train_shear
from mdkstep.model import ModelConfig
from mdkstep.training.trainer import TrainConfig, train
from mdkstep.utils import MdkstepError, seed_everything, setup_logging

EXAMPLE = """Example (k = 8 windows of the 2 fs baselines, i.e. 16 fs jumps; 200 optimizer steps on the CPU):
  mdkstep-train --dataset outputs/datasets/dataset_k8.npz --model-config configs/model_quick.yaml \\
      --config configs/train_quick.yaml --splits outputs/splits/train.json outputs/splits/val.json \\
      --out outputs/train --device cpu --max-steps 200 --set lr=1e-3 --model-set hidden=64
  python src/04_train.py --dataset outputs/datasets/dataset_k8.npz --model-config configs/model_quick.yaml \\
      --train-config configs/train_quick.yaml --splits outputs/splits/train.json outputs/splits/val.json \\
      --out outputs/train --resume   # continue that run where it stopped
Units: learning rate per optimizer step; RMSEs printed in Angstrom and degrees; throughput in samples/s.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--dataset", type=Path, required=True, help="dataset_k<K>.npz from stage 02")
    p.add_argument("--model-config", type=Path, required=True, help="model YAML (configs/model*.yaml)")
    p.add_argument("--train-config", "--config", type=Path, required=True,
                   help="training YAML (configs/train*.yaml; configs/train_exact.yaml for a shear model)")
    p.add_argument("--splits", type=Path, nargs=2, required=True, metavar=("TRAIN_JSON", "VAL_JSON"),
                   help="split files from stage 02")
    p.add_argument("--test-split", type=Path, default=None, help="test.json for the final metrics (default: beside TRAIN_JSON)")
    p.add_argument("--out", type=Path, default=Path("outputs/train"), help="run folder (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--epochs", type=int, default=None, help="override epochs")
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--seed", type=int, default=None, help="override seed")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from <out>/last.pt exactly where it stopped")
    again.add_argument("--overwrite", action="store_true",
                       help="remove an earlier run's files from <out> and start over (without it, or --resume, "
                            "an existing run is refused)")
    p.add_argument("--pretrained", type=Path, default=None, help="initialize from this checkpoint (transfer learning)")
    p.add_argument("--allow-k-change", action="store_true",
                   help="with --pretrained: accept a checkpoint trained for another k / time step (MM -> QM transfer)")
    p.add_argument("--freeze-layers", type=int, default=None, help="freeze the first N layers (with --pretrained)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train-config key (repeatable)")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model-config key (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_log_level(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    mcfg = load_config(ModelConfig, args.model_config, set_items=args.model_set)
    if mcfg.kind == "shear":  # exact mode: its own trainer and train config (configs/train_exact.yaml)
        return train_shear_main(args, mcfg)
    tcfg = load_config(TrainConfig, args.train_config, {
        "epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed, "freeze_layers": args.freeze_layers,
    }, args.set)
    if args.freeze_layers and not args.pretrained and not args.resume:
        raise MdkstepError("--freeze-layers only makes sense with --pretrained")
    seed_everything(tcfg.seed)
    test_split = args.test_split or args.splits[0].with_name("test.json")
    summary = train(args.dataset, tuple(args.splits), mcfg, tcfg, args.out, args.device, args.resume,
                    args.pretrained, test_split if test_split.is_file() else None, allow_k_change=args.allow_k_change,
                    overwrite=args.overwrite)
    fm = summary.get("final_metrics", {})
    for split in ("val", "test"):
        m = fm.get(split, {})
        if "model" in m:
            mm, nm = m["model"], m["no_move"]
            print(f"{split}: bond RMSE {mm['bond_rmse_A']:.4f} A (no-move {nm['bond_rmse_A']:.4f}), angle "
                  f"{mm['angle_rmse_deg']:.2f} deg (no-move {nm['angle_rmse_deg']:.2f}), pos {mm['pos_rmse_A']:.4f} A "
                  f"(no-move {nm['pos_rmse_A']:.4f}, ballistic {m['ballistic']['pos_rmse_A']:.4f})")
    if summary.get("samples_per_s"):
        print(f"trained {summary['steps']} steps at {summary['samples_per_s']:.0f} samples/s on {summary['device']} "
              f"(x{summary['world_size']} processes); checkpoints in {summary['out']}")
    return 0


def train_shear_main(args, mcfg: ModelConfig) -> int:
    """Stage 04 for a ``kind: shear`` model config: mdkstep.exact.train.train_shear with an
    ExactTrainConfig from --train-config (--max-steps sets its steps)."""
    if args.pretrained or args.freeze_layers:
        raise MdkstepError("--pretrained / --freeze-layers are not supported for model kind 'shear' yet")
    ecfg = load_config(ExactTrainConfig, args.train_config, {"steps": args.max_steps, "seed": args.seed}, args.set)
    seed_everything(ecfg.seed)
    test_split = args.test_split or args.splits[0].with_name("test.json")
    summary = train_shear(args.dataset, tuple(args.splits), mcfg, ecfg, args.out, args.device, args.resume,
                          args.overwrite, test_split if test_split.is_file() else None)
    fm = summary["final_metrics"]
    b, a = fm["teacher_forced_before"].get("val", {}), fm["teacher_forced_after"].get("val", {})
    print(f"shear kicks at tau = {fm['tau_fs']:.4g} fs: val teacher-forced |dH| median "
          f"{b.get('median_abs_dH_kJ_mol', float('nan')):.3g} -> {a.get('median_abs_dH_kJ_mol', float('nan')):.3g} "
          f"kJ/mol (p90 {b.get('p90_abs_dH_kJ_mol', float('nan')):.3g} -> {a.get('p90_abs_dH_kJ_mol', float('nan')):.3g})"
          f"; {summary['steps']} steps in {fm['train_seconds']:.0f} s; checkpoints in {summary['out']}")
    return 0


def run() -> None:
    """Console script ``mdkstep-train``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.train
    run()
