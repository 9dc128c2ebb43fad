// autograd/: the tape (diamonds, reuse, no_grad, detach, accumulation),
// checkpoint() giving bit-identical gradients (with and without a host offload),
// checkpoint_rows() against the unchunked function, and every op's backward through
// the Var API checked against finite differences on a small composite graph.
#include <doctest/doctest.h>

#include <cstring>

#include "autograd/ops.h"
#include "runtime/rng.h"
#include "tests/grad_check.h"

using namespace nq;
using nq::testing::numeric_grad;
using nq::testing::randn;
using nq::testing::rel_err;

namespace {

Var param(Shape s, uint32_t seed, double stddev = 1.0, const char* name = "") {
  return Var(Tensor::from_vector(randn<float>(s.numel(), seed, stddev), s), true, name);
}
Var constant(const std::vector<float>& v, Shape s) { return Var(Tensor::from_vector(v, s)); }
float scalar(const Var& v) { return v.value().to_vector()[0]; }

// Finite differences of loss() with respect to every element of p's value
// (f32 through the Var API; loss() rebuilds the graph from the current values).
std::vector<double> var_numeric_grad(Var& p, const std::function<double()>& loss, double h) {
  std::vector<float> vals = p.value().to_vector();
  float* data = p.value().data<float>();
  auto store = [&] { std::memcpy(data, vals.data(), vals.size() * sizeof(float)); };
  std::vector<double> g = numeric_grad(vals, [&] { store(); return loss(); }, h);
  store();  // numeric_grad restored vals; put the unperturbed values back
  return g;
}
std::vector<double> grad_values(const Var& p) {
  std::vector<float> g = p.grad().to_vector();
  return std::vector<double>(g.begin(), g.end());
}

}  // namespace

TEST_CASE("a diamond graph sums both paths: d/dx sum(2x + x*x) = 2 + 2x") {
  Var x = constant({1, 2, 3, -4}, {4});
  x = Var(x.value(), true);
  Var loss = sum(add(scale(x, 2.0f), mul(x, x)));
  backward(loss);
  CHECK(x.grad().to_vector() == std::vector<float>{4, 6, 8, -6});
}

TEST_CASE("a tensor used twice by one op gets both contributions") {
  Var x(Tensor::from_vector({1.5f, -2.0f}, {2}), true);
  backward(sum(add(x, x)));
  CHECK(x.grad().to_vector() == std::vector<float>{2, 2});
  x.zero_grad();
  backward(sum(mul(x, x)));
  CHECK(x.grad().to_vector() == std::vector<float>{3, -4});
}

TEST_CASE("no_grad records nothing; detach cuts the graph") {
  Var x(Tensor::from_vector({1, 2, 3}, {3}), true);
  Var y;
  {
    NoGrad ng;
    CHECK_FALSE(grad_enabled());
    y = mul(x, x);
  }
  CHECK(grad_enabled());
  CHECK_FALSE(y.requires_grad());
  CHECK(y.is_leaf());
  backward(sum(add(y, x)));  // only the recorded path: d/dx = 1
  CHECK(x.grad().to_vector() == std::vector<float>{1, 1, 1});

  x.zero_grad();
  backward(sum(mul(x.detach(), x)));  // d/dx (c * x) with c = x held constant
  CHECK(x.grad().to_vector() == std::vector<float>{1, 2, 3});
}

