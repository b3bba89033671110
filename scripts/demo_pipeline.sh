#!/usr/bin/env bash
# A demo of the stages: the whole MM pipeline (00 -> 01 -> 02 -> 04 -> 06 -> 05) on the tiny embedded default
# (CPU, minutes). Called by `make demo`. Its model is trained here for 300 steps: it shows every stage
# working, NOT a faithful hybrid (the shipped models are faithful: `make quickstart`).
# Settings (environment variables, defaults printed below):
#   OUT=outputs/demo         where everything goes
#   PY=.venv/bin/python      interpreter
#   K=8                      jump length (integrator steps)
#   MD_PS, STEPS, HYB_PS     shorter baseline ps / training steps / hybrid ps (tests use tiny values)
#   OVERWRITE=1              redo the finished training and hybrid runs (default: skip them; interrupted ones resume)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/demo}
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
echo "[demo] a demo of the stages with a tiny model trained here (not meant to be faithful; the shipped models: make quickstart)"
echo "[demo] OUT=$OUT PY=$PY"
mkdir -p "$OUT"

echo "[demo] 00 prep: data/quick.smi -> $OUT/raw"
$PY src/00_prep_mols.py --smiles data/quick.smi --out-dir "$OUT/raw" --config configs/prep.yaml --skip-existing

echo "[demo] 01 MM baselines (2 replicas for the noise floor): -> $OUT/md"
$PY src/01_run_md_baselines.py --all "$OUT/raw" --config configs/md_quick.yaml --out "$OUT/md" --replicas 2 ${MD_PS:+--time-ps $MD_PS} ${MD_PS:+--set nve_window_ps=$MD_PS}

K=${K:-8}
echo "[demo] 02 dataset: k=$K windows, time split -> $OUT/datasets, $OUT/splits"
$PY src/02_make_dataset.py --md-root "$OUT/md" --out-root "$OUT/datasets" --splits-dir "$OUT/splits" --ks "$K" --split time

echo "[demo] 04 training (tiny EGNN, CPU) -> $OUT/train"
source "$(dirname "$0")/train_flags.sh"
TF=$(train_flags "$OUT/train")
if [ "$TF" = skip ]; then echo "[demo] $OUT/train is trained already, skipping (OVERWRITE=1 redoes it)"
else $PY src/04_train.py $TF --dataset "$OUT/datasets/dataset_k$K.npz" --model-config configs/model_quick.yaml \
    --train-config configs/train_quick.yaml --splits "$OUT/splits/train.json" "$OUT/splits/val.json" \
    --out "$OUT/train" --device "${DEVICE:-auto}" ${STEPS:+--max-steps $STEPS --set eval_every=$STEPS}
fi

HYB_PS=${HYB_PS:-20}
echo "[demo] 06 hybrid MD: $HYB_PS ps NVT with the trained model -> $OUT/hybrid"
OVERWRITE=${OVERWRITE:-0}  # 1: redo finished hybrid runs; default: skip finished ones, resume interrupted ones
for d in "$OUT"/raw/*/; do
  name=$(basename "$d")
  if [ "$OVERWRITE" != 1 ] && [ -f "$OUT/hybrid/$name/hybrid_k$K.npz" ]; then
    echo "[demo] $OUT/hybrid/$name/hybrid_k$K.npz exists, skipping (OVERWRITE=1 redoes it)"; continue
  fi
  $PY src/06_hybrid_integrate.py --checkpoint "$OUT/train/best.pt" --molecule "$d" --md-config configs/md_quick.yaml \
      --hybrid-config configs/hybrid_quick.yaml --out "$OUT/hybrid/$name/hybrid_k$K.npz" --time-ps "$HYB_PS" \
      --start-from "$OUT/md/$name/replica_0.npz" $([ "$OVERWRITE" = 1 ] && echo --overwrite) --no-progress
done

echo "[demo] 05 evaluation -> $OUT/eval"
$PY src/05_eval_drift_rdfs.py --baseline "$OUT/md" --hybrid-runs "$OUT/hybrid" --out-dir "$OUT/eval" \
    --raw-root "$OUT/raw" --checkpoint "$OUT/train/best.pt" --dataset "$OUT/datasets/dataset_k$K.npz" \
    --test-split "$OUT/splits/test.json"

echo "[demo] done. Results under $OUT/: raw/ (molecules), md/ (baselines), datasets/, train/ (best.pt, loss_curve.png),"
echo "             hybrid/ (trajectories + stats), eval/ (report.md, metrics.json, plots, DCD for VMD/PyMOL)"
echo "[demo] report: $OUT/eval/report.md"
