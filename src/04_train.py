#!/usr/bin/env python
"""Stage 04: train a k-step jump model on a stage-02 dataset.

The command line lives in mdkstep.cli.train (console script ``mdkstep-train``); --help
shows every option, the units and more examples.

Example:
  python src/04_train.py --dataset outputs/datasets/dataset_k8.npz --model-config configs/model_quick.yaml \\
      --train-config configs/train_quick.yaml --splits outputs/splits/train.json outputs/splits/val.json \\
      --out outputs/train --device cpu --max-steps 200
"""
from mdkstep.cli.train import main, run

__all__ = ["main", "run"]  # tests load this file and call main(argv)

if __name__ == "__main__":
    run()
