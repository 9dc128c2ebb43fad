#include "kernels/cpu/elementwise.h"

namespace nq::cpu {

template <typename T> void add_inplace(T* dst, const T* src, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}
template void add_inplace<float>(float*, const float*, int64_t);
template void add_inplace<double>(double*, const double*, int64_t);

}  // namespace nq::cpu
