// kernels/: every forward against a naive independent loop in this file (f32
// kernels through kernels/kernels.h, outputs NaN-poisoned), every backward
// against central finite differences on the raw double kernels (kernels/cpu/),
// and the argument checks' error messages.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <limits>
#include <random>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/kernels.h"
#include "runtime/philox.h"
#include "tests/grad_check.h"

using namespace nq;
using nq::testing::dot;
using nq::testing::numeric_grad;
using nq::testing::randn;
using nq::testing::rel_err;

namespace {

// Finite differences in double: step 1e-6 gives truncation error ~1e-12 and
// rounding error ~1e-10 relative, so 1e-6 by norm is a safe, still sharp bound.
constexpr double kFdStep = 1e-6;
constexpr double kFdTol = 1e-6;
// f32 kernels against a double reference: a few ulps of accumulated rounding.
constexpr double kF32Tol = 2e-6;

Tensor f32(const std::vector<double>& v, Shape s) { return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), s); }
std::vector<double> values(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

}  // namespace

// ---------------------------------------------------------------- elementwise
TEST_CASE("elementwise kernels match a loop (serial and threaded sizes)") {
  for (int64_t n : {1, 17, 100003}) {
    std::vector<double> a = randn(n, 1), b = randn(n, 2);
    Tensor ta = f32(a, {n}), tb = f32(b, {n});
    std::vector<double> add = values(kernels::add(ta, tb)), mul = values(kernels::mul(ta, tb)),
                        sc = values(kernels::scale(ta, -2.5f));
    Tensor acc = ta.clone();
    kernels::add_inplace(acc, tb);
    std::vector<double> acc_v = values(acc);
    double ref_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      float fa = float(a[i]), fb = float(b[i]);
      REQUIRE(add[i] == double(fa + fb));
      REQUIRE(acc_v[i] == double(fa + fb));
      REQUIRE(mul[i] == double(fa * fb));
      REQUIRE(sc[i] == double(-2.5f * fa));
      ref_sum += double(fa);
    }
    CHECK(std::fabs(kernels::sum(ta) - ref_sum) <= 1e-6 * std::max(1.0, std::fabs(ref_sum)));
  }
}

// ---------------------------------------------------------------- matmul
TEST_CASE("matmul matches a triple loop for every transpose, batched, with accumulate") {
  struct Dims { int64_t batch, M, N, K; };
  for (Dims d : {Dims{1, 1, 1, 1}, Dims{1, 3, 17, 5}, Dims{3, 17, 3, 127}, Dims{2, 4, 1, 3}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(d.batch); CAPTURE(d.M); CAPTURE(d.N); CAPTURE(d.K); CAPTURE(ta); CAPTURE(tb);
        bool batched = d.batch > 1;
        Shape sa = ta ? Shape{d.K, d.M} : Shape{d.M, d.K}, sb = tb ? Shape{d.N, d.K} : Shape{d.K, d.N};
        if (batched) { sa = Shape{d.batch, sa[0], sa[1]}; sb = Shape{d.batch, sb[0], sb[1]}; }
        std::vector<double> a = randn(d.batch * d.M * d.K, 3), b = randn(d.batch * d.K * d.N, 4),
                            c0 = randn(d.batch * d.M * d.N, 5);
        std::vector<double> ref(c0.size());
        for (int64_t p = 0; p < d.batch; ++p)
          for (int64_t m = 0; m < d.M; ++m)
            for (int64_t n = 0; n < d.N; ++n) {
              double s = 0;
              for (int64_t k = 0; k < d.K; ++k) {
                double av = a[p * d.M * d.K + (ta ? k * d.M + m : m * d.K + k)];
                double bv = b[p * d.K * d.N + (tb ? n * d.K + k : k * d.N + n)];
                s += double(float(av)) * double(float(bv));
              }
              ref[(p * d.M + m) * d.N + n] = s;
            }
        Tensor c = kernels::matmul(f32(a, sa), f32(b, sb), ta, tb);
        CHECK(c.shape() == (batched ? Shape{d.batch, d.M, d.N} : Shape{d.M, d.N}));
        CHECK(rel_err(values(c), ref) < kF32Tol);
        // accumulate: C = C0 + op(A) op(B)
        Tensor acc = f32(c0, c.shape());
        kernels::matmul_into(acc, f32(a, sa), f32(b, sb), ta, tb, true);
        std::vector<double> ref_acc(ref.size());
        for (size_t i = 0; i < ref.size(); ++i) ref_acc[i] = ref[i] + double(float(c0[i]));
        CHECK(rel_err(values(acc), ref_acc) < kF32Tol);
        // the double kernel (used by the finite-difference tests) agrees too
        std::vector<double> cd(ref.size());
        cpu::matmul(a.data(), b.data(), cd.data(), d.batch, d.M, d.N, d.K, ta, tb, false);
        std::vector<double> ref_d(ref.size());
        for (int64_t p = 0; p < d.batch; ++p)
          for (int64_t m = 0; m < d.M; ++m)
            for (int64_t n = 0; n < d.N; ++n) {
              double s = 0;
              for (int64_t k = 0; k < d.K; ++k)
                s += a[p * d.M * d.K + (ta ? k * d.M + m : m * d.K + k)] * b[p * d.K * d.N + (tb ? n * d.K + k : k * d.N + n)];
              ref_d[(p * d.M + m) * d.N + n] = s;
            }
        CHECK(rel_err(cd, ref_d) < 1e-12);
      }
}

// ---------------------------------------------------------------- embedding
TEST_CASE("embedding gathers rows; its backward scatter-adds (finite differences)") {
  const int64_t V = 7, D = 5, N = 9;
  std::vector<int32_t> ids = {3, 0, 6, 3, 3, 1, 6, 2, 0};  // repeats must add up
  std::vector<double> table = randn(V * D, 6);
  Tensor out = kernels::embedding_forward(f32(table, {V, D}), Tensor::from_ids(ids, {N}));
  CHECK(out.shape() == Shape{N, D});
  std::vector<double> got = values(out);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) REQUIRE(got[n * D + d] == double(float(table[ids[n] * D + d])));

  std::vector<double> r = randn(N * D, 7), y(N * D), grad(V * D);
  auto loss = [&] { cpu::embedding_forward(table.data(), ids.data(), y.data(), N, D); return dot(y, r); };
  cpu::embedding_backward(r.data(), ids.data(), grad.data(), N, V, D);
  CHECK(rel_err(grad, numeric_grad(table, loss, kFdStep)) < kFdTol);
  CHECK(rel_err(values(kernels::embedding_backward(f32(r, {N, D}), Tensor::from_ids(ids, {N}), V)), grad) < kF32Tol);
}

