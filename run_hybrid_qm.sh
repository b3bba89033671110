#!/usr/bin/env bash
# Hybrid QM MD (stage 06b): learned k-step jumps + GFN2-xTB corrector, from the last frame of each baseline
# -> $OUT/hybrid/<molecule>/k<K>_<CORRECTOR>.npz (+ .stats.json). Tiny default: 0.5 ps per molecule on CPU.
# Settings: OUT=outputs/qm  CHECKPOINT ($OUT/train/best.pt when trained, else the shipped models/qm_k$K.pt from
#           `make models`: K=8, 16, 32)  K=4  CORRECTOR=kick  TIME_PS (tiny 0.5, FULL=1: 10)
#           REPLICAS=1  DEVICE=auto (FULL=1: cuda)  QM_CONFIG=configs/qm_quick.yaml (FULL=1: configs/qm.yaml)
#           HYBRID_CONFIG=configs/hybrid_qm.yaml  MOLECULES (default: every folder of $OUT/md)  PY=.venv/bin/python
#           OVERWRITE=1 redoes finished runs (default: finished ones are skipped, interrupted ones resume)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,8p' "$0"; exit 0;; esac
cd "$(dirname "$0")"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; K=${K:-4}; CORRECTOR=${CORRECTOR:-kick}; REPLICAS=${REPLICAS:-1}
SHIPPED=models/qm_k$K.pt; { [ -f "$OUT/train/best.pt" ] || [ ! -f "$SHIPPED" ]; } && DEFAULT_CK=$OUT/train/best.pt || DEFAULT_CK=$SHIPPED
CHECKPOINT=${CHECKPOINT:-$DEFAULT_CK}; HYBRID_CONFIG=${HYBRID_CONFIG:-configs/hybrid_qm.yaml}; PY=${PY:-.venv/bin/python}
if [ "$FULL" = 1 ]; then TIME_PS=${TIME_PS:-10}; DEVICE=${DEVICE:-cuda}; QM_CONFIG=${QM_CONFIG:-configs/qm.yaml}
else TIME_PS=${TIME_PS:-0.5}; DEVICE=${DEVICE:-auto}; QM_CONFIG=${QM_CONFIG:-configs/qm_quick.yaml}; fi
MOLECULES=${MOLECULES:-$( (ls "$OUT/md" 2>/dev/null || true) | tr '\n' ' ')}
echo "[run_hybrid_qm] FULL=$FULL OUT=$OUT CHECKPOINT=$CHECKPOINT K=$K CORRECTOR=$CORRECTOR TIME_PS=$TIME_PS REPLICAS=$REPLICAS DEVICE=$DEVICE QM_CONFIG=$QM_CONFIG MOLECULES='$MOLECULES'"
if [ "${DRY_RUN:-0}" = 1 ]; then echo "[run_hybrid_qm] DRY_RUN=1: nothing run"; exit 0; fi
[ -n "${MOLECULES// }" ] || { echo "error: MOLECULES is empty and $OUT/md has no molecule folders (run run_qm_trajectories.sh)" >&2; exit 2; }
for name in $MOLECULES; do  # every name is checked before any run starts
  [ -f "$OUT/md/$name/replica_0.npz" ] || { echo "error: MOLECULES: '$name' has no baseline $OUT/md/$name/replica_0.npz" >&2; exit 2; }
done
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
OVERWRITE=${OVERWRITE:-0}  # 1: redo finished runs and discard partial ones; default: skip finished, resume partial
for name in $MOLECULES; do
  out="$OUT/hybrid/$name/k${K}_$CORRECTOR.npz"
  if [ "$OVERWRITE" != 1 ] && [ -f "$out" ]; then echo "[run_hybrid_qm] $out exists, skipping (OVERWRITE=1 redoes it)"; continue; fi
  $PY src/06b_hybrid_integrate_qm.py --checkpoint "$CHECKPOINT" --start-from "$OUT/md/$name/replica_0.npz" \
      --qm-config "$QM_CONFIG" --hybrid-config "$HYBRID_CONFIG" --out "$OUT/hybrid/$name/k${K}_$CORRECTOR.npz" \
      --time-ps "$TIME_PS" --k "$K" --corrector "$CORRECTOR" --replicas "$REPLICAS" --device "$DEVICE" --threads 1 \
      $([ "$OVERWRITE" = 1 ] && echo --overwrite) --no-progress
done
echo "[run_hybrid_qm] done: $OUT/hybrid/<molecule>/k${K}_$CORRECTOR.npz"
