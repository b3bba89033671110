#!/bin/bash
# Learned MM rows of the benchmark for other checkpoints/settings, against the cached references and plain runs
# of an earlier `make bench` (outputs/bench): only the hybrid / exact rows run (minutes, not the whole bench); a
# learned row with the same model, settings and seed as the cached bench's is reused from a copy.
#
# usage: scripts/bench_rows.sh NAME '{K: CKPT, ...}' [extra benchmarks/bench.py options, e.g. --set mm_schedules=[[4,12]]]
#   NAME  results go to outputs/bench_eval/NAME/bench.md (+ NAME.log); CKPT paths are relative to the repository
# example (the stride-schedule row hybrid_k4+12 beside hybrid_k4 and hybrid_k12):
#   scripts/bench_rows.sh sched '{4: models/mm_k4.pt, 12: models/mm_k12.pt}' --set 'mm_schedules=[[4,12]]'
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n 2,9p "$0"; exit 0;; esac
if [ $# -lt 2 ]; then sed -n 2,9p "$0"; exit 2; fi
NAME=$1; CKS=$2; shift 2
SRC=outputs/bench/mm
[ -d "$SRC/runs" ] || { echo "error: $SRC/runs: no cached bench (run make bench first)" >&2; exit 2; }
D=outputs/bench_eval/$NAME
mkdir -p "$D/mm/runs"
ln -sfn "$PWD/$SRC/raw" "$D/mm/raw"
for mol in "$SRC"/runs/*/; do
  mol=$(basename "$mol"); mkdir -p "$D/mm/runs/$mol"
  for f in "$SRC/runs/$mol"/*; do
    b=$(basename "$f")
    case $b in  # learned rows: copied, so a row whose model or settings differ reruns here, never in $SRC
      hybrid_*|exact_*|mvv_*) [ -L "$D/mm/runs/$mol/$b" ] && rm "$D/mm/runs/$mol/$b"; cp -n "$f" "$D/mm/runs/$mol/$b";;
      *) ln -sfn "$PWD/$f" "$D/mm/runs/$mol/$b";;
    esac
  done
done
KS=$(echo "$CKS" | grep -o '[0-9]\+:' | tr -d ':' | paste -sd, -)
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench.py --set out_dir="$D" --set qm_smiles=null \
  --set "mm_checkpoints=$CKS" --set "mm_ks=[$KS]" --set mm_exact_ks=[] --set mm_mvv_dts_fs=[] "$@" > "$D.log" 2>&1
grep -A14 "^### Fidelity" "$D/bench.md" | grep "hybrid" | awk -F'|' '{print $2,$3,$4,$5,$6,$7,$8,$9,$10,$13,$14}'
