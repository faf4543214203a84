#!/bin/bash
# Reproductions of issue #13's fit items (run from /tmp/relfit, `mlpmem` = the rel-fit worktree's CLI)
export PATH=/tmp/relfit/bin:$PATH
E=/work/wt-rel-fit/experiments
F="fit --config $E/trainer/cpu.yaml --config $E/model/decoder_200k.yaml --data.token_store tok --data.seq_len 64 --data.batch_size 4 --trainer.enable_progress_bar false"
quiet() { grep -E "^mlpmem|^resuming|Error|simulated" ; }
step() { /work/main/.venv/bin/python -c "import torch,sys; print(sys.argv[1], 'global_step =', torch.load(sys.argv[1], weights_only=False)['global_step'])" "$1"; }
echo "## item 8: budget 13 steps, validation every 4"
echo '$ mlpmem $F --model.max_tokens 3328 --trainer.val_check_interval 4 --trainer.default_root_dir runs/dec'
mlpmem $F --model.max_tokens 3328 --trainer.val_check_interval 4 --trainer.default_root_dir runs/dec 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
step runs/dec/checkpoints/last.ckpt; step runs/dec/checkpoints/best.ckpt
md5sum runs/dec/config.yaml runs/dec/hparams.yaml runs/dec/metrics.csv runs/dec/checkpoints/*.ckpt > before.md5
echo '$ (the same command again)'
mlpmem $F --model.max_tokens 3328 --trainer.val_check_interval 4 --trainer.default_root_dir runs/dec 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
md5sum -c --quiet before.md5 && echo "config.yaml, hparams.yaml, metrics.csv, best.ckpt, last.ckpt: unchanged"
echo "## item 2: other settings into the finished run"
for extra in "--model.lr 1e-4" "--data.batch_size 8" "--model.size 800k" "--seed_everything 1"; do
  echo "\$ mlpmem \$F --model.max_tokens 3328 --trainer.default_root_dir runs/dec $extra"
  mlpmem $F --model.max_tokens 3328 --trainer.val_check_interval 4 --trainer.default_root_dir runs/dec $extra 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
done
md5sum -c --quiet before.md5 && echo "config.yaml, hparams.yaml, metrics.csv, best.ckpt, last.ckpt: unchanged"
echo '$ (same settings, only neutral keys changed: --trainer.log_every_n_steps 1 --data.num_workers 1)'
mlpmem $F --model.max_tokens 3328 --trainer.val_check_interval 4 --trainer.default_root_dir runs/dec --trainer.log_every_n_steps 1 --data.num_workers 1 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
echo "## item 2: --trainer.max_steps wins over --model.max_tokens"
mlpmem $F --model.max_tokens 1000000000 --trainer.max_steps 5 --trainer.default_root_dir runs/steps 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
step runs/steps/checkpoints/last.ckpt
echo "## item 2: fast_dev_run"
mlpmem $F --trainer.fast_dev_run true --trainer.default_root_dir runs/fdr 2>&1 | quiet; echo "exit ${PIPESTATUS[0]}"
echo "files left in runs/fdr: $(find runs/fdr -type f 2>/dev/null | wc -l)"
