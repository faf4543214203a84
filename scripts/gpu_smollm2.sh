#!/bin/bash
# Issue #17's real run on one H200: SmolLM2-135M (frozen) over mixed-english tokenized with its own tokenizer, as one
# study (sweeps/smollm2-memory.yaml, 2 workers): the base alone, its datastore, the kNN-LM (T and λ on valid), targets
# at that T, memories of x0.125 … x2 the base's non-embedding parameters (λ on valid); the sweep's results.csv and
# trials.csv (seconds per stage) -> the memory-size fit and summary.md.
#   bash scripts/gpu_smollm2.sh SECONDS      # resumable: stages done (runs/smollm2-memory/done/) are skipped
# Call sequence (docs/gpu.md "SmolLM2 run"; each call <= 64 MiB, consecutive while the machine stays warm):
#   1. carry .whl (make wheels, with gguf), .carry/mixed-english-smollm2;                command `true`
#   2. carry .gpu/gguf/SmolLM2-135M-Instruct.Q4_1.gguf.part.00;                          command `true`
#   3. carry ….part.01 and the GGUF's .sha256; command `bash scripts/gpu_smollm2.sh 540`
#   4. no carry;         command `bash scripts/gpu_smollm2.sh 560` (again until summary.md comes back)
# CPU dry run (every stage, the packing and the report on a few thousand tokens; README of the results dir):
#   ACCEL=cpu SMOL_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf SMOL_TOKENS=<small store> SMOL_CORPUS=<its corpus>
#   SMOL_TINY=1 SMOL_SIZES="x0.125 x0.25" SMOL_WORKERS=1 bash … 1200
#
# Budget arithmetic (H200; rates from analysis/bench-h200 and analysis/bench, not measured on this model yet):
#   rows = 11,838,098 train tokens (seq 512 windows) x d=576, keys fp16: 13.6 GB on disk and on the GPU.
#   datastore: 11.8M x 0.30 GFLOP (base forward, seq 512) = 3.6e15, bf16 at ~150 TFLOP/s + writing   ~ 50 s
#   targets: clustered IVF, nlist 4096, nprobe 16 -> 46k candidates/query; top-1024 over N x 46k = 5.5e11
#     scores (H100 bench: 7.8e11 in 176 s at 10M rows) + fp32 GEMM 1.3e15 + faiss k-means 262k x 4096 (CPU)  ~ 160 s
#   kNN-LM validate (T grid x λ grid in one pass) and test: 616k / 640k queries each, same search        ~ 80 s
#   memories, offline keys, eager bf16, 11.8M tokens each (one epoch): 6 x (params incl. the 28M head)
#     = 6 x (55M + 81M + 135M + 241M + 42M) x 11.8M = 3.9e16 at ~200 TFLOP/s, + validation + start-up   ~ 340 s
#   memory validate + test (5 x 2 processes, ~20 s start-up each), base alone (2 processes)             ~ 240 s
#   set-up (wheels, join + sha256, import-decoder ~15 s)                                               ~ 40 s
#   collect + summaries ~ 40 s; total ~ 950 s: calls 3 and 4. A stage cut by the time limit reruns next call (fits resume from last.ckpt).
set -u
if [ "${ACCEL:-gpu}" = gpu ]; then source scripts/gpu_setup.sh; TRAINER=gpu PY=python3; else
  PY=${PY:-python3}; export MLPMEM="$PY -m mlpmem_lightning.cli" OUT=${OUT:-runs/smollm2-out}; mkdir -p "$OUT"
  TRAINER=cpu; fi
END=$(( $(date +%s) + ${1:-540} ))
left() { echo $(( END - $(date +%s) )); }
W=${SMOL_WORK:-runs/smollm2-memory}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=${SMOL_GGUF:-.gpu/gguf/$NAME}
mkdir -p $W/done $W/logs
# the spec's settings are the H200's (the header's arithmetic); SMOL_TINY=1: the CPU dry run's, as overrides
if [ -n "${SMOL_TINY:-}" ]; then
  SEQ=64 BATCH=8 EVAL_BATCH=8 DS_BATCH=8 K=32 KEEP=16 NPROBE=4 NLIST=8 MEM_TOKENS=1024 WORKERS=0
  TEMPS="[0.25,1.0,4.0,16.0,64.0,256.0]"
