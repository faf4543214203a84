#!/bin/bash
# `mlpmem bench` on a GPU machine: bash scripts/gpu_bench.sh SECTIONS [extra mlpmem bench args]
# Results go to analysis/bench (CSV + bench.md + profiler tables), copied to $OUT. BENCH_SECONDS (default 540)
# bounds the bench so the results are still packed when a lease is about to end; rows already measured are kept.
set -u
source scripts/gpu_setup.sh
store=runs/tokens/mixed-english
[ -d $store ] || { mkdir -p runs/tokens && cp -r .carry/mixed-english $store; }
sections=${1:-train,targets,generate,memory}; shift || true
timeout "${BENCH_SECONDS:-540}" $MLPMEM bench --sections "$sections" --data $store --profile "$@" 2>&1 | grep -v -E "Warning|warn\(|^\s*$" | tail -40
tar czf "$OUT/bench.tgz" -C analysis bench; ls -la "$OUT"