// ---------------------------------------------------------------- RMSNorm
TEST_CASE("rmsnorm forward matches the HF formula; backward matches finite differences") {
  const double eps = 1e-6;
  for (auto [N, D] : {std::pair<int64_t, int64_t>{1, 1}, {3, 17}, {5, 127}}) {
    CAPTURE(N); CAPTURE(D);
    std::vector<double> x = randn(N * D, 8, 2.0), w = randn(D, 9);
    std::vector<double> ref(N * D), ref_rstd(N);
    for (int64_t n = 0; n < N; ++n) {
      double ms = 0;
      for (int64_t d = 0; d < D; ++d) ms += double(float(x[n * D + d])) * double(float(x[n * D + d])) / D;
      ref_rstd[n] = 1 / std::sqrt(ms + eps);
      for (int64_t d = 0; d < D; ++d) ref[n * D + d] = double(float(w[d])) * double(float(x[n * D + d])) * ref_rstd[n];
    }
    Tensor rstd;
    Tensor y = kernels::rmsnorm_forward(f32(x, {N, D}), f32(w, {D}), float(eps), &rstd);
    CHECK(rel_err(values(y), ref) < kF32Tol);
    CHECK(rel_err(values(rstd), ref_rstd) < kF32Tol);
    CHECK(values(kernels::rmsnorm_forward(f32(x, {N, D}), f32(w, {D}), float(eps), nullptr)) == values(y));

    // A larger eps for the gradient check: with D = 1 and eps = 1e-6, y ~ w sign(x)
    // and dy/dx ~ eps / |x|^3 is too small for finite differences to resolve.
    const double eps_fd = 0.05;
    std::vector<double> r = randn(N * D, 10), out(N * D), rs(N), gx(N * D), gw(D);
    auto loss = [&] { cpu::rmsnorm_forward(x.data(), w.data(), eps_fd, out.data(), rs.data(), N, D); return dot(out, r); };
    loss();
    cpu::rmsnorm_backward(r.data(), x.data(), w.data(), rs.data(), gx.data(), gw.data(), N, D);
    CHECK(rel_err(gx, numeric_grad(x, loss, kFdStep)) < kFdTol);
    CHECK(rel_err(gw, numeric_grad(w, loss, kFdStep)) < kFdTol);
  }
}

// ---------------------------------------------------------------- RoPE
// HF's formulation, independent of the kernel's pairwise rotation:
// y = x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), rotate_half(x) = cat(-x2, x1).
static std::vector<double> rope_reference(const std::vector<double>& x, const std::vector<int32_t>& pos, double theta,
                                          int64_t N, int64_t H, int64_t Dh) {
  std::vector<double> y(x.size());
  int64_t half = Dh / 2;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Dh; ++j) {
        double inv_freq = 1.0 / std::pow(theta, double(2 * (j % half)) / double(Dh));
        double angle = pos[n] * inv_freq;
        const double* xh = &x[(n * H + h) * Dh];
        double rotated = j < half ? -xh[j + half] : xh[j - half];
        y[(n * H + h) * Dh + j] = xh[j] * std::cos(angle) + rotated * std::sin(angle);
      }
  return y;
}

