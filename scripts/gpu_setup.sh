# Sourced by the scripts/gpu_*.sh scripts on an air-gapped GPU machine (see README, "Offline install"):
# installs the wheels of `make wheels` from .whl/ and puts the package on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run 'make wheels' on a machine with network and carry .whl/"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export MLPMEM="python3 -m mlpmem_lightning.cli"
OUT=${OUT:-runs/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
# pack_every SECONDS NAME TAR-ARGS...: `tar czf $OUT/NAME TAR-ARGS` now and then every SECONDS in the background, each
# pack written beside it and renamed over it, so a call killed at its limit still returns the last whole pack
# (what is under $OUT comes back even then). `pack_stop` ends the loop; the caller packs once more at its end.
# PACK_BEFORE, if set, runs before each pack (gpu_study.sh: a consistent copy of the live Optuna storage).
pack_once() { local name=$1; shift; [ -z "${PACK_BEFORE:-}" ] || eval "$PACK_BEFORE"; tar czf "$OUT/.$name.part" "$@" 2>/dev/null && mv -f "$OUT/.$name.part" "$OUT/$name"; }
pack_every() { local every=$1; shift; ( while sleep "$every"; do pack_once "$@"; done ) & PACK_PID=$!; }
pack_stop() { [ -z "${PACK_PID:-}" ] || kill "$PACK_PID" 2>/dev/null; wait "$PACK_PID" 2>/dev/null; rm -f "$OUT"/.*.part; }
