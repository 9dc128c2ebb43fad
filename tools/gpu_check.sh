#!/usr/bin/env bash
# tools/gpu_check.sh: the whole GPU check in one go, on a machine with an NVIDIA GPU
# (written for an H200; any sm_80+ GPU works).
#   1. detect the GPU (nvidia-smi) and its compute capability
#   2. the Debian build dependencies: installed ones, else the headers and libraries
#      carried in .carry/deps.tar.xz (tools/gpu_prepare.sh), unpacked into /tmp/nqdeps
#   3. make -j16 for that architecture only (CUDA_ARCH=<cc>)
#   4. build/cuda/test_all (every CUDA kernel against the CPU kernels), then the CUDA
#      tests again under compute-sanitizer memcheck (out-of-bounds / misaligned accesses)
#   5. ./bench all at Qwen3-0.6B and Qwen3-8B shapes (CSV; 0.6B also with --dtype float16), and the NF4 matmul's two ways
#      (fused dequant-GEMM vs dequantize + cuBLASLt) over M, to set kNf4DequantMinRows
#   6. tools/ref/bench_attention.py (PyTorch SDPA flash) beside ./bench attention, if torch imports
#   7. a short summary table, printed last
# (test_all checks every op in f32, bf16 and f16 and trains fp16 with loss scaling.)
# Every step runs under `timeout`; the limits add up to 385 s, about 6.5 minutes.
# Logs go to build/gpu_check/<mode>/; when $OUT is set, two files per mode are also
# written there: summary-<mode>.txt and logs-<mode>.tar.gz.
# Both modes in one go:  tools/gpu_check.sh; tools/gpu_check.sh train
# Usage (repository root):  tools/gpu_check.sh          (the kernel checks above)
#                           tools/gpu_check.sh train    (build + the GPU training section below:
#                                                        T1-T2; limits add up to 240 s + the build)
#                           tools/gpu_check.sh big      (build + Qwen3-8B: T3-T4; 450 s + the build)
#                           tools/gpu_check.sh long     (build + Qwen3-8B long context: L1-L2; 480 s + the build)
#                           tools/gpu_check.sh moe      (build + Qwen3-MoE: M1-M3; 310 s + the build)
# kernels + train take about 10 minutes together; big about 8 more.
#
# On a GPU machine without network, run tools/gpu_prepare.sh first where there is network
# (it writes .carry/deps.tar.xz, the build dependencies, and .carry/bnb.tar.xz,
# bitsandbytes for the Python side of `train`) and copy .carry/ along with the checkout.
set -u -o pipefail
cd "$(dirname "$0")/.."
MODE=${1:-kernels}
case "$MODE" in kernels|train|big|long|moe) ;; *) echo "error: unknown mode '$MODE' (kernels, train, big, long or moe)"; exit 1 ;; esac
LOG=build/gpu_check/$MODE
rm -rf "$LOG" && mkdir -p "$LOG"
# finish: the summary and a tarball of every log into $OUT (when set), then exit with $1.
finish() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    [ -f "$LOG/summary.txt" ] && cp "$LOG/summary.txt" "$OUT/summary-$MODE.txt"
    tar czf "$OUT/logs-$MODE.tar.gz" -C "$LOG" .
  fi
  exit "$1"
}
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
if ! GPU_INFO=$(nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader 2>&1); then
  echo "error: nvidia-smi found no GPU: $GPU_INFO"; exit 1
fi
GPU=$(echo "$GPU_INFO" | head -1)
CC=$(echo "$GPU" | cut -d, -f2 | tr -d ' .')
echo "GPU: $GPU  (building for sm_$CC)"

# 2. build dependencies: installed, or carried (for a GPU machine without network)
have_headers() {
  local root=${1:-} h
  for h in x86_64-linux-gnu/cblas.h doctest/doctest.h nlohmann/json.hpp utf8proc.h pcre2.h; do
    if [ -n "$root" ]; then
      [ -e "$root/usr/include/$h" ] || [ -e "$root/usr/include/x86_64-linux-gnu/openblas-pthread/$(basename "$h")" ] || return 1
    else
      [ -e "/usr/include/$h" ] || [ -e "/usr/include/$(basename "$h")" ] || return 1
    fi
  done
}
MAKE_DEPS=()
if have_headers; then
  echo "build dependencies: installed"
elif [ -f .carry/deps.tar.xz ]; then
  mkdir -p /tmp/nqdeps && tar xJf .carry/deps.tar.xz -C /tmp/nqdeps
  have_headers /tmp/nqdeps || { echo "error: .carry/deps.tar.xz lacks a header (rerun tools/gpu_prepare.sh)"; exit 1; }
  MAKE_DEPS=(DEPS_ROOT=/tmp/nqdeps)
  echo "build dependencies: carried (.carry/deps.tar.xz unpacked into /tmp/nqdeps)"
