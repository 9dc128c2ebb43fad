// The global L2 norm of a list of f32 spans on the CPU, as torch's
// clip_grad_norm_ (norm_type 2) computes it for f32 tensors: each span's norm
// accumulated in double and rounded to f32 (torch's f32 norm kernels give an
// f32 result), then the norm of those norms, in double, rounded to f32.
#pragma once
#include <cstdint>
#include <vector>

namespace nq::cpu {

struct FloatSpan {
  const float* data;
  int64_t n;
};
float global_l2_norm(const std::vector<FloatSpan>& spans);

}  // namespace nq::cpu
