// Tensor-core flash-attention backward (FlashAttention-2 style; bf16 or f16 = E,
// head_dim 64 or 128), used by attention.cu for 16-bit inputs on sm_80 and newer;
// the math is in attention.cu. (Below, "bf16" is E: f16 stores the same bits' worth.)
//   in:  q, dO [B*T, Hq, Dh], k, v [B*T, Hkv, Dh] bf16; lse [B*T, Hq] f32 from
//        the forward; o [B*T, Hq, Dh] bf16 (only for D); seg [B*T] i32 or null
//   out: dk, dv [B*T, Hkv, Dh] bf16; dq_acc [B*T, Hq, Dh] f32 (attention.cu
//        casts it to bf16); delta [B*T, Hq] f32 workspace
//
// Pass 1, preprocess_kernel (warp per (row, query head)):
//   D_i = dO_i . o_i  (f32)  and  dq_acc_i = 0
// Pass 2, backward_kernel: a block of 8 warps per (batch, kv head, tile of 64
// keys) keeps the f32 dK, dV accumulators of its keys in registers (WMMA
// fragments) and walks every query tile that can see them: the query heads of
// the GQA group, and (causal) the query tiles from its first key onwards. Per
// step (64 queries x 64 keys), with Q, dO, K, V, P, dS tiles in shared memory:
//   S  = Q K^T,  dP = dO V^T          [64, 64]   warp: 16 queries x 32 keys
//   P  = exp(S scale - lse)           (masked: causal j <= t, same segment, t < T)
//   dS = scale P (dP - D)             P and dS stored bf16 [64 q, 64 k]
//   dV += P^T dO,  dK += dS^T Q       [64, Dh]   warp: 16 keys x Dh/2
//   dq_acc += dS K                    [64, Dh]   warp: 16 queries x Dh/2, f32 atomics
// All products are WMMA 16x16x16 bf16 with f32 accumulation (HMMA). The scale
// is folded into dS, so dK and dQ need no extra multiply; dS uses P after its
// bf16 rounding (read back from shared memory: frees 16 registers per thread).
// Because every query head of the group is walked by the one block that owns
// the keys, dK and dV need no atomics. dQ gets contributions from every key
// tile, hence f32 atomics (16-byte RED.F32x4 on sm_90): a separate dQ kernel
// per query tile would recompute S and dP, 7 GEMMs instead of 5; the atomics
// are 64 x Dh per step, and blocks working at the same time mostly hit
// different dQ rows (each starts at its own key tile).
// WMMA does not say which accumulator element is which (row, column), so the
// per-element softmax work goes through a per-warp f32 scratch [16][32 + 4]:
// a fragment pair is stored, each lane takes one key column (conflict-free
// reads) and walks the 16 rows; the same scratch carries dQ to its atomics and
// dK/dV to their masked stores (rows past T are padding and never written).
// Shared memory (bytes): K, V, Q, dO 4 x 64 x (Dh + 8) x 2 (the 8-element pad
// shifts rows by 16 bytes against bank conflicts); P, dS 2 x 64 x 72 x 2;
// scratch 8 x 16 x 36 x 4; lse, D, query/key segment ids 4 x 64 x 4:
//   Dh 128: 107,520 (2 blocks per SM on sm_90, 1 on sm_80)   Dh 64: 74,752.
// Resources, nvcc 13.0 -Xptxas -v, __launch_bounds__(256, 2):
//   backward_kernel<128>, <64>: 128 registers, 0 bytes stack, 0 spills (sm_80 and sm_90)
//   preprocess_kernel: 16-21 registers.  SASS (cuobjdump --dump-sass): 112 / 56
//   HMMA.16816.F32.BF16 for Dh 128 / 64 (the dV/dK loop is kept rolled: unrolled
//   it spills), dQ atomics as REDG.E.ADD.F32x4 on sm_90.
// Launch: preprocess <<<ceil(B T Hq / 8), 256>>>; backward <<<(B Hkv, ceil(T / 64)),
// 256, smem>>>, key tile in y so that the longest blocks (first keys: the most
// queries to walk) are dispatched first; then a cast pass dq_acc -> bf16.
// FLOPs: forward 2 GEMMs, backward 5 (S, dP, dV, dK, dQ), each 2 B Hq T^2 Dh / 2
// causal: backward = 2.5 x forward's 4 B T^2 Hq Dh / 2.
//   ./bench attention_bwd --batch 1 --seq 4096 --heads 16 --kv-heads 8 --head-dim 128
//   (times forward + backward, as tools/ref/bench_attention.py does for PyTorch)
#pragma once
#include <mma.h>