TEST_CASE("rope forward matches HF rotate_half; backward is its transpose (finite differences)") {
  struct Case { int64_t N, H, Dh; double theta; std::vector<int32_t> pos; };
  for (const Case& c : {Case{1, 1, 2, 10000.0, {0}}, Case{3, 2, 8, 10000.0, {0, 1, 2}},
                        Case{5, 3, 6, 1e6, {4, 0, 1, 2, 33}}, Case{2, 1, 128, 1e6, {17, 1000}}}) {
    CAPTURE(c.N); CAPTURE(c.H); CAPTURE(c.Dh);
    std::vector<double> x = randn(c.N * c.H * c.Dh, 11);
    std::vector<double> ref = rope_reference(x, c.pos, c.theta, c.N, c.H, c.Dh);
    std::vector<double> yd(x.size());
    cpu::rope_rotate(x.data(), c.pos.data(), c.theta, +1, yd.data(), c.N, c.H, c.Dh);
    CHECK(rel_err(yd, ref) < 1e-12);
    // f32: the angle pos * inv_freq is itself rounded to f32 (as in HF), so large
    // positions cost ~pos * 2^-24 radians of accuracy.
    Tensor pos = Tensor::from_ids(c.pos, {c.N});
    Tensor y = kernels::rope_forward(f32(x, {c.N, c.H, c.Dh}), pos, float(c.theta));
    CHECK(rel_err(values(y), ref) < 1e-4);

    std::vector<double> r = randn(x.size(), 12), out(x.size()), grad(x.size());
    auto loss = [&] { cpu::rope_rotate(x.data(), c.pos.data(), c.theta, +1, out.data(), c.N, c.H, c.Dh); return dot(out, r); };
    cpu::rope_rotate(r.data(), c.pos.data(), c.theta, -1, grad.data(), c.N, c.H, c.Dh);
    CHECK(rel_err(grad, numeric_grad(x, loss, kFdStep)) < kFdTol);
    CHECK(rel_err(values(kernels::rope_backward(f32(r, {c.N, c.H, c.Dh}), pos, float(c.theta))), grad) < 1e-4);
  }
}

// ---------------------------------------------------------------- SwiGLU
TEST_CASE("swiglu forward matches silu(gate) * up; backward matches finite differences") {
  for (int64_t n : {1, 17, 127}) {
    std::vector<double> gate = randn(n, 13, 3.0), up = randn(n, 14);
    gate[0] = n > 1 ? 40.0 : -40.0;  // saturated sigmoid on either side
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) {
      double g = double(float(gate[i]));
      ref[i] = g / (1 + std::exp(-g)) * double(float(up[i]));
    }
    CHECK(rel_err(values(kernels::swiglu_forward(f32(gate, {n}), f32(up, {n}))), ref) < kF32Tol);

    std::vector<double> r = randn(n, 15), out(n), gg(n), gu(n);
    auto loss = [&] { cpu::swiglu_forward(gate.data(), up.data(), out.data(), n); return dot(out, r); };
    cpu::swiglu_backward(r.data(), gate.data(), up.data(), gg.data(), gu.data(), n);
    CHECK(rel_err(gg, numeric_grad(gate, loss, kFdStep)) < kFdTol);
    CHECK(rel_err(gu, numeric_grad(up, loss, kFdStep)) < kFdTol);
  }
}

// ---------------------------------------------------------------- attention
struct AttnCase { int64_t B, T, Hq, Hkv, Dh; bool segments; };

static std::vector<int32_t> make_segments(const AttnCase& c) {
  // Packed samples: each batch row holds segments of lengths 1, 2, 3, ... .
  std::vector<int32_t> seg(c.B * c.T);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t i = 0, id = 0, left = 1, len = 1; i < c.T; ++i) {
      seg[b * c.T + i] = int32_t(id);
      if (--left == 0) { ++id; left = ++len; }
    }
  return seg;
}

