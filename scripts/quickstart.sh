#!/usr/bin/env bash
# The whole MM pipeline on the tiny embedded default (CPU, minutes). Called by `make quickstart`.
# Settings (environment variables, defaults printed below):
#   OUT=outputs/quickstart   where everything goes
#   PY=.venv/bin/python      interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/quickstart}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
echo "[quickstart] OUT=$OUT PY=$PY"
mkdir -p "$OUT"

echo "[quickstart] 00 prep: data/quick.smi -> $OUT/raw"
$PY src/00_prep_mols.py --smiles data/quick.smi --out-dir "$OUT/raw" --config configs/prep.yaml --skip-existing

echo "[quickstart] 01 MM baselines (2 replicas for the noise floor): -> $OUT/md"
$PY src/01_run_md_baselines.py --all "$OUT/raw" --config configs/md_quick.yaml --out "$OUT/md" --replicas 2

K=${K:-8}
echo "[quickstart] 02 dataset: k=$K windows, time split -> $OUT/datasets, $OUT/splits"
$PY src/02_make_dataset.py --md-root "$OUT/md" --out-root "$OUT/datasets" --splits-dir "$OUT/splits" --ks "$K" --split time

echo "[quickstart] 04 training (tiny EGNN, CPU) -> $OUT/train"
$PY src/04_train.py --dataset "$OUT/datasets/dataset_k$K.npz" --model-config configs/model_quick.yaml \
    --train-config configs/train_quick.yaml --splits "$OUT/splits/train.json" "$OUT/splits/val.json" \
    --out "$OUT/train" --device "${DEVICE:-auto}"

echo "[quickstart] done. Results under $OUT/: raw/ (molecules), md/ (baselines), datasets/, train/ (best.pt, metrics.csv, loss_curve.png, final_metrics.json)"