TEST_CASE("gradients accumulate across backward calls until zero_grad") {
  Var x(Tensor::from_vector({1, 2}, {2}), true), w = constant({3, -5}, {2});
  backward(sum(mul(x, w)));
  backward(sum(mul(x, w)));
  CHECK(x.grad().to_vector() == std::vector<float>{6, -10});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("checkpoint gives bit-identical gradients, dropout and captured parameters included") {
  const int64_t N = 6, D = 8, F = 12, V = 11;
  Var W1 = param({F, D}, 40, 0.3), W2 = param({F, D}, 41, 0.3), W3 = param({D, F}, 42, 0.3), nw = param({F}, 43),
      lm_head = param({V, D}, 45, 0.3);
  Tensor labels = Tensor::from_ids({1, 2, 3, 0, -100, 7}, {N});
  auto block = [&](const std::vector<Var>& in) {  // captures trainable W1, W2, W3, nw
    Var h = dropout(linear(in[0], W1), 0.25f);
    Var y = rmsnorm(swiglu(h, linear(in[0], W2)), nw, 1e-6f);
    return linear(y, W3);
  };
  for (bool input_requires_grad : {false, true}) {
    CAPTURE(input_requires_grad);
    Tensor x_val = Tensor::from_vector(randn<float>(N * D, 44), {N, D});
    std::vector<Var> params = {W1, W2, W3, nw, lm_head};
    auto run = [&](bool use_checkpoint, uint64_t seed, Var& x) {
      for (Var& p : params) p.zero_grad();
      x = Var(x_val.clone(), input_requires_grad);
      rng_seed(seed);
      Var out = use_checkpoint ? checkpoint(block, {x}) : block({x});
      Var loss = linear_cross_entropy(out, lm_head, labels, 4);
      backward(loss);
      std::vector<std::vector<float>> grads;
      for (Var& p : params) grads.push_back(p.grad().to_vector());
      if (input_requires_grad) grads.push_back(x.grad().to_vector());
      grads.push_back({scalar(loss), float(rng_state().offset)});
      return grads;
    };
    Var x_direct, x_ckpt, x_other;
    auto direct = run(false, 7, x_direct);
    auto ckpt = run(true, 7, x_ckpt);
    REQUIRE(direct.size() == ckpt.size());
    for (size_t i = 0; i < direct.size(); ++i) {
      CAPTURE(i);
      CHECK(direct[i] == ckpt[i]);  // bit-identical, element by element
    }
    // The mask matters: another seed gives other gradients.
    auto other = run(false, 8, x_other);
    CHECK(other[0] != direct[0]);
  }
}

TEST_CASE("checkpoint with a host offload: bit-identical gradients; the inputs leave their Vars until backward") {
  // A chain of 4 checkpointed blocks (as the decoder's layers), every block input
  // parked in a CPU HostOffload: loads come back in reverse order, each one starting
  // the next (runtime/offload.h). Gradients must equal the chain without offload.
  const int64_t N = 6, D = 8, F = 12, V = 11, depth = 4;
  std::vector<Var> W;
  for (int64_t i = 0; i < 2 * depth; ++i) W.push_back(param({i % 2 ? D : F, i % 2 ? F : D}, uint32_t(60 + i), 0.3));
  Var lm_head = param({V, D}, 70, 0.3);
  Tensor labels = Tensor::from_ids({1, 2, 3, 0, -100, 7}, {N});
  const Tensor x_val = Tensor::from_vector(randn<float>(N * D, 71), {N, D});
  auto run = [&](const std::shared_ptr<HostOffload>& offload, Var& x0, std::vector<Var>* inputs) {
    for (Var& w : W) w.zero_grad();
    lm_head.zero_grad();
    x0 = Var(x_val.clone(), true);
    rng_seed(3);
    Var x = x0;
    for (int64_t i = 0; i < depth; ++i) {
      auto block = [&, i](const std::vector<Var>& in) {
        return add(in[0], linear(dropout(swiglu(linear(in[0], W[size_t(2 * i)]), linear(in[0], W[size_t(2 * i)])), 0.2f),
                                 W[size_t(2 * i + 1)]));
      };
      if (inputs) inputs->push_back(x);
      x = checkpoint(block, {x}, offload);
    }
    Var loss = linear_cross_entropy(x, lm_head, labels, 4);
    if (inputs)
      for (const Var& in : *inputs) CHECK_FALSE(in.value().defined());  // parked on the host
    backward(loss);
    std::vector<std::vector<float>> grads{x0.grad().to_vector(), lm_head.grad().to_vector()};
    for (Var& w : W) grads.push_back(w.grad().to_vector());
    grads.push_back({scalar(loss)});
    return grads;
  };
  Var x_plain, x_parked;
  const auto plain = run(nullptr, x_plain, nullptr);
  auto offload = std::make_shared<HostOffload>(Device::CPU);
  std::vector<Var> inputs;
  const auto parked = run(offload, x_parked, &inputs);
  for (const Var& in : inputs) CHECK(in.value().defined());  // back after the backward
  CHECK(inputs[0].value().to_vector() == x_val.to_vector());
  REQUIRE(plain.size() == parked.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    CAPTURE(i);
    CHECK(plain[i] == parked[i]);
  }
  // 4 stores; 3 copies back (the last one stored was still in memory when the backward began).
  CHECK(offload->copies() == 4 + 3);
  CHECK(offload->host_bytes() == size_t(depth * N * D) * 4);
  // A second step reuses the host buffers.
  Var again;
  CHECK(run(offload, again, nullptr) == plain);
  CHECK(offload->host_bytes() == size_t(depth * N * D) * 4);
}

TEST_CASE("checkpoint_rows: chunked equals unchunked; dropout chunks re-run with their masks (finite differences)") {
  const int64_t N = 10, D = 6, F = 9;
  Var W1 = param({F, D}, 80, 0.4), W2 = param({F, D}, 81, 0.4), W3 = param({D, F}, 82, 0.4), nw = param({D}, 83);
  auto mlp = [&](float p) {
    return [&, p](const Var& rows) {
      Var h = rmsnorm(rows, nw, 1e-6f);
      return linear(dropout(swiglu(linear(h, W1), linear(h, W2)), p), W3);
    };
  };
  const Tensor x_val = Tensor::from_vector(randn<float>(N * D, 84), {N, D});
  const Tensor r = Tensor::from_vector(randn<float>(N * D, 85), {N, D});
  auto run = [&](int64_t chunk, float p, Var& x) {
    for (Var* w : {&W1, &W2, &W3, &nw}) w->zero_grad();
    x = Var(x_val.clone(), true);
    rng_seed(5);
    Var out = checkpoint_rows(mlp(p), x, chunk);
    backward(sum(mul(out, Var(r))));
    std::vector<std::vector<float>> got{out.value().to_vector(), x.grad().to_vector()};
    for (Var* w : {&W1, &W2, &W3, &nw}) got.push_back(w->grad().to_vector());
    return got;
  };
  Var x_whole;
  const auto whole = run(0, 0.0f, x_whole);
  for (int64_t chunk : {1, 3, 4, 9, 10}) {
    CAPTURE(chunk);
    Var x;
    const auto chunked = run(chunk, 0.0f, x);
    // Row-wise results (the output, dL/dx) sum in the same order per row, but OpenBLAS's
    // sgemm picks its kernel by the number of rows (measured: chunks of 1, 4 and 10 rows
    // give the same bits, 3 and 9 differ in the last bits); parameter gradients are sums
    // over rows, summed chunk by chunk. Both: equal up to f32 rounding.
    for (size_t i = 0; i < whole.size(); ++i) {
      CAPTURE(i);
      std::vector<double> a(chunked[i].begin(), chunked[i].end()), b(whole[i].begin(), whole[i].end());
      CHECK(rel_err(a, b) < 1e-6);
    }
  }
  // With dropout each chunk draws its own mask; the backward must re-run each chunk with
  // it: the gradient equals finite differences of the same chunked function.
  Var x;
  const auto with_dropout = run(4, 0.3f, x);
  CHECK(with_dropout[0] != whole[0]);
  auto loss = [&] {
    NoGrad ng;
    rng_seed(5);
    return double(scalar(sum(mul(checkpoint_rows(mlp(0.3f), Var(x_val), 4), Var(r)))));
  };
  std::vector<double> g3(with_dropout[4].begin(), with_dropout[4].end());
  CHECK(rel_err(g3, var_numeric_grad(W3, loss, 1e-2)) < 2e-3);
  // Under NoGrad the chunks run and nothing is recorded.
  const std::vector<float> recorded = run(4, 0.0f, x)[0];
  NoGrad ng;
  rng_seed(5);
  const Var no_grad_out = checkpoint_rows(mlp(0.0f), Var(x_val, true), 4);
  CHECK_FALSE(no_grad_out.requires_grad());
  CHECK(no_grad_out.value().to_vector() == recorded);
}

TEST_CASE("matmul backward matches finite differences for every transpose, 2-D and batched") {
  const int64_t M = 3, N = 4, K = 5;
  for (int batch : {0, 2})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(batch); CAPTURE(ta); CAPTURE(tb);
        Shape sa = ta ? Shape{K, M} : Shape{M, K}, sb = tb ? Shape{N, K} : Shape{K, N}, sc{M, N};
        if (batch) { sa = Shape{batch, sa[0], sa[1]}; sb = Shape{batch, sb[0], sb[1]}; sc = Shape{batch, M, N}; }
        Var a = param(sa, 50), b = param(sb, 51), r = Var(Tensor::from_vector(randn<float>(sc.numel(), 52), sc));
        auto loss = [&] { return double(scalar(sum(mul(matmul(a, b, ta, tb), r)))); };
        backward(sum(mul(matmul(a, b, ta, tb), r)));
        // The loss is linear in each operand: differences are exact up to f32 rounding.
        CHECK(rel_err(grad_values(a), var_numeric_grad(a, loss, 0.5)) < 1e-5);
        CHECK(rel_err(grad_values(b), var_numeric_grad(b, loss, 0.5)) < 1e-5);
      }
}