// Explicit [T, T] scores per (batch, head), masked to -inf, softmax, P V.
static void attention_reference(const AttnCase& c, const std::vector<double>& q, const std::vector<double>& k,
                                const std::vector<double>& v, const std::vector<int32_t>& seg,
                                std::vector<double>& o, std::vector<double>& lse) {
  const double scale = 1 / std::sqrt(double(c.Dh)), inf = std::numeric_limits<double>::infinity();
  o.assign(c.B * c.T * c.Hq * c.Dh, 0);
  lse.assign(c.B * c.T * c.Hq, 0);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h) {
      int64_t g = h * c.Hkv / c.Hq;  // kv head of query head h
      std::vector<double> S(c.T * c.T);
      for (int64_t i = 0; i < c.T; ++i)
        for (int64_t j = 0; j < c.T; ++j) {
          bool masked = j > i || (!seg.empty() && seg[b * c.T + i] != seg[b * c.T + j]);
          double s = 0;
          for (int64_t d = 0; d < c.Dh; ++d)
            s += q[((b * c.T + i) * c.Hq + h) * c.Dh + d] * k[((b * c.T + j) * c.Hkv + g) * c.Dh + d];
          S[i * c.T + j] = masked ? -inf : s * scale;
        }
      for (int64_t i = 0; i < c.T; ++i) {
        double m = -inf, z = 0;
        for (int64_t j = 0; j < c.T; ++j) m = std::max(m, S[i * c.T + j]);
        for (int64_t j = 0; j < c.T; ++j) z += std::exp(S[i * c.T + j] - m);
        lse[(b * c.T + i) * c.Hq + h] = m + std::log(z);
        for (int64_t j = 0; j < c.T; ++j) {
          double p = std::exp(S[i * c.T + j] - m) / z;
          for (int64_t d = 0; d < c.Dh; ++d)
            o[((b * c.T + i) * c.Hq + h) * c.Dh + d] += p * v[((b * c.T + j) * c.Hkv + g) * c.Dh + d];
        }
      }
    }
}

TEST_CASE("attention forward matches explicit masked softmax(QK^T)V with GQA and segments") {
  for (const AttnCase& c : {AttnCase{1, 1, 1, 1, 4, false}, AttnCase{2, 17, 4, 2, 8, true},
                            AttnCase{1, 3, 3, 1, 16, false}, AttnCase{1, 127, 2, 1, 4, true},
                            AttnCase{3, 5, 2, 2, 3, false}}) {
    CAPTURE(c.B); CAPTURE(c.T); CAPTURE(c.Hq); CAPTURE(c.Hkv); CAPTURE(c.Dh); CAPTURE(c.segments);
    int64_t BT = c.B * c.T;
    std::vector<double> q = randn(BT * c.Hq * c.Dh, 16), k = randn(BT * c.Hkv * c.Dh, 17),
                        v = randn(BT * c.Hkv * c.Dh, 18);
    for (auto* t : {&q, &k, &v})
      for (double& x : *t) x = double(float(x));  // the f32 kernel sees exactly these values
    std::vector<int32_t> seg = c.segments ? make_segments(c) : std::vector<int32_t>();
    std::vector<double> ref_o, ref_lse;
    attention_reference(c, q, k, v, seg, ref_o, ref_lse);
    Tensor lse;
    Tensor o = kernels::attention_forward(f32(q, {BT, c.Hq, c.Dh}), f32(k, {BT, c.Hkv, c.Dh}),
                                          f32(v, {BT, c.Hkv, c.Dh}), c.B, c.T,
                                          c.segments ? Tensor::from_ids(seg, {BT}) : Tensor(), &lse);
    CHECK(rel_err(values(o), ref_o) < 1e-5);
    CHECK(rel_err(values(lse), ref_lse) < 1e-5);
    // Without an lse (inference), the same output.
    Tensor o_inference = kernels::attention_forward(f32(q, {BT, c.Hq, c.Dh}), f32(k, {BT, c.Hkv, c.Dh}),
                                                    f32(v, {BT, c.Hkv, c.Dh}), c.B, c.T,
                                                    c.segments ? Tensor::from_ids(seg, {BT}) : Tensor(), nullptr);
    CHECK(values(o_inference) == values(o));
  }
}

