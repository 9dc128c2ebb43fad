// lora/lora_linear: PEFT initialisation, the fused forward against a naive
// reference, and dX, dA, dB against finite differences (with dropout on).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "lora/lora_linear.h"
#include "quant/nf4.h"
#include "runtime/rng.h"

using namespace nq;

namespace {

Tensor uniform(Shape s, float scale, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = scale * (2.0f * philox_uniform(seed, 99, i) - 1.0f);
  return t;
}

// Naive double-precision y = x W^T + s * (d(x) A^T) B^T, d = the dropout mask as kernels apply it.
Tensor reference(const Tensor& x, const Tensor& w, const Tensor& A, const Tensor& B, float s, float p, uint64_t seed,
                 uint64_t offset) {
  const int64_t N = x.size(0), in = x.size(1), out = w.size(0), r = A.size(0);
  Tensor y = Tensor::empty({N, out});
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> h(r, 0.0);
    for (int64_t k = 0; k < r; ++k)
      for (int64_t i = 0; i < in; ++i) {
        double xd = x.data<float>()[n * in + i];
        if (p > 0) xd = philox_uniform(seed, offset, uint64_t(n * in + i)) >= p ? xd / (1.0 - p) : 0.0;
        h[k] += xd * A.data<float>()[k * in + i];
      }
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += double(x.data<float>()[n * in + i]) * w.data<float>()[o * in + i];
      for (int64_t k = 0; k < r; ++k) acc += s * h[k] * B.data<float>()[o * r + k];
      y.data<float>()[n * out + o] = float(acc);
    }
  }
  return y;
}

double max_rel(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    num = std::max(num, std::fabs(double(a.data<float>()[i]) - b.data<float>()[i]));
    den = std::max(den, std::fabs(double(b.data<float>()[i])));
  }
  return num / den;
}

}  // namespace

TEST_CASE("lora: PEFT init (A uniform in +-1/sqrt(in) from Philox, B zero) leaves the base output unchanged") {
  rng_seed(5);
  const int64_t out = 24, in = 100;
  Tensor w = uniform({out, in}, 0.1f, 1);
  LoraLinear l = make_lora_linear(out, in, LoraConfig{16, 32.0f, 0.0f, false}, "model.layers.0.mlp.up_proj");
  CHECK(l.A.name() == "model.layers.0.mlp.up_proj.lora_A.weight");
  CHECK(l.B.name() == "model.layers.0.mlp.up_proj.lora_B.weight");
  CHECK(l.A.shape() == Shape{16, in});
  CHECK(l.B.shape() == Shape{out, 16});
  CHECK(l.scaling == 2.0f);
  double sum = 0, sq = 0, mx = 0;
  const float* a = l.A.value().data<float>();
  for (int64_t i = 0; i < l.A.value().numel(); ++i) {
    sum += a[i];
    sq += double(a[i]) * a[i];
    mx = std::max(mx, std::fabs(double(a[i])));
  }
  const double n = double(l.A.value().numel()), bound = 1.0 / std::sqrt(double(in));
  CHECK(mx <= bound);
  CHECK(mx > 0.95 * bound);
  CHECK(std::fabs(sum / n) < 0.05 * bound);
  CHECK(sq / n == doctest::Approx(bound * bound / 3).epsilon(0.1));  // variance of U(-b, b)
  for (int64_t i = 0; i < l.B.value().numel(); ++i) REQUIRE(l.B.value().data<float>()[i] == 0.0f);
  // the same seed draws the same A
  rng_seed(5);
  LoraLinear l2 = make_lora_linear(out, in, LoraConfig{16, 32.0f, 0.0f, false}, "x");
  CHECK(std::memcmp(l2.A.value().raw(), l.A.value().raw(), l.A.value().nbytes()) == 0);
  // B = 0: the layer is the base
  Tensor x = uniform({5, in}, 1.0f, 2);
  Var y = lora_linear(Var(x), w, l);
  CHECK(max_rel(y.value(), reference(x, w, l.A.value(), l.B.value(), 0.0f, 0.0f, 0, 0)) < 1e-6);
  // x without grad (after the frozen embedding): A and B still get gradients
  backward(y, Tensor::full({5, out}, 1.0f));
  CHECK(l.A.grad().defined());
  CHECK(l.B.grad().defined());
  CHECK(LoraConfig{16, 32.0f, 0.0f, true}.scaling() == doctest::Approx(8.0f));  // rsLoRA alpha / sqrt(r)
}