fi
DEC=$W/smollm2 TOK=$W/tokens
# the datastore (13.6 GB) and targets (9.1 GB) in memory where /dev/shm holds them (128 GB on the H200 machine): the
# disk's 64 GiB stays free and disk writes leave the stages' time; a warm machine keeps /dev/shm between calls
S=$W
if [ -z "${SMOL_TINY:-}" ] && [ "$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)" -gt 30000000000 ] 2>/dev/null; then
  S=/dev/shm/smollm2-memory; mkdir -p $S; fi
echo "datastore and targets under $S"

finish() {  # pack what should come back (no checkpoints, arrays or model weights) and stop
  pkill -P $$ 2>/dev/null; sleep 1
  local out=$(cd $OUT && pwd)
  (cd $W && tar czf $out/smollm2.tgz --exclude='*.ckpt' --exclude='*.npy' --exclude='*.safetensors' \
    --exclude='*.faiss' --exclude=tokens --exclude=.locks --exclude='*.lock' --exclude='*.gguf' \
    --exclude=./smollm2/tokenizer.json . 2>/dev/null)
  for f in times.csv results.csv trials.csv summary.md memory_scaling.png; do [ -e $W/$f ] && cp $W/$f $OUT/; done
  ls -la $OUT; exit "${1:-0}"
}
stage() {  # stage NAME CMD…: once (done/NAME); seconds to times.csv; out of time or failed: finish
  local name=$1; shift
  [ -e $W/done/$name ] && return 0
  [ $(left) -gt 15 ] || { echo "no time left for $name: call again"; finish; }
  echo "$name start $(date +%T), $(left) s left"
  local t0=$(date +%s%N) rc
  timeout -k 10 $(left) "$@" >> $W/logs/$name.log 2>&1; rc=$?
  local dt=$(( ($(date +%s%N) - t0) / 10000000 ))
  echo "$name,$(( dt / 100 )).$(printf %02d $(( dt % 100 ))),$rc,$(date -u +%FT%TZ)" >> $W/times.csv
  echo "$name end: exit $rc after $(( dt / 100 )) s"; grep -v "^\s*$" $W/logs/$name.log | tail -4 | cut -c1-300
  [ $rc -eq 0 ] && { touch $W/done/$name; return 0; }
  [ $(left) -le 0 ] && { echo "$name cut by the time limit: call again (it reruns)"; finish; }
  finish $rc
}

[ -e $W/times.csv ] || echo "stage,seconds,exit,utc" > $W/times.csv
[ -e $TOK ] || cp -r ${SMOL_TOKENS:-.carry/mixed-english-smollm2} $TOK
if [ ! -e $GGUF ]; then stage join bash scripts/gguf_parts.sh join $GGUF; fi
stage import $MLPMEM import-decoder --from $GGUF --out $DEC
# one study: every memory size a trial on the one base; the datastore and targets built once, the base and its
# kNN-LM evaluated once (stages.run), the trials' memories trained two at a time
SETS=(--set base=$DEC --set token_store=$TOK --set out=$W/sweep --set trainer=$TRAINER)
[ $S != $W ] && SETS+=(--set store_dir=$S)
[ -n "${SMOL_SIZES:-}" ] && SETS+=(--set "memory_sizes=[${SMOL_SIZES// /,}]")
[ -n "${SMOL_CORPUS:-}" ] && SETS+=(--set corpus=$SMOL_CORPUS)  # the dry run's small store
if [ -n "${SMOL_TINY:-}" ]; then
  SETS+=(--set seq_len=$SEQ --set batch_size=$BATCH --set eval_batch_size=$EVAL_BATCH --set num_workers=$WORKERS
         --set memory_tokens=$MEM_TOKENS --set "temperatures=$TEMPS" --set "datastore={batch_size: $DS_BATCH, precision: '32'}"
         --set "knn={index: ivfflat, k: $K, keep: $KEEP, nprobe: $NPROBE, nlist: $NLIST, backend: clustered}")
fi
stage sweep $MLPMEM sweep --config sweeps/smollm2-memory.yaml --workers ${SMOL_WORKERS:-2} "${SETS[@]}"
R=$W/sweep/smollm2-memory
cp $R/results.csv $R/trials.csv $W/ 2>/dev/null
# 300 resamples here (the committed summary.md: rerun with the default 1000 on results.csv)
rm -f $W/done/report
stage report $PY -m mlpmem_lightning.study.report.memory_summary --results $W/results.csv --times $W/times.csv \
  --trials $W/trials.csv --out $W --bootstrap ${SMOL_BOOTSTRAP:-300}
finish