TEST_CASE("attention backward matches finite differences (GQA, segments, T = 1 and 17)") {
  for (const AttnCase& c : {AttnCase{2, 5, 4, 2, 3, true}, AttnCase{1, 17, 2, 1, 4, false},
                            AttnCase{1, 1, 2, 2, 2, false}, AttnCase{1, 6, 3, 3, 2, true}}) {
    CAPTURE(c.B); CAPTURE(c.T); CAPTURE(c.Hq); CAPTURE(c.Hkv); CAPTURE(c.Dh);
    int64_t BT = c.B * c.T;
    std::vector<double> q = randn(BT * c.Hq * c.Dh, 19), k = randn(BT * c.Hkv * c.Dh, 20),
                        v = randn(BT * c.Hkv * c.Dh, 21), r = randn(BT * c.Hq * c.Dh, 22);
    std::vector<int32_t> seg = c.segments ? make_segments(c) : std::vector<int32_t>();
    const int32_t* segp = c.segments ? seg.data() : nullptr;
    std::vector<double> o(q.size()), lse(BT * c.Hq), gq(q.size()), gk(k.size()), gv(v.size());
    auto loss = [&] {
      cpu::attention_forward(q.data(), k.data(), v.data(), segp, o.data(), lse.data(), c.B, c.T, c.Hq, c.Hkv, c.Dh);
      return dot(o, r);
    };
    loss();
    cpu::attention_backward(r.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), segp, gq.data(), gk.data(),
                            gv.data(), c.B, c.T, c.Hq, c.Hkv, c.Dh);
    CHECK(rel_err(gq, numeric_grad(q, loss, kFdStep)) < kFdTol);
    CHECK(rel_err(gk, numeric_grad(k, loss, kFdStep)) < kFdTol);
    CHECK(rel_err(gv, numeric_grad(v, loss, kFdStep)) < kFdTol);
  }
}

// ---------------------------------------------------------------- linear + cross-entropy
TEST_CASE("linear_cross_entropy matches full-logit CE for every chunk size, with ignored rows") {
  const int64_t N = 7, D = 5, V = 17;
  std::vector<double> h = randn(N * D, 23), w = randn(V * D, 24), g0 = randn(V * D, 25);
  for (auto* t : {&h, &w, &g0})
    for (double& x : *t) x = double(float(x));
  std::vector<int32_t> labels = {3, -100, 16, 0, 5, -100, 3};
  // reference: full [N, V] logits, mean over the 5 counted rows
  std::vector<double> ref_gh(N * D, 0), ref_gw(g0);
  double ref_loss = 0;
  const double count = 5;
  for (int64_t n = 0; n < N; ++n) {
    if (labels[n] == -100) continue;
    std::vector<double> z(V);
    for (int64_t c = 0; c < V; ++c)
      for (int64_t d = 0; d < D; ++d) z[c] += h[n * D + d] * w[c * D + d];
    double m = *std::max_element(z.begin(), z.end()), s = 0;
    for (double zc : z) s += std::exp(zc - m);
    ref_loss += (m + std::log(s) - z[labels[n]]) / count;
    for (int64_t c = 0; c < V; ++c) {
      double dz = (std::exp(z[c] - m) / s - (c == labels[n])) / count;
      for (int64_t d = 0; d < D; ++d) {
        ref_gh[n * D + d] += dz * w[c * D + d];
        ref_gw[c * D + d] += dz * h[n * D + d];
      }
    }
  }
  for (int64_t chunk : {1, 3, 7, 100}) {
    CAPTURE(chunk);
    Tensor grad_h, grad_w = f32(g0, {V, D});  // grad_w is accumulated into
    int64_t counted = -1;
    Allocator& cpu_alloc = allocator_for(Device::CPU);
    cpu_alloc.reset_peak();
    size_t workspace_before = cpu_alloc.stats().current[size_t(MemCategory::Workspace)];
    float loss = kernels::linear_cross_entropy(f32(h, {N, D}), f32(w, {V, D}), Tensor::from_ids(labels, {N}), chunk,
                                               &grad_h, &grad_w, &counted);
    // Only one chunk of logits ever exists: [min(chunk, N), V] f32 of workspace.
    CHECK(cpu_alloc.stats().peak[size_t(MemCategory::Workspace)] - workspace_before ==
          size_t(std::min<int64_t>(chunk, N) * V * 4));
    CHECK(counted == 5);
    CHECK(std::fabs(loss - ref_loss) < 1e-5 * ref_loss);
    CHECK(rel_err(values(grad_h), ref_gh) < 1e-5);
    CHECK(rel_err(values(grad_w), ref_gw) < 1e-5);
  }
  // Every row ignored: loss 0, zero gradient, nothing counted.
  Tensor grad_h;
  int64_t counted = -1;
  float loss = kernels::linear_cross_entropy(f32(h, {N, D}), f32(w, {V, D}),
                                             Tensor::from_ids(std::vector<int32_t>(N, -100), {N}), 4, &grad_h, nullptr,
                                             &counted);
  CHECK(loss == 0.0f);
  CHECK(counted == 0);
  for (double g : values(grad_h)) REQUIRE(g == 0.0);
}

