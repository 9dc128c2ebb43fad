// Embedding gather and its backward scatter-add.
//   forward:  out[n, :] = table[ids[n], :]        table [V, D] (f32/bf16), ids [N] i32 -> [N, D]
//   backward: grad_table[ids[n], :] += grad_out[n, :]   -> [V, D] f32 (fp32 atomics: a token
//             that repeats adds into the same row from several blocks)
// Launch: one block of 256 threads per token row n (grid N), threads stride over D.
// Ids are checked on the host first (checked_ids): a bad id is an nq::Error, not a wild write.
//   ./bench embedding --tokens 16384 --hidden 1024 --vocab 151936
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

template <typename T>
__global__ void embedding_gather_kernel(T* out, const T* table, const int32_t* ids, int64_t D) {
  int64_t n = blockIdx.x;
  const T* src = table + int64_t(ids[n]) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[n * D + d] = src[d];
}

template <typename T>
__global__ void embedding_scatter_add_kernel(float* grad_table, const T* grad_out, const int32_t* ids, int64_t D) {
  int64_t n = blockIdx.x;
  float* dst = grad_table + int64_t(ids[n]) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(dst + d, to_f32(grad_out[n * D + d]));
}

Tensor embedding_forward(const Tensor& table, const Tensor& ids) {
  int64_t N = ids.numel(), D = table.size(1);
  Tensor out = Tensor::empty({N, D}, table.dtype(), Device::CUDA);
  if (N == 0 || D == 0) return out;
  checked_ids(ids, table.size(0), "embedding_forward", "ids");
  dispatch_float(table, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    embedding_gather_kernel<T><<<unsigned(N), 256>>>(ptr<T>(out), ptr<T>(table), ptr<int32_t>(ids), D);
    NQ_LAUNCH_CHECK();
  });
  return out;
}

Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t V) {
  int64_t N = ids.numel(), D = grad_out.size(-1);
  Tensor grad = Tensor::zeros({V, D}, DType::F32, Device::CUDA);
  if (N == 0 || D == 0) return grad;
  checked_ids(ids, V, "embedding_backward", "ids");
  dispatch_float(grad_out, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    embedding_scatter_add_kernel<T><<<unsigned(N), 256>>>(ptr<float>(grad), ptr<T>(grad_out), ptr<int32_t>(ids), D);
    NQ_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace nq::kernels::cuda
