// Registrations: the elementwise ops (add, add_inplace, mul, sum), SwiGLU, dropout and scale.
#include <cmath>

#include "kernels/cpu/dropout.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"
#include "runtime/philox.h"

namespace nq::kernels::registry::family {

namespace {

Dims with_n(int64_t n) {
  Dims d;
  d.n = n;
  return d;
}
std::vector<Dims> with_n(std::initializer_list<int64_t> ns) {
  std::vector<Dims> out;
  for (int64_t n : ns) out.push_back(with_n(n));
  return out;
}

// A binary op of two [n] activations: out = f(a, b); the naive loop computes
// f in double on the f32 values, which rounded to f32 is the f32 result exactly
// (a sum or product of two floats is exact in double), so the CPU is bit-exact.
Op binary(const char* name, std::function<std::vector<Tensor>(const std::vector<Tensor>&)> run,
          double (*f)(double, double)) {
  Op op;
  op.name = name;
  op.dims = {"n"};
  op.bench = with_n(1 << 24);
  // 1, 17: below the threading threshold; 100003: threaded, uneven; 300001: sum's grid strides
  op.shapes = [](Mode mode) { return pick(mode, with_n({1, 17, 100003}), {}, with_n({1, 7, 1000, 65537, 300001})); };
  op.inputs = [](const Dims& d, uint64_t seed) {
    return std::vector<Input>{{random_normal({d.n}, seed)}, {random_normal({d.n}, seed + 1)}};
  };
  op.forward = {[run](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) { return run(in); },
                {by_dtype()},
                [](const Dims& d, double act) { return Cost{3 * act * d.n, double(d.n)}; }};
  op.naive = [f](const std::vector<Tensor>& in, const Dims&) {
    std::vector<double> a = doubles(in[0]), b = doubles(in[1]), out(a.size());
    for (size_t i = 0; i < a.size(); ++i) out[i] = f(a[i], b[i]);
    return std::vector<Expected>{{0, out, 0}};
  };
  return op;
}

}  // namespace

void register_elementwise(std::vector<Op>& ops) {
  ops.push_back(binary("add", [](const std::vector<Tensor>& in) { return std::vector<Tensor>{kernels::add(in[0], in[1])}; },
                       [](double a, double b) { return a + b; }));
  ops.back().model_shapes = [](const ModelDims& m) { return std::vector<Dims>{with_n(m.seq * m.hidden)}; };
  // add_inplace writes into its first input (the run's copy of it).
  ops.push_back(binary("add_inplace",
                       [](const std::vector<Tensor>& in) {
                         Tensor dst = in[0];
                         kernels::add_inplace(dst, in[1]);
                         return std::vector<Tensor>{dst};
                       },
                       [](double a, double b) { return a + b; }));
  ops.push_back(binary("mul", [](const std::vector<Tensor>& in) { return std::vector<Tensor>{kernels::mul(in[0], in[1])}; },
                       [](double a, double b) { return a * b; }));

  {  // sum: f64 across blocks, so the CPU is within 1e-6 of the double sum (absolute below 1);
     // the GPU's error grows with ||a|| ~ sqrt(n): 1e-5 sqrt(n) absolute, in either dtype.
    Op op;
    op.name = "sum";
    op.dims = {"n"};
    op.bench = with_n(1 << 24);
    op.shapes = [](Mode mode) { return pick(mode, with_n({1, 17, 100003}), {}, with_n({1, 7, 1000, 65537, 300001})); };
    op.inputs = [](const Dims& d, uint64_t seed) { return std::vector<Input>{{random_normal({d.n}, seed)}}; };
    Tol tol{Metric::Absolute, [](const Dims& d, DType) { return 1e-5 * std::sqrt(double(d.n)); }};
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                    return std::vector<Tensor>{Tensor::full({1}, kernels::sum(in[0]))};
                  },
                  {tol},
                  [](const Dims& d, double act) { return Cost{act * d.n, double(d.n)}; }};
    op.naive = [](const std::vector<Tensor>& in, const Dims&) {
      double s = 0;
      for (double v : doubles(in[0])) s += v;
      return std::vector<Expected>{{0, {s}, 1e-6 * std::max(1.0, std::fabs(s)), Metric::Absolute}};
    };
    ops.push_back(op);
  }

  {  // swiglu: y = silu(gate) * up; gate[0] = -40, gate[1] = 40 saturate the sigmoid on either side
    Op op;
    op.name = "swiglu";
    op.dims = {"n"};
    op.bench = with_n(1 << 24);
    op.shapes = [](Mode mode) {
      std::vector<Dims> device = with_n({1, 129, 70001});
      // n = 1 is gate -40 alone: y ~ -1.7e-16 u is below f16's smallest subnormal (6e-8) and
      // rounds to 0 (relative error 1 by construction); f16 sees the saturated ends with n > 1.
      device[0].dtypes = 3;
      return pick(mode, with_n({1, 17, 127}), with_n({1, 17, 127}), device);
    };
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{with_n(m.seq * m.ffn)}; };
    op.inputs = [](const Dims& d, uint64_t seed) {
      Tensor gate = random_normal({d.n}, seed, 2.0f);
      gate.data<float>()[0] = -40.0f;
      if (d.n > 1) gate.data<float>()[1] = 40.0f;
      return std::vector<Input>{{gate}, {random_normal({d.n}, seed + 1)}, {random_normal({d.n}, seed + 2)}};  // gate, up, dy
    };
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                    return std::vector<Tensor>{kernels::swiglu_forward(in[0], in[1])};
                  },
                  {by_dtype()},
                  [](const Dims& d, double act) { return Cost{3 * act * d.n, 4.0 * d.n}; }};
    op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                     Tensor dg, du;
                     kernels::swiglu_backward(in[2], in[0], in[1], &dg, &du);
                     return std::vector<Tensor>{dg, du};
                   },
                   {by_dtype(), by_dtype()},
                   [](const Dims& d, double act) { return Cost{5 * act * d.n, 10.0 * d.n}; }};
    op.naive = [](const std::vector<Tensor>& in, const Dims&) {
      std::vector<double> g = doubles(in[0]), u = doubles(in[1]), y(g.size());
      for (size_t i = 0; i < g.size(); ++i) y[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      return std::vector<Expected>{{0, y, 2e-6}};
    };
    op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
      GradProblem p;
      p.names = {"gate", "up"};
      p.x = values({doubles(in[0]), doubles(in[1])});
      auto x = p.x;
      auto r = std::make_shared<std::vector<double>>(doubles(in[2]));
      int64_t n = d.n;
      p.loss = [x, r, n] {
        std::vector<double> y(n);
        cpu::swiglu_forward((*x)[0].data(), (*x)[1].data(), y.data(), n);
        return dot(y, *r);
      };
      p.grad = [x, r, n] {
        std::vector<std::vector<double>> g(2, std::vector<double>(n));
        cpu::swiglu_backward(r->data(), (*x)[0].data(), (*x)[1].data(), g[0].data(), g[1].data(), n);
        return g;
      };
      return p;
    };
    ops.push_back(op);
  }

  {  // dropout: keep element i iff philox_uniform(seed, offset, i) >= p, kept values scaled by 1/(1-p).
     // 1037: a partial chunk of Philox blocks at the end (the CPU draws 32 elements at a
     // time), below the size where it goes parallel; 300005 above it.
    constexpr uint64_t kSeed = 1234, kOffset = 77;
    auto dropout_dims = [](int64_t n, double p) {
      Dims d = with_n(n);
      d.p = p;
      return d;
    };
    Op op;
    op.name = "dropout";
    op.dims = {"n"};
    op.bench = with_n(1 << 24);
    op.shapes = [=](Mode mode) {
      return pick(mode, {dropout_dims(1, 0.3), dropout_dims(17, 0.3), dropout_dims(1037, 0.3), dropout_dims(300005, 0.3)},
                  {dropout_dims(17, 0.5), dropout_dims(127, 0.3)},
                  {dropout_dims(1, 0.3), dropout_dims(5, 0.3), dropout_dims(4099, 0.3)});
    };
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{with_n(m.seq * m.ffn)}; };
    op.inputs = [](const Dims& d, uint64_t seed) {
      return std::vector<Input>{{random_normal({d.n}, seed)}, {random_normal({d.n}, seed + 1)}};  // x, dy
    };
    Tol mask = by_dtype();
    mask.same_zeros = true;  // the same Philox stream: the same mask
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    return std::vector<Tensor>{kernels::dropout_forward(in[0], float(d.p), kSeed, kOffset)};
                  },
                  {mask},
                  [](const Dims& d, double act) { return Cost{2 * act * d.n, 0}; }};
    op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                     return std::vector<Tensor>{kernels::dropout_backward(in[1], float(d.p), kSeed, kOffset)};
                   },
                   {mask},
                   [](const Dims& d, double act) { return Cost{2 * act * d.n, 0}; }};
    op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
      const float p = float(d.p), keep_scale = 1.0f / (1.0f - p);
      auto apply = [&](const Tensor& t) {
        std::vector<double> v = doubles(t);
        for (size_t i = 0; i < v.size(); ++i)
          v[i] = philox_uniform(kSeed, kOffset, i) >= p ? double(float(v[i]) * keep_scale) : 0.0;
        return v;
      };
      return std::vector<Expected>{{0, apply(in[0]), 0}, {1, apply(in[1]), 0}};
    };
    op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
      GradProblem p;
      p.names = {"x"};
      p.x = values({doubles(in[0])});
      auto x = p.x;
      auto r = std::make_shared<std::vector<double>>(doubles(in[1]));
      int64_t n = d.n;
      float prob = float(d.p);
      p.loss = [x, r, n, prob] {
        std::vector<double> y(n);
        cpu::dropout_apply((*x)[0].data(), y.data(), n, prob, kSeed, kOffset);
        return dot(y, *r);
      };
      p.grad = [r, n, prob] {
        std::vector<std::vector<double>> g(1, std::vector<double>(n));
        cpu::dropout_apply(r->data(), g[0].data(), n, prob, kSeed, kOffset);
        return g;
      };
      return p;
    };
    ops.push_back(op);
  }

  {  // scale: s * a, s = -0.37 (an f32 product of two floats: bit-exact against the double loop)
    constexpr float kS = -0.37f;
    Op op;
    op.name = "scale";
    op.dims = {"n"};
    op.bench = with_n(1 << 24);
    op.shapes = [](Mode mode) { return pick(mode, with_n({1, 17, 100003}), {}, with_n({1, 7, 1000, 65537, 300001})); };
    op.model_shapes = [](const ModelDims& m) { return std::vector<Dims>{with_n(m.seq * m.hidden)}; };
    op.inputs = [](const Dims& d, uint64_t seed) { return std::vector<Input>{{random_normal({d.n}, seed)}}; };
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims&) {
                    return std::vector<Tensor>{kernels::scale(in[0], kS)};
                  },
                  {by_dtype()},
                  [](const Dims& d, double act) { return Cost{2 * act * d.n, double(d.n)}; }};
    op.naive = [](const std::vector<Tensor>& in, const Dims&) {
      std::vector<double> y = doubles(in[0]);
      for (double& v : y) v *= double(kS);
      return std::vector<Expected>{{0, y, 0}};
    };
    ops.push_back(op);
  }
}

}  // namespace nq::kernels::registry::family