#include "kernels/cuda/attention_flash.cuh"
#include "kernels/cuda/common.cuh"

namespace nq::kernels::cuda {

namespace flash {

namespace bwd {

constexpr int kKeys = 64, kQueries = 64;       // keys per block, queries per step
constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kFrag = 16;                      // WMMA tile edge
constexpr int kScratchCols = 32, kScratchLd = kScratchCols + 4;  // per-warp f32 scratch [16][36]
constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = exp2(x log2 e)
static_assert(kKeys == kRows && kQueries == kRows, "tiles are loaded with load_tile (64 rows)");

template <int Dh>
struct Layout {
  static constexpr int kLd = flash::Layout<Dh>::kLd;  // bf16 row stride of K, V, Q, dO: Dh + 8
  static constexpr int kPLd = kKeys + 8;             // bf16 row stride of P, dS
  static constexpr size_t kTileBytes = size_t(kRows) * kLd * 2;
  static constexpr size_t kPBytes = size_t(kQueries) * kPLd * 2;
  static constexpr size_t kScratchBytes = size_t(kWarps) * kFrag * kScratchLd * 4;
  static constexpr size_t kRowBytes = size_t(kRows) * 4;
  // offsets: k, v, q, dO tiles | P, dS | warp scratch | lse, D, query seg, key seg
  static constexpr size_t kP = 4 * kTileBytes, kDs = kP + kPBytes, kScratch = kDs + kPBytes;
  static constexpr size_t kRowsAt = kScratch + kScratchBytes;
  static constexpr size_t kTotal = kRowsAt + 4 * kRowBytes;
};

using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Stores fragments a, b side by side into the warp's f32 scratch [16][32 + 4]
// (readable by every lane of the warp on return).
__device__ __forceinline__ void stage(const AccFrag& a, const AccFrag& b, float* scratch) {
  __syncwarp();  // the scratch's previous contents have been read
  wmma::store_matrix_sync(scratch, a, kScratchLd, wmma::mem_row_major);
  wmma::store_matrix_sync(scratch + kFrag, b, kScratchLd, wmma::mem_row_major);
  __syncwarp();
}

// Hands the warp's N accumulator fragments (a [16, 16 N] f32 block, N even) to
// put(r, c, x) element by element, two fragments at a time through the
// scratch; lane l takes column c = 32 pass + l and walks rows r = 0..15.
template <int N, typename Put>
__device__ __forceinline__ void drain(AccFrag (&f)[N], float* scratch, int lane, Put&& put) {
  static_assert(N % 2 == 0, "fragments are drained two at a time");
#pragma unroll
  for (int n0 = 0; n0 < N; n0 += 2) {
    stage(f[n0], f[n0 + 1], scratch);
#pragma unroll 4
    for (int r = 0; r < kFrag; ++r) put(r, n0 * kFrag + lane, scratch[r * kScratchLd + lane]);
  }
}

// dst[r * row_stride + c] += the warp's [16, 32] block f[0], f[1], for rows
// r < rows_valid, by f32 atomics. On sm_90 a lane adds 4 consecutive columns
// with one 16-byte atomic (a quarter of the atomic operations); dst and
// row_stride must then be 16-byte aligned (dq_acc: Dh and the column offsets
// are multiples of 4).
__device__ __forceinline__ void atomic_add_rows(AccFrag (&f)[2], float* scratch, int lane, float* dst,
                                                int64_t row_stride, int rows_valid) {
  stage(f[0], f[1], scratch);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll
  for (int i = 0; i < kFrag / 4; ++i) {
    int r = i * 4 + (lane >> 3), c = (lane & 7) * 4;  // 8 lanes cover one row's 32 columns
    float4 x = *reinterpret_cast<const float4*>(scratch + r * kScratchLd + c);
    if (r < rows_valid) atomicAdd(reinterpret_cast<float4*>(dst + r * row_stride + c), x);
  }
#else
#pragma unroll 4
  for (int r = 0; r < kFrag; ++r)
    if (r < rows_valid) atomicAdd(dst + r * row_stride + lane, scratch[r * kScratchLd + lane]);
#endif
}

// acc[n] = A B_n^T for n = 0, 1: A [16, Dh] and B [32, Dh] row-major bf16 in
// shared memory (row stride Dh + 8); B^T is B read column-major. acc [16, 32].
template <int Dh, typename E>
__device__ __forceinline__ void mul_abt(AccFrag (&acc)[2], const E* a, const E* b) {
  constexpr int kLd = Layout<Dh>::kLd;
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
#pragma unroll
  for (int d = 0; d < Dh; d += kFrag) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> af;
    wmma::load_matrix_sync(af, a + d, kLd);
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> bf;
      wmma::load_matrix_sync(bf, b + n * kFrag * kLd + d, kLd);
      wmma::mma_sync(acc[n], af, bf, acc[n]);
    }
  }
}

// acc[n] += A^T B_n for n < Dh / 32: A [64, 16] bf16 (row stride 72, P or dS
// columns), B [64, Dh / 2] bf16 (row stride Dh + 8); A^T is A read column-major.
// acc [16, Dh / 2], summed over the 64 queries of the step.
template <int Dh, typename E>
__device__ __forceinline__ void mul_atb(AccFrag (&acc)[Dh / 32], const E* a, const E* b) {
  constexpr int kLd = Layout<Dh>::kLd, kPLd = Layout<Dh>::kPLd;
#pragma unroll 1  // rolled: keeps the kernel within 128 registers without spills (2 blocks per SM)
  for (int kk = 0; kk < kQueries; kk += kFrag) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::col_major> af;
    wmma::load_matrix_sync(af, a + kk * kPLd, kPLd);
#pragma unroll
    for (int n = 0; n < Dh / 32; ++n) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> bf;
      wmma::load_matrix_sync(bf, b + kk * kLd + n * kFrag, kLd);
      wmma::mma_sync(acc[n], af, bf, acc[n]);
    }
  }
}

