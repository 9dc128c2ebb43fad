// Registration: RMSNorm (HF Qwen3), y = w * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps).
#include <cmath>

#include "kernels/cpu/rmsnorm.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

namespace {
constexpr double kEps = 1e-6;
// The gradient check's eps: with D = 1 and eps = 1e-6, y ~ w sign(x) and dy/dx ~
// eps / |x|^3 is too small for finite differences to resolve.
constexpr double kEpsFd = 0.05;
Dims rows(int64_t tokens, int64_t hidden) {
  Dims d;
  d.tokens = tokens; d.hidden = hidden;
  return d;
}
}  // namespace

void register_rmsnorm(std::vector<Op>& ops) {
  Op op;
  op.name = "rmsnorm";
  op.dims = {"tokens", "hidden"};
  op.bench = rows(4096, 1024);
  // [N, D] hidden-state shapes and the per-head q/k norm shape [N*H, Dh]
  op.shapes = [](Mode mode) {
    return pick(mode, {rows(1, 1), rows(3, 17), rows(5, 127)}, {rows(1, 1), rows(3, 17), rows(5, 127)},
                {rows(1, 1), rows(3, 17), rows(33, 1000), rows(16 * 8, 128)});
  };
  op.model_shapes = [](const ModelDims& m) {
    return std::vector<Dims>{rows(m.seq, m.hidden), rows(m.seq * m.heads, m.head_dim)};
  };
  op.inputs = [](const Dims& d, uint64_t seed) {  // x, w (f32 on every device), dy
    return std::vector<Input>{{random_normal({d.tokens, d.hidden}, seed, 3.0f)},
                              {random_normal({d.hidden}, seed + 1), false},
                              {random_normal({d.tokens, d.hidden}, seed + 2)}};
  };
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                  Tensor rstd;
                  Tensor y = kernels::rmsnorm_forward(in[0], in[1], float(kEps), &rstd);
                  return std::vector<Tensor>{y, rstd};
                },
                {by_dtype(), f32_bound()},  // rstd: f32 statistics
                [](const Dims& d, double act) {
                  return Cost{2 * act * d.tokens * d.hidden + 4.0 * d.tokens, 4.0 * d.tokens * d.hidden};
                }};
  // grad_w is f32 from the same (rounded) inputs: the f32 bound
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>& fwd, const Dims&) {
                   Tensor dx, dw;
                   kernels::rmsnorm_backward(in[2], in[0], in[1], fwd[1], &dx, &dw);
                   return std::vector<Tensor>{dx, dw};
                 },
                 {by_dtype(), f32_bound()},
                 [](const Dims& d, double act) { return Cost{3 * act * d.tokens * d.hidden, 8.0 * d.tokens * d.hidden}; }};
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    const int64_t N = d.tokens, D = d.hidden;
    std::vector<double> x = doubles(in[0]), w = doubles(in[1]), y(N * D), rstd(N);
    for (int64_t n = 0; n < N; ++n) {
      double ms = 0;
      for (int64_t j = 0; j < D; ++j) ms += x[n * D + j] * x[n * D + j] / D;
      rstd[n] = 1 / std::sqrt(ms + kEps);
      for (int64_t j = 0; j < D; ++j) y[n * D + j] = w[j] * x[n * D + j] * rstd[n];
    }
    return std::vector<Expected>{{0, y, 2e-6}, {1, rstd, 2e-6}};
  };
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"x", "w"};
    p.x = values({doubles(in[0]), doubles(in[1])});
    auto x = p.x;
    auto r = std::make_shared<std::vector<double>>(doubles(in[2]));
    const int64_t N = d.tokens, D = d.hidden;
    auto rstd = std::make_shared<std::vector<double>>(N);
    p.loss = [x, r, rstd, N, D] {
      std::vector<double> y(N * D);
      cpu::rmsnorm_forward((*x)[0].data(), (*x)[1].data(), kEpsFd, y.data(), rstd->data(), N, D);
      return dot(y, *r);
    };
    p.grad = [p_loss = p.loss, x, r, rstd, N, D] {
      p_loss();  // rstd at *x
      std::vector<std::vector<double>> g{std::vector<double>(N * D), std::vector<double>(D)};
      cpu::rmsnorm_backward(r->data(), (*x)[0].data(), (*x)[1].data(), rstd->data(), g[0].data(), g[1].data(), N, D);
      return g;
    };
    return p;
  };
  ops.push_back(op);
}

}  // namespace nq::kernels::registry::family
