// Registration: RoPE, rotate-half (NeoX) layout; the backward rotates by -angle.
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

// HF's formulation, independent of the kernel's pairwise rotation:
// y = x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), rotate_half(x) = cat(-x2, x1);
// direction -1 rotates by -angle (the backward).
std::vector<double> rope_reference(const std::vector<double>& x, const std::vector<int32_t>& pos, const Dims& d,
                                   int direction) {
  const int64_t N = d.tokens, H = d.heads, Dh = d.head_dim, half = Dh / 2;
  std::vector<double> y(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Dh; ++j) {
        double inv_freq = 1.0 / std::pow(d.theta, double(2 * (j % half)) / double(Dh));
        double angle = direction * pos[n] * inv_freq;
        const double* xh = &x[(n * H + h) * Dh];
        double rotated = j < half ? -xh[j + half] : xh[j - half];
        y[(n * H + h) * Dh + j] = xh[j] * std::cos(angle) + rotated * std::sin(angle);
      }
  return y;
}
}  // namespace

void register_rope(std::vector<Op>& ops) {
  Op op;
  op.name = "rope";
  op.dims = {"tokens", "heads", "head-dim"};
  op.bench = heads(4096, 16, 128, 1e6, 4096);
  // Device: positions up to Qwen3's context (40960). The kernel takes inv_freq from the
  // CPU's rope_inv_freq, so the f32 angles are the CPU's bit for bit and only sincosf vs
  // glibc (an ulp or two) separates the two; one ulp off in an inv_freq would be an
  // angle error of up to 2.5e-3 there, far over the f32 bound.
  op.shapes = [](Mode mode) {
    std::vector<Dims> cpu = {heads(1, 1, 2, 1e4, 1), heads(3, 2, 8, 1e4, 3), heads(5, 3, 6, 1e6, 34),
                             heads(2, 1, 128, 1e6, 1001)};
    return pick(mode, cpu, cpu, {heads(1, 1, 2, 1e6, 40960), heads(7, 3, 64, 1e6, 40960), heads(40, 4, 128, 1e6, 40960)});
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
                  return std::vector<Tensor>{kernels::rope_forward(in[0], in[1], float(d.theta))};
                },
                {by_dtype()},
                cost};
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                   return std::vector<Tensor>{kernels::rope_backward(in[2], in[1], float(d.theta))};
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
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"x"};
    p.x = values({doubles(in[0])});
    auto x = p.x;
    auto pos = std::make_shared<std::vector<int32_t>>(ints(in[1]));
    auto r = std::make_shared<std::vector<double>>(doubles(in[2]));
    auto rotate = [pos, d](const std::vector<double>& v, int direction) {
      std::vector<double> y(v.size());
      cpu::rope_rotate(v.data(), pos->data(), d.theta, direction, y.data(), d.tokens, d.heads, d.head_dim);
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
