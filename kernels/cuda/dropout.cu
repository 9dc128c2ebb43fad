// Dropout with the counter-based Philox stream (runtime/philox.h), so the mask
// is the CPU's bit for bit: element i is kept iff philox_uniform(seed, offset, i)
// >= p, and kept values are scaled by 1/(1-p). The backward applies the same
// mask to the gradient, so both directions are this one kernel.
// Shapes: any, n elements (f32/bf16). Launch: one thread per Philox block of 4
// elements (one philox4x32_10 call yields the 4 uniforms i = 4t..4t+3),
// grid-stride, 256 threads per block.
//   ./bench dropout --n 16777216
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "runtime/philox.h"

namespace nq::kernels::cuda {

template <typename T>
__global__ void dropout_kernel(T* y, const T* x, int64_t n, float p, float keep_scale, uint64_t seed, uint64_t offset) {
  int64_t groups = (n + 3) / 4;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < groups; t += int64_t(gridDim.x) * blockDim.x) {
    Philox4 r = philox4x32_10(offset + uint64_t(t), seed);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      int64_t i = 4 * t + lane;
      if (i >= n) break;
      float u = u32_to_uniform(r.v[lane]);  // = philox_uniform(seed, offset, i)
      y[i] = from_f32<T>(u >= p ? to_f32(x[i]) * keep_scale : 0.0f);
    }
  }
}

static Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset, const char* op) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  int64_t n = x.numel();
  if (n == 0) return y;
  float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  dispatch_float(x, op, [&](auto tag) {
    using T = decltype(tag);
    dropout_kernel<T><<<grid_for((n + 3) / 4, 256), 256>>>(ptr<T>(y), ptr<T>(x), n, p, keep_scale, seed, offset);
    NQ_LAUNCH_CHECK();
  });
  return y;
}

Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  return dropout(x, p, seed, offset, "dropout_forward");
}
Tensor dropout_backward(const Tensor& grad_y, float p, uint64_t seed, uint64_t offset) {
  return dropout(grad_y, p, seed, offset, "dropout_backward");
}

}  // namespace nq::kernels::cuda
