#!/usr/bin/env bash
# QM MD baselines with GFN2-xTB (stage 01b; stage 00 prep first when PREP=1) -> $OUT/md/<molecule>/replica_<r>.npz
# Tiny default (CPU, ~1 min): water + ethanol, 2 replicas x 1 ps at 0.25 fs, configs/qm_quick.yaml.
# FULL=1: every molecule of data/qm_molecules.smi, configs/qm.yaml (10 ps per replica).
# Settings (environment variables; defaults printed below):
#   OUT=outputs/qm  MOLECULES="water ethanol" (names in SMI; FULL=1: all)  SMI=data/qm_molecules.smi
#   QM_CONFIG  TIME_PS  REPLICAS=2  WORKERS=1  PREP=0 (1: 00 prep -> $OUT/raw, then 01b --all)  PY=.venv/bin/python
# xTB runs on CPU with 1 OpenMP thread per worker (oversubscription costs ~100x); DEVICE is not used here.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/batch_common.sh; TAG=run_qm_trajectories; batch_help "$0" "${1:-}"
FULL=${FULL:-0}; OUT=${OUT:-outputs/qm}; SMI=${SMI:-data/qm_molecules.smi}; PY=${PY:-.venv/bin/python}
REPLICAS=${REPLICAS:-2}; WORKERS=${WORKERS:-1}; PREP=${PREP:-0}
if [ "$FULL" = 1 ]; then QM_CONFIG=${QM_CONFIG:-configs/qm.yaml}; TIME_PS=${TIME_PS:-10}; MOLECULES=${MOLECULES:-all}
else QM_CONFIG=${QM_CONFIG:-configs/qm_quick.yaml}; TIME_PS=${TIME_PS:-1}; MOLECULES=${MOLECULES:-water ethanol}; fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
echo "[run_qm_trajectories] FULL=$FULL OUT=$OUT SMI=$SMI MOLECULES='$MOLECULES' QM_CONFIG=$QM_CONFIG TIME_PS=$TIME_PS REPLICAS=$REPLICAS WORKERS=$WORKERS PREP=$PREP PY=$PY"
if [ "${DRY_RUN:-0}" = 1 ]; then SEL=$(mktemp); else mkdir -p "$OUT"; SEL="$OUT/molecules.smi"; fi
if [ "$MOLECULES" = all ]; then grep -v '^\s*#' "$SMI" | grep -v '^\s*$' > "$SEL"
else : > "$SEL"; for m in $MOLECULES; do
  awk -v n="$m" '$2 == n' "$SMI" | grep -q . || { echo "error: MOLECULES: '$m' is not a molecule name in $SMI" >&2; exit 2; }
  awk -v n="$m" '$2 == n' "$SMI" >> "$SEL"; done; fi
[ -s "$SEL" ] || { echo "no molecules of '$MOLECULES' in $SMI" >&2; exit 2; }
if [ "$PREP" = 1 ]; then
  echo "[run_qm_trajectories] 00 prep: $SEL -> $OUT/raw"
  run $PY src/00_prep_mols.py --smiles "$SEL" --out-dir "$OUT/raw" --skip-existing
  SRC=(--all "$OUT/raw")
else SRC=(--smiles-file "$SEL"); fi
echo "[run_qm_trajectories] 01b GFN2-xTB baselines -> $OUT/md"
run $PY src/01b_run_qm_baselines.py "${SRC[@]}" --config "$QM_CONFIG" --out "$OUT/md" --time-ps "$TIME_PS" \
    --replicas "$REPLICAS" --num-workers "$WORKERS" --omp-num-threads 1 --no-progress
[ "${DRY_RUN:-0}" = 1 ] || echo "[run_qm_trajectories] done: $OUT/md/<molecule>/replica_*.npz"
