// Helpers shared by the registrations (kernels/ops/ops.h).
#include <algorithm>

#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

std::vector<double> doubles(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

Input expert_row_bounds(int64_t tokens, int64_t experts, uint64_t seed) {
  std::vector<int32_t> bounds{0};
  const Tensor cuts = random_ints({std::max<int64_t>(experts - 1, 1)}, seed, 0, int32_t(tokens + 1));
  for (int64_t e = 0; e + 1 < experts; ++e) bounds.push_back(cuts.data<int32_t>()[e]);
  std::sort(bounds.begin(), bounds.end());
  if (experts > 2) bounds[2] = bounds[1];
  bounds.push_back(int32_t(tokens));
  return {Tensor::from_ids(bounds, {experts + 1}), false, true};
}

std::vector<int64_t> row_bounds(const Tensor& bounds) {
  const Tensor b = bounds.to(Device::CPU);
  return std::vector<int64_t>(b.data<int32_t>(), b.data<int32_t>() + b.numel());
}

GroupedReference grouped_reference(const std::vector<double>& a, const std::vector<double>& w,
                                   const std::vector<double>& dy, const std::vector<int64_t>& bounds,
                                   const std::vector<double>& scales, int64_t n, int64_t k) {
  const int64_t M = bounds.back(), E = int64_t(bounds.size()) - 1;
  GroupedReference out{std::vector<double>(M * n), std::vector<double>(M * k), std::vector<double>(E * n * k)};
  for (int64_t e = 0; e < E; ++e) {
    const double* we = w.data() + e * n * k;  // [n, k]
    const double s = scales[size_t(e)];
    for (int64_t r = bounds[size_t(e)]; r < bounds[size_t(e) + 1]; ++r)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < k; ++j) {
          out.y[r * n + i] += s * a[r * k + j] * we[i * k + j];
          out.dx[r * k + j] += s * dy[r * n + i] * we[i * k + j];
          out.dw[(e * n + i) * k + j] += s * dy[r * n + i] * a[r * k + j];
        }
  }
  return out;
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