else
  echo "error: the build dependencies are not installed and .carry/deps.tar.xz is missing:"
  echo "       run tools/gpu_prepare.sh on a machine with network and copy .carry/ here"
  exit 1
fi

# 3-4. build and test
step build 125 make -j16 CUDA=1 CUDA_ARCH="$CC" "${MAKE_DEPS[@]}" all || { echo "build failed: see $LOG/build.log"; printf '%s\n' "${SUMMARY[@]}" | tee "$LOG/summary.txt"; finish 1; }
if [ "$MODE" = kernels ]; then
step test_all 45 ./build/cuda/test_all
if command -v compute-sanitizer > /dev/null; then
  step memcheck 40 compute-sanitizer --tool memcheck --error-exitcode 1 ./build/cuda/test_all -tc="cuda*"
else
  echo "compute-sanitizer not on the PATH: skipping memcheck"
fi

# 5. kernel benchmarks at the two model shapes
step bench_0.6b 40 ./bench all --shapes qwen3-0.6b --iters 10 --csv
step bench_8b 55 ./bench all --shapes qwen3-8b --iters 10 --csv
# the same kernels with f16 activations (--dtype float16: what a T4 trains in)
step bench_0.6b_f16 30 ./bench all --shapes qwen3-0.6b --dtype float16 --iters 5 --csv
# kernels/cuda/nf4.h switches from the fused kernel to dequantize + cuBLASLt at
# kNf4DequantMinRows = 256 rows, an estimate: time both ways over M at Qwen3-0.6B's
# gate/up_proj shape [3072, 1024] (each ./bench prints a CSV header, then its row).
step nf4_crossover 25 bash -c 'echo "M,fused_ms,dequant_ms"
  for m in 16 32 64 128 256 512 1024 2048 4096; do
    f=$(./bench nf4_matmul_fused --m $m --n 3072 --k 1024 --iters 10 --csv | awk -F, "NR == 2 {print \$3}")
    d=$(./bench nf4_matmul_dequant --m $m --n 3072 --k 1024 --iters 10 --csv | awk -F, "NR == 2 {print \$3}")
    echo "$m,$f,$d"
  done'

# 6. attention next to PyTorch's flash attention (same shape)
if python3 -c "import torch; assert torch.cuda.is_available()" > /dev/null 2>&1; then
  step attn_torch 25 python3 tools/ref/bench_attention.py --seq 4096 --heads 16 --kv-heads 8 --head-dim 128 --iters 10
else
  echo "torch with CUDA not importable: skipping tools/ref/bench_attention.py"
fi
fi

# ======================================================================== GPU training
#   T1. the "gpu train*" tests, -s: tests/test_gpu_train.cpp (the memory plan table and
#       the plan-vs-measured lines, asserted within 10%; paged AdamW bit-identity;
#       QLoRA loss/LoRA gradients vs the CPU; allocator accounting) and the trainer's
#       GPU tests in tests/test_trainer.cpp (cuda vs cpu losses over 3 steps, paged vs
#       unpaged bit-identical, resume across devices); then ./train --device cuda on a
#       fixture model, and ./eval of its adapter on the GPU beside the CPU
#   T2. tools/ref/bench_qlora_gpu.py qwen3-0.6b, batch 1 x seq 2048 (the issue's goal shape):
#       transformers + bitsandbytes + PEFT vs ./train --device cuda on the same random-init
#       4-bit folder (./quantize --random), tokens/s and peak GPU memory, with the plan;
#       and ./train --optim adamw beside --optim paged_adamw (the step-time cost of paging)
#   (big) T3. the same for qwen3-8b: its 6.1 GB random 4-bit folder written first, in a step
#       of its own (4 min on this 2-core build machine, shared with builds; multithreaded),
#       so a slow disk shows as its own line rather than eating the benchmark's time
#   (big) T4. ours only: the longest context for qwen3-8b that trains one step in 80 GiB,
#       starting from the memory plan's prediction
#   (long) L1. Qwen3-8B random 4-bit at 32k and 64k tokens, each without and with
#       --offload-activations on --mlp-chunk-rows auto: tokens/s, peak GPU memory, the
#       plan's total and host memory, and the step-time ratio (the offload's cost)
#   (long) L2. the longest context in 80 GiB with offload + chunked MLP, from the plan's
#       prediction (`./inspect plan --preset qwen3-8b --fit-gb 80`): what really fits, as
#       far as the time limit goes (a step at the plan's 80 GiB maximum takes minutes)
# bitsandbytes may be missing on a machine without network: tools/gpu_prepare.sh packs it
# into .carry/bnb.tar.xz, unpacked here into /tmp/site (on PYTHONPATH for these steps).
if [ "$MODE" != kernels ]; then
  if ! python3 -c "import bitsandbytes" > /dev/null 2>&1 && [ -f .carry/bnb.tar.xz ]; then
    mkdir -p /tmp/site && tar xJf .carry/bnb.tar.xz -C /tmp/site
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONUNBUFFERED=1
  PY_OK=0
  python3 -c "import torch, bitsandbytes, peft, transformers; assert torch.cuda.is_available()" > "$LOG/py_import.log" 2>&1 && PY_OK=1
  [ "$PY_OK" = 1 ] || echo "torch/bitsandbytes/peft/transformers with CUDA not importable (see py_import.log): the Python side is skipped"
  SIDES=$([ "$PY_OK" = 1 ] && echo python,ours || echo ours)
