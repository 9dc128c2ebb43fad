// AdamW over one span of device memory: each thread runs kernels/adamw_math.h's
// adamw_update_element (the CPU optimizer's arithmetic, NQ_HD) on its elements,
// so results are bit-identical however the elements are split into spans or
// pages (elements are independent), and equal to the CPU AdamW wherever CUDA's
// sqrtf, division and fmaf round like the host's (IEEE, -prec-sqrt/-prec-div default).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

__global__ void adamw_span_kernel(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                                  AdamWScalars s, float grad_scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad_scale == 1.0f ? grad[i] : __fmul_rn(grad[i], grad_scale);  // no FMA contraction
    adamw_update_element(param[i], g, exp_avg[i], exp_avg_sq[i], s);
  }
}

void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s, float grad_scale, void* stream) {
  if (n <= 0) return;
  adamw_span_kernel<<<grid_for(n, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(param, grad, exp_avg,
                                                                                     exp_avg_sq, n, s, grad_scale);
  NQ_LAUNCH_CHECK();
}

}  // namespace nq::kernels::cuda
