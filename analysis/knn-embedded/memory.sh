#!/usr/bin/env bash
# Decoder + MLP Memory on the embedded corpus, after run.sh: fit the matched memory on the kNN targets,
# then evaluate the λ grid on valid and test at the λ chosen on valid.
# Usage: analysis/knn-embedded/memory.sh OUTDIR [TRAINER]   (OUTDIR as given to run.sh)
set -euo pipefail
OUT=${1:?outdir}; TRAINER=${2:-cpu}
MLPMEM=${MLPMEM:-mlpmem}
RUN=${DECODER:-$OUT/decoder-200k}
t() { local name=$1; shift; local s=$(date +%s); "$@"; echo -e "$name\t$(( $(date +%s) - s ))" >> "$OUT/times.tsv"; }
MEM=(--config experiments/trainer/$TRAINER.yaml --config experiments/data/wiki-summaries.yaml
     --config experiments/model/memory_200k.yaml --model.decoder $RUN --data.targets $OUT/targets
     --data.seq_len 128 --data.batch_size 16 --trainer.default_root_dir $OUT/memory-200k
     --trainer.enable_progress_bar false)
t memory-fit $MLPMEM fit "${MEM[@]}" --model.max_tokens 1000000
CKPT=$OUT/memory-200k/checkpoints/best.ckpt
t memory-valid $MLPMEM validate "${MEM[@]}" --ckpt_path $CKPT
BEST=$(python3 -c "import csv; r=[x for x in csv.DictReader(open('$OUT/memory-200k/validate/metrics.csv')) if x.get('val/best_lambda')][-1]; print(r['val/best_lambda'])")
t memory-test $MLPMEM test "${MEM[@]}" --ckpt_path $CKPT --model.lambda_ "$BEST"
echo "memory: best lambda on valid: $BEST" | tee -a "$OUT/summary.txt"