fi
if [ "$MODE" = train ]; then
  step gpu_train_tests 60 ./build/cuda/test_all -tc="gpu train*" -s
  step train_tiny 30 ./train --model tests/fixtures/model/qwen3_tied --data tests/fixtures/tokenizer/chats.jsonl \
    --out /tmp/train_tiny --overwrite --device cuda --max-steps 3 --max-length 64 --eval-split 4 --save-every 2 --no-progress
  # the same in fp16 with dynamic loss scaling (its scale on the progress lines, in metrics.jsonl)
  step train_tiny_f16 30 ./train --model tests/fixtures/model/qwen3_tied --data tests/fixtures/tokenizer/chats.jsonl \
    --out /tmp/train_tiny_f16 --overwrite --device cuda --dtype float16 --max-steps 3 --max-length 64 --log-every 1
  # ./eval of that adapter on the GPU and on the CPU: the same loss up to bf16 (training/evaluate.h)
  step eval_tiny 20 bash -c 'for d in cuda cpu; do echo "--device $d: $(./eval --model tests/fixtures/model/qwen3_tied \
    --data tests/fixtures/tokenizer/chats.jsonl --adapter /tmp/train_tiny --max-length 64 --device $d --no-progress)"; done'
  step qlora_0.6b 130 python3 tools/ref/bench_qlora_gpu.py --preset qwen3-0.6b --batch 1 --seq 2048 --steps 3 \
    --sides "$SIDES,ours_adamw"
fi
if [ "$MODE" = big ]; then
  # the folder bench_qlora_gpu.py reuses (same path and seed; it rewrites one missing its config.json,
  # which ./quantize writes last, so a folder left by a timeout is not taken for a whole one)
  [ -f .cache/bench/qwen3-8b/config.json ] ||
    step quantize_8b 120 ./quantize --random qwen3-8b --seed 0 --out .cache/bench/qwen3-8b
  step qlora_8b 150 python3 tools/ref/bench_qlora_gpu.py --preset qwen3-8b --batch 1 --seq 2048 --steps 2 --sides "$SIDES"
  step max_ctx 180 python3 tools/ref/bench_qlora_gpu.py --max-context --fit-gb 80 --time-limit 170
fi

if [ "$MODE" = long ]; then
  [ -f .cache/bench/qwen3-8b/config.json ] ||
    step quantize_8b 120 ./quantize --random qwen3-8b --seed 0 --out .cache/bench/qwen3-8b
  step long_ctx 240 python3 tools/ref/bench_qlora_gpu.py --long 32768,65536 --time-limit 230
  step max_ctx_offload 240 python3 tools/ref/bench_qlora_gpu.py --max-context --offload --fit-gb 80 --time-limit 230
fi