// A tiny decoder block through the Var API (every op: embedding, dropout,
// rmsnorm, linear with bias, reshape, per-head rmsnorm, rope, GQA attention over
// two packed segments, residual add, swiglu MLP, scale/mean/mul, chunked
// lm_head + CE), checked against f32 finite differences for every parameter.
TEST_CASE("a small attention block's gradients match finite differences through the Var API") {
  const int64_t B = 2, T = 3, N = B * T, D = 8, Hq = 2, Hkv = 1, Dh = 4, F = 12, V = 11;
  std::vector<Var> params = {
      param({5, D}, 60),             param({D}, 61, 0.5),           param({Hq * Dh, D}, 62, 0.4),
      param({Hq * Dh}, 63, 0.1),     param({Hkv * Dh, D}, 64, 0.4), param({Hkv * Dh, D}, 65, 0.4),
      param({Dh}, 66, 0.5),          param({D, Hq * Dh}, 67, 0.4),  param({F, D}, 68, 0.4),
      param({F, D}, 69, 0.4),        param({D, F}, 70, 0.4),        param({V, D}, 71, 0.4)};
  Tensor positions = Tensor::from_ids({0, 1, 2, 0, 0, 1}, {N});
  Tensor segments = Tensor::from_ids({0, 0, 0, 0, 1, 1}, {N});
  Tensor labels = Tensor::from_ids({3, 10, -100, 0, 5, 5}, {N});
  Tensor ids = Tensor::from_ids({4, 1, 4, 0, 2, 1}, {N});  // repeated ids: the embedding backward must add
  auto forward = [&] {
    const Var &table = params[0], &norm_w = params[1], &wq = params[2], &bq = params[3], &wk = params[4],
              &wv = params[5], &qk_norm_w = params[6], &wo = params[7], &wg = params[8], &wu = params[9],
              &wd = params[10], &lm_head = params[11];
    rng_seed(3);  // the same dropout mask on every evaluation
    Var x = dropout(embedding(table, ids), 0.2f);
    Var h = rmsnorm(x, norm_w, 1e-6f);
    Var q = rope(rmsnorm(reshape(linear(h, wq, bq), {N, Hq, Dh}), qk_norm_w, 1e-6f), positions, rope_table(10000.0f, Dh));
    Var k = rope(reshape(linear(h, wk), {N, Hkv, Dh}), positions, rope_table(10000.0f, Dh));
    Var v = reshape(linear(h, wv), {N, Hkv, Dh});
    Var x2 = add(x, linear(reshape(attention(q, k, v, B, T, segments), {N, Hq * Dh}), wo));
    Var x3 = add(x2, linear(swiglu(linear(x2, wg), linear(x2, wu)), wd));
    return add(linear_cross_entropy(x3, lm_head, labels, 4), scale(mean(mul(x3, x3)), 0.01f));
  };
  backward(forward());
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(i);
    std::vector<double> fd = var_numeric_grad(params[i], [&] { return double(scalar(forward())); }, 1e-2);
    // f32 central differences with step 1e-2: measured errors are 3e-5 .. 5e-4.
    CHECK(rel_err(grad_values(params[i]), fd) < 2e-3);
  }
}

