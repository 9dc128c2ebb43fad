// Dropout mask application (see dropout.h).
#include "kernels/cpu/dropout.h"

#include "runtime/philox.h"

namespace nq::cpu {

template <typename T> void dropout_apply(const T* in, T* out, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const T keep_scale = T(1) / (T(1) - T(p));
  // One Philox block (10 rounds) gives the uniforms of 4 consecutive elements:
  // philox_uniform(seed, offset, i) is lane i % 4 of block offset + i / 4. Drawing
  // one block per element instead cost 4x the rounds (a quarter of ./train's CPU
  // time with LoRA dropout on).
  const int64_t blocks = (n + 3) / 4;
#pragma omp parallel for if (n > (1 << 17))
  for (int64_t b = 0; b < blocks; ++b) {
    const Philox4 u = philox4x32_10(offset + uint64_t(b), seed);
    for (int64_t lane = 0, i = 4 * b; lane < 4 && i < n; ++lane, ++i)
      out[i] = u32_to_uniform(u.v[lane]) >= p ? in[i] * keep_scale : T(0);
  }
}

template void dropout_apply<float>(const float*, float*, int64_t, float, uint64_t, uint64_t);
template void dropout_apply<double>(const double*, double*, int64_t, float, uint64_t, uint64_t);

}  // namespace nq::cpu
