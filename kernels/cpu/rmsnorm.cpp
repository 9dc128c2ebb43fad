// RMSNorm forward/backward (math in rmsnorm.h). Rows are independent, so
// threads split rows; grad_w, a sum over rows, is split by columns instead.
#include "kernels/cpu/rmsnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

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
  const bool parallel = N * D > (1 << 15);
  if (grad_x) {
#pragma omp parallel for if (parallel)
    for (int64_t n = 0; n < N; ++n) {
      const T *xr = x + n * D, *dy = grad_y + n * D;
      const T r = rstd[n];
      T dot = 0;  // sum_d (dy * w) * xhat
      for (int64_t d = 0; d < D; ++d) dot += dy[d] * w[d] * (xr[d] * r);
      const T mean_dot = dot / T(D);
      for (int64_t d = 0; d < D; ++d) grad_x[n * D + d] = r * (dy[d] * w[d] - xr[d] * r * mean_dot);
    }
  }
  if (grad_w) {
    // dw[d] = sum_n dy[n, d] * xhat[n, d]. Each thread owns a block of columns
    // and adds the rows in order, so the result is the same on every run.
#pragma omp parallel if (parallel)
    {
      int threads = omp_get_num_threads(), t = omp_get_thread_num();
      int64_t d0 = D * t / threads, d1 = D * (t + 1) / threads;
      std::fill(grad_w + d0, grad_w + d1, T(0));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = d0; d < d1; ++d) grad_w[d] += grad_y[n * D + d] * (x[n * D + d] * rstd[n]);
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
