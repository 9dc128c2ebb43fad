// Causal self-attention with GQA and optional segment ids (packed samples),
// forward and backward, O(T) memory: the [T, T] scores never exist; the forward
// keeps the online-softmax state per query and saves lse for the backward.
//   q [B*T, Hq, Dh], k, v [B*T, Hkv, Dh] (f32/bf16/f16) -> o [B*T, Hq, Dh], lse [B*T, Hq] f32
//   query (b, t) of head h reads kv head h / (Hq / Hkv), keys (b, j) with j <= t
//   and seg[b, j] == seg[b, t]; s_j = q . k_j / sqrt(Dh)
// Online softmax (one pass over keys, f32): with running max m, normaliser l
// and accumulator acc, for each key
//   m' = max(m, s_j);  c = exp(m - m');  p = exp(s_j - m')
//   l = l c + p;  acc = acc c + p v_j;  m = m'
// and at the end o = acc / l, lse = m + log l.
// Backward, with P_ij = exp(s_ij - lse_i) recomputed and D_i = dO_i . o_i:
//   dV_j = sum_i P_ij dO_i,   dS_ij = P_ij (dO_i . v_j - D_i)
//   dQ_i = scale sum_j dS_ij k_j,   dK_j = scale sum_i dS_ij q_i
// bf16 or f16 with head_dim 64 or 128 (16-byte aligned), on sm_80 and newer: the tiled tensor-core kernels,
// forward in attention_flash.cuh (64 queries x 64 keys per step), backward in
// attention_flash_bwd.cuh (FlashAttention-2: block per 64 keys, dQ by f32 atomics).
// Everything else (f32, other head dims) runs the straightforward CUDA-core
// kernels below, the readable version of both: one warp per (row, head); each lane
// holds Dh/32 elements of its vectors in registers (Dh <= 256), dot products
// are warp sums. Forward and dQ: warp per (query row, query head); dK/dV: warp
// per (key row, kv head), looping over the query heads of its group, so no
// atomics are needed. K/V rows are read from global memory (served by L2).
//   ./bench attention --batch 1 --seq 4096 --heads 16 --kv-heads 8 --head-dim 128   (and attention_bwd)
#include <cmath>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/attention_flash.cuh"
#include "kernels/cuda/attention_flash_bwd.cuh"
#include "kernels/cuda/cast.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "runtime/cuda_runtime.h"

namespace nq::kernels::cuda {

constexpr int kWarpsPerBlock = 4;

struct AttnShape {
  int64_t B, T, Hq, Hkv, Dh;
  float scale;
};

// Loads row[lane + 32 e] for e < P into registers (0 beyond Dh).
template <int P, typename T>
__device__ __forceinline__ void load_lane(float (&r)[P], const T* row, int64_t Dh, int lane) {
#pragma unroll
  for (int e = 0; e < P; ++e) { int64_t d = lane + 32 * e; r[e] = d < Dh ? to_f32(row[d]) : 0.0f; }
}
template <int P>
__device__ __forceinline__ float dot_lane(const float (&a)[P], const float (&b)[P]) {
  float s = 0.0f;
#pragma unroll
  for (int e = 0; e < P; ++e) s += a[e] * b[e];
  return warp_sum(s);
}
__device__ __forceinline__ bool visible(const int32_t* seg, int64_t qrow, int64_t krow) {
  return !seg || seg[qrow] == seg[krow];
}

template <int P, typename T>
__global__ void attention_forward_kernel(T* o, float* lse, const T* q, const T* k, const T* v, const int32_t* seg,
                                         AttnShape s) {
  int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);  // (row, head)
  int lane = threadIdx.x & 31;
  if (item >= s.B * s.T * s.Hq) return;
  int64_t row = item / s.Hq, h = item % s.Hq, g = h / (s.Hq / s.Hkv);
  int64_t b = row / s.T, t = row % s.T;
  float qr[P], kr[P], vr[P], acc[P];
  load_lane<P>(qr, q + item * s.Dh, s.Dh, lane);
#pragma unroll
  for (int e = 0; e < P; ++e) { qr[e] *= s.scale; acc[e] = 0.0f; }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j <= t; ++j) {
    int64_t krow = b * s.T + j;
    if (!visible(seg, row, krow)) continue;
    load_lane<P>(kr, k + (krow * s.Hkv + g) * s.Dh, s.Dh, lane);
    float score = dot_lane<P>(qr, kr);
    float m_new = fmaxf(m, score), c = expf(m - m_new), p = expf(score - m_new);
    load_lane<P>(vr, v + (krow * s.Hkv + g) * s.Dh, s.Dh, lane);
    l = l * c + p;
#pragma unroll
    for (int e = 0; e < P; ++e) acc[e] = acc[e] * c + p * vr[e];
    m = m_new;
  }
#pragma unroll
  for (int e = 0; e < P; ++e) {
    int64_t d = lane + 32 * e;
    if (d < s.Dh) o[item * s.Dh + d] = from_f32<T>(acc[e] / l);
  }
  if (lane == 0) lse[item] = m + logf(l);
}

