// lm_head fused with cross-entropy, in row chunks, so the [N, V] logits never
// exist at once (V = 151936 for Qwen3: 16k tokens x V in f32 would be 10 GB).
// h [N, D], w [V, D] (both f32 or both bf16), labels [N] i32 (kIgnoreIndex = ignored).
// For each chunk of R = chunk_rows rows:
//   1. logits [R, V] f32 = h_c w^T                     (cuBLASLt, fp32 accumulate)
//   2. one block per row: lse = log sum_j exp(logit_j) in one pass with a
//      running max (pairs (m, s) merged as m = max, s = s1 e^(m1-m) + s2 e^(m2-m), f32);
//      row loss = lse - logit[label]; when gradients are wanted the block also
//      writes dlogits [R, V] = (softmax - onehot(label)) / count in h's dtype
//      (zero for ignored rows)
//   3. grad_h_c = dlogits w          [R, V] x [V, D]   (cuBLASLt)
//      grad_w  += dlogits^T h_c      [V, R] x [R, D]   (cuBLASLt, beta = 1)
// loss = sum of row losses / count, added on the host in double.
// Launch (step 2): R blocks of 512 threads; each row is read twice
// (max and sum of exp together, then the gradient).
//   ./bench cross_entropy --tokens 4096 --hidden 1024 --vocab 151936 --chunk 1024
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"
#include "kernels/kernels.h"  // kIgnoreIndex

namespace nq::kernels::cuda {

// Running (max, sum of exp(z - max)) pairs, merged: the softmax denominator in one pass.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}
// Merged over the block (called once per kernel: scratch is not reused); every thread gets it.
__device__ __forceinline__ MaxSum block_max_sum(MaxSum v, MaxSum* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    v = merge(v, {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : MaxSum{-INFINITY, 0.0f};
  for (int o = 16; o > 0; o >>= 1)
    v = merge(v, {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
  return v;
}

template <typename T>
__global__ void softmax_ce_kernel(float* row_loss, T* dlogits, const float* logits, const int32_t* labels, int64_t V,
                                  float inv_count) {
  __shared__ MaxSum scratch[32];
  int64_t r = blockIdx.x;
  const float* row = logits + r * V;
  // pass 1: online max and sum of exp; a new max rescales the sum (one exp per logit)
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    float z = row[j];
    if (z > acc.m) {
      acc.s = acc.s * expf(acc.m - z) + 1.0f;
      acc.m = z;
    } else {
      acc.s += expf(z - acc.m);
    }
  }
  acc = block_max_sum(acc, scratch);
  float lse = acc.m + logf(acc.s);
  int32_t label = labels[r];
  bool counted = label != kIgnoreIndex;
  if (threadIdx.x == 0) row_loss[r] = counted ? lse - row[label] : 0.0f;
  if (!dlogits) return;
  // pass 2: the gradient (softmax - onehot) / count
  T* drow = dlogits + r * V;
  float scale = counted ? inv_count : 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
    drow[j] = from_f32<T>((expf(row[j] - lse) - (j == label ? 1.0f : 0.0f)) * scale);
}

float linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& labels, int64_t chunk_rows,
                           Tensor* grad_h, Tensor* grad_w, int64_t* count) {
  int64_t N = h.size(0), D = h.size(1), V = w.size(0);
  NQ_CHECK(h.dtype() == w.dtype(), "linear_cross_entropy: h ", h.desc(), " and w ", w.desc(),
           " must have the same dtype on the GPU");
  std::vector<int32_t> host_labels = checked_ids(labels, V, "linear_cross_entropy", "labels", kIgnoreIndex);
  int64_t counted = 0;
  for (int32_t l : host_labels) counted += l != kIgnoreIndex;
  if (count) *count = counted;
  if (grad_h) *grad_h = Tensor::empty(h.shape(), h.dtype(), Device::CUDA);
  if (grad_w && !grad_w->defined()) *grad_w = Tensor::zeros(w.shape(), DType::F32, Device::CUDA);
  bool want_grad = grad_h || grad_w;
  if (N == 0) return 0.0f;

  int64_t R = std::max<int64_t>(1, std::min(chunk_rows, N));
  Tensor logits = Tensor::empty({R, V}, DType::F32, Device::CUDA, MemCategory::Workspace);
  Tensor dlogits = want_grad ? Tensor::empty({R, V}, h.dtype(), Device::CUDA, MemCategory::Workspace) : Tensor();
  Tensor row_loss = Tensor::empty({N}, DType::F32, Device::CUDA, MemCategory::Workspace);
  float inv_count = counted ? 1.0f / float(counted) : 0.0f;
  size_t elem = dtype_size(h.dtype());

  for (int64_t r0 = 0; r0 < N; r0 += R) {
    int64_t rows = std::min(R, N - r0);
    const char* h_c = static_cast<const char*>(h.raw()) + r0 * D * elem;
    GemmArgs fwd{h_c, h.dtype(), false, w.raw(), w.dtype(), true, logits.raw(), DType::F32, rows, V, D};
    gemm(fwd);
    dispatch_float(h, "linear_cross_entropy", [&](auto tag) {
      using T = decltype(tag);
      softmax_ce_kernel<T><<<unsigned(rows), 512>>>(ptr<float>(row_loss) + r0, want_grad ? ptr<T>(dlogits) : nullptr,
                                                    ptr<float>(logits), ptr<int32_t>(labels) + r0, V, inv_count);
      NQ_LAUNCH_CHECK();
    });
    if (grad_h) {
      char* gh_c = static_cast<char*>(grad_h->raw()) + r0 * D * elem;
      gemm({dlogits.raw(), h.dtype(), false, w.raw(), w.dtype(), false, gh_c, h.dtype(), rows, D, V});
    }
    if (grad_w) {
      GemmArgs dw{dlogits.raw(), h.dtype(), true, h_c, h.dtype(), false, grad_w->raw(), grad_w->dtype(), V, D, rows};
      dw.beta = 1.0f;
      gemm(dw);
    }
  }
  std::vector<float> losses(N);
  CUDA_CHECK(cudaMemcpy(losses.data(), row_loss.raw(), N * sizeof(float), cudaMemcpyDeviceToHost));
  double total = 0.0;
  for (float l : losses) total += l;
  return counted ? float(total / double(counted)) : 0.0f;
}

}  // namespace nq::kernels::cuda
