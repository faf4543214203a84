#!/bin/bash
export PATH=/tmp/relfit/bin:$PATH
export PYTHONPATH=/work/wt-rel-fit   # for the tests' CrashAt callback
E=/work/wt-rel-fit/experiments
F="fit --config $E/trainer/cpu.yaml --config $E/model/decoder_200k.yaml --data.token_store tok --data.seq_len 64 --data.batch_size 4 --trainer.enable_progress_bar false"
quiet() { grep -E "^mlpmem|^resuming|RuntimeError: simulated" ; }
step() { /work/main/.venv/bin/python -c "import torch,sys; print(sys.argv[1], 'global_step =', torch.load(sys.argv[1], weights_only=False)['global_step'])" "$1"; }
steps() { /work/main/.venv/bin/python -c "import csv,sys; print('train/loss rows at steps', [int(r['step']) for r in csv.DictReader(open(sys.argv[1])) if r.get('train/loss')])" "$1"; }
echo "## item 3: crash at step 8 (budget 10, checkpoints every 3), then the same command"
B="--trainer.max_steps 10 --trainer.val_check_interval 3 --trainer.log_every_n_steps 1 --trainer.default_root_dir runs/crash"
mlpmem $F $B --trainer.callbacks+=tests.lightning.test_decoder_lm.CrashAt --trainer.callbacks.step 8 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
step runs/crash/checkpoints/last.ckpt; steps runs/crash/metrics.csv
mlpmem $F $B 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
step runs/crash/checkpoints/last.ckpt; steps runs/crash/metrics.csv
echo "## item 4: a real full disk (10 MiB tmpfs; one checkpoint is 4.2 MB)"
mkdir -p full && mountpoint -q full || mount -t tmpfs -o size=10m tmpfs full  # needs root
B="--trainer.max_steps 9 --trainer.val_check_interval 3 --trainer.default_root_dir full/run"
mlpmem $F $B 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
ls full/run/checkpoints; step full/run/checkpoints/last.ckpt
mount -o remount,size=40m full && echo "(tmpfs grown to 40 MiB)"
mlpmem $F $B 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
step full/run/checkpoints/last.ckpt
echo "## item 11: two fits into one run directory"
mlpmem $F --trainer.max_steps 400 --trainer.default_root_dir runs/busy > busy.log 2>&1 &
first=$!
until grep -q . runs/busy/.lock 2>/dev/null; do sleep 1; done
echo "first fit: pid $first"
mlpmem $F --trainer.max_steps 400 --trainer.default_root_dir runs/busy 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
kill $first; wait $first 2>/dev/null
echo "## item 10/14: λ"
mlpmem datastore --decoder runs/dec --data tok --out ds 2>&1 | tail -1
mlpmem targets --datastore ds --out tg --k 16 --keep 16 2>&1 | tail -1
M="fit --config $E/trainer/cpu.yaml --model MemoryLM --model.decoder runs/dec --data.token_store tok --data.seq_len 64 --data.targets tg --trainer.default_root_dir runs/mem"
for extra in "--model.lambda_ 0.33" "--model.lambdas []"; do
  echo "\$ mlpmem \$M $extra"; mlpmem $M $extra 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
done