TEST_CASE("lora: forward and dX, dA, dB against a naive reference and finite differences") {
  const int64_t out = 13, in = 20, N = 6, r = 4;
  Tensor w = uniform({out, in}, 0.2f, 3);
  auto nf4 = std::make_shared<Nf4Tensor>(quantize_nf4(w.data<float>(), out, in));
  const Tensor wd = dequantize_nf4(*nf4);
  for (bool use_nf4 : {false, true})
    for (float p : {0.0f, 0.3f}) {
      CAPTURE(use_nf4);
      CAPTURE(p);
      rng_seed(11);
      TrainingMode training;  // dropout applies in training mode only
      LoraConfig cfg{r, 8.0f, p, false};
      LoraLinear l = make_lora_linear(out, in, cfg, "q");
      // The op over either base: the layer (model/linear.h) owns the base, the adapter does not.
      auto layer_op = [&](const Var& xv) { return use_nf4 ? lora_linear(xv, nf4, l) : lora_linear(xv, w, l); };
      l.B.set_value(uniform({out, r}, 0.5f, 4));  // a trained-looking B, so every path is non-zero
      Var x(uniform({N, in}, 1.0f, 5), true);
      const Tensor R = uniform({N, out}, 1.0f, 6);  // L = sum(y * R), dL/dy = R
      const RngState before = rng_state();
      auto loss = [&]() {
        rng_state() = before;  // the same dropout mask every run
        Var y = layer_op(x);
        double L = 0;
        for (int64_t i = 0; i < y.value().numel(); ++i) L += double(y.value().data<float>()[i]) * R.data<float>()[i];
        return L;
      };
      rng_state() = before;
      Var y = layer_op(x);
      const uint64_t mask_offset = before.offset;
      CHECK(max_rel(y.value(), reference(x.value(), use_nf4 ? wd : w, l.A.value(), l.B.value(), l.scaling, p,
                                         before.seed, mask_offset)) < 1e-5);
      backward(y, R);
      // L is linear in each of x, A, B alone: central differences are exact up to rounding.
      for (const Var* v : {&x, &l.A, &l.B}) {
        Tensor g = v->grad();
        REQUIRE(g.defined());
        float* t = v->value().data<float>();
        Tensor fd = Tensor::empty(v->shape());
        for (int64_t i = 0; i < v->value().numel(); ++i) {
          const float keep = t[i], eps = 0.25f;
          t[i] = keep + eps;
          const double up = loss();
          t[i] = keep - eps;
          const double down = loss();
          t[i] = keep;
          fd.data<float>()[i] = float((up - down) / (2 * eps));
        }
        CHECK(max_rel(g, fd) < 1e-4);
      }
    }
}

TEST_CASE("lora: bad shapes and settings raise errors") {
  Tensor w = Tensor::zeros({4, 6});
  LoraLinear l = make_lora_linear(4, 6, LoraConfig{8, 16.0f, 0.0f, false}, "o_proj");
  CHECK_THROWS_WITH_AS(lora_linear(Var(Tensor::zeros({2, 5})), w, l),
                       "lora_linear: x [2, 5] does not match the layer [4, 6] (last dim must be 6)", Error);
  CHECK_THROWS_WITH_AS(lora_linear(Var(Tensor::zeros({2, 6})), Tensor::zeros({4, 5}), l),
                       "lora_linear: the dense base f32[4, 5] cpu does not match the adapter [4, 6]", Error);
  auto nf4 = std::make_shared<Nf4Tensor>(quantize_nf4(Tensor::zeros({6, 4}).data<float>(), 6, 4));
  CHECK_THROWS_WITH_AS(lora_linear(Var(Tensor::zeros({2, 6})), nf4, l),
                       "lora_linear: the NF4 base [6, 4] does not match the adapter [4, 6]", Error);
  CHECK_THROWS_WITH_AS(make_lora_linear(4, 6, LoraConfig{8, 16.0f, 1.0f, false}, "o_proj"),
                       "lora o_proj: dropout must be in [0, 1), got 1", Error);
  CHECK_THROWS_WITH_AS(make_lora_linear(4, 6, LoraConfig{0, 16.0f, 0.0f, false}, "o_proj"),
                       "lora: rank r must be positive, got 0", Error);
}
