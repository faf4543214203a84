#!/bin/bash
# The GPU study (sweeps/mixed-english-gpu.yaml), resumable across machine leases:
#   bash scripts/gpu_study.sh SECONDS
# runs the sweep for at most SECONDS (then SIGKILL: the unfinished trial is re-run next time), starting from
# .carry/study/optuna.db when a previous lease left one, and copies the storage, results.csv, trials.csv and
# the training logs to $OUT. The token store is .carry/mixed-english (`mlpmem prepare --corpus mixed-english
# --vocab-size 16384`), prepared where the registries are reachable.
set -u
source scripts/gpu_setup.sh
study=runs/sweeps/mixed-english-gpu
mkdir -p $study
[ -d $study/tokens ] || cp -r .carry/mixed-english $study/tokens
[ -f .carry/study/optuna.db ] && cp .carry/study/optuna.db $study/
if [ -d .carry/wiki-summaries ]; then  # one-minute check of every GPU stage first
  mkdir -p runs/sweeps/gpu-smoke && cp -r .carry/wiki-summaries runs/sweeps/gpu-smoke/tokens
  t0=$(date +%s); $MLPMEM sweep --config sweeps/gpu-smoke.yaml > "$OUT/smoke.log" 2>&1
  echo "smoke exit $? in $(( $(date +%s) - t0 )) s"; cat runs/sweeps/gpu-smoke/gpu-smoke/results.csv runs/sweeps/gpu-smoke/gpu-smoke/trials.csv \
    || { grep -v Warn "$OUT/smoke.log" | tail -30; exit 1; }
fi
start=$(date +%s)
timeout -s KILL "${1:-540}" $MLPMEM sweep --config sweeps/mixed-english-gpu.yaml > "$OUT/sweep.log" 2>&1
echo "sweep exit $? after $(( $(date +%s) - start )) s"
cp $study/optuna.db $study/mixed-english-gpu/results.csv $study/mixed-english-gpu/trials.csv "$OUT"/ 2>/dev/null
(cd $study && find . -name metrics.csv -o -name hparams.yaml | tar czf "$OUT/logs.tgz" -T -)
grep -E "failed|Error|error:" "$OUT/sweep.log" | grep -v Warning | tail -5
df -h . | tail -1
