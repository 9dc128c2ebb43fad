// Elementwise dtype conversion between f32, bf16 and f16 on the GPU (see cast.h).
// Launch: grid-stride loop, 256 threads per block.
#include "kernels/cuda/cast.h"
#include "kernels/cuda/common.cuh"

namespace nq::kernels::cuda {

template <typename In, typename Out>
__global__ void cast_kernel(Out* out, const In* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<Out>(to_f32(in[i]));
}

Tensor cast(const Tensor& x, DType dtype) {
  Tensor out = Tensor::empty(x.shape(), dtype, Device::CUDA);
  const int64_t n = x.numel();
  if (n == 0) return out;
  dispatch_float(x, "cast", [&](auto in_tag) {
    using In = decltype(in_tag);
    dispatch_float(out, "cast", [&](auto out_tag) {
      using Out = decltype(out_tag);
      cast_kernel<In, Out><<<grid_for(n, 256), 256>>>(ptr<Out>(out), ptr<In>(x), n);
    });
  });
  NQ_LAUNCH_CHECK();
  return out;
}

}  // namespace nq::kernels::cuda