TEST_CASE("linear_cross_entropy gradients match finite differences") {
  const int64_t N = 5, D = 3, V = 11;
  std::vector<double> h = randn(N * D, 26, 2.0), w = randn(V * D, 27, 2.0);
  std::vector<int32_t> labels = {10, 0, -100, 4, 4};
  std::vector<double> gh(N * D), gw(V * D, 0.0), logits(2 * V);
  int64_t count = 0;
  auto loss = [&] {
    return cpu::linear_cross_entropy(h.data(), w.data(), labels.data(), N, D, V, 2, logits.data(), (double*)nullptr,
                                     (double*)nullptr, &count);
  };
  cpu::linear_cross_entropy(h.data(), w.data(), labels.data(), N, D, V, 2, logits.data(), gh.data(), gw.data(), &count);
  CHECK(count == 4);
  CHECK(rel_err(gh, numeric_grad(h, loss, kFdStep)) < kFdTol);
  CHECK(rel_err(gw, numeric_grad(w, loss, kFdStep)) < kFdTol);
}

// ---------------------------------------------------------------- dropout
TEST_CASE("dropout keeps element i iff philox_uniform >= p, scales by 1/(1-p); backward applies the same mask") {
  // 1037: a partial chunk of Philox blocks at the end (the CPU kernel draws 8 blocks = 32
  // elements at a time), below the size where it goes parallel; 300005 above it.
  const float p = 0.3f;
  std::vector<double> x;
  std::vector<double> yv;
  for (int64_t n : {int64_t(1037), int64_t(300005)}) {
    CAPTURE(n);
    x = randn(n, 28);
    Tensor y = kernels::dropout_forward(f32(x, {n}), p, 1234, 77);
    Tensor gx = kernels::dropout_backward(f32(x, {n}), p, 1234, 77);
    yv = values(y);
    std::vector<double> gv = values(gx);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      bool keep = philox_uniform(1234, 77, i) >= p;
      kept += keep;
      REQUIRE(yv[i] == (keep ? double(float(x[i]) * (1.0f / (1.0f - p))) : 0.0));
      REQUIRE(gv[i] == yv[i]);
    }
    CHECK(std::fabs(double(kept) / n - (1 - p)) < 0.03);
  }
  const int64_t n = int64_t(x.size());
  // another offset draws another mask
  CHECK(values(kernels::dropout_forward(f32(x, {n}), p, 1234, 78)) != yv);

  std::vector<double> xs = randn(17, 29), r = randn(17, 30), out(17), grad(17);
  auto loss = [&] { cpu::dropout_apply(xs.data(), out.data(), 17, 0.5f, 9, 0); return dot(out, r); };
  cpu::dropout_apply(r.data(), grad.data(), 17, 0.5f, 9, 0);
  CHECK(rel_err(grad, numeric_grad(xs, loss, kFdStep)) < kFdTol);
}

// ---------------------------------------------------------------- random shapes
TEST_CASE("backwards match finite differences on randomly drawn shapes") {
  std::mt19937 gen(2024);
  auto draw = [&](std::vector<int64_t> choices) { return choices[gen() % choices.size()]; };
  for (int trial = 0; trial < 6; ++trial) {
    const int64_t B = draw({1, 2}), T = draw({1, 3, 5, 17}), Hkv = draw({1, 2}), Hq = Hkv * draw({1, 2, 3}),
                  Dh = draw({2, 4, 6}), V = draw({1, 3, 17}), D = draw({1, 3, 17});
    const int64_t N = B * T;
    CAPTURE(trial); CAPTURE(B); CAPTURE(T); CAPTURE(Hq); CAPTURE(Hkv); CAPTURE(Dh); CAPTURE(V); CAPTURE(D);
    uint32_t seed = 100 + 10 * trial;
    // attention, with segments on odd trials
    std::vector<double> q = randn(N * Hq * Dh, seed), k = randn(N * Hkv * Dh, seed + 1), v = randn(N * Hkv * Dh, seed + 2),
                        r = randn(N * Hq * Dh, seed + 3), o(q.size()), lse(N * Hq), gq(q.size()), gk(k.size()),
                        gv(v.size());
    std::vector<int32_t> seg(N);
    for (int64_t i = 0; i < N; ++i) seg[i] = int32_t((i % T) / 2);
    const int32_t* segp = trial % 2 ? seg.data() : nullptr;
    auto attn_loss = [&] {
      cpu::attention_forward(q.data(), k.data(), v.data(), segp, o.data(), lse.data(), B, T, Hq, Hkv, Dh);
      return dot(o, r);
    };
    attn_loss();
    cpu::attention_backward(r.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), segp, gq.data(), gk.data(),
                            gv.data(), B, T, Hq, Hkv, Dh);
    CHECK(rel_err(gq, numeric_grad(q, attn_loss, kFdStep)) < kFdTol);
    CHECK(rel_err(gk, numeric_grad(k, attn_loss, kFdStep)) < kFdTol);
    CHECK(rel_err(gv, numeric_grad(v, attn_loss, kFdStep)) < kFdTol);
    // linear + cross-entropy with random labels (about one in four ignored)
    std::vector<double> h = randn(N * D, seed + 4), w = randn(V * D, seed + 5), gh(N * D), gw(V * D, 0.0),
                        logits(std::min<int64_t>(3, N) * V);
    std::vector<int32_t> labels(N);
    for (int32_t& y : labels) y = gen() % 4 == 0 ? -100 : int32_t(gen() % V);
    int64_t count = 0;
    auto ce_loss = [&] {
      return cpu::linear_cross_entropy(h.data(), w.data(), labels.data(), N, D, V, 3, logits.data(), (double*)nullptr,
                                       (double*)nullptr, &count);
    };
    cpu::linear_cross_entropy(h.data(), w.data(), labels.data(), N, D, V, 3, logits.data(), gh.data(), gw.data(),
                              &count);
    if (count > 0) {
      CHECK(rel_err(gh, numeric_grad(h, ce_loss, kFdStep)) < kFdTol);
      CHECK(rel_err(gw, numeric_grad(w, ce_loss, kFdStep)) < kFdTol);
    }
  }
}

