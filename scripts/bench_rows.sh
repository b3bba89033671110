#!/bin/bash
# Learned MM (or, with MODE=qm, QM) rows of the benchmark for other checkpoints/settings, against the cached references and plain runs
# of an earlier `make bench` (outputs/bench): only the hybrid / exact rows run (minutes, not the whole bench); a
# learned row with the same model, settings and seed as the cached bench's is reused from a copy.
#
# usage: scripts/bench_rows.sh NAME '{K: CKPT, ...}' [extra benchmarks/bench.py options, e.g. --set mm_schedules=[[4,12]]]
#   NAME  results go to outputs/bench_eval/NAME/bench.md (+ NAME.log); CKPT paths are relative to the repository
# example (the stride-schedule row hybrid_k4+12 beside hybrid_k4 and hybrid_k12):
#   scripts/bench_rows.sh sched '{4: models/mm_k4.pt, 12: models/mm_k12.pt}' --set 'mm_schedules=[[4,12]]'
#   MODE=qm scripts/bench_rows.sh foundation '{16: models/foundation/qm_k16.pt}'   # QM rows of another model
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n 2,10p "$0"; exit 0;; esac
if [ $# -lt 2 ]; then sed -n 2,10p "$0"; exit 2; fi
MODE=${MODE:-mm}
case $MODE in mm) OTHER=qm;; qm) OTHER=mm;; *) echo "error: MODE=$MODE: use mm or qm" >&2; exit 2;; esac
NAME=$1; CKS=$2; shift 2
SRC=outputs/bench/$MODE
[ -d "$SRC/runs" ] || { echo "error: $SRC/runs: no cached bench (run make bench first)" >&2; exit 2; }
D=outputs/bench_eval/$NAME
mkdir -p "$D/$MODE/runs"
[ -d "$SRC/raw" ] && ln -sfn "$PWD/$SRC/raw" "$D/$MODE/raw"
for mol in "$SRC"/runs/*/; do
  mol=$(basename "$mol"); mkdir -p "$D/$MODE/runs/$mol"
  for f in "$SRC/runs/$mol"/*; do
    b=$(basename "$f")
    case $b in  # learned rows: copied, so a row whose model or settings differ reruns here, never in $SRC
      hybrid_*|exact_*|mvv_*) [ -L "$D/$MODE/runs/$mol/$b" ] && rm "$D/$MODE/runs/$mol/$b"; cp -n "$f" "$D/$MODE/runs/$mol/$b";;
      *) ln -sfn "$PWD/$f" "$D/$MODE/runs/$mol/$b";;
    esac
  done
done
KS=$(echo "$CKS" | grep -o '[0-9]\+:' | tr -d ':' | paste -sd, -)
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench.py --set out_dir="$D" --set ${OTHER}_smiles=null \
  --set "${MODE}_checkpoints=$CKS" --set "${MODE}_ks=[$KS]" --set ${MODE}_exact_ks=[] --set ${MODE}_mvv_dts_fs=[] \
  --set ${MODE}_schedules=[] "$@" > "$D.log" 2>&1
grep -A14 "^### Fidelity" "$D/bench.md" | grep "hybrid" | awk -F'|' '{print $2,$3,$4,$5,$6,$7,$8,$9,$10,$13,$14}'
