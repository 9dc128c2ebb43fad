// Matmuls against an NF4 weight W [out, in] (bitsandbytes layout, kernels/cuda/nf4.h),
// for M < 256 rows dequantized inside the kernel (no bf16 copy of W exists in memory),
// from 256 rows on dequantized into a workspace and multiplied by cuBLASLt.
//   forward:  y [M, out] = x [M, in] W^T        nf4_matmul
//   backward: dx [M, in] = dy [M, out] W        nf4_matmul_dx (W read transposed)
// x / dy are bf16 or f16 (f32 accepted, rounded to bf16 when staged; to f16 on
// sm_70/75, which have no bf16 tensor cores); accumulation f32; the output has the
// input's dtype.
//
// Which way runs is chosen by M (kernels/cuda/nf4.h): GEMV, this file's fused GEMM,
// or, for M >= kNf4DequantMinRows, W dequantized into a workspace and cuBLASLt.
//
// Fused, 16 < M: tensor-core GEMM, one 128-thread block per 64 x 64 output tile
// (nf4_gemm_tile.cuh: x's tile staged, W's tile DEQUANTIZED into shared memory,
// WMMA 16x16x16 fragments, which compile to mma.sync). A low-rank term (the LoRA
// bypass, lora.cu) rides along as r extra steps of the reduction:
// y = [x | u] [W | s B]^T, so y is written once.
// Shapes of any size work (edges are zero-padded in shared memory).
//
// Fused, M <= 16: GEMV (decode, tiny batches): weight bytes dominate, so each weight
// element is decoded once and used for all M rows. Forward: one warp per output
// feature, lanes stride over `in`, warp-sum at the end. Backward: one thread per
// input feature, looping over `out` (consecutive threads read consecutive bytes).
//   ./bench nf4_matmul --m 4096 --n 4096 --k 4096   (M, out, in)    ./bench nf4_matmul --m 8 ...
//   ./bench nf4_matmul_fused --m 2048 ...   ./bench nf4_matmul_dequant --m 2048 ...   (one way, forced)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/nf4.cuh"
#include "kernels/cuda/nf4_gemm_tile.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

template <bool kTransposed, typename T>
__global__ void __launch_bounds__(kGemmThreads)
    nf4_gemm_kernel(T* out, const T* a, Nf4Weight w, int64_t M, int64_t N, int64_t K, ExtraSegment<T> ext) {
  nf4_gemm_tile<kTransposed>(out, a, w, int64_t(blockIdx.y) * kTileM, M, int64_t(blockIdx.x) * kTileN, N, K, ext);
}

constexpr int kGemvMaxRows = int(kNf4GemvMaxRows);

// y [M, out] = x [M, in] W^T for M <= 16: warp per output feature.
template <typename T>
__global__ void nf4_gemv_kernel(T* y, const T* x, Nf4Weight w, int M) {
  int64_t o = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (o >= w.out) return;
  float acc[kGemvMaxRows];
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m) acc[m] = 0.0f;
  for (int64_t i = lane; i < w.in; i += 32) {
    float wv = nf4_element(w, o * w.in + i);
#pragma unroll
    for (int m = 0; m < kGemvMaxRows; ++m)
      if (m < M) acc[m] += wv * to_f32(x[m * w.in + i]);
  }
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m) {
    if (m >= M) break;
    float s = warp_sum(acc[m]);
    if (lane == 0) y[m * w.out + o] = from_f32<T>(s);
  }
}

// dx [M, in] = dy [M, out] W for M <= 16: thread per input feature.
template <typename T>
__global__ void nf4_gemv_dx_kernel(T* dx, const T* dy, Nf4Weight w, int M) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= w.in) return;
  float acc[kGemvMaxRows];
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m) acc[m] = 0.0f;
  for (int64_t o = 0; o < w.out; ++o) {
    float wv = nf4_element(w, o * w.in + i);
#pragma unroll
    for (int m = 0; m < kGemvMaxRows; ++m)
      if (m < M) acc[m] += wv * to_f32(dy[m * w.out + o]);
  }
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m)
    if (m < M) dx[m * w.in + i] = from_f32<T>(acc[m]);
}

// The Dequantized way: W -> x's dtype in a workspace [out, in], then out [M, N] = x . B
// with B = W^T (forward) or W (transposed) through cuBLASLt; the low-rank term is a
// second product added into out (beta = 1): + scale * a [M, r] . (w^T | w).
template <bool kTransposed>
static void nf4_product_dequantized(Tensor& out, const Tensor& x, const Nf4Weight& w, const LowRankTerm* extra,
                                    int64_t M, int64_t N, int64_t K) {
  const Tensor wd = nf4_dequantize(w, x.dtype(), MemCategory::Workspace);  // [out, in], freed on return
  gemm({x.raw(), x.dtype(), false, wd.raw(), wd.dtype(), !kTransposed, out.raw(), out.dtype(), M, N, K});
  if (extra) {
    const int64_t R = extra->a.size(-1);
    // forward: w = B [out = N, r], used transposed; transposed: w = A [r, in = N], as is
    gemm({extra->a.raw(), x.dtype(), false, extra->w.raw(), x.dtype(), !kTransposed, out.raw(), out.dtype(), M, N, R,
          extra->scale, 1.0f});
  }
}