// dQ and D_i = dO_i . o_i, warp per (query row, query head).
template <int P, typename T>
__global__ void attention_dq_kernel(T* dq, float* delta, const T* dout, const T* q, const T* k, const T* v, const T* o,
                                    const float* lse, const int32_t* seg, AttnShape s) {
  int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (item >= s.B * s.T * s.Hq) return;
  int64_t row = item / s.Hq, h = item % s.Hq, g = h / (s.Hq / s.Hkv);
  int64_t b = row / s.T, t = row % s.T;
  float qr[P], dor[P], kr[P], vr[P], acc[P];
  load_lane<P>(qr, q + item * s.Dh, s.Dh, lane);
  load_lane<P>(dor, dout + item * s.Dh, s.Dh, lane);
  load_lane<P>(acc, o + item * s.Dh, s.Dh, lane);  // acc holds o until D is known
  float D = dot_lane<P>(dor, acc);
#pragma unroll
  for (int e = 0; e < P; ++e) { qr[e] *= s.scale; acc[e] = 0.0f; }
  float row_lse = lse[item];
  for (int64_t j = 0; j <= t; ++j) {
    int64_t krow = b * s.T + j;
    if (!visible(seg, row, krow)) continue;
    load_lane<P>(kr, k + (krow * s.Hkv + g) * s.Dh, s.Dh, lane);
    load_lane<P>(vr, v + (krow * s.Hkv + g) * s.Dh, s.Dh, lane);
    float p = expf(dot_lane<P>(qr, kr) - row_lse);
    float ds = p * (dot_lane<P>(dor, vr) - D);
#pragma unroll
    for (int e = 0; e < P; ++e) acc[e] += ds * kr[e];
  }
#pragma unroll
  for (int e = 0; e < P; ++e) {
    int64_t d = lane + 32 * e;
    if (d < s.Dh) dq[item * s.Dh + d] = from_f32<T>(acc[e] * s.scale);
  }
  if (lane == 0) delta[item] = D;
}

// dK, dV, warp per (key row, kv head): sums over the group's query heads and
// the later queries of the same segment.
template <int P, typename T>
__global__ void attention_dkv_kernel(T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const float* lse,
                                     const float* delta, const int32_t* seg, AttnShape s) {
  int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);  // (key row, kv head)
  int lane = threadIdx.x & 31;
  if (item >= s.B * s.T * s.Hkv) return;
  int64_t krow = item / s.Hkv, g = item % s.Hkv, group = s.Hq / s.Hkv;
  int64_t b = krow / s.T, j = krow % s.T;
  float kr[P], vr[P], qr[P], dor[P], dk_acc[P], dv_acc[P];
  load_lane<P>(kr, k + item * s.Dh, s.Dh, lane);
  load_lane<P>(vr, v + item * s.Dh, s.Dh, lane);
#pragma unroll
  for (int e = 0; e < P; ++e) { dk_acc[e] = 0.0f; dv_acc[e] = 0.0f; }
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t t = j; t < s.T; ++t) {
      int64_t row = b * s.T + t, qi = row * s.Hq + h;
      if (!visible(seg, row, krow)) continue;
      load_lane<P>(qr, q + qi * s.Dh, s.Dh, lane);
      load_lane<P>(dor, dout + qi * s.Dh, s.Dh, lane);
      float p = expf(dot_lane<P>(qr, kr) * s.scale - lse[qi]);
      float ds = p * (dot_lane<P>(dor, vr) - delta[qi]);
#pragma unroll
      for (int e = 0; e < P; ++e) { dv_acc[e] += p * dor[e]; dk_acc[e] += ds * qr[e]; }
    }
  }
#pragma unroll
  for (int e = 0; e < P; ++e) {
    int64_t d = lane + 32 * e;
    if (d < s.Dh) {
      dk[item * s.Dh + d] = from_f32<T>(dk_acc[e] * s.scale);
      dv[item * s.Dh + d] = from_f32<T>(dv_acc[e]);
    }
  }
}

// Calls f(std::integral_constant<int, P>) with P = registers per lane for Dh.
template <typename F> static void dispatch_head_dim(int64_t Dh, F&& f) {
  if (Dh <= 32) f(std::integral_constant<int, 1>{});
  else if (Dh <= 64) f(std::integral_constant<int, 2>{});
  else if (Dh <= 128) f(std::integral_constant<int, 4>{});
  else if (Dh <= 256) f(std::integral_constant<int, 8>{});
  else throw Error(str("attention: CUDA kernel supports head_dim <= 256, got ", Dh));
}

