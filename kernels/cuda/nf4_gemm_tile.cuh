// One 64 x 64 output tile of a product against an NF4 weight, on the tensor cores:
// the body of nf4_matmul.cu's fused GEMM and of nf4_grouped_matmul.cu's per-expert
// tiles (one tile code, two schedulers).
//
//   out [rows m0..m_end, cols n0..n0+64) = a [M, K] . B  (+ the low-rank segment)
//   B(k, n) = W[n, k]  (forward: N = out, K = in)
//   B(k, n) = W[k, n]  (kTransposed, the input gradient: N = in, K = out)
//
// A 128-thread block: per 32-wide step of the reduction it stages the activation
// tile [64, 32] (in the staging type S: x's when 16-bit, else bf16) and DEQUANTIZES
// the weight tile [64, 32] into shared memory (NF4 code -> NF4 value x block absmax
// -> S); 4 warps (2 x 2, 32 x 32 each) run WMMA 16x16x16 fragments of S (mma.sync).
// The epilogue goes through shared memory for bounds-checked, coalesced stores.
// Rows are global indices of a and out; rows >= m_end and columns >= N are
// zero-padded in shared memory, so any shape works.
#pragma once
#include <mma.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nf4.cuh"

namespace nq::kernels::cuda {

constexpr int kTileM = 64, kTileN = 64, kTileK = 32;
constexpr int kStageLd = kTileK + 8;  // 16-bit row stride in shared memory (multiple of 8 for WMMA)
constexpr int kOutLd = kTileN + 4;    // f32 row stride of the epilogue tile
constexpr int kGemmThreads = 128;

// The low-rank segment: when r > 0, a [M, r] . (scale * E)^T with
// E(n, j) = w[n * stride_n + j * stride_j], run as r more steps of the same
// reduction (the reduction dim is K + r): the LoRA bypass riding on the product.
template <typename T>
struct ExtraSegment {
  const T* a = nullptr;
  const T* w = nullptr;
  int64_t r = 0, stride_n = 0, stride_j = 0;
  float scale = 0.0f;
};

// The tensor-core input type for activations of type T: T itself when 16-bit, bf16
// for f32; f16 on GPUs before sm_80 (the host never runs bf16 there: common.cuh).
template <typename T> struct StageType {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  using type = f16;
#else
  using type = std::conditional_t<std::is_same<T, f16>::value, f16, bf16>;
#endif
};

// Called by all kGemmThreads threads of a block, each block one tile.
template <bool kTransposed, typename T>
__device__ __forceinline__ void nf4_gemm_tile(T* out, const T* a, const Nf4Weight& w, int64_t m0, int64_t m_end,
                                              int64_t n0, int64_t N, int64_t K, const ExtraSegment<T>& ext) {
  namespace wmma = nvcuda::wmma;
  using S = typename StageType<T>::type;
  __shared__ __align__(32) S a_tile[kTileM * kStageLd];     // [64][32] row-major
  __shared__ __align__(32) S b_tile[kTileN * kStageLd];     // [64 n][32 k]: B column-major
  __shared__ __align__(32) float c_tile[kTileM * kOutLd];   // [64][64] epilogue
  int warp = threadIdx.x >> 5, warp_m = warp >> 1, warp_n = warp & 1;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < K + ext.r; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTileM * kTileK; e += kGemmThreads) {
      int r = e / kTileK, c = e % kTileK;
      int64_t gm = m0 + r, gk = k0 + c;
      float v = 0.0f;
      if (gm < m_end && gk < K) v = to_f32(a[gm * K + gk]);
      else if (gm < m_end && gk < K + ext.r) v = to_f32(ext.a[gm * ext.r + (gk - K)]);
      a_tile[r * kStageLd + c] = from_f32<S>(v);
    }
    for (int e = threadIdx.x; e < kTileN * kTileK; e += kGemmThreads) {
      // index order chosen so that consecutive threads decode consecutive weight bytes
      int n = kTransposed ? e % kTileN : e / kTileK, kk = kTransposed ? e / kTileN : e % kTileK;
      int64_t gn = n0 + n, gk = k0 + kk;
      float v = 0.0f;
      if (gn < N && gk < K) v = nf4_element(w, kTransposed ? gk * w.in + gn : gn * w.in + gk);
      else if (gn < N && gk < K + ext.r) v = ext.scale * to_f32(ext.w[gn * ext.stride_n + (gk - K) * ext.stride_j]);
      b_tile[n * kStageLd + kk] = from_f32<S>(v);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a_tile + (warp_m * 32 + i * 16) * kStageLd + kk, kStageLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], b_tile + (warp_n * 32 + j * 16) * kStageLd + kk, kStageLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(c_tile + (warp_m * 32 + i * 16) * kOutLd + warp_n * 32 + j * 16, acc[i][j], kOutLd,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTileM * kTileN; e += kGemmThreads) {
    int r = e / kTileN, c = e % kTileN;
    int64_t gm = m0 + r, gn = n0 + c;
    if (gm < m_end && gn < N) out[gm * N + gn] = from_f32<T>(c_tile[r * kOutLd + c]);
  }
}

}  // namespace nq::kernels::cuda
