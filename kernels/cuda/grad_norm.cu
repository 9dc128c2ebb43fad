// Global gradient norm for clipping: sqrt(sum over tensors of sum_i g_i^2),
// over a list of f32 tensors in one multi-tensor launch.
// Launch: every tensor is cut into chunks of kChunkElems; a table of chunks
// (pointers already offset) goes to the device and one 512-thread block reduces
// each chunk in f32 and writes one double partial; the host adds the partials
// in double and takes the square root. One launch covers all LoRA gradients.
//   ./bench grad_norm --n 16777216
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

struct NormChunk {
  const float* g;
  int64_t n;
};

__global__ void sum_squares_kernel(double* partials, const NormChunk* chunks) {
  __shared__ float scratch[32];
  NormChunk c = chunks[blockIdx.x];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) acc += c.g[i] * c.g[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

double global_grad_norm(const std::vector<Tensor>& grads) {
  std::vector<NormChunk> chunks;
  for (size_t t = 0; t < grads.size(); ++t) {
    NQ_CHECK(grads[t].dtype() == DType::F32 && grads[t].device() == Device::CUDA,
             "global_grad_norm: tensor ", t, " must be f32 on cuda, got ", grads[t].desc());
    for (int64_t s = 0; s < grads[t].numel(); s += kChunkElems)
      chunks.push_back({ptr<float>(grads[t]) + s, std::min(kChunkElems, grads[t].numel() - s)});
  }
  if (chunks.empty()) return 0.0;
  Tensor table = upload_table(chunks);
  Tensor partials = Tensor::empty({int64_t(chunks.size())}, DType::I64, Device::CUDA, MemCategory::Workspace);
  sum_squares_kernel<<<unsigned(chunks.size()), 512>>>(static_cast<double*>(partials.raw()),
                                                       static_cast<const NormChunk*>(table.raw()));
  NQ_LAUNCH_CHECK();
  std::vector<double> host(chunks.size());
  CUDA_CHECK(cudaMemcpy(host.data(), partials.raw(), host.size() * sizeof(double), cudaMemcpyDeviceToHost));
  double total = 0.0;
  for (double p : host) total += p;
  return std::sqrt(total);
}

}  // namespace nq::kernels::cuda
