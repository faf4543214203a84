#!/bin/bash
# Issue #14 item 5 on a GPU machine: online memory training (mem-6m on the 6m decoder, batch 64 x 256, K 128), the working
# tree against another version of the package
# (e.g. `git archive REV mlpmem_lightning | tar -x -C .carry/before`, carried) in the same call.
# Results: $OUT/{before,after}/memory.csv and the graph-mode profiles.
set -u
source scripts/gpu_setup.sh
run() {  # run LABEL PYTHONPATH-HEAD
  local label=$1 path=$2
  PYTHONPATH=$path:/tmp/site timeout "${SECONDS_EACH:-200}" $MLPMEM bench --sections memory --memory-sizes 6m \
    --train-modes eager,graph --profile --out "$OUT/$label" 2>&1 | grep -v -E "Warning|warn\(|^\s*$" | tail -6
}
start=$SECONDS
run after "$PWD"; [ -n "${AFTER_ONLY:-}" ] && exit 0
echo "after: $((SECONDS - start)) s"
[ -d .carry/before/mlpmem_lightning ] && run before "$PWD/.carry/before"
echo "all: $((SECONDS - start)) s"
for f in "$OUT"/*/memory*.csv; do echo "== $f"; cat "$f"; done
