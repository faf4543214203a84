#!/bin/bash
# Multi-GPU check (issue #6): DDP fit against one GPU, and the datastore and targets split across GPUs
# against one GPU. Run on a 2-GPU machine:  bash scripts/gpu_multi.sh [SIZE] [TOKENS] [N_GPUS]
# CPU dry run: ACCEL=cpu bash scripts/gpu_multi.sh 200k 200000 2 (gloo instead of NCCL).
set -u
if [ "${ACCEL:-gpu}" = gpu ]; then source scripts/gpu_setup.sh; TRAINER=gpu; else
  export MLPMEM="python -m mlpmem_lightning.cli" OUT=${OUT:-runs/multi-out}; mkdir -p "$OUT"; TRAINER=cpu; fi
size=${1:-6m}; tokens=${2:-8000000}; n=${3:-2}; batch=64; w=runs/multi
store=$w/tokens; mkdir -p $w; [ -d $store ] || cp -r .carry/wiki-summaries $store
fit() {  # fit DIR DEVICES: the same global batch (64 windows) split over DEVICES
  local t0=$(date +%s)
  $MLPMEM fit --config experiments/trainer/$TRAINER.yaml --config experiments/model/decoder_$size.yaml \
    --data.token_store $store --data.seq_len 256 --data.batch_size $((batch / $2)) --data.num_workers 2 \
    --model.max_tokens $tokens --trainer.devices $2 --trainer.strategy ${3:-auto} \
    --trainer.default_root_dir $1 --trainer.enable_progress_bar false > $OUT/fit-$2.log 2>&1
  echo "fit on $2 device(s): exit $? in $(( $(date +%s) - t0 )) s"
}
fit $w/fit1 1
fit $w/fitN $n ddp
for d in 1 $n; do
  t0=$(date +%s)
  $MLPMEM datastore --decoder $w/fit1 --data $store --out $w/ds$d --devices $d --batch-size 64 > $OUT/ds-$d.log 2>&1
  echo "datastore on $d device(s): exit $? in $(( $(date +%s) - t0 )) s"
done
for d in 1 $n; do
  t0=$(date +%s)
  $MLPMEM targets --datastore $w/ds1 --out $w/tg$d --index ivfflat --backend clustered --keep 128 --devices $d \
    > $OUT/tg-$d.log 2>&1
  echo "targets on $d device(s): exit $? in $(( $(date +%s) - t0 )) s"
done
for f in ds1/keys.npy:dsN/keys.npy ds1/values.npy:dsN/values.npy tg1/ids.npy:tgN/ids.npy tg1/probs.npy:tgN/probs.npy; do
  a=$w/${f%%:*}; b=$w/${f##*:}; b=${b/N/$n}
  cmp -s $a $b && echo "identical: $a $b" || echo "DIFFERENT: $a $b"
done
python3 - "$w" "$OUT" <<'PY'
import json, sys, pandas as pd
from pathlib import Path
w, out = Path(sys.argv[1]), Path(sys.argv[2])
def curve(run):
    m = pd.read_csv(next(run.rglob("metrics.csv")))
    return m.dropna(subset=["train/loss"]).set_index("step")["train/loss"], m["val/loss"].dropna()
(t1, v1), (tn, vn) = curve(w / "fit1"), curve(w / "fitN")
steps = t1.index.intersection(tn.index)
diff = (t1[steps] - tn[steps]).abs()
res = {"steps_compared": len(steps), "train_loss_max_abs_diff": float(diff.max()),
       "train_loss_mean_abs_diff": float(diff.mean()), "final_train_loss": [float(t1.iloc[-1]), float(tn.iloc[-1])],
       "val_loss": [list(map(float, v1)), list(map(float, vn))]}
print(json.dumps(res, indent=1))
(out / "multi.json").write_text(json.dumps(res, indent=1))
pd.concat({"one": t1, "ddp": tn}, axis=1).to_csv(out / "loss_curves.csv")
PY
