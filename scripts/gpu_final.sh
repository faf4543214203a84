#!/bin/bash
# One lease, the last of the study and the benchmark (bash scripts/gpu_final.sh STUDY_S BENCH_S):
# finish the sweep (resumed from .carry/study/optuna.db) for at most STUDY_S seconds, then `mlpmem bench`
# for at most BENCH_S seconds; study.tgz and bench.tgz come back in $OUT.
set -u
source scripts/gpu_setup.sh
study=runs/sweeps/mixed-english-gpu; mkdir -p $study runs/tokens
cp -r .carry/mixed-english $study/tokens; cp -r .carry/mixed-english runs/tokens/mixed-english
cp .carry/study/optuna.db $study/
t0=$(date +%s)
timeout -s KILL "${1:-250}" $MLPMEM sweep --config sweeps/mixed-english-gpu.yaml > $study/sweep.log 2>&1
echo "sweep exit $? after $(( $(date +%s) - t0 )) s"; grep -E "Trial .* (finished|failed)" $study/sweep.log | cut -c1-160
(cd $study && tar czf "$OUT/study.tgz" optuna.db mixed-english-gpu/results.csv mixed-english-gpu/trials.csv sweep.log $(find . -name metrics.csv))
t0=$(date +%s)
timeout -s KILL "${2:-210}" $MLPMEM bench --sections train,targets,generate,memory --data runs/tokens/mixed-english \
  --sizes 3m,25m,100m,150m --compile-sizes 150m --rows 1e6,3e6,1e7 --generate-sizes 6m --datastore-rows 10000000 \
  --memory-sizes 6m --repeats 1 --profile > "$OUT/bench.log" 2>&1
echo "bench exit $? after $(( $(date +%s) - t0 )) s"
tar czf "$OUT/bench.tgz" -C analysis bench; ls -la "$OUT"