# ======================================================================== Qwen3-MoE
#   M1. the MoE tests on the GPU, -s: the registry's device check of every op (moe_route,
#       nf4_grouped_matmul and grouped_matmul among them) and the MoE decoder (NF4 experts, grouped, with and
#       without the experts' LoRA) against the CPU in bf16 and f16
#   M2. the MoE ops at Qwen3-30B-A3B's shapes (128 experts, top 8, 2048 tokens) in ./bench, and
#       one expert's nf4_matmul (128 rows, the experts' mean): the grouped launch against 128 of them
#   M3. side by side (tools/ref/bench_qlora_gpu.py): Qwen3-30B-A3B's shapes cut to 2 layers, one
#       random bf16 folder; transformers + bnb (attention NF4, experts bf16) + PEFT against
#       ./train (every projection NF4), batch 1 x 2048: tokens/s, peak GPU memory, the plan
if [ "$MODE" = moe ]; then
  step moe_tests 90 ./build/cuda/test_all -tc="cuda registry_device_every_op,cuda moe*" -s
  step moe_bench 40 bash -c 'for op in $(./bench list | awk "/^(moe_|nf4_grouped|grouped_)/ {print \$1}"); do
      ./bench "$op" --iters 10 --csv; done; ./bench nf4_matmul --m 128 --n 768 --k 2048 --iters 10 --csv'
  if [ "$PY_OK" = 1 ]; then
    step moe_side_by_side 180 python3 tools/ref/bench_qlora_gpu.py --preset qwen3-30b-a3b-2l --seq 2048 --steps 2 \
      --sides python,ours
  else  # no torch to write the bf16 folder: ours alone, on ./quantize's 4-bit one
    step quantize_moe 40 ./quantize --random qwen3-30b-a3b --layers 2 --seed 0 --out /tmp/moe_30b_2l
    step train_moe 100 ./train --model /tmp/moe_30b_2l --data data/demo_train.jsonl --out /tmp/train_moe --overwrite \
      --device cuda --max-steps 4 --batch-size 1 --max-length 2048 --packing --log-every 1 --verbose --no-progress
  fi
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
  for f in "$LOG/qlora_0.6b.log" "$LOG/qlora_8b.log"; do
    [ -f "$f" ] && grep -A8 "^QLoRA step on the GPU" "$f"
  done
  [ -f "$LOG/max_ctx.log" ] && grep -E "^plan:|^longest context|^no context" "$LOG/max_ctx.log"
  [ -f "$LOG/long_ctx.log" ] && grep -E "^long context|^ +seq|^ +[0-9]+ " "$LOG/long_ctx.log"
  [ -f "$LOG/max_ctx_offload.log" ] && grep -E "^plan:|^ +[0-9]+ |^longest context|^no context" "$LOG/max_ctx_offload.log"
  [ -f "$LOG/train_tiny.log" ] && grep -E "^device:|plan|measured" "$LOG/train_tiny.log" | head -12
  [ -f "$LOG/moe_tests.log" ] && grep -E "MoE decoder on the GPU|grouped NF4 experts on the GPU|test cases" "$LOG/moe_tests.log" | head -8
  [ -f "$LOG/moe_bench.log" ] && grep -vE "^(kernel|name)," "$LOG/moe_bench.log"
  [ -f "$LOG/moe_side_by_side.log" ] && grep -E "^QLoRA|tokens/s|^transformers|^\./train|^plan|^ratio|failed" "$LOG/moe_side_by_side.log"
  [ -f "$LOG/train_moe.log" ] && grep -E "^model:|plan vs measured|^step|^done" "$LOG/train_moe.log" | head -12
  [ -f "$LOG/eval_tiny.log" ] && grep -E "^--device" "$LOG/eval_tiny.log"
  [ -f "$LOG/gpu_train_tests.log" ] && grep -A7 "plan vs measured" "$LOG/gpu_train_tests.log"
  [ -f "$LOG/train_tiny_f16.log" ] && grep -E "^precision:|scale" "$LOG/train_tiny_f16.log" | head -6
  for preset in 0.6b 8b 0.6b_f16; do
    f="$LOG/bench_$preset.log"
    [ -f "$f" ] || continue
    echo "-- ./bench all --shapes qwen3-${preset%_f16}$([ "${preset%_f16}" != "$preset" ] && echo ' --dtype float16') (share of the copy bandwidth or of cuBLASLt's bf16 GEMM rate)"
    awk -F, 'NR > 1 && NF >= 8 {
      frac = ($6 > 0) ? sprintf("copy %5.1f%%", 100 * $6) : (($7 > 0) ? sprintf("gemm %5.1f%%", 100 * $7) : "-");
      shape = $2; gsub(/"/, "", shape);
      printf "%-14s %-44.44s %9.3f ms %7.0f GB/s %7.1f TF/s  %-11s %s\n", $1, shape, $3, $4, $5, frac, $8 }' "$f"
  done
  if [ -f "$LOG/nf4_crossover.log" ]; then
    echo "-- NF4 matmul [M, 1024] x [3072, 1024]^T: fused kernel vs dequantize + cuBLASLt (switch now at M = 256)"
    awk -F, 'NR > 1 && $2 != "" && $3 != "" {
      printf "M %5d  fused %8.4f ms  dequant %8.4f ms  faster: %s\n", $1, $2, $3, ($2 < $3) ? "fused" : "dequant" }' \
      "$LOG/nf4_crossover.log"
  fi
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
finish "$FAILED"
