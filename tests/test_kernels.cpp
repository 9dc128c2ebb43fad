// kernels/: the op registry (kernels/registry.h) run in its reference mode (every
// f32 kernel through kernels/kernels.h against a naive independent loop, outputs
// NaN-poisoned) and its grad mode (every backward against central finite
// differences on the raw double kernels, kernels/cpu/); then what does not fit a
// registration: optional saved statistics, the cross-entropy's workspace, the
// dropout mask's statistics, randomly drawn shapes, threading and the argument
// checks' error messages.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <random>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/kernels.h"
#include "kernels/registry.h"
#include "runtime/cuda_compare.h"
#include "tests/grad_check.h"

using namespace nq;
using nq::testing::dot;
using nq::testing::numeric_grad;
using nq::testing::randn;
using nq::testing::rel_err;
namespace reg = nq::kernels::registry;

namespace {

// Finite differences in double: step 1e-6 gives truncation error ~1e-12 and
// rounding error ~1e-10 relative, so 1e-6 by norm is a safe, still sharp bound.
constexpr double kFdStep = 1e-6;
constexpr double kFdTol = 1e-6;

Tensor f32(const std::vector<double>& v, Shape s) { return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), s); }
std::vector<double> values(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

void check_all(const std::vector<reg::Check>& checks) {
  for (const reg::Check& c : checks) {
    INFO(c.what, ": error ", c.error, " (bound ", c.bound, ")");
    CHECK(c.ok);
  }
}

}  // namespace

// ---------------------------------------------------------------- the registry
TEST_CASE("registry reference: every op's f32 CPU kernel matches its naive loop") {
  for (const reg::Op& op : reg::ops()) {
    if (!op.has_cpu || op.bench_only) continue;
    SUBCASE(op.name.c_str()) {
      std::vector<reg::Dims> shapes = op.shapes(reg::Mode::Reference);
      // No reference shapes: the CPU kernel itself is the reference (the optimizer's
      // update, held to torch by test_optim), checked against the GPU in device mode.
      if (shapes.empty()) REQUIRE(!op.shapes(reg::Mode::Device).empty());
      if (!shapes.empty()) REQUIRE_MESSAGE(op.naive, op.name, " has no naive reference");
      if (!shapes.empty()) CHECK(shapes.size() >= 3);  // several shapes, awkward ones among them
      for (const reg::Dims& d : shapes) {
        CAPTURE(reg::describe_case(op, d));
        std::vector<reg::Check> checks = reg::check_reference(op, d);
        CHECK(!checks.empty());
        check_all(checks);
      }
    }
  }
}

TEST_CASE("registry grad: every backward matches central finite differences in double") {
  for (const reg::Op& op : reg::ops()) {
    if (!op.has_cpu || op.bench_only) continue;
    SUBCASE(op.name.c_str()) {
      if (op.backward) REQUIRE_MESSAGE(op.grad, op.name, " has a backward but no gradient check");
      if (op.grad)
        for (const reg::Dims& d : op.shapes(reg::Mode::Grad)) {
          CAPTURE(reg::describe_case(op, d));
          std::vector<reg::Check> checks = reg::check_grad(op, d);
          CHECK(!checks.empty());
          check_all(checks);
        }
    }
  }
}

// ---------------------------------------------------------------- saved statistics
TEST_CASE("rmsnorm and attention give the same output without their saved statistics (inference)") {
  // at the registry's reference shapes and inputs; the forward's first output is y (o)
  for (const char* name : {"rmsnorm", "attention"}) {
    const reg::Op* op = reg::find(name);
    REQUIRE(op);
    for (const reg::Dims& d : op->shapes(reg::Mode::Reference)) {
      CAPTURE(reg::describe_case(*op, d));
      std::vector<Tensor> in;
      for (const reg::Input& i : op->inputs(d, 1)) in.push_back(i.host);
      Tensor with_stats = op->forward.run(in, {}, d)[0];
      Tensor without = std::string(name) == "rmsnorm"
                           ? kernels::rmsnorm_forward(in[0], in[1], 1e-6f, nullptr)
                           : kernels::attention_forward(in[0], in[1], in[2], d.batch, d.seq,
                                                        in.size() > 4 ? in[4] : Tensor(), nullptr);
      CHECK(values(without) == values(with_stats));
    }
  }
}

// ---------------------------------------------------------------- linear + cross-entropy
TEST_CASE("linear_cross_entropy holds one chunk of logits at a time and counts the rows it uses") {
  const int64_t N = 7, D = 5, V = 17;
  std::vector<double> h = randn(N * D, 23), w = randn(V * D, 24), g0 = randn(V * D, 25);
  std::vector<int32_t> labels = {3, -100, 16, 0, 5, -100, 3};
  for (int64_t chunk : {1, 3, 7, 100}) {
    CAPTURE(chunk);
    Tensor grad_h, grad_w = f32(g0, {V, D});  // grad_w is accumulated into
    int64_t counted = -1;
    Allocator& cpu_alloc = allocator_for(Device::CPU);
    cpu_alloc.reset_peak();
    size_t workspace_before = cpu_alloc.stats().current[size_t(MemCategory::Workspace)];
    kernels::linear_cross_entropy(f32(h, {N, D}), f32(w, {V, D}), Tensor::from_ids(labels, {N}), chunk, &grad_h,
                                  &grad_w, &counted);
    // Only one chunk of logits ever exists: [min(chunk, N), V] f32 of workspace.
    CHECK(cpu_alloc.stats().peak[size_t(MemCategory::Workspace)] - workspace_before ==
          size_t(std::min<int64_t>(chunk, N) * V * 4));
    CHECK(counted == 5);
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

// ---------------------------------------------------------------- dropout
TEST_CASE("dropout keeps about 1 - p of the elements, and another offset draws another mask") {
  // (the registry holds each element to philox_uniform(seed, offset, i) >= p exactly)
  const float p = 0.3f;
  std::vector<double> x;
  std::vector<double> yv;
  for (int64_t n : {int64_t(1037), int64_t(300005)}) {
    CAPTURE(n);
    x = randn(n, 28);
    yv = values(kernels::dropout_forward(f32(x, {n}), p, 1234, 77));
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) kept += yv[i] != 0.0;
    CHECK(std::fabs(double(kept) / n - (1 - p)) < 0.03);
  }
  const int64_t n = int64_t(x.size());
  CHECK(values(kernels::dropout_forward(f32(x, {n}), p, 1234, 78)) != yv);
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
    Tensor rotated = kernels::rope_forward(q, Tensor::from_ids(pos, {B * T}), rope_table(1e4f, Dh));
    outs.insert(outs.end(), {o, lse, gq, gk, gv, rotated});
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
  const RopeTable rope4 = rope_table(1e4f, 4);
  CHECK_THROWS_WITH_AS(kernels::rope_forward(Tensor::zeros({3, 2, 5}), Tensor::from_ids({0, 1, 2}, {3}), rope4),
                       "rope_forward: head_dim must be even, x is [3, 2, 5]", Error);
  CHECK_THROWS_WITH_AS(kernels::rope_forward(Tensor::zeros({3, 2, 4}), Tensor::from_ids({0, 1}, {2}), rope4),
                       "rope_forward: positions [2] must have 3 elements", Error);
  CHECK_THROWS_WITH_AS(kernels::rope_forward(Tensor::zeros({3, 2, 6}), Tensor::from_ids({0, 1, 2}, {3}), rope4),
                       "rope_forward: the RoPE table has 2 frequencies, x [3, 2, 6] needs head_dim / 2 = 3", Error);
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
