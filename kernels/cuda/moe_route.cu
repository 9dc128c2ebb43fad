// The Qwen3-MoE router's top-k softmax (transformers' Qwen3MoeTopKRouter after its
// linear; kernels.h, "mixture-of-experts routing"), per row of logits l [N, E]:
//   forward:  p = softmax(l) in f32; experts [N, k] i32 = the indices of the k largest p,
//             largest first (ties: the lower index; a row holding a NaN has every p NaN and
//             takes experts 0..k-1, so the indices stay in range); weights [N, k] = p[experts],
//             divided by their sum when renormalize, rounded once to T
//   backward: g = grad_weights [N, k], G = g scattered to the selected experts (0 elsewhere):
//             not renormalized: dl_i = p_i (G_i - sum_j g_j p_{e_j}), p recomputed from l
//             renormalized:     dl_{e_j} = w_j (g_j - sum_m g_m w_m) from the saved weights, 0 elsewhere
// Shapes: logits, grad_logits [N, E] T (f32/bf16/f16); experts [N, k] i32; weights, grad_weights
// [N, k] T. E <= 512 and k <= 32 (Qwen3-30B-A3B and Qwen3-235B-A22B: E = 128, k = 8).
// Launch: one warp per row, 8 rows per 256-thread block. Lane l holds the row's elements
// l, l + 32, ... in registers (kPerLane of them: 1, 4 or 16 for E <= 32, 128, 512). The softmax
// is a warp max and a warp sum; the top-k is k rounds of a warp argmax over (p, index) (each
// lane's best, then 5 shuffle steps), the winner struck from its owner's registers; lane j keeps
// round j's winner and writes it (k <= 32 lanes). The forward reads the row once; the backward
// writes grad_logits once, then (after a __syncwarp) the k selected elements again.
//   ./bench moe_route --tokens 16384 --experts 128 --top-k 8     ./bench moe_route_bwd --tokens 16384 --experts 128 --top-k 8
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

namespace {

constexpr int kRowsPerBlock = 8;
constexpr int64_t kMaxExperts = 512, kMaxTopK = 32;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The warp's best (key, index): the larger key, on equal keys the lower index; every lane gets it.
__device__ __forceinline__ void warp_argmax(float& key, int& index) {
  for (int o = 16; o > 0; o >>= 1) {
    float other_key = __shfl_xor_sync(0xffffffffu, key, o);
    int other_index = __shfl_xor_sync(0xffffffffu, index, o);
    if (other_key > key || (other_key == key && other_index < index)) {
      key = other_key;
      index = other_index;
    }
  }
}

// p[s] = softmax of the row at element lane + 32 s (0 past E), in f32; returns the sum of
// exp(l - max) over the row (NaN when the row holds a NaN).
template <typename T, int kPerLane>
__device__ __forceinline__ float softmax_row(float (&p)[kPerLane], const T* row, int E, int lane) {
  float max = -INFINITY;
#pragma unroll
  for (int s = 0; s < kPerLane; ++s) {
    int e = lane + 32 * s;
    p[s] = e < E ? to_f32(row[e]) : -INFINITY;
    max = fmaxf(max, p[s]);
  }
  max = warp_max(max);
  float sum = 0.0f;
#pragma unroll
  for (int s = 0; s < kPerLane; ++s) {
    p[s] = lane + 32 * s < E ? expf(p[s] - max) : 0.0f;
    sum += p[s];
  }
  sum = warp_sum(sum);
#pragma unroll
  for (int s = 0; s < kPerLane; ++s) p[s] = p[s] / sum;
  return sum;
}

template <typename T, int kPerLane>
__global__ void moe_route_forward_kernel(int32_t* experts, T* weights, const T* logits, int64_t N, int E, int k,
                                         bool renormalize) {
  int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= N) return;  // the whole warp: no shuffle waits for it
  // Selection keys: p, -1 once taken (below every p), -2 past E (never chosen); a NaN row's
  // keys are all 0, so its experts are 0..k-1 as on the CPU.
  float key[kPerLane];
  const float sum = softmax_row<T, kPerLane>(key, logits + row * E, E, lane);
  const bool nan_row = sum != sum;
#pragma unroll
  for (int s = 0; s < kPerLane; ++s) key[s] = lane + 32 * s >= E ? -2.0f : nan_row ? 0.0f : key[s];
  float chosen_p = 0.0f;  // lane j < k: round j's winner
  int chosen_e = 0;
  for (int j = 0; j < k; ++j) {
    float best = -2.0f;
    int best_e = E;
#pragma unroll
    for (int s = 0; s < kPerLane; ++s)  // ascending index: the first of equal keys is the lower index
      if (key[s] > best) {
        best = key[s];
        best_e = lane + 32 * s;
      }
    warp_argmax(best, best_e);
#pragma unroll
    for (int s = 0; s < kPerLane; ++s)  // compile-time register indices (a dynamic one would spill)
      if (lane + 32 * s == best_e) key[s] = -1.0f;
    if (lane == j) {
      chosen_p = nan_row ? sum : best;  // NaN for a NaN row
      chosen_e = best_e;
    }
  }
  const float total = warp_sum(lane < k ? chosen_p : 0.0f);
  if (lane < k) {
    experts[row * k + lane] = chosen_e;
    weights[row * k + lane] = from_f32<T>(renormalize ? chosen_p / total : chosen_p);
  }
}

