#!/bin/bash
# Issue #17's real run on one H200: SmolLM2-135M (frozen) over mixed-english tokenized with its own tokenizer, its
# datastore, the kNN-LM (T and λ on valid), targets at that T, memories of x0.25, x0.5, x1, x2 (then x0.125) the
# base's non-embedding parameters (λ on valid), the base alone; collect -> results.csv, the memory-size fit -> summary.md.
#   bash scripts/gpu_smollm2.sh SECONDS      # resumable: stages done (runs/smollm2-memory/done/) are skipped
# Call sequence (docs/gpu.md "SmolLM2 run"; each call <= 64 MiB, consecutive while the machine stays warm):
#   1. carry .whl (make wheels, with gguf), .carry/mixed-english-smollm2, the GGUF's .sha256; command `true`
#   2. carry .gpu/gguf/SmolLM2-135M-Instruct.Q4_1.gguf.part.00;                          command `true`
#   3. carry ….part.01; command `bash scripts/gpu_smollm2.sh 540`
#   4. no carry;         command `bash scripts/gpu_smollm2.sh 560` (again until summary.md comes back)
# CPU dry run (every stage, the packing and the report on a few thousand tokens; README of the results dir):
#   ACCEL=cpu SMOL_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf SMOL_TOKENS=<small store> SMOL_TINY=1 bash … 1200
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
# the settings (the header's arithmetic); SMOL_TINY=1: the CPU dry run's
if [ -n "${SMOL_TINY:-}" ]; then
  SEQ=64 BATCH=8 EVAL_BATCH=8 DS_BATCH=8 K=32 KEEP=16 NPROBE=4 NLIST=8 MEM_TOKENS=1024 WORKERS=0
  VAL="--trainer.val_check_interval 1.0 --trainer.limit_val_batches 1"
  TEMPS="[0.25,1.0,4.0,16.0,64.0,256.0]"; SEARCH="--model.index ivfflat --model.backend clustered --model.nlist $NLIST --model.nprobe $NPROBE"
else
  # evaluation batches of 128 x 512 = 65k queries (the sweeps' 256 x 256): each list's probe set is gathered once
  # per batch by the clustered search, so fewer, larger batches; logits 65k x 49152 fit the H200 easily
  SEQ=512 BATCH=64 EVAL_BATCH=128 DS_BATCH=64 K=1024 KEEP=128 NPROBE=16 NLIST=4096 MEM_TOKENS=11800000 WORKERS=4
  VAL="--trainer.val_check_interval 0.5 --trainer.limit_val_batches 0.25"
  # the default 1/8 … 1024: squared key distances on the dry run's datastore were 13 (nearest) to 30 (32nd)
  TEMPS="[0.125,0.25,0.5,1.0,2.0,4.0,8.0,16.0,32.0,64.0,128.0,256.0,512.0,1024.0]"
  SEARCH="--model.index ivfflat --model.backend clustered --model.nlist $NLIST --model.nprobe $NPROBE"
fi
SIZES=${SMOL_SIZES:-x0.25 x0.5 x1 x2 x0.125}  # x0.125 last: a fifth size (16x span) if time allows
DEC=$W/smollm2 TOK=$W/tokens
# the datastore (13.6 GB) and targets (9.1 GB) in memory where /dev/shm holds them: the H200 machine's disk wrote
# ~85 MB/s (analysis/results/scaling-h200/README.md), 270 s for these two; a warm machine keeps /dev/shm between calls
S=$W
if [ -z "${SMOL_TINY:-}" ] && [ "$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)" -gt 30000000000 ] 2>/dev/null; then
  S=/dev/shm/smollm2-memory; mkdir -p $S; fi
echo "datastore and targets under $S"
COMMON="--data.token_store $TOK --data.seq_len $SEQ --data.batch_size $BATCH --data.eval_batch_size $EVAL_BATCH
  --data.num_workers $WORKERS --trainer.enable_progress_bar false --seed_everything 0"
EVAL="--config experiments/trainer/$TRAINER.yaml $COMMON"

