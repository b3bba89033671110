#!/usr/bin/env bash
# Evaluate QM hybrid runs (stage 05b): fidelity vs the replica floor, and force calls + wall seconds per ps
# of the hybrid vs plain xTB MD at 0.25, 0.5 and 1.0 fs timed in this run -> $OUT/eval/{metrics.json,report.md}
# Settings: OUT=outputs/qm  PLAIN_STEPS=200 (FULL=1: 1000)  PLAIN_DTS="0.25 0.5 1.0"  PY=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")"
source scripts/batch_common.sh; TAG=eval_qm; batch_help "$0" "${1:-}"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; PLAIN_DTS=${PLAIN_DTS:-0.25 0.5 1.0}; PY=${PY:-.venv/bin/python}
if [ "$FULL" = 1 ]; then PLAIN_STEPS=${PLAIN_STEPS:-1000}; else PLAIN_STEPS=${PLAIN_STEPS:-200}; fi
echo "[eval_qm] FULL=$FULL OUT=$OUT PLAIN_STEPS=$PLAIN_STEPS PLAIN_DTS='$PLAIN_DTS' PY=$PY"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
run $PY src/05b_eval_qm.py --baseline "$OUT/md" --hybrid-runs "$OUT/hybrid" --out-dir "$OUT/eval" \
    --plain-steps "$PLAIN_STEPS" --plain-dts $PLAIN_DTS
[ "${DRY_RUN:-0}" = 1 ] || echo "[eval_qm] done: $OUT/eval/report.md"
