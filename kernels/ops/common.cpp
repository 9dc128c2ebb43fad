// Helpers shared by the registrations (kernels/ops/ops.h).
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

std::vector<double> doubles(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace nq::kernels::registry::family