// Shared driver: x [M, K] -> out [M, N]; forward K = in, N = out; transposed K = out, N = in.
template <bool kTransposed>
static Tensor nf4_product(const Tensor& x, const Nf4Weight& w, const LowRankTerm* extra, Nf4MatmulPath path,
                          const char* op) {
  int64_t K = kTransposed ? w.out : w.in, N = kTransposed ? w.in : w.out;
  NQ_CHECK(x.ndim() >= 1 && x.size(-1) == K, op, ": x ", x.shape().str(), " does not end in ", K,
           " (NF4 weight [", w.out, ", ", w.in, "])");
  int64_t M = K ? x.numel() / K : 0;
  Shape shape = x.shape();
  shape.dims[shape.ndim - 1] = N;
  Tensor out = Tensor::empty(shape, x.dtype(), Device::CUDA);
  if (M == 0 || N == 0) return out;
  int64_t R = extra ? extra->a.size(-1) : 0;
  if (extra) {
    // forward: a [M, r], w = B [out, r];  transposed: a [M, r], w = A [r, in]
    Shape want_w = kTransposed ? Shape{R, N} : Shape{N, R};
    NQ_CHECK(extra->a.numel() == M * R && extra->w.shape() == want_w, op, ": low-rank term a ",
             extra->a.shape().str(), ", w ", extra->w.shape().str(), " does not fit x ", x.shape().str(),
             " (expected a [", M, ", r], w ", kTransposed ? "[r, in]" : "[out, r]", ")");
  }
  if (K + R == 0) { CUDA_CHECK(cudaMemset(out.raw(), 0, out.nbytes())); return out; }
  if (extra)
    NQ_CHECK(extra->a.dtype() == x.dtype() && extra->w.dtype() == x.dtype(), op, ": low-rank operands ",
             extra->a.desc(), ", ", extra->w.desc(), " must have the dtype of ", x.desc());
  if (path == Nf4MatmulPath::Auto)
    path = M >= kNf4DequantMinRows ? Nf4MatmulPath::Dequantized : Nf4MatmulPath::Fused;
  dispatch_float(x, op, [&](auto tag) {
    using T = decltype(tag);
    if (path == Nf4MatmulPath::Dequantized) return nf4_product_dequantized<kTransposed>(out, x, w, extra, M, N, K);
    if (M <= kGemvMaxRows && !extra && !kTransposed) {
      nf4_gemv_kernel<T><<<unsigned((N + 7) / 8), 256>>>(ptr<T>(out), ptr<T>(x), w, int(M));
    } else if (M <= kGemvMaxRows && !extra) {
      nf4_gemv_dx_kernel<T><<<unsigned((N + 127) / 128), 128>>>(ptr<T>(out), ptr<T>(x), w, int(M));
    } else {
      ExtraSegment<T> ext;
      if (extra) {
        // E(n, j): forward E = B [out, r] (row n); transposed E(n, j) = A[j, n], A [r, in].
        ext = {ptr<T>(extra->a), ptr<T>(extra->w), R, kTransposed ? 1 : R, kTransposed ? N : 1, extra->scale};
      }
      int64_t m_tiles = (M + kTileM - 1) / kTileM;
      NQ_CHECK(m_tiles <= 65535, op, ": ", M, " rows exceed the GEMM grid (gridDim.y <= 65535 tiles of ", kTileM,
               "); split the batch");
      dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned(m_tiles));
      nf4_gemm_kernel<kTransposed, T><<<grid, kGemmThreads>>>(ptr<T>(out), ptr<T>(x), w, M, N, K, ext);
    }
    NQ_LAUNCH_CHECK();
  });
  return out;
}

Tensor nf4_matmul(const Tensor& x, const Nf4Weight& w, const LowRankTerm* extra, Nf4MatmulPath path) {
  return nf4_product<false>(x, w, extra, path, "nf4_matmul");
}
Tensor nf4_matmul_dx(const Tensor& dy, const Nf4Weight& w, const LowRankTerm* extra, Nf4MatmulPath path) {
  return nf4_product<true>(dy, w, extra, path, "nf4_matmul_dx");
}

}  // namespace nq::kernels::cuda
