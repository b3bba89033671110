#!/usr/bin/env bash
# One-jump accuracy study: k = 4, 8, 12 x split = time, molecule, each model beside the trivial
# predictors. Settings (environment variables; defaults printed):
#   MD=data/md  OUT=outputs/one_jump  KS="4 8 12"  SPLITS="time molecule"
#   MODEL=configs/model.yaml  TRAIN=configs/train.yaml  STEPS=600  DEVICE=auto  STRIDE=4
set -euo pipefail
cd "$(dirname "$0")/../.."
MD=${MD:-data/md}; OUT=${OUT:-outputs/one_jump}; KS=${KS:-"4 8 12"}; SPLITS=${SPLITS:-"time molecule"}
MODEL=${MODEL:-configs/model.yaml}; TRAIN=${TRAIN:-configs/train.yaml}; STEPS=${STEPS:-600}
DEVICE=${DEVICE:-auto}; STRIDE=${STRIDE:-4}; PY=${PY:-.venv/bin/python}
source scripts/train_flags.sh  # finished models are kept, interrupted ones resume; OVERWRITE=1 retrains
echo "[one_jump] MD=$MD OUT=$OUT KS=$KS SPLITS=$SPLITS MODEL=$MODEL TRAIN=$TRAIN STEPS=$STEPS DEVICE=$DEVICE STRIDE=$STRIDE"
for split in $SPLITS; do
  $PY src/02_make_dataset.py --md-root "$MD" --out-root "$OUT/$split/datasets" --splits-dir "$OUT/$split/splits" \
      --ks $KS --split "$split" --stride "$STRIDE"
  for k in $KS; do
    echo "[one_jump] training split=$split k=$k -> $OUT/$split/k$k"
    TF=$(train_flags "$OUT/$split/k$k")
    if [ "$TF" = skip ]; then echo "[one_jump] $OUT/$split/k$k is trained already (OVERWRITE=1 redoes it)"; continue; fi
    $PY src/04_train.py $TF --dataset "$OUT/$split/datasets/dataset_k$k.npz" --model-config "$MODEL" \
        --train-config "$TRAIN" --splits "$OUT/$split/splits/train.json" "$OUT/$split/splits/val.json" \
        --out "$OUT/$split/k$k" --device "$DEVICE" --set k=$k --max-steps "$STEPS" --set eval_every=200
  done
done
$PY studies/one_jump/collect_one_jump.py "$OUT" | tee "$OUT/one_jump.md"
echo "[one_jump] table: $OUT/one_jump.md"
