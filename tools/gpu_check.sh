#!/usr/bin/env bash
# tools/gpu_check.sh: the whole GPU check in one go, for a lent machine (H200).
#   1. detect the GPU (nvidia-smi) and its compute capability
#   2. check the Debian build dependencies (installs carried .deb files from ./.debs if any)
#   3. make -j16 for that architecture only (CUDA_ARCH=<cc>)
#   4. build/cuda/test_all (every CUDA kernel against the CPU kernels)
#   5. ./bench all at Qwen3-0.6B and Qwen3-8B shapes (CSV)
#   6. tools/ref/bench_attention.py (PyTorch SDPA flash) beside ./bench attention, if torch imports
#   7. a short summary table, printed last
# Every step runs under `timeout`; the limits add up to 350 s, under 6 minutes.
# Full logs go to $OUT when it is set (the device tool copies it back), else build/gpu_check/.
# Usage (repository root):  tools/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-build/gpu_check}
mkdir -p "$LOG"
SUMMARY=()
FAILED=0

# step NAME SECONDS CMD...: runs CMD with a time limit, output to $LOG/NAME.log and the terminal.
step() {
  local name=$1 limit=$2 rc t0 t1
  shift 2
  echo "==== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s)
  local verdict=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then verdict="TIMEOUT"; FAILED=1
  elif [ "$rc" != 0 ]; then verdict="FAIL (exit $rc)"; FAILED=1; fi
  SUMMARY+=("$(printf '%-16s %-16s %4ss' "$name" "$verdict" $((t1 - t0)))")
  return "$rc"
}

# 1. GPU
if ! nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader > "$LOG/gpu.txt" 2>&1; then
  echo "error: nvidia-smi found no GPU"; cat "$LOG/gpu.txt"; exit 1
fi
GPU=$(head -1 "$LOG/gpu.txt")
CC=$(head -1 "$LOG/gpu.txt" | cut -d, -f2 | tr -d ' .')
echo "GPU: $GPU  (building for sm_$CC)"

# 2. build dependencies (no network on the lent machine: carried .debs only)
if ls .debs/*.deb > /dev/null 2>&1; then dpkg -i .debs/*.deb > "$LOG/debs.log" 2>&1 || echo "warning: dpkg -i .debs failed (see debs.log)"; fi
missing=""
for h in cblas.h doctest/doctest.h nlohmann/json.hpp utf8proc.h pcre2.h; do
  found=$(find /usr/include /usr/local/include -path "*$h" 2>/dev/null | head -1)
  [ -n "$found" ] || missing="$missing $h"
done
if [ -n "$missing" ]; then
  echo "error: missing headers:$missing (run 'make deps' with network, or carry the .deb files in .debs/)"
  exit 1
fi

# 3-4. build and test
step build 140 make -j16 CUDA=1 CUDA_ARCH="$CC" all || { echo "build failed: see $LOG/build.log"; printf '%s\n' "${SUMMARY[@]}"; exit 1; }
step test_all 60 ./build/cuda/test_all

# 5. kernel benchmarks at the two model shapes
step bench_0.6b 45 ./bench all --shapes qwen3-0.6b --iters 10 --csv
step bench_8b 75 ./bench all --shapes qwen3-8b --iters 10 --csv

# 6. attention next to PyTorch's flash attention (same shape)
if python3 -c "import torch; assert torch.cuda.is_available()" > /dev/null 2>&1; then
  step attn_torch 30 python3 tools/ref/bench_attention.py --seq 4096 --heads 16 --kv-heads 8 --head-dim 128 --iters 10
else
  echo "torch with CUDA not importable: skipping tools/ref/bench_attention.py"
fi

# 7. summary
{
  echo
  echo "================ summary: $GPU"
  printf '%s\n' "${SUMMARY[@]}"
  if [ -f "$LOG/test_all.log" ]; then
    grep -E "^\[doctest\] (test cases|assertions)" "$LOG/test_all.log"
    grep -c "^skipped: no CUDA device" "$LOG/test_all.log" | sed 's/^/CUDA tests skipped: /'
  fi
  for preset in 0.6b 8b; do
    f="$LOG/bench_$preset.log"
    [ -f "$f" ] || continue
    echo "-- ./bench all --shapes qwen3-$preset (ms, TFLOP/s, share of copy bandwidth / of cuBLASLt bf16 GEMM, check)"
    awk -F, 'NR > 1 && NF >= 8 {
      frac = ($6 > 0) ? sprintf("copy %5.1f%%", 100 * $6) : (($7 > 0) ? sprintf("gemm %5.1f%%", 100 * $7) : "-");
      printf "%-14s %10.3f ms %8.2f TF/s  %-12s %s\n", $1, $3, $5, frac, $8 }' "$f"
  done
  if [ -f "$LOG/attn_torch.log" ] && [ -f "$LOG/bench_0.6b.log" ]; then
    ours_f=$(awk -F, '$1 == "attention" {print $3; exit}' "$LOG/bench_0.6b.log")
    ours_b=$(awk -F, '$1 == "attention_bwd" {print $3; exit}' "$LOG/bench_0.6b.log")
    torch_f=$(awk -F, '$2 == "fwd" {print $3}' "$LOG/attn_torch.log")
    torch_b=$(awk -F, '$2 == "fwd+bwd" {print $3}' "$LOG/attn_torch.log")
    if [ -n "$ours_f" ] && [ -n "$torch_f" ]; then
      awk -v a="$ours_f" -v b="$torch_f" 'BEGIN { printf "attention fwd     T=4096 Dh=128: ours %.3f ms, torch flash %.3f ms, ours/torch %.2fx\n", a, b, a / b }'
    fi
    if [ -n "$ours_b" ] && [ -n "$torch_b" ]; then
      awk -v a="$ours_b" -v b="$torch_b" 'BEGIN { printf "attention fwd+bwd T=4096 Dh=128: ours %.3f ms, torch flash %.3f ms, ours/torch %.2fx\n", a, b, a / b }'
    fi
  fi
  [ "$FAILED" = 0 ] && echo "gpu_check: all steps passed" || echo "gpu_check: SOME STEPS FAILED (logs in $LOG)"
} | tee "$LOG/summary.txt"
exit "$FAILED"
