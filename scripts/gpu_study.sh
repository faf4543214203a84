#!/bin/bash
# The scaling study of issue #15 (sweeps/scaling-h200.yaml) on one H200, resumable across calls and leases:
#   bash scripts/gpu_study.sh SECONDS            # the sweep, WORKERS (default 3) processes sharing the GPU
#   LR_SEARCH=1 bash scripts/gpu_study.sh SECONDS  # first the LR search again (7 processes), then the sweep
#   SPEC=sweeps/scaling-h200-fixed.yaml bash …     # another study spec named as its file (study: <name>, out
#                                                  # runs/sweeps/<name>); it resumes from .carry/state-<name>/ and
#                                                  # analysis/results/<name>/partial/, never from another study's storage
# Carry .whl (make wheels) and .carry/mixed-english (`mlpmem prepare --corpus mixed-english --vocab-size 16384
# --out .carry/mixed-english`, where the registries are reachable; not all of .carry, which with the SmolLM2 store
# is over the 64 MiB a call carries); a warm machine keeps runs/ between calls,
# a fresh one resumes the Optuna storage from .carry/state/ (what an earlier call's study.tgz held). Stops every
# process after SECONDS (the unfinished trials are failed and re-queued on resume) and packs the tables, storages,
# logs and convergence summaries (no checkpoints, datastores or targets) into $OUT/study.tgz, every 60 s and at the end.
# After each call: scripts/study_state.sh /work/.device/N/study.tgz (the next call may find a fresh machine).
set -u
source scripts/gpu_setup.sh
END=$(( $(date +%s) + ${1:-540} ))
WORKERS=${WORKERS:-3}
left() { echo $(( END - $(date +%s) )); }
SPEC=${SPEC:-sweeps/scaling-h200.yaml}
NAME=$(basename "$SPEC" .yaml)  # the spec's study name and out (runs/sweeps/<name>)
STATE=.carry/state; [ "$NAME" = scaling-h200 ] || STATE=.carry/state-$NAME
O=runs/sweeps/$NAME
mkdir -p $O/scaling-h200-lr
[ -e $O/tokens ] || cp -r .carry/mixed-english $O/tokens
for db in $STATE/optuna.db analysis/results/$NAME/partial/optuna.db; do [ -e $O/optuna.db ] || [ ! -e $db ] || cp $db $O/; done
if [ -n "${LR_SEARCH:-}" ] && [ ! -e $O/lr.done ]; then
  echo "lr-search start $(date +%T)"
  timeout $(left) $MLPMEM lr-search --config sweeps/scaling-h200-lr.yaml --workers 7 >> $O/lr-search.log 2>&1 && touch $O/lr.done
  echo "lr-search end $(date +%T)"; grep -v "^\[I" $O/lr-search.log | tail -10 | cut -c1-300
fi
# the stores in memory where /dev/shm can hold them (128 GB on the H200 machine): on the disk a targets search loop
# took 300 s, stalling 10-25 s at a time on the memory map's write-back; on /dev/shm 57-71 s; else on the disk under $O
STORES=()
if [ "$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)" -gt 55000000000 ] 2>/dev/null; then
  STORES=(--set store_dir=/dev/shm/mlpmem-stores --set stores_at_once=$WORKERS); fi
# one slot per worker there (4 of the largest stores are 68 GB of the 128): a trial that waits for a slot rarely
# finishes within a call, and each call may start on a fresh machine, where only finished trials carry over
# (the machine goes back 30 s after a call). For the same reason 3 workers, not 4: with 4 workers, 2026-12-02,
# a trial of the smallest rungs took 330-410 s, and a trial that does not finish within its call is lost.
df -h /dev/shm . | tail -2; echo "stores: ${STORES[*]:-on the disk}"
PACK=(--exclude='*.ckpt' --exclude=checkpoints --exclude="$O/tokens" --exclude="$O/datastores" --exclude="$O/targets"
  --exclude=.locks $O)
# the live storage may be mid-write while tar reads it: each periodic pack also holds optuna-snapshot.db, a copy
# by sqlite's backup API; the final pack, after every process has stopped, marks itself with packed-at-end
PACK_BEFORE="[ ! -e $O/optuna.db ] || python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))' \
  $O/optuna.db $O/optuna-snapshot.db 2>/dev/null"; rm -f $O/packed-at-end
pack_every 60 study.tgz "${PACK[@]}"  # a call killed at its limit still returns the last minute's tables and storage
if [ $(left) -gt 40 ]; then
  echo "sweep start $(date +%T)"
  timeout $(left) $MLPMEM sweep --config $SPEC --workers $WORKERS ${STORES[@]+"${STORES[@]}"} >> $O/sweep.log 2>&1
  echo "sweep end $(date +%T)"; tail -5 $O/sweep.log | cut -c1-300
fi
pkill -f mlpmem_lightning.cli; sleep 2
df -h . /dev/shm | tail -2; du -sh $O/datastores $O/targets /dev/shm/mlpmem-stores/* 2>/dev/null
grep -h "^trial" $O/$NAME/workers/*.log 2>/dev/null | cut -c1-400 | tail -20
pack_stop; touch $O/packed-at-end; pack_once study.tgz "${PACK[@]}"
ls -la $OUT
