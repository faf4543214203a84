# Sourced by scripts/gpu_setup.sh (tested by tests/test_pack_script.py). $OUT must be set.
# pack_every SECONDS NAME TAR-ARGS...: `tar czf $OUT/NAME TAR-ARGS` every SECONDS in the background. Each pack is
# written beside it under a name of its own process and renamed over it, so a call killed at its limit still
# returns the last whole pack (what is under $OUT comes back even then), and no two packs write one file.
# `pack_stop` ends the loop and any pack it has under way; the caller packs once more at its end.
# PACK_BEFORE, if set, runs before each pack (gpu_study.sh: a consistent copy of the live Optuna storage).
pack_once() {
  local name=$1; shift; local part="$OUT/.$name.$BASHPID.part"
  [ -z "${PACK_BEFORE:-}" ] || eval "$PACK_BEFORE"
  tar czf "$part" "$@" 2>/dev/null && mv -f "$part" "$OUT/$name"
}
pack_every() { local every=$1; shift; ( while sleep "$every"; do pack_once "$@"; done ) & PACK_PID=$!; }
pack_stop() {
  if [ -n "${PACK_PID:-}" ]; then  # its children first (sleep, tar): killed alone, the loop would leave them running
    pkill -P "$PACK_PID" 2>/dev/null; kill "$PACK_PID" 2>/dev/null; wait "$PACK_PID" 2>/dev/null; PACK_PID=
  fi
  rm -f "$OUT"/.*.part
}
