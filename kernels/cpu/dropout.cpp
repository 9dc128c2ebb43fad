// Dropout mask application (see dropout.h).
#include "kernels/cpu/dropout.h"

#include "runtime/philox.h"

namespace nq::cpu {

template <typename T> void dropout_apply(const T* in, T* out, int64_t n, float p, uint64_t seed, uint64_t offset) {
  T keep_scale = T(1) / (T(1) - T(p));
#pragma omp parallel for if (n > (1 << 17))
  for (int64_t i = 0; i < n; ++i) out[i] = philox_uniform(seed, offset, uint64_t(i)) >= p ? in[i] * keep_scale : T(0);
}

template void dropout_apply<float>(const float*, float*, int64_t, float, uint64_t, uint64_t);
template void dropout_apply<double>(const double*, double*, int64_t, float, uint64_t, uint64_t);

}  // namespace nq::cpu