TEST_CASE("Var-level errors name the op and the shapes") {
  Var x(Tensor::zeros({3, 4}), true), w(Tensor::zeros({5, 6}), true);
  CHECK_THROWS_WITH_AS(linear(x, w), "linear: x [3, 4] and w [5, 6] disagree on in", Error);
  CHECK_THROWS_WITH_AS(linear(x, Var(Tensor::zeros({5, 4})), Var(Tensor::zeros({4}))),
                       "linear: bias [4] does not match w [5, 4]", Error);
  CHECK_THROWS_WITH_AS(add(x, w), "add: shape mismatch [3, 4] vs [5, 6]", Error);
  CHECK_THROWS_WITH_AS(backward(scale(x, 2.0f)), "backward: root f32[3, 4] cpu is not a scalar; pass its gradient explicitly",
                       Error);
  CHECK_THROWS_WITH_AS(dropout(x, 1.5f), "dropout: p must be in [0, 1), got 1.5", Error);
  CHECK_THROWS_WITH_AS(reshape(x, {5, 2}), "reshape: cannot view [3, 4] as [5, 2]", Error);
  CHECK_THROWS_WITH_AS(linear(Var(Tensor::zeros({3, 0})), Var(Tensor::zeros({5, 0}))),
                       "linear: in must be positive, w is [5, 0]", Error);
  CHECK_THROWS_WITH_AS(rmsnorm(Var(Tensor::zeros({3, 0})), Var(Tensor::zeros({0})), 1e-6f),
                       "rmsnorm_forward: D must be positive, w is [0]", Error);
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, Var(Tensor::zeros({7, 4})), Tensor::from_ids({1, 2}, {2})),
                       "linear_cross_entropy: labels [2] must have 3 elements", Error);
}
