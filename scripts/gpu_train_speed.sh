#!/bin/bash
# Issue #14 item 1 and 4 on a GPU machine: decoder training tokens/s through the real Lightning path against the
# in-run reference, graph mode, with the fit's profiles (`--profile`: kernels, host ops, host seconds per hook).
#   after:  the shipped logging interval (50): training metrics logged only on the steps the logger writes
#   before: --log-every-n-steps 1, i.e. a `self.log` every step, as every step did before this change
# Results: $OUT/bench (train.csv, bench.md, profile_fit_*). 60 timed steps, so the mean includes a logging step.
set -u
source scripts/gpu_setup.sh
store=runs/tokens/mixed-english
[ -d $store ] || { mkdir -p runs/tokens && cp -r .carry/mixed-english $store; }
bench() {  # bench SECONDS ARGS...: one bounded bench run; rows already measured are kept
  local seconds=$1; shift
  timeout "$seconds" $MLPMEM bench --sections train --train-modes graph --data $store --out "$OUT/bench" --steps 60 \
    "$@" 2>&1 | grep -v -E "Warning|warn\(|^\s*$|USDT" | tail -8
}
start=$SECONDS
bench "${AFTER_SECONDS:-330}" --sizes 800k,6m,150m --profile
echo "after: $((SECONDS - start)) s"
bench "${BEFORE_SECONDS:-200}" --sizes 6m,800k --log-every-n-steps 1
echo "all: $((SECONDS - start)) s"
cat "$OUT/bench/train.csv"
