#!/usr/bin/env bash
# k-step windows from the QM baselines (stage 02) -> $OUT/data/dataset_k<K>.npz and $OUT/data/splits/{train,val,test}.json
# Settings: OUT=outputs/qm  K=4 (steps of 0.25 fs)  SPLIT=time (molecule needs >= 3 molecules; FULL=1 default: molecule)
#           STRIDE=1  PY=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")"
source scripts/batch_common.sh; TAG=make_qm_dataset; batch_help "$0" "${1:-}"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; K=${K:-4}; STRIDE=${STRIDE:-1}; PY=${PY:-.venv/bin/python}
if [ "$FULL" = 1 ]; then SPLIT=${SPLIT:-molecule}; else SPLIT=${SPLIT:-time}; fi
echo "[make_qm_dataset] FULL=$FULL OUT=$OUT K=$K SPLIT=$SPLIT STRIDE=$STRIDE PY=$PY"
run $PY src/02_make_dataset.py --md-root "$OUT/md" --out-root "$OUT/data" --splits-dir "$OUT/data/splits" \
    --ks $K --split "$SPLIT" --stride "$STRIDE"
[ "${DRY_RUN:-0}" = 1 ] || echo "[make_qm_dataset] done: $OUT/data/dataset_k$K.npz"