static AttnShape shape_of(const Tensor& q, const Tensor& k, int64_t B, int64_t T) {
  int64_t Dh = q.size(2);
  return {B, T, q.size(1), k.size(1), Dh, float(1.0 / std::sqrt(double(Dh)))};
}
static unsigned blocks_for(int64_t warps) { return unsigned((warps + kWarpsPerBlock - 1) / kWarpsPerBlock); }
static const int32_t* seg_ptr(const Tensor& seg) { return seg.defined() ? ptr<int32_t>(seg) : nullptr; }
// The tiled kernels take bf16 or f16, head_dim 64 or 128, and 16-byte aligned tiles (they load
// 8 elements at a time), on sm_80 and newer (their shared memory exceeds what sm_70/75 offer a block).
static bool tiled(const AttnShape& s, DType dtype, std::initializer_list<const Tensor*> tiles) {
  static const int cc = cuda_compute_capability();
  if ((dtype != DType::BF16 && dtype != DType::F16) || (s.Dh != 64 && s.Dh != 128) || (cc != 0 && cc < 80))
    return false;
  for (const Tensor* t : tiles)
    if (reinterpret_cast<uintptr_t>(t->raw()) % 16 != 0) return false;
  return true;
}

Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                         const Tensor& segment_ids, Tensor* lse) {
  AttnShape s = shape_of(q, k, B, T);
  Tensor o = Tensor::empty(q.shape(), q.dtype(), Device::CUDA);
  Tensor lse_t = Tensor::empty({B * T, s.Hq}, DType::F32, Device::CUDA);
  if (lse) *lse = lse_t;
  int64_t items = B * T * s.Hq;
  if (items == 0) return o;
  if (tiled(s, q.dtype(), {&q, &k, &v})) {
    dispatch_half16(q, "attention_forward", [&](auto tag) {
      using E = decltype(tag);
      auto launch = s.Dh == 64 ? flash::launch_forward<64, E> : flash::launch_forward<128, E>;
      launch(ptr<E>(o), ptr<float>(lse_t), ptr<E>(q), ptr<E>(k), ptr<E>(v), seg_ptr(segment_ids), B, T, s.Hq, s.Hkv,
             s.scale);
    });
    return o;
  }
  dispatch_float(q, "attention_forward", [&](auto tag) {
    using T_ = decltype(tag);
    dispatch_head_dim(s.Dh, [&](auto per_lane) {
      attention_forward_kernel<decltype(per_lane)::value, T_><<<blocks_for(items), 32 * kWarpsPerBlock>>>(
          ptr<T_>(o), ptr<float>(lse_t), ptr<T_>(q), ptr<T_>(k), ptr<T_>(v), seg_ptr(segment_ids), s);
      NQ_LAUNCH_CHECK();
    });
  });
  return o;
}

void attention_backward(const Tensor& grad_o, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& lse, int64_t B, int64_t T, const Tensor& segment_ids, Tensor* grad_q,
                        Tensor* grad_k, Tensor* grad_v) {
  AttnShape s = shape_of(q, k, B, T);
  Tensor dk = Tensor::empty(k.shape(), k.dtype(), Device::CUDA);
  Tensor dv = Tensor::empty(v.shape(), v.dtype(), Device::CUDA);
  Tensor delta = Tensor::empty({B * T, s.Hq}, DType::F32, Device::CUDA, MemCategory::Workspace);
  if (grad_k) *grad_k = dk;
  if (grad_v) *grad_v = dv;
  if (tiled(s, q.dtype(), {&q, &k, &v, &grad_o})) {
    // dQ is summed over key tiles by f32 atomics, then rounded to q's dtype once.
    Tensor dq_acc = Tensor::empty(q.shape(), DType::F32, Device::CUDA, MemCategory::Workspace);
    dispatch_half16(q, "attention_backward", [&](auto tag) {
      using E = decltype(tag);
      auto launch = s.Dh == 64 ? flash::bwd::launch_backward<64, E> : flash::bwd::launch_backward<128, E>;
      launch(ptr<E>(dk), ptr<E>(dv), ptr<float>(dq_acc), ptr<float>(delta), ptr<E>(grad_o), ptr<E>(q), ptr<E>(k),
             ptr<E>(v), ptr<E>(o), ptr<float>(lse), seg_ptr(segment_ids), B, T, s.Hq, s.Hkv, s.scale);
    });
    if (grad_q) *grad_q = cast(dq_acc, q.dtype());
    return;
  }
  Tensor dq = Tensor::empty(q.shape(), q.dtype(), Device::CUDA);
  if (grad_q) *grad_q = dq;
  dispatch_float(q, "attention_backward", [&](auto tag) {
    using T_ = decltype(tag);
    dispatch_head_dim(s.Dh, [&](auto per_lane) {
      constexpr int P = decltype(per_lane)::value;
      attention_dq_kernel<P, T_><<<blocks_for(B * T * s.Hq), 32 * kWarpsPerBlock>>>(
          ptr<T_>(dq), ptr<float>(delta), ptr<T_>(grad_o), ptr<T_>(q), ptr<T_>(k), ptr<T_>(v), ptr<T_>(o),
          ptr<float>(lse), seg_ptr(segment_ids), s);
      NQ_LAUNCH_CHECK();
      attention_dkv_kernel<P, T_><<<blocks_for(B * T * s.Hkv), 32 * kWarpsPerBlock>>>(
          ptr<T_>(dk), ptr<T_>(dv), ptr<T_>(grad_o), ptr<T_>(q), ptr<T_>(k), ptr<T_>(v), ptr<float>(lse),
          ptr<float>(delta), seg_ptr(segment_ids), s);
      NQ_LAUNCH_CHECK();
    });
  });
}

}  // namespace nq::kernels::cuda
