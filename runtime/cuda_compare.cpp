// Random inputs and relative error by norm for GPU-vs-CPU comparisons.
#include "runtime/cuda_compare.h"

#include <cmath>
#include <limits>

#include "runtime/philox.h"

namespace nq {

Tensor random_normal(Shape shape, uint64_t seed, float scale) {
  Tensor t = Tensor::empty(shape, DType::F32, Device::CPU);
  float* p = t.data<float>();
  int64_t n = t.numel();
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    // Box-Muller from two uniforms; u1 in (0, 1] so the log is finite.
    double u1 = 1.0 - philox_uniform(seed, 0, 2 * uint64_t(i));
    double u2 = philox_uniform(seed, 0, 2 * uint64_t(i) + 1);
    double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    if (z == 0.0) z = 1e-3;  // never exactly zero
    p[i] = float(z * scale);
  }
  return t;
}

Tensor random_ints(Shape shape, uint64_t seed, int32_t lo, int32_t hi) {
  Tensor t = Tensor::empty(shape, DType::I32, Device::CPU);
  int32_t* p = t.data<int32_t>();
  uint32_t range = uint32_t(hi - lo);
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = lo + int32_t(philox_u32(seed, 0, uint64_t(i)) % range);
  return t;
}

Tensor rounded_to(const Tensor& t, DType dtype) { return t.to_dtype(dtype).to_dtype(DType::F32); }

Tensor to_device(const Tensor& t, DType dtype) { return t.to_dtype(dtype).to(Device::CUDA); }

double relative_error(const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape()) return std::numeric_limits<double>::infinity();
  std::vector<float> g = got.to_vector(), w = want.to_vector();
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) || std::isnan(w[i])) return std::numeric_limits<double>::infinity();
    double d = double(g[i]) - double(w[i]);
    diff += d * d;
    norm += double(w[i]) * double(w[i]);
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

}  // namespace nq
