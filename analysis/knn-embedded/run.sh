#!/usr/bin/env bash
# kNN-LM on the embedded corpus (wiki-summaries): decoder -> datastore -> targets -> KNNLM validate/test.
# Usage: [DECODER=RUN_DIR] analysis/knn-embedded/run.sh OUTDIR INDEX [TRAINER]   e.g.  run.sh runs/knn-cpu ivfflat cpu
# Every step reuses a finished artifact, so re-running continues where it stopped. Timings go to OUTDIR/times.tsv.
set -euo pipefail
OUT=${1:?outdir}; INDEX=${2:-flat}; TRAINER=${3:-cpu}
MLPMEM=${MLPMEM:-mlpmem}
TOK=runs/tokens/wiki-summaries
RUN=${DECODER:-$OUT/decoder-200k}  # DECODER=dir reuses a trained decoder and skips the fit
mkdir -p "$OUT"
t() { local name=$1; shift; local s=$(date +%s); "$@"; echo -e "$name\t$(( $(date +%s) - s ))" >> "$OUT/times.tsv"; }

t prepare  $MLPMEM prepare --corpus wiki-summaries --out $TOK
[ -n "${DECODER:-}" ] || t fit $MLPMEM fit --config experiments/trainer/$TRAINER.yaml --config experiments/data/wiki-summaries.yaml \
             --config experiments/model/decoder_200k.yaml --data.seq_len 128 --data.batch_size 16 \
             --model.max_tokens 1000000 --trainer.default_root_dir $RUN --trainer.enable_progress_bar false
t datastore $MLPMEM datastore --decoder $RUN --data $TOK --out $OUT/datastore --index $INDEX
t targets  $MLPMEM targets --datastore $OUT/datastore --out $OUT/targets --index $INDEX --k 1024 --temperature 16
KNN=(--model KNNLM --model.decoder $RUN --model.datastore $OUT/datastore --model.index $INDEX --model.k 1024
     --config experiments/data/wiki-summaries.yaml --data.seq_len 128 --data.batch_size 16
     --trainer.accelerator auto --trainer.default_root_dir $OUT/knnlm --trainer.enable_progress_bar false)
t knn-valid $MLPMEM validate "${KNN[@]}"
BEST=$(python3 -c "import csv,sys; r=[x for x in csv.DictReader(open('$OUT/knnlm/validate/metrics.csv')) if x.get('val/best_lambda')][-1]; print(r['val/best_lambda'])")
t knn-test $MLPMEM test "${KNN[@]}" --model.lambda_ "$BEST"
echo "best lambda on valid: $BEST" | tee "$OUT/summary.txt"
