// One AdamW update over a contiguous span of f32 elements on the GPU, with the
// per-element arithmetic of optim/adamw_update.h (the CPU optimizer's): the
// kernel the paged optimizer (optim/paged_adamw.h) runs on each page, and on
// whole tensors in its unpaged mode. No NQ_CUDA guard needed to include it;
// only CUDA builds define the function.
#pragma once
#include <cstdint>

#include "optim/adamw_update.h"

namespace nq::kernels::cuda {

// param, grad, exp_avg, exp_avg_sq: n f32 device elements each; launched on
// `stream` (a cudaStream_t; null = the default stream), asynchronously. The
// gradient used is grad * grad_scale (the clipping factor; 1 = as is), rounded
// to f32 like torch's in-place grad.mul_(coef) before the step.
void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s, float grad_scale, void* stream);

}  // namespace nq::kernels::cuda
