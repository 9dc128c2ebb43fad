// RoPE rotation (see rope.h). inv_freq follows HF: 1 / theta^(2i / Dh).
#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

namespace nq::cpu {

template <typename T>
void rope_rotate(const T* x, const int32_t* positions, T theta, int direction, T* y, int64_t N, int64_t H,
                 int64_t Dh) {
  int64_t half = Dh / 2;
  std::vector<T> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = rope_inv_freq(theta, i, Dh);
#pragma omp parallel if (N * H * Dh > (1 << 15))
  {
    std::vector<T> cos_a(half), sin_a(half);  // this token's angles, shared by its H heads
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t i = 0; i < half; ++i) {
        T angle = T(positions[n]) * inv_freq[i];
        cos_a[i] = std::cos(angle);
        sin_a[i] = T(direction) * std::sin(angle);
      }
      for (int64_t h = 0; h < H; ++h) {
        const T* xh = x + (n * H + h) * Dh;
        T* yh = y + (n * H + h) * Dh;
        for (int64_t i = 0; i < half; ++i) {
          T lo = xh[i], hi = xh[i + half];
          yh[i] = lo * cos_a[i] - hi * sin_a[i];
          yh[i + half] = hi * cos_a[i] + lo * sin_a[i];
        }
      }
    }
  }
}

template void rope_rotate<float>(const float*, const int32_t*, float, int, float*, int64_t, int64_t, int64_t);
template void rope_rotate<double>(const double*, const int32_t*, double, int, double*, int64_t, int64_t, int64_t);

}  // namespace nq::cpu