// ---------------------------------------------------------------- threads
// The finite-difference tests use small sizes, which run serially. Here sizes
// above every kernel's threading threshold run with 3 threads (uneven splits)
// and must reproduce the single-thread result bit for bit.
TEST_CASE("threaded kernels reproduce their single-thread results exactly") {
  auto run_all = [](int threads) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    const int64_t N = 600, D = 128, V = 97, B = 2, T = 160, Hq = 4, Hkv = 2, Dh = 32;
    std::vector<Tensor> outs;
    Tensor x = f32(randn(N * D, 31), {N, D}), w = f32(randn(D, 32), {D}), dy = f32(randn(N * D, 33), {N, D});
    Tensor rstd, gx, gw;
    outs.push_back(kernels::rmsnorm_forward(x, w, 1e-6f, &rstd));
    kernels::rmsnorm_backward(dy, x, w, rstd, &gx, &gw);
    outs.insert(outs.end(), {gx, gw});
    std::vector<int32_t> ids(N);
    for (int64_t n = 0; n < N; ++n) ids[n] = int32_t((n * 7) % V);
    Tensor id_t = Tensor::from_ids(ids, {N});
    outs.push_back(kernels::embedding_backward(dy, id_t, V));
    outs.push_back(kernels::embedding_forward(x.slice(0, V), id_t));
    Tensor big = f32(randn(300000, 34), {300000}), big2 = f32(randn(300000, 35), {300000}), gg, gu;
    outs.push_back(kernels::swiglu_forward(big, big2));
    kernels::swiglu_backward(big, big, big2, &gg, &gu);
    outs.insert(outs.end(), {gg, gu, kernels::dropout_forward(big, 0.1f, 5, 6), Tensor::full({1}, kernels::sum(big))});
    std::vector<int32_t> pos(B * T), seg(B * T);
    for (int64_t i = 0; i < B * T; ++i) { pos[i] = int32_t(i % T); seg[i] = int32_t((i % T) / 50); }
    Tensor q = f32(randn(B * T * Hq * Dh, 36), {B * T, Hq, Dh}), k = f32(randn(B * T * Hkv * Dh, 37), {B * T, Hkv, Dh}),
           v = f32(randn(B * T * Hkv * Dh, 38), {B * T, Hkv, Dh}), lse, gq, gk, gv;
    Tensor o = kernels::attention_forward(q, k, v, B, T, Tensor::from_ids(seg, {B * T}), &lse);
    kernels::attention_backward(q, q, k, v, o, lse, B, T, Tensor::from_ids(seg, {B * T}), &gq, &gk, &gv);
    outs.insert(outs.end(), {o, lse, gq, gk, gv, kernels::rope_forward(q, Tensor::from_ids(pos, {B * T}), 1e4f)});
    Tensor gh, gW;
    float loss = kernels::linear_cross_entropy(x, f32(randn(V * D, 39), {V, D}), id_t, 256, &gh, &gW, nullptr);
    outs.insert(outs.end(), {gh, gW, Tensor::full({1}, loss)});
    omp_set_num_threads(saved);
    return outs;
  };
  std::vector<Tensor> serial = run_all(1), threaded = run_all(3);
  for (size_t i = 0; i < serial.size(); ++i) {
    CAPTURE(i);
    CHECK(serial[i].to_vector() == threaded[i].to_vector());
  }
}

