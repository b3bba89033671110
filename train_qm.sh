#!/usr/bin/env bash
# Train the QM k-step model (stage 04) -> $OUT/train/{best,last}.pt, final_metrics.json, loss_curve.png
# With PRETRAINED=<MM checkpoint .pt>: MM -> QM fine-tuning (--pretrained --allow-k-change, first FREEZE layers frozen;
# the MM model must have the architecture of MODEL_CONFIG). Without PRETRAINED: trained FROM SCRATCH (said below).
# Tiny default (CPU): 200 optimizer steps, batch 32. FULL=1: configs/train_qm.yaml as is, DEVICE=cuda.
# Settings: OUT=outputs/qm  K=4  PRETRAINED=  FREEZE=0  DEVICE=auto  STEPS (tiny: 200)  MODEL_CONFIG=configs/model_qm.yaml
#           TRAIN_CONFIG=configs/train_qm.yaml  WORKERS=1 (torchrun processes; >1 = DDP)  PY=.venv/bin/python
#           An existing $OUT/train is kept when finished and resumed when interrupted; OVERWRITE=1 retrains it.
# No training needed for a first run: `make models` ships QM k = 8, 16, 32 (models/qm_k<K>.pt, GFN2-xTB, 0.25 fs,
# 20 ps per molecule; cards beside them) and run_hybrid_qm.sh uses them when $OUT/train has none.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,10p' "$0"; exit 0;; esac
cd "$(dirname "$0")"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; K=${K:-4}; PRETRAINED=${PRETRAINED:-}; FREEZE=${FREEZE:-0}
MODEL_CONFIG=${MODEL_CONFIG:-configs/model_qm.yaml}; TRAIN_CONFIG=${TRAIN_CONFIG:-configs/train_qm.yaml}
WORKERS=${WORKERS:-1}; PY=${PY:-.venv/bin/python}
if [ "$FULL" = 1 ]; then DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-}; EXTRA=()
else DEVICE=${DEVICE:-auto}; STEPS=${STEPS:-200}; EXTRA=(--set batch_size=32 --set warmup_steps=20 --set val_max_windows=512 --set metrics_max_windows=1024); fi
echo "[train_qm] FULL=$FULL OUT=$OUT K=$K PRETRAINED=${PRETRAINED:-<none>} FREEZE=$FREEZE DEVICE=$DEVICE STEPS=${STEPS:-<config>} MODEL_CONFIG=$MODEL_CONFIG TRAIN_CONFIG=$TRAIN_CONFIG WORKERS=$WORKERS"
ARGS=(--dataset "$OUT/data/dataset_k$K.npz" --model-config "$MODEL_CONFIG" --train-config "$TRAIN_CONFIG"
      --splits "$OUT/data/splits/train.json" "$OUT/data/splits/val.json" --out "$OUT/train" --device "$DEVICE"
      --set "k=$K" "${EXTRA[@]}")
[ -n "$STEPS" ] && ARGS+=(--max-steps "$STEPS" --set "eval_every=$STEPS")
if [ -n "$PRETRAINED" ]; then
  echo "[train_qm] fine-tuning from $PRETRAINED (MM -> QM, --allow-k-change, $FREEZE frozen layer(s))"
  ARGS+=(--pretrained "$PRETRAINED" --allow-k-change --freeze-layers "$FREEZE")
else
  echo "[train_qm] no PRETRAINED given: training FROM SCRATCH on QM data"
fi
source scripts/train_flags.sh
TF=$(train_flags "$OUT/train")
if [ "$TF" = skip ]; then echo "[train_qm] $OUT/train is trained already (OVERWRITE=1 redoes it)"; exit 0; fi
[ -n "$TF" ] && ARGS+=("$TF")
if [ "${DRY_RUN:-0}" = 1 ]; then echo "[train_qm] DRY_RUN=1: would run 04_train.py ${ARGS[*]}"; exit 0; fi
if [ "$WORKERS" -gt 1 ]; then $PY -m torch.distributed.run --nproc_per_node="$WORKERS" src/04_train.py "${ARGS[@]}"
else OMP_NUM_THREADS=1 $PY src/04_train.py "${ARGS[@]}" --threads 1; fi
echo "[train_qm] done: $OUT/train/best.pt"
