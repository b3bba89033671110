# Shared by the QM batch scripts (source it): --help from the script's leading comment block,
# and DRY_RUN=1 printing every command instead of running it.
batch_help() {  # the comment block after the shebang, without the leading '# '
  case "${2:-}" in -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; exit 0;; esac
}
run() {  # run "$@", or under DRY_RUN=1 only print it
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "[$TAG] DRY_RUN=1: would run: $*"; else "$@"; fi
}