finish() {  # pack what should come back (no checkpoints, arrays or model weights) and stop
  pkill -P $$ 2>/dev/null; sleep 1
  local out=$(cd $OUT && pwd)
  (cd $W && tar czf $out/smollm2.tgz --exclude='*.ckpt' --exclude='*.npy' --exclude='*.safetensors' \
    --exclude='*.faiss' --exclude=tokens --exclude=.locks --exclude='*.lock' --exclude='*.gguf' \
    --exclude=./smollm2/tokenizer.json . 2>/dev/null)
  for f in times.csv results.csv summary.md memory_scaling.png; do [ -e $W/$f ] && cp $W/$f $OUT/; done
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
metric() { $PY -c "import pandas as pd, sys; d = pd.read_csv(sys.argv[1]); print(d[sys.argv[2]].dropna().iloc[-1])" "$@"; }

[ -e $W/times.csv ] || echo "stage,seconds,exit,utc" > $W/times.csv
[ -e $TOK ] || cp -r ${SMOL_TOKENS:-.carry/mixed-english-smollm2} $TOK
if [ ! -e $GGUF ]; then stage join bash scripts/gguf_parts.sh join $GGUF; fi
stage import $MLPMEM import-decoder --from $GGUF --out $DEC
stage base_validate $MLPMEM validate $EVAL --model DecoderLM --model.init_from $DEC --trainer.default_root_dir $W/base
stage base_test $MLPMEM test $EVAL --model DecoderLM --model.init_from $DEC --trainer.default_root_dir $W/base
stage datastore $MLPMEM datastore --decoder $DEC --data $TOK --out $S/datastore --seq-len $SEQ --batch-size $DS_BATCH \
  --precision $([ $TRAINER = gpu ] && echo bf16 || echo 32)
KNN="--model KNNLM --model.decoder $DEC --model.datastore $S/datastore --model.k $K $SEARCH"
stage knnlm_validate $MLPMEM validate $EVAL $KNN --model.temperatures "$TEMPS" --trainer.default_root_dir $W/knnlm
# T and λ of the kNN-LM on valid (grid points: val/* are logged in float32); the targets use the same T
T=$($PY -c "import sys; g = eval(sys.argv[2]); t = float(sys.argv[1]); print(min(g, key=lambda x: abs(x - t)))" \
  "$(metric $W/knnlm/validate/metrics.csv val/temperature)" "$TEMPS")
LAM=$($PY -c "import sys; print(round(float(sys.argv[1]), 2))" "$(metric $W/knnlm/validate/metrics.csv val/best_lambda)")
echo "kNN-LM on valid: T=$T λ=$LAM"
case "$TEMPS" in "[$T,"*|*",$T]") echo "WARNING: T=$T is at an end of the grid $TEMPS: widen it (knnlm_validate)";; esac
stage knnlm_test $MLPMEM test $EVAL $KNN --model.temperatures "[$T]" --model.lambda_ $LAM --trainer.default_root_dir $W/knnlm
stage targets $MLPMEM targets --datastore $S/datastore --out $S/targets --index ivfflat --backend clustered --k $K --keep $KEEP \
  --temperature $T --nprobe $NPROBE --nlist $NLIST
memory() {  # memory SIZE: fit, validate (λ), test at λ
  local size=$1 run=$W/memory-$1 lam
  # offline keys (the datastore's, no base forward per step), eager: at these widths the step is GEMM-bound
  local mem="--model MemoryLM --model.decoder $DEC --model.size $size --model.mode offline --model.dropout 0.1
    --model.init_head_from_decoder false --data.targets $S/targets"
  stage fit_$size $MLPMEM fit --config experiments/trainer/$TRAINER.yaml $COMMON $mem --model.max_tokens $MEM_TOKENS \
    $VAL --trainer.default_root_dir $run
  stage validate_$size $MLPMEM validate $EVAL $mem --ckpt_path $run/checkpoints/best.ckpt --trainer.default_root_dir $run
  lam=$($PY -c "import sys; print(round(float(sys.argv[1]), 2))" "$(metric $run/validate/metrics.csv val/best_lambda)")
  stage test_$size $MLPMEM test $EVAL $mem --ckpt_path $run/checkpoints/best.ckpt --model.lambda_ $lam \
    --trainer.default_root_dir $run
}
summarize() {  # collect the runs that finished and write summary.md (cheap: redone each time)
  local runs="$W/base $W/knnlm" size
  for size in $SIZES; do [ -e $W/done/test_$size ] && runs="$runs $W/memory-$size"; done
  rm -f $W/done/collect $W/done/report
  stage collect $MLPMEM collect $runs --out $W/results.csv --study smollm2-memory
  # 300 resamples here (the committed summary.md: rerun with the default 1000 on results.csv and times.csv)
  stage report $PY -m mlpmem_lightning.study.report.memory_summary --results $W/results.csv --times $W/times.csv \
    --out $W --bootstrap ${SMOL_BOOTSTRAP:-300}
}
set -- $SIZES
for size in "${@:1:4}"; do memory $size; done
summarize  # the four sizes of the issue first: a summary even if the fifth does not fit this call
for size in "${@:5}"; do memory $size; done
[ $# -gt 4 ] && summarize
finish
