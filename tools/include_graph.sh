#!/usr/bin/env bash
# The include graph between the top-level folders, and the layer check.
#
#   tools/include_graph.sh               one line per folder -> folder edge with its
#                                        count of #include lines:  "model -> runtime  12"
#   tools/include_graph.sh --check       exit 1 listing every #include that goes UP the
#                                        layer order below (a lower folder including a higher one)
#   tools/include_graph.sh --check-cuda  exit 1 listing every #if*NQ_CUDA outside kernels/,
#                                        runtime/, cuda_emu/ and tests/
#
# Run from anywhere; it reads the C++/CUDA sources of the repository (*.h *.cpp *.cu *.cuh,
# build/ left out). An include "dir/file.h" belongs to folder dir; one without a folder
# ("temp_dir.h") to the including file's own folder. Subfolders count as their top
# folder (kernels/cpu, kernels/cuda -> kernels).
set -euo pipefail
cd "$(dirname "$0")/.."

# Layer order, low to high: a folder may include its own layer and the ones below.
# formats/ (the files on disk: safetensors, GGUF, bitsandbytes 4-bit, PEFT adapters)
# sits above lora/ because a format serializes the objects of the layers below it
# (Tensor, Nf4Tensor, LoraConfig) and nothing below model/ reads files; cuda_emu/ (the
# emulated GPU, only in the EMU=1 build) sits beside runtime/.
LAYERS="runtime:0 cuda_emu:0 quant:1 kernels:2 autograd:3 lora:4 formats:5 model:6 optim:7 training:8 tools:9 tests:10"
# Folders where #if*NQ_CUDA may appear (the device boundary; tests' skip macro).
CUDA_DIRS="kernels runtime cuda_emu tests"

mode="${1:-graph}"
case "$mode" in
  graph | --check | --check-cuda) ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "include_graph.sh: unknown option '$mode' (--check, --check-cuda, --help)" >&2; exit 2 ;;
esac

# The project's own sources: git's tracked and untracked-but-not-ignored files (so a
# venv or build folder never counts), or every file outside build/ without git.
sources() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard -- '*.h' '*.cpp' '*.cu' '*.cuh'
  else
    find . -path ./build -prune -o -path ./.git -prune -o -type f \
      \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print | sed 's|^\./||'
  fi | LC_ALL=C sort
}

# One line per #include "..." : "<from folder> <to folder> <file>:<line> <included path>"
includes() {
  sources | while read -r f; do
    grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^"]+"' "$f" /dev/null || true
  done | sed -E 's/^([^:]+):([0-9]+):.*"([^"]+)".*/\1 \2 \3/' | awk '{
    from = $1; sub(/\/.*/, "", from)
    to = $3; if (index(to, "/") == 0) to = from; else sub(/\/.*/, "", to)
    print from, to, $1 ":" $2, $3
  }'
}

case "$mode" in
  graph)
    includes | awk '$1 != $2 { n[$1 " -> " $2]++ } END { for (e in n) printf "%-24s %d\n", e, n[e] }' | LC_ALL=C sort
    ;;
  --check)
    bad=$(includes | awk -v layers="$LAYERS" '
      BEGIN { n = split(layers, l, " "); for (i = 1; i <= n; i++) { split(l[i], p, ":"); rank[p[1]] = p[2] } }
      $1 == $2 { next }
      !($1 in rank) || !($2 in rank) { print $3 ": " $1 " -> " $2 " (#include \"" $4 "\"): folder not in the layer order"; next }
      rank[$2] > rank[$1] { print $3 ": " $1 " -> " $2 " (#include \"" $4 "\") goes up the layer order" }')
    if [ -n "$bad" ]; then
      echo "$bad"
      echo "include_graph.sh --check: $(echo "$bad" | wc -l) include(s) against the layer order ($(echo "$LAYERS" | sed -E "s/:[0-9]+//g"))" >&2
      exit 1
    fi
    echo "✓ layers: no folder includes one above it"
    ;;
  --check-cuda)
    allowed=$(echo "$CUDA_DIRS" | sed 's/ /|/g')
    bad=$(sources | grep -vE "^($allowed)/" | while read -r f; do
      grep -nE '^[[:space:]]*#[[:space:]]*(if|ifdef|ifndef|elif)\b.*NQ_CUDA' "$f" /dev/null || true
    done)
    if [ -n "$bad" ]; then
      echo "$bad"
      echo "include_graph.sh --check-cuda: $(echo "$bad" | wc -l) #if*NQ_CUDA line(s) outside $CUDA_DIRS" >&2
      exit 1
    fi
    echo "✓ NQ_CUDA: #if*NQ_CUDA only in $CUDA_DIRS"
    ;;
esac
