#!/usr/bin/env bash
# Split a large file into parts of PART_SIZE (default 48M: 48 MiB) to carry them to the GPU machine one per call,
# or join them there and check the sha256 recorded at split time. docs/gpu.md, "Moving a large model file".
#   scripts/gguf_parts.sh split FILE [DIR]    -> DIR/NAME.part.00, .01, …, DIR/NAME.sha256 (DIR: .gpu/gguf)
#   scripts/gguf_parts.sh join DIR/NAME       -> DIR/NAME, sha256-checked
set -euo pipefail
mode=${1:?split or join}; target=${2:?file}
case "$mode" in
  split)
    dir=${3:-.gpu/gguf}; name=$(basename "$target"); mkdir -p "$dir"
    split -b ${PART_SIZE:-48M} -d "$target" "$dir/$name.part."
    (cd "$(dirname "$target")" && sha256sum "$name") > "$dir/$name.sha256"
    ls -l "$dir/$name".* ;;
  join)
    dir=$(dirname "$target"); name=$(basename "$target")
    cat "$dir/$name".part.* > "$target.tmp"
    if (cd "$dir" && mv "$name.tmp" "$name" && sha256sum -c "$name.sha256"); then echo "joined $target"
    else rm -f "$target"; echo "sha256 mismatch: carry the parts again" >&2; exit 1; fi ;;
  *) echo "usage: $0 split FILE [DIR] | join DIR/NAME" >&2; exit 2 ;;
esac
