#!/bin/bash
# Issue #18 on 2 GPUs of one host (nvidia-h200-x2), one device call, results in $OUT (multi.json, loss_curves.csv,
# multi.log), to be copied to analysis/multi-gpu-h200x2/:
#   1. datastore and targets started by torchrun (the environment-based launcher) on 2 GPUs against 1 GPU: cmp;
#   2. DDP fit of the study's largest decoder (n13m) on 2 GPUs against 1 GPU with seeds 0 and 1 (the seed noise),
#      the same global batch (64 x 256), and the tokens/s of each;
#   3. `mlpmem sweep --workers 2` on the demo-sized study: one worker per GPU (study/workers.py), one shared storage.
# GPU:  bash scripts/gpu_multi.sh   (carry .whl and .carry/mixed-english: 12M training tokens, so a 12M-row datastore)
# CPU dry run, gloo instead of NCCL, small sizes, with the venv on PATH: PATH=.venv/bin:$PATH ACCEL=cpu bash scripts/gpu_multi.sh
set -u
if [ "${ACCEL:-gpu}" = gpu ]; then
  source scripts/gpu_setup.sh; TRAINER=gpu; DEV=gpu
  SIZE=${SIZE:-n13m}; TOKENS=${TOKENS:-16000000}; STORE=${STORE:-.carry/mixed-english}; SEARCH="--k 1024 --keep 128"
else
  export MLPMEM="python3 -m mlpmem_lightning.cli" OUT=${OUT:-runs/multi-out}; mkdir -p "$OUT"; TRAINER=cpu; DEV=cpu
  SIZE=${SIZE:-n0.1m}; TOKENS=${TOKENS:-131072}; STORE=${STORE:-.carry/demo-tokens}; SEARCH="--k 128 --keep 64 --nprobe 4"
fi
N=2; BATCH=64; SEQ=256; w=${WORK:-runs/multi}; mkdir -p "$w"
[ -d "$w/tokens" ] || cp -r "$STORE" "$w/tokens"
TORCHRUN="python3 -m torch.distributed.run --standalone --nproc_per_node $N -m mlpmem_lightning"
log() { echo "$*" | tee -a "$OUT/multi.log"; }
timed() {  # timed NAME COMMAND...: run, log exit code and seconds
  local name=$1 t0=$SECONDS; shift
  "$@" > "$OUT/$name.log" 2>&1; log "$name: exit $? in $((SECONDS - t0)) s"
}

# 2. fits: 1 device with seeds 0 and 1, then DDP on N with seed 0 (compiled, no step graph: it trains on one process)
fit() {  # fit DIR DEVICES SEED [STRATEGY]
  $MLPMEM fit --config experiments/trainer/$TRAINER.yaml --config experiments/model/decoder_$SIZE.yaml \
    --data.token_store "$w/tokens" --data.seq_len $SEQ --data.batch_size $((BATCH / $2)) --data.num_workers 2 \
    --model.max_tokens "$TOKENS" --model.compile $([ $DEV = gpu ] && echo true || echo false) \
    --trainer.devices "$2" --trainer.strategy "${4:-auto}" --seed_everything "$3" --trainer.log_every_n_steps 10 \
    --trainer.default_root_dir "$1" --trainer.enable_progress_bar false
}
timed fit-1gpu-seed0 fit "$w/fit1" 1 0
timed fit-1gpu-seed1 fit "$w/fit1s1" 1 1
timed fit-${N}gpu-seed0 fit "$w/fitN" $N 0 ddp

