// Embedding gather / scatter-add (see embedding.h).
#include "kernels/cpu/embedding.h"

#include <algorithm>
#include <cstring>

#include <omp.h>

namespace nq::cpu {

template <typename T> void embedding_forward(const T* table, const int32_t* ids, T* out, int64_t N, int64_t D) {
#pragma omp parallel for if (N * D > (1 << 16))
  for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * D, table + int64_t(ids[n]) * D, size_t(D) * sizeof(T));
}

template <typename T>
void embedding_backward(const T* grad_out, const int32_t* ids, T* grad_table, int64_t N, int64_t V, int64_t D) {
  std::fill(grad_table, grad_table + V * D, T(0));
  // Each thread owns a contiguous block of columns, so no two threads add into
  // the same element and every row copy stays contiguous.
#pragma omp parallel if (N * D > (1 << 16))
  {
    int threads = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t d0 = D * t / threads, d1 = D * (t + 1) / threads;
    for (int64_t n = 0; n < N; ++n) {
      const T* g = grad_out + n * D;
      T* row = grad_table + int64_t(ids[n]) * D;
      for (int64_t d = d0; d < d1; ++d) row[d] += g[d];
    }
  }
}

template void embedding_forward<float>(const float*, const int32_t*, float*, int64_t, int64_t);
template void embedding_forward<double>(const double*, const int32_t*, double*, int64_t, int64_t);
template void embedding_backward<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void embedding_backward<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);

}  // namespace nq::cpu
