// RoPE rotation (see rope.h) and the per-model table (kernels/rope_table.h), with
// transformers' f32 roundings.
#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/rope_table.h"
#include "runtime/error.h"

namespace nq {

bool RopeScaling::operator==(const RopeScaling& o) const {
  return type == o.type && factor == o.factor &&
         original_max_position_embeddings == o.original_max_position_embeddings && beta_fast == o.beta_fast &&
         beta_slow == o.beta_slow && mscale == o.mscale && mscale_all_dim == o.mscale_all_dim &&
         attention_factor == o.attention_factor && truncate == o.truncate;
}

std::string RopeScaling::describe() const {
  if (type == "linear") return str("linear (factor ", factor, ")");
  if (type == "yarn") return str("yarn (factor ", factor, ", original window ", original_max_position_embeddings, ")");
  return "none";
}

void RopeScaling::check(const std::string& where) const {
  NQ_CHECK(type == "default" || type == "linear" || type == "yarn", where, ": rope_type \"", type,
           "\" is not supported (default, linear, yarn)");
  if (!scaled()) return;
  NQ_CHECK(std::isfinite(factor) && factor >= 1, where, ": factor = ", factor, " must be >= 1");
  if (type != "yarn") return;
  NQ_CHECK(original_max_position_embeddings >= 1, where, ": original_max_position_embeddings = ",
           original_max_position_embeddings, " must be >= 1");
  auto positive = [&](const std::optional<double>& v, const char* name) {
    NQ_CHECK(!v || (std::isfinite(*v) && *v > 0), where, ": ", name, " = ", *v, " must be > 0");
  };
  positive(beta_fast, "beta_fast");
  positive(beta_slow, "beta_slow");
  positive(attention_factor, "attention_factor");
  NQ_CHECK(beta_fast.value_or(32) >= beta_slow.value_or(1), where, ": beta_fast (", beta_fast.value_or(32),
           ") must be >= beta_slow (", beta_slow.value_or(1), ")");
  for (auto [v, name] : {std::make_pair(mscale, "mscale"), std::make_pair(mscale_all_dim, "mscale_all_dim")})
    NQ_CHECK(!v || (std::isfinite(*v) && *v >= 0), where, ": ", name, " = ", *v, " must be >= 0");
}

namespace {

// transformers' get_mscale: the attention temperature of a context `scale` times longer.
double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

// The attention factor of _compute_yarn_parameters: given, or from mscale / mscale_all_dim
// when both are non-zero (Python truthiness), else get_mscale(factor).
double yarn_attention_factor(const RopeScaling& s) {
  if (s.attention_factor) return *s.attention_factor;
  const double m = s.mscale.value_or(0), all = s.mscale_all_dim.value_or(0);
  if (m != 0 && all != 0) return yarn_mscale(s.factor, m) / yarn_mscale(s.factor, all);
  return yarn_mscale(s.factor, 1.0);
}

}  // namespace

RopeTable rope_table(float theta, int64_t head_dim, const RopeScaling& s) {
  NQ_CHECK(head_dim >= 2 && head_dim % 2 == 0, "rope_table: head_dim must be even and >= 2, got ", head_dim);
  NQ_CHECK(std::isfinite(theta) && theta > 0, "rope_table: rope_theta must be > 0, got ", theta);
  s.check("rope_table");
  const int64_t half = head_dim / 2;
  RopeTable t;
  t.inv_freq.resize(half);
  // pos_freqs_i = theta^(2i/Dh) in f32; the extrapolated (unscaled) frequency is its inverse.
  std::vector<float> pos_freqs(half);
  for (int64_t i = 0; i < half; ++i) pos_freqs[i] = cpu::rope_pow(theta, i, head_dim);
  const float factor = float(s.factor);  // a Python float meeting an f32 tensor
  if (s.type == "default") {
    for (int64_t i = 0; i < half; ++i) t.inv_freq[i] = 1.0f / pos_freqs[i];
  } else if (s.type == "linear") {
    for (int64_t i = 0; i < half; ++i) t.inv_freq[i] = (1.0f / pos_freqs[i]) / factor;
  } else {
    // The dimension whose wavelength turns `rotations` times in the original window, in double.
    const double pi = 3.14159265358979323846, base = double(theta), dim = double(head_dim);
    const double window = double(s.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(window / (rotations * 2 * pi))) / (2 * std::log(base));
    };
    double low = correction_dim(s.beta_fast.value_or(32)), high = correction_dim(s.beta_slow.value_or(1));
    if (s.truncate.value_or(true)) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1);  // transformers clamps to dim - 1, not Dh/2 - 1
    if (low == high) high += 0.001;  // its guard against a zero-width ramp
    const float low_f = float(low), width_f = float(high - low);
    for (int64_t i = 0; i < half; ++i) {
      const float ramp = std::min(std::max((float(i) - low_f) / width_f, 0.0f), 1.0f);
      const float extrapolation = 1.0f - ramp;  // 1: keep the frequency, 0: divide it by factor
      const float interpolated = 1.0f / (factor * pos_freqs[i]), extrapolated = 1.0f / pos_freqs[i];
      const float a = interpolated * (1.0f - extrapolation), b = extrapolated * extrapolation;
      t.inv_freq[i] = a + b;
    }
    t.attention_scaling = float(yarn_attention_factor(s));
  }
  return t;
}

namespace cpu {

template <typename T>
void rope_rotate(const T* x, const int32_t* positions, const T* inv_freq, T scaling, int direction, T* y, int64_t N,
                 int64_t H, int64_t Dh) {
  int64_t half = Dh / 2;
#pragma omp parallel if (N * H * Dh > (1 << 15))
  {
    std::vector<T> cos_a(half), sin_a(half);  // this token's angles, shared by its H heads
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t i = 0; i < half; ++i) {
        T angle = T(positions[n]) * inv_freq[i];
        cos_a[i] = std::cos(angle) * scaling;
        sin_a[i] = T(direction) * (std::sin(angle) * scaling);
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

template void rope_rotate<float>(const float*, const int32_t*, const float*, float, int, float*, int64_t, int64_t,
                                 int64_t);
template void rope_rotate<double>(const double*, const int32_t*, const double*, double, int, double*, int64_t,
                                  int64_t, int64_t);

}  // namespace cpu
}  // namespace nq
