#!/usr/bin/env bash
# Hybrid QM MD (stage 06b): learned k-step jumps + GFN2-xTB corrector, from the last frame of each baseline
# -> $OUT/hybrid/<molecule>/k<K>_<CORRECTOR>.npz (+ .stats.json). Tiny default: 0.5 ps per molecule on CPU.
# Default model: the shipped, faithful models/qm_k16.pt (GFN2-xTB, 4 fs per jump; its card models/qm_k16.md).
# Settings: OUT=outputs/qm  K (default: the checkpoint's; shipped models: K=8, 16, 32 -> models/qm_k$K.pt)
#           CHECKPOINT (default models/qm_k$K.pt; your own: CHECKPOINT=$OUT/train/best.pt)  CORRECTOR=kick
#           TIME_PS (tiny 0.5, FULL=1: 10)
#           REPLICAS=1  DEVICE=auto (FULL=1: cuda)  QM_CONFIG=configs/qm_quick.yaml (FULL=1: configs/qm.yaml)
#           HYBRID_CONFIG=configs/hybrid_qm.yaml  MOLECULES (default: every folder of $OUT/md)  PY=.venv/bin/python
#           OVERWRITE=1 redoes finished runs (default: finished ones are skipped, interrupted ones resume)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/batch_common.sh; TAG=run_hybrid_qm; batch_help "$0" "${1:-}"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; CORRECTOR=${CORRECTOR:-kick}; REPLICAS=${REPLICAS:-1}; PY=${PY:-.venv/bin/python}
if [ -z "${CHECKPOINT:-}" ]; then K=${K:-16}; CHECKPOINT=models/qm_k$K.pt
  [ -f "$CHECKPOINT" ] || { echo "error: K=$K: no shipped model $CHECKPOINT (shipped: $(ls models/qm_k*.pt | tr '\n' ' ')); set CHECKPOINT=<your .pt>" >&2; exit 2; }
elif [ -z "${K:-}" ]; then  # the checkpoint's own k
  [ -f "$CHECKPOINT" ] || { echo "error: CHECKPOINT=$CHECKPOINT not found (shipped: $(ls models/qm_k*.pt | tr '\n' ' '))" >&2; exit 2; }
  K=$(PYTHONPATH=src $PY -c "import sys, torch; print(int(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['k']))" "$CHECKPOINT")
fi
HYBRID_CONFIG=${HYBRID_CONFIG:-configs/hybrid_qm.yaml}
if [ "$FULL" = 1 ]; then TIME_PS=${TIME_PS:-10}; DEVICE=${DEVICE:-cuda}; QM_CONFIG=${QM_CONFIG:-configs/qm.yaml}
else TIME_PS=${TIME_PS:-0.5}; DEVICE=${DEVICE:-auto}; QM_CONFIG=${QM_CONFIG:-configs/qm_quick.yaml}; fi
MOLECULES=${MOLECULES:-$( (ls "$OUT/md" 2>/dev/null || true) | tr '\n' ' ')}
echo "[run_hybrid_qm] FULL=$FULL OUT=$OUT CHECKPOINT=$CHECKPOINT K=$K CORRECTOR=$CORRECTOR TIME_PS=$TIME_PS REPLICAS=$REPLICAS DEVICE=$DEVICE QM_CONFIG=$QM_CONFIG MOLECULES='$MOLECULES'"
if [ "${DRY_RUN:-0}" = 1 ] && [ -z "${MOLECULES// }" ]; then MOLECULES="<molecule>"; fi  # show the command anyway
[ -n "${MOLECULES// }" ] || { echo "error: MOLECULES is empty and $OUT/md has no molecule folders (run run_qm_trajectories.sh)" >&2; exit 2; }
for name in $MOLECULES; do  # every name is checked before any run starts
  [ "${DRY_RUN:-0}" = 1 ] || [ -f "$OUT/md/$name/replica_0.npz" ] || { echo "error: MOLECULES: '$name' has no baseline $OUT/md/$name/replica_0.npz" >&2; exit 2; }
done
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
OVERWRITE=${OVERWRITE:-0}  # 1: redo finished runs and discard partial ones; default: skip finished, resume partial
for name in $MOLECULES; do
  out="$OUT/hybrid/$name/k${K}_$CORRECTOR.npz"
  if [ "$OVERWRITE" != 1 ] && [ -f "$out" ]; then echo "[run_hybrid_qm] $out exists, skipping (OVERWRITE=1 redoes it)"; continue; fi
  run $PY src/06b_hybrid_integrate_qm.py --checkpoint "$CHECKPOINT" --start-from "$OUT/md/$name/replica_0.npz" \
      --qm-config "$QM_CONFIG" --hybrid-config "$HYBRID_CONFIG" --out "$OUT/hybrid/$name/k${K}_$CORRECTOR.npz" \
      --time-ps "$TIME_PS" --k "$K" --corrector "$CORRECTOR" --replicas "$REPLICAS" --device "$DEVICE" --threads 1 \
      $([ "$OVERWRITE" = 1 ] && echo --overwrite) --no-progress
done
[ "${DRY_RUN:-0}" = 1 ] || echo "[run_hybrid_qm] done: $OUT/hybrid/<molecule>/k${K}_$CORRECTOR.npz"
