// Elementwise CPU kernels (see elementwise.h). Threads only pay off for large n.
#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <vector>

namespace nq::cpu {

constexpr int64_t kParallelMin = 1 << 16;

template <typename T> void add_inplace(T* dst, const T* src, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}
template <typename T> void add(const T* a, const T* b, T* out, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
template <typename T> void mul(const T* a, const T* b, T* out, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}
template <typename T> void scale(const T* a, T s, T* out, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = s * a[i];
}
// Blocks of fixed size summed in order: the same result on every run and for
// any thread count (a plain OpenMP reduction adds partial sums in arrival order).
template <typename T> double sum(const T* a, int64_t n) {
  constexpr int64_t kBlock = 4096;
  std::vector<double> partial((n + kBlock - 1) / kBlock, 0.0);
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t b = 0; b < int64_t(partial.size()); ++b)
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) partial[b] += double(a[i]);
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

#define NQ_INSTANTIATE(T)                                   \
  template void add_inplace<T>(T*, const T*, int64_t);      \
  template void add<T>(const T*, const T*, T*, int64_t);    \
  template void mul<T>(const T*, const T*, T*, int64_t);    \
  template void scale<T>(const T*, T, T*, int64_t);         \
  template double sum<T>(const T*, int64_t);
NQ_INSTANTIATE(float)
NQ_INSTANTIATE(double)
#undef NQ_INSTANTIATE

}  // namespace nq::cpu
