#!/bin/bash
# The decoder-only sweep of issue #15 (sweeps/scaling-h200-decoders.yaml) on one H200, 8 workers sharing the GPU:
#   bash scripts/gpu_decoders.sh SECONDS
# Carry .whl and .carry/mixed-english (as scripts/gpu_study.sh). Resumes from runs/ on a warm machine, or from
# analysis/results/scaling-h200/decoders/optuna.db on a fresh one; packs tables, storage and logs into $OUT/decoders.tgz.
set -u
source scripts/gpu_setup.sh
END=$(( $(date +%s) + ${1:-540} ))
O=runs/sweeps/scaling-h200-decoders
mkdir -p $O
[ -e $O/tokens ] || cp -r .carry/mixed-english $O/tokens
[ -e $O/optuna.db ] || [ ! -e analysis/results/scaling-h200/decoders/optuna.db ] || cp analysis/results/scaling-h200/decoders/optuna.db $O/
echo "sweep start $(date +%T)"
timeout $(( END - $(date +%s) )) $MLPMEM sweep --config sweeps/scaling-h200-decoders.yaml --workers 8 >> $O/sweep.log 2>&1
echo "sweep end $(date +%T) rc $?"; tail -40 $O/sweep.log | cut -c1-300
pkill -f mlpmem_lightning.cli; sleep 2
grep -h "^trial" $O/scaling-h200-decoders/workers/*.log 2>/dev/null | cut -c1-300 | tail -40
tar czf $OUT/decoders.tgz --exclude='*.ckpt' --exclude=checkpoints --exclude="$O/tokens" --exclude=.locks $O
ls -la $OUT