# 1. datastore and targets: one process, then torchrun with N (ranks from the environment), byte for byte
timed datastore-1 $MLPMEM datastore --decoder "$w/fit1" --data "$w/tokens" --out "$w/ds1" --batch-size 128
timed datastore-$N $TORCHRUN datastore --decoder "$w/fit1" --data "$w/tokens" --out "$w/dsN" --batch-size 128
timed targets-1 $MLPMEM targets --datastore "$w/ds1" --out "$w/tg1" --index ivfflat --backend clustered $SEARCH
timed targets-$N $TORCHRUN targets --datastore "$w/ds1" --out "$w/tgN" --index ivfflat --backend clustered $SEARCH
for f in ds1/keys.npy:dsN/keys.npy ds1/values.npy:dsN/values.npy tg1/ids.npy:tgN/ids.npy tg1/probs.npy:tgN/probs.npy; do
  a=$w/${f%%:*}; b=$w/${f##*:}
  cmp -s "$a" "$b" && log "identical: $a $b ($(stat -c %s "$a") bytes)" || log "DIFFERENT: $a $b"
done

# 3. the demo-sized study with two workers, one per GPU, sharing one storage
sw=$w/sweep; rm -rf "$sw"; mkdir -p "$sw"; cp -r .carry/demo-tokens "$sw/tokens"
timed sweep-2workers $MLPMEM sweep --config sweeps/demo.yaml --workers $N --out "$sw" --set trainer=$TRAINER
grep -h "CUDA_VISIBLE_DEVICES" "$sw"/demo/workers/worker*.log 2>/dev/null | sort | uniq -c >> "$OUT/multi.log"

python3 - "$w" "$OUT" "$TOKENS" <<'PY'
import json, sys
from pathlib import Path

import optuna
import pandas as pd

w, out = Path(sys.argv[1]), Path(sys.argv[2])
def metrics(run):
    return pd.read_csv(next(run.rglob("metrics.csv")))
def curve(m, col):
    return m.dropna(subset=[col]).groupby("step")[col].last()
runs = {"one_seed0": w / "fit1", "one_seed1": w / "fit1s1", "ddp_seed0": w / "fitN"}
m = {k: metrics(v) for k, v in runs.items()}
val = {k: curve(x, "val/loss") for k, x in m.items()}
common = val["one_seed0"].index.intersection(val["ddp_seed0"].index).intersection(val["one_seed1"].index)
ddp_gap = (val["ddp_seed0"][common] - val["one_seed0"][common]).abs()
seed_gap = (val["one_seed1"][common] - val["one_seed0"][common]).abs()
tps = {k: float(curve(x, "train/tokens_per_sec").median()) for k, x in m.items() if "train/tokens_per_sec" in x}
res = {"val_checks_compared": len(common), "final_val_loss": {k: float(v.iloc[-1]) for k, v in val.items()},
       "ddp_vs_one_max_abs": float(ddp_gap.max()), "seed1_vs_seed0_max_abs": float(seed_gap.max()),
       "ddp_within_seed_noise": bool(ddp_gap.max() <= seed_gap.max()),
       "tokens_per_s_median": tps, "speedup_2_over_1": tps.get("ddp_seed0", 0) / tps["one_seed0"] if tps else None}
# the sweep: every trial of its storage complete, no two trials of one study with the same parameters
storages = list((w / "sweep").rglob("*.db"))
trials = []
for db in storages:
    url = f"sqlite:///{db}"
    for s in optuna.get_all_study_summaries(url):
        for t in optuna.load_study(study_name=s.study_name, storage=url).trials:
            trials.append((s.study_name, t.state.name, json.dumps(t.params, sort_keys=True)))
res["sweep"] = {"storages": [str(p) for p in storages], "trials": len(trials),
                "states": pd.Series([t[1] for t in trials]).value_counts().to_dict(),
                "duplicate_params": len(trials) - len({(t[0], t[2]) for t in trials})}
results = next((w / "sweep").rglob("results.csv"), None)
res["sweep"]["results_rows"] = len(pd.read_csv(results)) if results else 0
print(json.dumps(res, indent=1))
(out / "multi.json").write_text(json.dumps(res, indent=1))
pd.concat({k: v for k, v in val.items()}, axis=1).to_csv(out / "loss_curves.csv")
PY