// D_i = dO_i . o_i and dq_acc_i = 0 for item i = (row, query head); warp per item.
template <int Dh, typename E>
__global__ void __launch_bounds__(kThreads)
    preprocess_kernel(float* delta, float* dq_acc, const E* dout, const E* o, int64_t items) {
  int64_t item = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (item >= items) return;
  float sum = 0.0f;
#pragma unroll
  for (int d = lane; d < Dh; d += 32) {
    sum += to_f32(dout[item * Dh + d]) * to_f32(o[item * Dh + d]);
    dq_acc[item * Dh + d] = 0.0f;
  }
  sum = warp_sum(sum);
  if (lane == 0) delta[item] = sum;
}

template <int Dh, typename E>
__global__ void __launch_bounds__(kThreads, 2)
    backward_kernel(E* dk, E* dv, float* dq_acc, const E* dout, const E* q, const E* k,
                    const E* v, const float* lse, const float* delta, const int32_t* seg, int T, int Hq, int Hkv,
                    float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // not built before sm_80 (attention.cu's tiled() picks these kernels on sm_80 and newer only)
#else
  using L = Layout<Dh>;
  constexpr int kHalf = Dh / 2, kHalfFrags = kHalf / kFrag;  // a warp's share of Dh: 2 or 4 fragments
  extern __shared__ __align__(128) unsigned char smem[];
  E* k_s = reinterpret_cast<E*>(smem);                         // [64 keys][kLd]
  E* v_s = reinterpret_cast<E*>(smem + L::kTileBytes);         // [64 keys][kLd]
  E* q_s = reinterpret_cast<E*>(smem + 2 * L::kTileBytes);     // [64 queries][kLd]
  E* do_s = reinterpret_cast<E*>(smem + 3 * L::kTileBytes);    // [64 queries][kLd]
  E* p_s = reinterpret_cast<E*>(smem + L::kP);                 // [64 queries][kPLd]
  E* ds_s = reinterpret_cast<E*>(smem + L::kDs);               // [64 queries][kPLd]
  float* lse_s = reinterpret_cast<float*>(smem + L::kRowsAt);        // [64] lse log2(e)
  float* d_s = lse_s + kRows;                                        // [64] D
  int32_t* qseg_s = reinterpret_cast<int32_t*>(d_s + kRows);         // [64]
  int32_t* kseg_s = qseg_s + kRows;                                  // [64]
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* scratch = reinterpret_cast<float*>(smem + L::kScratch) + warp * kFrag * kScratchLd;  // [16][36]

  // 32-bit positions and heads (T < 65536 x 64 by the launch check); 64-bit row offsets.
  const int b = blockIdx.x / Hkv, g = blockIdx.x % Hkv, group = Hq / Hkv;
  const int j0 = blockIdx.y * kKeys;      // first key of the block
  const int64_t base = int64_t(b) * T;    // first row of this sequence
  load_tile<Dh, E, kThreads>(k_s, k, base + j0, base + T, Hkv, g);
  load_tile<Dh, E, kThreads>(v_s, v, base + j0, base + T, Hkv, g);
  if (threadIdx.x < kKeys) {
    int j = j0 + threadIdx.x;
    kseg_s[threadIdx.x] = (seg && j < T) ? seg[base + j] : 0;
  }

  // This warp's pieces: S/dP/P/dS rows sq.. +16, columns sk.. +32 (the
  // scratch's width); dK/dV key rows kv_row.. +16, dims kv_col.. +Dh/2; dQ
  // query rows sq.. +16, dims dq_col.. +Dh/2.
  const int sq = (warp >> 1) * kFrag, sk = (warp & 1) * kScratchCols;
  const int kv_row = (warp & 3) * kFrag, kv_col = (warp >> 2) * kHalf, dq_col = (warp & 1) * kHalf;
  const float scale_log2 = scale * kLog2e;
  AccFrag dk_frag[kHalfFrags], dv_frag[kHalfFrags];
#pragma unroll
  for (int n = 0; n < kHalfFrags; ++n) { wmma::fill_fragment(dk_frag[n], 0.0f); wmma::fill_fragment(dv_frag[n], 0.0f); }

  for (int h = g * group; h < (g + 1) * group; ++h) {
    for (int t0 = j0; t0 < T; t0 += kQueries) {  // causal: queries before j0 see none of these keys
      __syncthreads();  // the previous step is done with q_s, do_s, p_s, ds_s
      load_tile<Dh, E, kThreads>(q_s, q, base + t0, base + T, Hq, h);
      load_tile<Dh, E, kThreads>(do_s, dout, base + t0, base + T, Hq, h);
      if (threadIdx.x < kQueries) {
        int t = t0 + threadIdx.x;
        bool in = t < T;
        lse_s[threadIdx.x] = in ? lse[(base + t) * Hq + h] * kLog2e : 0.0f;
        d_s[threadIdx.x] = in ? delta[(base + t) * Hq + h] : 0.0f;
        qseg_s[threadIdx.x] = (seg && in) ? seg[base + t] : 0;
      }
      __syncthreads();

      // P and dS [16 queries, 32 keys] of this warp; in put: lane = key column
      // sk + lane, r = query row sq + r. S and dP one after the other, so that
      // only one of them is live beside the dK/dV accumulators.
      const int col = sk + lane;
      const int j = j0 + col;
      const int32_t key_seg = kseg_s[col];
      AccFrag sp_frag[2];
      mul_abt<Dh, E>(sp_frag, q_s + sq * L::kLd, k_s + sk * L::kLd);  // S = Q K^T
      drain(sp_frag, scratch, lane, [&](int r, int, float s) {
        int t = t0 + sq + r;
        bool visible = t < T && j <= t && qseg_s[sq + r] == key_seg;  // j <= t < T: the key exists
        float p = visible ? exp2f(fmaf(s, scale_log2, -lse_s[sq + r])) : 0.0f;
        p_s[(sq + r) * L::kPLd + col] = from_f32<E>(p);
      });
      mul_abt<Dh, E>(sp_frag, do_s + sq * L::kLd, v_s + sk * L::kLd);  // dP = dO V^T
      drain(sp_frag, scratch, lane, [&](int r, int, float dp) {
        float p = to_f32(p_s[(sq + r) * L::kPLd + col]);  // this lane's own write above
        ds_s[(sq + r) * L::kPLd + col] = from_f32<E>(scale * p * (dp - d_s[sq + r]));
      });
      __syncthreads();  // P and dS complete

      // dV [16 keys, Dh/2] += P^T dO and dK += dS^T Q (P^T, dS^T: P, dS read column-major)
      mul_atb<Dh, E>(dv_frag, p_s + kv_row, do_s + kv_col);
      mul_atb<Dh, E>(dk_frag, ds_s + kv_row, q_s + kv_col);

      // dQ [16 queries, Dh/2] = dS K, added into dq_acc 32 columns at a time
      // (rows past T are padding)
#pragma unroll
      for (int n0 = 0; n0 < kHalfFrags; n0 += 2) {
        AccFrag dq_frag[2];
        wmma::fill_fragment(dq_frag[0], 0.0f);
        wmma::fill_fragment(dq_frag[1], 0.0f);
#pragma unroll
        for (int kk = 0; kk < kKeys; kk += kFrag) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> dsa;
          wmma::load_matrix_sync(dsa, ds_s + sq * L::kPLd + kk, L::kPLd);
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> kb;
            wmma::load_matrix_sync(kb, k_s + kk * L::kLd + dq_col + (n0 + n) * kFrag, L::kLd);
            wmma::mma_sync(dq_frag[n], dsa, kb, dq_frag[n]);
          }
        }
        float* dq_rows = dq_acc + ((base + t0 + sq) * Hq + h) * Dh + dq_col + n0 * kFrag;  // row r: + r Hq Dh
        atomic_add_rows(dq_frag, scratch, lane, dq_rows, int64_t(Hq) * Dh, T - (t0 + sq));
      }
    }
  }

  // dK, dV rows of this block's keys (rows past T are padding)
  int64_t row0 = ((base + j0 + kv_row) * Hkv + g) * Dh + kv_col;  // row r at + r Hkv Dh
  int rows_left = T - (j0 + kv_row);
  drain(dk_frag, scratch, lane, [&](int r, int c, float x) {
    if (r < rows_left) dk[row0 + r * Hkv * Dh + c] = from_f32<E>(x);
  });
  drain(dv_frag, scratch, lane, [&](int r, int c, float x) {
    if (r < rows_left) dv[row0 + r * Hkv * Dh + c] = from_f32<E>(x);
  });
