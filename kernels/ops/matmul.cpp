// Registration: matmul, C = op(A) op(B) (matmul_into with accumulate: C = C0 + op(A) op(B)).
#include <array>

#include "kernels/cpu/matmul.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"

namespace nq::kernels::registry::family {

namespace {

// batch 1 is 2-D: A [m, k] (stored [k, m] when trans_a), B [k, n] (stored [n, k] when trans_b);
// batch > 1 adds a leading batch dim to A, B and C.
Dims gemm(int64_t batch, int64_t m, int64_t n, int64_t k, bool ta, bool tb, bool acc) {
  Dims d;
  d.batch = batch; d.m = m; d.n = n; d.k = k;
  d.trans_a = ta; d.trans_b = tb; d.accumulate = acc;
  return d;
}
Shape shape_a(const Dims& d) {
  Shape s = d.trans_a ? Shape{d.k, d.m} : Shape{d.m, d.k};
  return d.batch > 1 ? Shape{d.batch, s[0], s[1]} : s;
}
Shape shape_b(const Dims& d) {
  Shape s = d.trans_b ? Shape{d.n, d.k} : Shape{d.k, d.n};
  return d.batch > 1 ? Shape{d.batch, s[0], s[1]} : s;
}
Shape shape_c(const Dims& d) { return d.batch > 1 ? Shape{d.batch, d.m, d.n} : Shape{d.m, d.n}; }

// Every transpose, with and without accumulate, of each (batch, m, n, k).
std::vector<Dims> every_variant(std::initializer_list<std::array<int64_t, 4>> sizes, bool with_accumulate) {
  std::vector<Dims> out;
  for (auto [batch, m, n, k] : sizes)
    for (bool acc : {false, true})
      for (int trans = 0; trans < 4; ++trans)
        if (!acc || with_accumulate) out.push_back(gemm(batch, m, n, k, trans & 1, trans & 2, acc));
  return out;
}

// The triple loop: C[p, i, j] = sum_k op(A)[p, i, k] op(B)[p, k, j].
std::vector<double> naive_matmul(const std::vector<double>& a, const std::vector<double>& b, const Dims& d) {
  std::vector<double> c(d.batch * d.m * d.n);
  for (int64_t p = 0; p < d.batch; ++p)
    for (int64_t i = 0; i < d.m; ++i)
      for (int64_t j = 0; j < d.n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < d.k; ++q)
          s += a[p * d.m * d.k + (d.trans_a ? q * d.m + i : i * d.k + q)] *
               b[p * d.k * d.n + (d.trans_b ? j * d.k + q : q * d.n + j)];
        c[(p * d.m + i) * d.n + j] = s;
      }
  return c;
}

}  // namespace

void register_matmul(std::vector<Op>& ops) {
  Op op;
  op.name = "matmul";
  op.dims = {"m", "n", "k", "batch"};
  op.bench = gemm(1, 4096, 4096, 4096, false, true, false);
  op.shapes = [](Mode mode) {
    return pick(mode, every_variant({{1, 1, 1, 1}, {1, 3, 17, 5}, {3, 17, 3, 127}, {2, 4, 1, 3}}, true),
                every_variant({{1, 1, 1, 1}, {1, 3, 17, 5}, {3, 17, 3, 127}, {2, 4, 1, 3}}, false),
                every_variant({{1, 1, 1, 1}, {1, 17, 33, 65}, {1, 128, 96, 256}, {3, 5, 7, 9}}, true));
  };
  op.model_shapes = [](const ModelDims& m) {  // q_proj, gate/up_proj, down_proj: x [seq, in] W^T
    return std::vector<Dims>{gemm(1, m.seq, m.heads * m.head_dim, m.hidden, false, true, false),
                             gemm(1, m.seq, m.ffn, m.hidden, false, true, false),
                             gemm(1, m.seq, m.hidden, m.ffn, false, true, false)};
  };
  op.inputs = [](const Dims& d, uint64_t seed) {
    std::vector<Input> in{{random_normal(shape_a(d), seed)}, {random_normal(shape_b(d), seed + 1)}};
    if (d.accumulate) in.push_back({random_normal(shape_c(d), seed + 2)});  // C0
    return in;
  };
  // accumulate: matmul_into writes into C0 (the run's copy of it)
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                  if (!d.accumulate) return std::vector<Tensor>{kernels::matmul(in[0], in[1], d.trans_a, d.trans_b)};
                  Tensor c = in[2];
                  kernels::matmul_into(c, in[0], in[1], d.trans_a, d.trans_b, true);
                  return std::vector<Tensor>{c};
                },
                {by_dtype()},
                [](const Dims& d, double act) {
                  double mn = double(d.m) * d.n, b = double(d.batch);
                  return Cost{act * b * (double(d.m) * d.k + double(d.n) * d.k + mn * (d.accumulate ? 2 : 1)),
                              2.0 * b * mn * d.k, d.m, d.n, d.k, d.batch};
                }};
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    std::vector<double> c = naive_matmul(doubles(in[0]), doubles(in[1]), d);
    if (d.accumulate) {
      std::vector<double> c0 = doubles(in[2]);
      for (size_t i = 0; i < c.size(); ++i) c[i] += c0[i];
    }
    return std::vector<Expected>{{0, c, 2e-6}};  // f32 against double: a few ulps of accumulated rounding
  };
  // loss = sum(C * R). C = op(A) op(B) gives d op(A) = R op(B)^T, d op(B) = op(A)^T R;
  // transposed operands take the transpose of these, all four as one matmul each.
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"a", "b"};
    p.x = values({doubles(in[0]), doubles(in[1])});
    auto x = p.x;
    auto r = std::make_shared<std::vector<double>>(doubles(random_normal(shape_c(d), 99)));
    auto forward = [x, d] {
      std::vector<double> c(d.batch * d.m * d.n);
      cpu::matmul((*x)[0].data(), (*x)[1].data(), c.data(), d.batch, d.m, d.n, d.k, d.trans_a, d.trans_b, false);
      return c;
    };
    p.loss = [forward, r] { return dot(forward(), *r); };
    p.grad = [x, r, d] {
      const double *a = (*x)[0].data(), *b = (*x)[1].data(), *rr = r->data();
      std::vector<std::vector<double>> g{std::vector<double>((*x)[0].size()), std::vector<double>((*x)[1].size())};
      if (!d.trans_a) cpu::matmul(rr, b, g[0].data(), d.batch, d.m, d.k, d.n, false, !d.trans_b, false);  // R op(B)^T
      else cpu::matmul(b, rr, g[0].data(), d.batch, d.k, d.m, d.n, d.trans_b, true, false);          // op(B) R^T
      if (!d.trans_b) cpu::matmul(a, rr, g[1].data(), d.batch, d.k, d.n, d.m, !d.trans_a, false, false);  // op(A)^T R
      else cpu::matmul(rr, a, g[1].data(), d.batch, d.n, d.k, d.m, true, d.trans_a, false);           // R^T op(A)
      return g;
    };
    // the double kernel (cblas_dgemm) against the triple loop
    p.double_vs_naive = [forward, x, d] { return std::make_pair(forward(), naive_matmul((*x)[0], (*x)[1], d)); };
    return p;
  };
  ops.push_back(op);
}

}  // namespace nq::kernels::registry::family
