// RMSNorm forward/backward (math in rmsnorm.h). Rows are independent, so
// threads split rows; grad_w is a sum over rows, kept per thread and then added.
#include "kernels/cpu/rmsnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace nq::cpu {

template <typename T> void rmsnorm_forward(const T* x, const T* w, T eps, T* y, T* rstd, int64_t N, int64_t D) {
#pragma omp parallel for if (N * D > (1 << 15))
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    T sum_sq = 0;
    for (int64_t d = 0; d < D; ++d) sum_sq += xr[d] * xr[d];
    T r = T(1) / std::sqrt(sum_sq / T(D) + eps);
    rstd[n] = r;
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = w[d] * (xr[d] * r);
  }
}

template <typename T>
void rmsnorm_backward(const T* grad_y, const T* x, const T* w, const T* rstd, T* grad_x, T* grad_w, int64_t N,
                      int64_t D) {
  if (grad_w) std::fill(grad_w, grad_w + D, T(0));
#pragma omp parallel if (N * D > (1 << 15))
  {
    std::vector<T> dw_local(grad_w ? D : 0, T(0));  // this thread's share of sum_n dy * xhat
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      const T *xr = x + n * D, *dy = grad_y + n * D;
      T r = rstd[n];
      if (grad_x) {
        T dot = 0;  // sum_d (dy * w) * xhat
        for (int64_t d = 0; d < D; ++d) dot += dy[d] * w[d] * (xr[d] * r);
        T mean_dot = dot / T(D);
        for (int64_t d = 0; d < D; ++d) grad_x[n * D + d] = r * (dy[d] * w[d] - xr[d] * r * mean_dot);
      }
      for (int64_t d = 0; d < int64_t(dw_local.size()); ++d) dw_local[d] += dy[d] * (xr[d] * r);
    }
    if (grad_w) {
#pragma omp critical
      for (int64_t d = 0; d < D; ++d) grad_w[d] += dw_local[d];
    }
  }
}

template void rmsnorm_forward<float>(const float*, const float*, float, float*, float*, int64_t, int64_t);
template void rmsnorm_forward<double>(const double*, const double*, double, double*, double*, int64_t, int64_t);
template void rmsnorm_backward<float>(const float*, const float*, const float*, const float*, float*, float*, int64_t,
                                      int64_t);
template void rmsnorm_backward<double>(const double*, const double*, const double*, const double*, double*, double*,
                                       int64_t, int64_t);

}  // namespace nq::cpu
