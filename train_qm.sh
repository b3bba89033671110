#!/usr/bin/env bash
# Train the QM k-step model (stage 04) -> $OUT/train/{best,last}.pt, final_metrics.json, loss_curve.png
# With PRETRAINED=<MM checkpoint .pt> (e.g. the shipped models/mm_k8.pt): MM -> QM fine-tuning (--pretrained
# --allow-k-change, first FREEZE layers frozen) with the pretrained model's own architecture (MODEL_CONFIG
# is then taken from the checkpoint unless you set it). Without PRETRAINED: trained FROM SCRATCH (said below).
# Tiny default (CPU): 200 optimizer steps, batch 32. FULL=1: configs/train_qm.yaml as is, DEVICE=cuda.
# Settings: OUT=outputs/qm  K=4  PRETRAINED=  FREEZE=0  DEVICE=auto  STEPS (tiny: 200)  MODEL_CONFIG=configs/model_qm.yaml
#           TRAIN_CONFIG=configs/train_qm.yaml  WORKERS=1 (torchrun processes; >1 = DDP)  PY=.venv/bin/python
#           An existing $OUT/train is kept when finished and resumed when interrupted; OVERWRITE=1 retrains it.
# No training needed for a first run: `make models` ships QM k = 8, 16, 32 (models/qm_k<K>.pt, GFN2-xTB, 0.25 fs,
# 20 ps per molecule; cards beside them) and run_hybrid_qm.sh uses them when $OUT/train has none.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/batch_common.sh; TAG=train_qm; batch_help "$0" "${1:-}"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; K=${K:-4}; PRETRAINED=${PRETRAINED:-}; FREEZE=${FREEZE:-0}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/train_qm.yaml}
WORKERS=${WORKERS:-1}; PY=${PY:-.venv/bin/python}
if [ -n "$PRETRAINED" ] && [ -z "${MODEL_CONFIG:-}" ]; then  # the pretrained model's architecture, as a YAML
  [ -f "$PRETRAINED" ] || { echo "error: PRETRAINED=$PRETRAINED not found (shipped MM models: $(ls models/mm_k*.pt | tr '\n' ' '))" >&2; exit 2; }
  if [ "${DRY_RUN:-0}" = 1 ]; then MODEL_CONFIG=$(mktemp --suffix .yaml); else mkdir -p "$OUT"; MODEL_CONFIG=$OUT/pretrained_model.yaml; fi
  PYTHONPATH=src $PY -c "import sys, torch, yaml; ck = torch.load(sys.argv[1], map_location='cpu', weights_only=False); open(sys.argv[2], 'w').write(yaml.safe_dump(ck['model_config']))" "$PRETRAINED" "$MODEL_CONFIG"
fi
MODEL_CONFIG=${MODEL_CONFIG:-configs/model_qm.yaml}
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
if [ "$WORKERS" -gt 1 ]; then run $PY -m torch.distributed.run --nproc_per_node="$WORKERS" src/04_train.py "${ARGS[@]}"
else OMP_NUM_THREADS=1 run $PY src/04_train.py "${ARGS[@]}" --threads 1; fi
[ "${DRY_RUN:-0}" = 1 ] || echo "[train_qm] done: $OUT/train/best.pt"
