// The AdamW update on the CPU: kernels/adamw_math.h's per-element update over
// spans of host memory (param, exp_avg, exp_avg_sq in place), the CPU twin of
// kernels/cuda/adamw_span.cu.
#pragma once
#include <cstdint>

#include "kernels/adamw_math.h"

namespace nq::cpu {

// n elements each; the gradient used is grad * grad_scale rounded to f32.
void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s, float grad_scale);

}  // namespace nq::cpu
