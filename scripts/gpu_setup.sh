# Sourced by the scripts/gpu_*.sh scripts on an air-gapped GPU machine (see README, "Offline install"):
# installs the wheels of `make wheels` from .whl/ and puts the package on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run 'make wheels' on a machine with network and carry .whl/"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export MLPMEM="python3 -m mlpmem_lightning.cli"
OUT=${OUT:-runs/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
source scripts/pack.sh  # pack_every / pack_once / pack_stop: $OUT packs that survive a call's kill
