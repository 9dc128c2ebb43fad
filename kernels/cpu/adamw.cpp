// The AdamW span update on the CPU (see adamw.h). Results match torch in fp32 up
// to its sqrt: torch's CPU sqrt goes through MKL's vector math, which is not
// always correctly rounded.
#include "kernels/cpu/adamw.h"

namespace nq::cpu {

void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s, float grad_scale) {
  // g * grad_scale is rounded to f32 (no FMA contraction: -ffp-contract=off), as torch's
  // grad.mul_(coef) stores it; x * 1.0f == x, so grad_scale = 1 uses g as it is.
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) adamw_update_element(param[i], grad[i] * grad_scale, exp_avg[i], exp_avg_sq[i], s);
}

}  // namespace nq::cpu
