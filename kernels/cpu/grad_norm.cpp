// The global L2 norm on the CPU (see grad_norm.h).
#include "kernels/cpu/grad_norm.h"

#include <cmath>

namespace nq::cpu {

static float l2_norm(const float* x, int64_t n) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_sq += double(x[i]) * double(x[i]);
  return float(std::sqrt(sum_sq));
}

float global_l2_norm(const std::vector<FloatSpan>& spans) {
  double sum_sq = 0.0;
  for (const FloatSpan& s : spans) {
    double norm = l2_norm(s.data, s.n);
    sum_sq += norm * norm;
  }
  return float(std::sqrt(sum_sq));
}

}  // namespace nq::cpu
