#!/usr/bin/env bash
# GPU paths in a few minutes (issue 26, Build 6): OpenMM CUDA vs CPU forces, GPU4PySCF vs PySCF gradient,
# torchrun DDP vs one process, training steps/s GPU vs CPU, 06b with GPU4PySCF. Checks without a GPU are
# reported as skipped. Usage: bash tools/gpu_check.sh [OUT_DIR [CHECK ...]]  (JSON: OUT_DIR/gpu_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
export GPU_COUNT=${GPU_COUNT:-$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)}
exec timeout "${GPU_CHECK_TIMEOUT_S:-900}" "$PY" tools/gpu_check.py "${1:-outputs/gpu_check}" "${@:2}"
