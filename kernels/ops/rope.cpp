// Registration: RoPE, rotate-half (NeoX) layout; the backward rotates by -angle.
// Shapes run the unscaled table and YaRN's (factor 4 over a window of 16, 64 or
// 32768, positions up to 16x past it), so the blended frequencies and the attention
// scaling go through every mode.
#include <cmath>

#include "kernels/cpu/rope.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

namespace {
Dims heads(int64_t tokens, int64_t h, int64_t head_dim, double theta, int32_t max_position) {
  Dims d;
  d.tokens = tokens; d.heads = h; d.head_dim = head_dim; d.theta = theta; d.max_position = max_position;
  return d;
}
// The same, with YaRN of factor 4 over an original window of `window` positions.
Dims yarn(Dims d, int64_t window) {
  d.rope_scaling.type = "yarn";
  d.rope_scaling.factor = 4;
  d.rope_scaling.original_max_position_embeddings = window;
  return d;
}

// The table from the formulas in double (docs/model.md, "RoPE scaling"), independent
// of rope_table()'s f32 steps: inv_freq [Dh/2], and the attention scaling in *scaling.
std::vector<double> reference_inv_freq(const Dims& d, double* scaling) {
  const int64_t Dh = d.head_dim, half = Dh / 2;
  const RopeScaling& s = d.rope_scaling;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(d.theta, double(2 * i) / double(Dh));
  *scaling = 1.0;
  if (s.type == "linear") {
    for (double& f : inv) f /= s.factor;
  } else if (s.type == "yarn") {  // defaults only: beta 32 / 1, truncated, attention 0.1 ln(factor) + 1
    auto dim_turning = [&](double rotations) {  // the dimension whose wavelength turns `rotations` times
      return Dh * std::log(s.original_max_position_embeddings / (rotations * 2 * M_PI)) / (2 * std::log(d.theta));
    };
    double low = std::max(std::floor(dim_turning(32)), 0.0), high = std::min(std::ceil(dim_turning(1)), Dh - 1.0);
    if (high == low) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      double ramp = std::min(std::max((i - low) / (high - low), 0.0), 1.0);  // 0: kept, 1: divided by factor
      inv[i] = inv[i] * (1 - ramp) + inv[i] / s.factor * ramp;
    }
    *scaling = 0.1 * std::log(s.factor) + 1.0;
  }
  return inv;
}

// HF's formulation, independent of the kernel's pairwise rotation:
// y = s (x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)), rotate_half(x) = cat(-x2, x1);
// direction -1 rotates by -angle (the backward).
std::vector<double> rope_reference(const std::vector<double>& x, const std::vector<int32_t>& pos, const Dims& d,
                                   int direction) {
  const int64_t N = d.tokens, H = d.heads, Dh = d.head_dim, half = Dh / 2;
  double scaling;
  const std::vector<double> inv_freq = reference_inv_freq(d, &scaling);
  std::vector<double> y(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Dh; ++j) {
        double angle = direction * pos[n] * inv_freq[j % half];
        const double* xh = &x[(n * H + h) * Dh];
        double rotated = j < half ? -xh[j + half] : xh[j - half];
        y[(n * H + h) * Dh + j] = scaling * (xh[j] * std::cos(angle) + rotated * std::sin(angle));
      }
  return y;
}

RopeTable table_of(const Dims& d) { return rope_table(float(d.theta), d.head_dim, d.rope_scaling); }
}  // namespace

void register_rope(std::vector<Op>& ops) {
  Op op;
  op.name = "rope";
  op.dims = {"tokens", "heads", "head-dim"};
  op.bench = heads(4096, 16, 128, 1e6, 4096);
  // Device: positions up to Qwen3's context (40960) and YaRN's 4 x 32768. The kernel takes
  // the CPU's table, so the f32 angles are the CPU's bit for bit and only sincosf vs
  // glibc (an ulp or two) separates the two; one ulp off in an inv_freq would be an
  // angle error of up to 2.5e-3 there, far over the f32 bound.
  op.shapes = [](Mode mode) {
    std::vector<Dims> cpu = {heads(1, 1, 2, 1e4, 1), heads(3, 2, 8, 1e4, 3), heads(5, 3, 6, 1e6, 34),
                             heads(2, 1, 128, 1e6, 1001), yarn(heads(6, 2, 32, 100, 200), 16),
                             yarn(heads(3, 1, 128, 1e6, 1001), 64)};
    return pick(mode, cpu, cpu,
                {heads(1, 1, 2, 1e6, 40960), heads(7, 3, 64, 1e6, 40960), heads(40, 4, 128, 1e6, 40960),
                 yarn(heads(40, 4, 128, 1e6, 131072), 32768)});
  };
  op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{heads(m.seq, m.heads, m.head_dim, 1e6, 4096)}; };
  op.inputs = [](const Dims& d, uint64_t seed) {  // x, positions (the last token at max_position - 1), dy
    Tensor pos = random_ints({d.tokens}, seed + 1, 0, d.max_position);
    pos.data<int32_t>()[d.tokens - 1] = d.max_position - 1;
    return std::vector<Input>{{random_normal({d.tokens, d.heads, d.head_dim}, seed)},
                              {pos, false},
                              {random_normal({d.tokens, d.heads, d.head_dim}, seed + 2)}};
  };
  auto cost = [](const Dims& d, double act) {
    double e = double(d.tokens) * d.heads * d.head_dim;
    return Cost{2 * act * e, 3.0 * e};
  };
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                  return std::vector<Tensor>{kernels::rope_forward(in[0], in[1], table_of(d))};
                },
                {by_dtype()},
                cost};
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                   return std::vector<Tensor>{kernels::rope_backward(in[2], in[1], table_of(d))};
                 },
                 {by_dtype()},
                 cost};
  // f32: the angle pos * inv_freq is itself rounded to f32 (as in HF), so large
  // positions cost ~pos * 2^-24 radians of accuracy: 1e-4 up to position 1000.
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    std::vector<int32_t> pos = ints(in[1]);
    return std::vector<Expected>{{0, rope_reference(doubles(in[0]), pos, d, +1), 1e-4},
                                 {1, rope_reference(doubles(in[2]), pos, d, -1), 1e-4}};
  };
  // In double the kernel runs on the reference's table, so this checks the rotation and
  // its transpose; the f32 table is checked by naive above and against transformers.
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"x"};
    p.x = values({doubles(in[0])});
    auto x = p.x;
    auto pos = std::make_shared<std::vector<int32_t>>(ints(in[1]));
    auto r = std::make_shared<std::vector<double>>(doubles(in[2]));
    auto scaling = std::make_shared<double>();
    auto inv_freq = std::make_shared<std::vector<double>>(reference_inv_freq(d, scaling.get()));
    auto rotate = [pos, d, inv_freq, scaling](const std::vector<double>& v, int direction) {
      std::vector<double> y(v.size());
      cpu::rope_rotate(v.data(), pos->data(), inv_freq->data(), *scaling, direction, y.data(), d.tokens, d.heads,
                       d.head_dim);
      return y;
    };
    p.loss = [x, r, rotate] { return dot(rotate((*x)[0], +1), *r); };
    p.grad = [r, rotate] { return std::vector<std::vector<double>>{rotate(*r, -1)}; };
    p.double_vs_naive = [x, pos, d, rotate] {
      return std::make_pair(rotate((*x)[0], +1), rope_reference((*x)[0], *pos, d, +1));
    };
    return p;
  };
  ops.push_back(op);
}

}  // namespace nq::kernels::registry::family