#endif
}

// Runs both passes. delta [B*T*Hq] and dq_acc [B*T*Hq*Dh] are f32 workspaces.
template <int Dh, typename E>
void launch_backward(E* dk, E* dv, float* dq_acc, float* delta, const E* dout, const E* q, const E* k,
                     const E* v, const E* o, const float* lse, const int32_t* seg, int64_t B, int64_t T,
                     int64_t Hq, int64_t Hkv, float scale) {
  int64_t items = B * T * Hq, key_tiles = (T + kKeys - 1) / kKeys;
  NQ_CHECK(key_tiles <= 65535, "attention_backward: T = ", T, " needs ", key_tiles,
           " key tiles, over the grid's 65535");
  preprocess_kernel<Dh, E><<<unsigned((items + kWarps - 1) / kWarps), kThreads>>>(delta, dq_acc, dout, o, items);
  NQ_LAUNCH_CHECK();
  size_t bytes = Layout<Dh>::kTotal;
  CUDA_CHECK(cudaFuncSetAttribute(backward_kernel<Dh, E>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  dim3 grid(unsigned(B * Hkv), unsigned(key_tiles));
  backward_kernel<Dh, E><<<grid, kThreads, bytes>>>(dk, dv, dq_acc, dout, q, k, v, lse, delta, seg, int(T), int(Hq),
                                                 int(Hkv), scale);
  NQ_LAUNCH_CHECK();
}

}  // namespace bwd
}  // namespace flash
}  // namespace nq::kernels::cuda