template <typename T, int kPerLane>
__global__ void moe_route_backward_kernel(T* grad_logits, const T* grad_weights, const T* logits,
                                          const int32_t* experts, const T* weights, int64_t N, int E, int k,
                                          bool renormalize) {
  int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= N) return;
  T* out = grad_logits + row * E;
  // lane j < k: the j-th selected expert and its gradient
  const bool selects = lane < k;
  const int chosen_e = selects ? experts[row * k + lane] : 0;
  const float g = selects ? to_f32(grad_weights[row * k + lane]) : 0.0f;
  // The experts come from moe_route_forward on this device (checking them on the host would
  // cost a synchronisation per layer): an index outside [0, E) makes the row's gradient NaN
  // instead of a write out of bounds.
  int bad = selects && (chosen_e < 0 || chosen_e >= E);
  for (int o = 16; o > 0; o >>= 1) bad |= __shfl_xor_sync(0xffffffffu, bad, o);
  if (bad) {
    for (int e = lane; e < E; e += 32) out[e] = from_f32<T>(nanf(""));
    return;
  }
  float scattered;  // the selected element's value, written after the row
  if (renormalize) {  // dl_{e_j} = w_j (g_j - sum_m g_m w_m), 0 elsewhere
    const float w = selects ? to_f32(weights[row * k + lane]) : 0.0f;
    const float dot = warp_sum(g * w);
    for (int e = lane; e < E; e += 32) out[e] = from_f32<T>(0.0f);
    scattered = w * (g - dot);
  } else {  // dl_i = p_i (G_i - dot), dot = sum_j g_j p_{e_j}
    float p[kPerLane];
    const T* row_logits = logits + row * E;
    softmax_row<T, kPerLane>(p, row_logits, E, lane);
    // p at the selected expert, from its owner's register: lane chosen_e % 32, slot chosen_e / 32
    float p_chosen = 0.0f;
#pragma unroll
    for (int s = 0; s < kPerLane; ++s) {
      float from_owner = __shfl_sync(0xffffffffu, p[s], chosen_e & 31);
      if (chosen_e >> 5 == s) p_chosen = from_owner;
    }
    const float dot = warp_sum(selects ? g * p_chosen : 0.0f);
#pragma unroll
    for (int s = 0; s < kPerLane; ++s)
      if (lane + 32 * s < E) out[lane + 32 * s] = from_f32<T>(-p[s] * dot);
    scattered = p_chosen * (g - dot);
  }
  __syncwarp();  // every lane's row writes land before the selected elements' overwrite them
  if (selects) out[chosen_e] = from_f32<T>(scattered);
}

// Calls f(std::integral_constant<int, kPerLane>) with the register count per lane that holds E.
template <typename F> void with_per_lane(int64_t E, F&& f) {
  if (E <= 32) f(std::integral_constant<int, 1>{});
  else if (E <= 128) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 16>{});
}

void check_gpu_limits(const char* op, int64_t E, int64_t k) {
  NQ_CHECK(E <= kMaxExperts && k <= kMaxTopK, op, ": the GPU kernel takes at most ", kMaxExperts,
           " experts and top-k ", kMaxTopK, " (one warp per row), got E = ", E, ", k = ", k);
}

unsigned blocks_for(int64_t N) { return unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

Tensor moe_route_forward(const Tensor& logits, int64_t k, bool renormalize, Tensor* experts) {
  const char* op = "moe_route_forward";
  const int64_t N = logits.size(0), E = logits.size(1);
  check_gpu_limits(op, E, k);
  Tensor weights = Tensor::empty({N, k}, logits.dtype(), Device::CUDA);
  *experts = Tensor::empty({N, k}, DType::I32, Device::CUDA);
  if (N == 0) return weights;
  dispatch_float(logits, op, [&](auto tag) {
    using T = decltype(tag);
    with_per_lane(E, [&](auto per_lane) {
      constexpr int P = decltype(per_lane)::value;
      moe_route_forward_kernel<T, P><<<blocks_for(N), 32 * kRowsPerBlock>>>(
          ptr<int32_t>(*experts), ptr<T>(weights), ptr<T>(logits), N, int(E), int(k), renormalize);
      NQ_LAUNCH_CHECK();
    });
  });
  return weights;
}

Tensor moe_route_backward(const Tensor& grad_weights, const Tensor& logits, const Tensor& experts,
                          const Tensor& weights, bool renormalize) {
  const char* op = "moe_route_backward";
  const int64_t N = logits.size(0), E = logits.size(1), k = experts.size(1);
  check_gpu_limits(op, E, k);
  Tensor grad_logits = Tensor::empty(logits.shape(), logits.dtype(), Device::CUDA);
  if (N == 0) return grad_logits;
  dispatch_float(logits, op, [&](auto tag) {
    using T = decltype(tag);
    with_per_lane(E, [&](auto per_lane) {
      constexpr int P = decltype(per_lane)::value;
      moe_route_backward_kernel<T, P><<<blocks_for(N), 32 * kRowsPerBlock>>>(
          ptr<T>(grad_logits), ptr<T>(grad_weights), ptr<T>(logits), ptr<int32_t>(experts), ptr<T>(weights), N,
          int(E), int(k), renormalize);
      NQ_LAUNCH_CHECK();
    });
  });
  return grad_logits;
}

}  // namespace nq::kernels::cuda