// ---------------------------------------------------------------- bad input
TEST_CASE("kernel argument errors name the op and the shapes") {
  Tensor x = Tensor::zeros({4, 64}), w = Tensor::zeros({32});
  Tensor rstd;
  CHECK_THROWS_WITH_AS(kernels::rmsnorm_forward(x, w, 1e-6f, &rstd),
                       "rmsnorm_forward: x [4, 64] and w [32] disagree on D", Error);
  CHECK_THROWS_WITH_AS(kernels::add(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})), "add: shape mismatch [2, 3] vs [3, 2]",
                       Error);
  CHECK_THROWS_WITH_AS(kernels::mul(Tensor::zeros({2}), Tensor::zeros({2}, DType::BF16)),
                       "mul: dtype mismatch f32 vs bf16", Error);
  CHECK_THROWS_WITH_AS(kernels::scale(Tensor::zeros({2}, DType::BF16), 2.0f),
                       "scale: a must be a float tensor (f32 on the CPU), got bf16[2] cpu", Error);
  CHECK_THROWS_WITH_AS(kernels::matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})),
                       "matmul: inner dimensions disagree: a [2, 3] @ b [4, 5] (3 vs 4)", Error);
  CHECK_THROWS_WITH_AS(kernels::matmul(Tensor::zeros({2, 3}), Tensor::zeros({5, 4}), true, true),
                       "matmul: inner dimensions disagree: a [2, 3]^T @ b [5, 4]^T (2 vs 4)", Error);
  CHECK_THROWS_WITH_AS(kernels::matmul(Tensor::zeros({2, 3}), Tensor::zeros({1, 3, 4})),
                       "matmul: a [2, 3] and b [1, 3, 4] must both be 2-D or both 3-D", Error);
  CHECK_THROWS_WITH_AS(kernels::embedding_forward(Tensor::zeros({5, 4}), Tensor::from_ids({1, 5}, {2})),
                       "embedding_forward: ids[1] = 5 out of range [0, 5)", Error);
  CHECK_THROWS_WITH_AS(kernels::embedding_forward(Tensor::zeros({5, 4}), Tensor::zeros({2})),
                       "embedding_forward: ids must be i32, got f32[2] cpu", Error);
  CHECK_THROWS_WITH_AS(kernels::rope_forward(Tensor::zeros({3, 2, 5}), Tensor::from_ids({0, 1, 2}, {3}), 1e4f),
                       "rope_forward: head_dim must be even, x is [3, 2, 5]", Error);
  CHECK_THROWS_WITH_AS(kernels::rope_forward(Tensor::zeros({3, 2, 4}), Tensor::from_ids({0, 1}, {2}), 1e4f),
                       "rope_forward: positions [2] must have 3 elements", Error);
  Tensor lse;
  CHECK_THROWS_WITH_AS(kernels::attention_forward(Tensor::zeros({6, 3, 4}), Tensor::zeros({6, 2, 4}),
                                                  Tensor::zeros({6, 2, 4}), 2, 3, Tensor(), &lse),
                       "attention_forward: 3 query heads (q [6, 3, 4]) are not a multiple of 2 kv heads (k [6, 2, 4])",
                       Error);
  CHECK_THROWS_WITH_AS(kernels::attention_forward(Tensor::zeros({6, 2, 4}), Tensor::zeros({6, 2, 4}),
                                                  Tensor::zeros({6, 2, 4}), 2, 4, Tensor(), &lse),
                       "attention_forward: q [6, 2, 4] and k [6, 2, 4] must have B*T = 2*4 rows", Error);
  CHECK_THROWS_WITH_AS(kernels::attention_forward(Tensor::zeros({6, 2, 4}), Tensor::zeros({6, 2, 4}),
                                                  Tensor::zeros({6, 2, 8}), 2, 3, Tensor(), &lse),
                       "attention_forward: shape mismatch [6, 2, 4] vs [6, 2, 8]", Error);
  Tensor gh;
  CHECK_THROWS_WITH_AS(kernels::linear_cross_entropy(Tensor::zeros({2, 4}), Tensor::zeros({9, 3}),
                                                     Tensor::from_ids({1, 2}, {2}), 8, &gh, nullptr, nullptr),
                       "linear_cross_entropy: h [2, 4] and w [9, 3] disagree on D", Error);
  CHECK_THROWS_WITH_AS(kernels::linear_cross_entropy(Tensor::zeros({2, 4}), Tensor::zeros({9, 4}),
                                                     Tensor::from_ids({1, 9}, {2}), 8, &gh, nullptr, nullptr),
                       "linear_cross_entropy: labels[1] = 9 out of range [0, 9) and not -100", Error);
  CHECK_THROWS_WITH_AS(kernels::swiglu_forward(Tensor::zeros({2, 8}), Tensor::zeros({2, 4})),
                       "swiglu_forward: shape mismatch [2, 8] vs [2, 4]", Error);
  CHECK_THROWS_WITH_AS(kernels::dropout_forward(Tensor::zeros({4}), 1.0f, 0, 0), "dropout_forward: p must be in [0, 1), got 1",
                       Error);
}
