// RMSNorm as in HF Qwen3:  rstd = 1 / sqrt(mean_d(x^2) + eps),  y = w * (x * rstd).
// Backward, with xhat = x * rstd and g = dy * w (per row of D):
//   dx = rstd * (g - xhat * mean_d(g * xhat)),   dw = sum over rows of dy * xhat.
#pragma once
#include <cstdint>

namespace nq::cpu {

// x [N, D], w [D] -> y [N, D], rstd [N]
template <typename T> void rmsnorm_forward(const T* x, const T* w, T eps, T* y, T* rstd, int64_t N, int64_t D);
// grad_x [N, D] (null = skip), grad_w [D] (written, not accumulated; null = skip)
template <typename T>
void rmsnorm_backward(const T* grad_y, const T* x, const T* w, const T* rstd, T* grad_x, T* grad_w, int64_t N,
                      int64_t D);

}  // namespace nq::cpu
