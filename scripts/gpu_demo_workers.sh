#!/bin/bash
# Issue #14 item 3 on a GPU machine: the demo-sized study (sweeps/demo.yaml on the GPU trainer) with
# `mlpmem sweep --workers N`, each N from an out holding only the token store (carried: .carry/demo-tokens, made by
# `mlpmem prepare --corpus wiki-summaries --vocab-size 4096 --max-documents 2000 --out .carry/demo-tokens`).
# Wall time and results rows per N -> $OUT/demo-workers.txt. Usage: bash scripts/gpu_demo_workers.sh "8 4 2 1"
set -u
source scripts/gpu_setup.sh
for n in ${1:-8 4 2 1}; do
  out=/tmp/demo-w$n; rm -rf "$out"; mkdir -p "$out"; cp -r .carry/demo-tokens "$out/tokens"; start=$SECONDS
  timeout "${RUN_SECONDS:-200}" $MLPMEM sweep --config sweeps/demo.yaml --workers "$n" --out "$out" \
    --set trainer=gpu > "$OUT/demo-w$n.log" 2>&1
  rc=$?; rows=$(($(wc -l < "$out/demo/results.csv" 2>/dev/null || echo 1) - 1))
  echo "workers=$n rc=$rc wall_s=$((SECONDS - start)) results_rows=$rows" | tee -a "$OUT/demo-workers.txt"
done
