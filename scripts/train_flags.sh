# Sourced by the batch scripts: how to call 04_train.py on a run folder that may exist already.
# train_flags DIR prints: "skip" when DIR holds a finished run (final_metrics.json) and OVERWRITE is
# not 1; "--overwrite" with OVERWRITE=1; "--resume" when DIR holds an interrupted run (last.pt);
# nothing for a fresh folder. 04 refuses an existing run without one of the two flags.
train_flags() {
  if [ "${OVERWRITE:-0}" = 1 ]; then echo "--overwrite"
  elif [ -f "$1/final_metrics.json" ]; then echo "skip"
  elif [ -f "$1/last.pt" ]; then echo "--resume"
  fi
}
