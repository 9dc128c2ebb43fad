// model/moe.h: the Qwen3-MoE block. Its pieces on their own (the grouping by expert,
// row_segments), the whole block's backward against finite differences, and the
// decoder on tiny Qwen3-MoE models against transformers and PEFT (tests/fixtures/moe,
// written by tools/ref/make_moe_fixtures.py): logits, loss (with the load-balancing
// loss), every parameter's gradient, both checkpoint layouts, a PEFT adapter on the
// fused experts, its LoRA gradients and a 10-step trajectory.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "autograd/ops.h"
#include "formats/safetensors.h"
#include "model/adapters.h"
#include "model/decoder.h"
#include "model/moe.h"
#include "training/batch.h"
#include "tests/grad_check.h"

using namespace nq;
using nq::testing::numeric_grad;
using nq::testing::randn;
using nq::testing::rel_err;

namespace {

Var random_var(Shape s, uint32_t seed, double stddev, bool requires_grad) {
  return Var(Tensor::from_vector(randn<float>(s.numel(), seed, stddev), s), requires_grad);
}
float scalar(const Var& v) { return v.value().to_vector()[0]; }
std::vector<double> grad_of(const Var& v) {
  const std::vector<float> g = v.grad().to_vector();
  return {g.begin(), g.end()};
}
// Central differences of loss() over every element of v's value (f32, restored after).
std::vector<double> numeric_grad_of(const Var& v, const std::function<double()>& loss, double h) {
  std::vector<float> vals = v.value().to_vector();
  float* data = v.value().data<float>();
  auto store = [&] { std::memcpy(data, vals.data(), vals.size() * sizeof(float)); };
  std::vector<double> g = numeric_grad(vals, [&] { store(); return loss(); }, h);
  store();
  return g;
}

// E dense experts of width I over hidden D, router [E, D]; every weight trainable.
MoeExperts random_experts(int64_t E, int64_t D, int64_t I, uint32_t seed) {
  MoeExperts m;
  m.router = random_var({E, D}, seed, 1.0, true);
  for (int64_t e = 0; e < E; ++e) {
    const uint32_t s = seed + 10 * uint32_t(e + 1);
    m.gate_proj.emplace_back(str("experts.", e, ".gate_proj"), random_var({I, D}, s, 0.5, true));
    m.up_proj.emplace_back(str("experts.", e, ".up_proj"), random_var({I, D}, s + 1, 0.5, true));
    m.down_proj.emplace_back(str("experts.", e, ".down_proj"), random_var({D, I}, s + 2, 0.5, true));
  }
  return m;
}

}  // namespace

TEST_CASE("moe: group_by_expert sorts the (token, choice) pairs by expert, stable by token then choice") {
  // 4 tokens, top 2 of 3 experts.
  const std::vector<int32_t> experts = {2, 0,   // token 0
                                        0, 1,   // token 1
                                        2, 1,   // token 2
                                        0, 2};  // token 3
  const ExpertGrouping g = group_by_expert(experts, 4, 2, 3);
  CHECK(g.offsets == std::vector<int64_t>{0, 3, 5, 8});
  CHECK(g.token_of_row == std::vector<int32_t>{0, 1, 3, 1, 2, 0, 2, 3});
  for (int64_t slot = 0; slot < 8; ++slot) {  // row_of_slot inverts it: the row holds that slot's token
    CAPTURE(slot);
    CHECK(g.token_of_row[size_t(g.row_of_slot[size_t(slot)])] == slot / 2);
  }
  CHECK(g.row_of_slot == std::vector<int32_t>{5, 0, 1, 3, 6, 4, 2, 7});
  // An expert nobody chose has an empty range; an id outside [0, E) is an error.
  CHECK(group_by_expert({1, 1}, 2, 1, 3).offsets == std::vector<int64_t>{0, 0, 2, 2});
  CHECK_THROWS_WITH(group_by_expert({0, 3}, 2, 1, 3), doctest::Contains("expert 3 outside [0, 3)"));
}

TEST_CASE("row_segments: each segment through its own function; gradients as if run alone") {
  const int64_t N = 9, D = 4;
  Var x = random_var({N, D}, 1, 1.0, true);
  Var w0 = random_var({3, D}, 2, 0.5, true), w1 = random_var({3, D}, 3, 0.5, true);
  const std::vector<int64_t> offsets = {0, 4, 4, 9};  // segment 1 empty
  auto fn = [&](size_t s, const Var& rows) { return linear(rows, s == 0 ? w0 : w1); };
  const Tensor r = Tensor::from_vector(randn<float>(N * 3, 4), {N, 3});
  Var out = row_segments(x, offsets, fn);
  backward(sum(mul(out, Var(r))));
  // The same rows through the two functions directly.
  Var x2(x.value().clone(), true);
  Var top = linear(reshape(x2, {N, D}), w0), bottom = linear(reshape(x2, {N, D}), w1);
  const std::vector<float> a = out.value().to_vector(), t = top.value().to_vector(), b = bottom.value().to_vector();
  for (int64_t i = 0; i < N * 3; ++i) CHECK(a[size_t(i)] == (i < 4 * 3 ? t[size_t(i)] : b[size_t(i)]));
  // dL/dx row by row: rows 0..3 through w0, 4..8 through w1.
  const std::vector<float> gx = x.grad().to_vector(), rv = r.to_vector(), w0v = w0.value().to_vector(),
                           w1v = w1.value().to_vector();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      double want = 0;
      for (int64_t o = 0; o < 3; ++o) want += rv[size_t(n * 3 + o)] * (n < 4 ? w0v : w1v)[size_t(o * D + d)];
      CHECK(gx[size_t(n * D + d)] == doctest::Approx(want).epsilon(1e-6));
    }
  CHECK_THROWS_WITH(row_segments(x, {0, 4, 3, 9}, fn), doctest::Contains("offsets must not decrease"));
  CHECK_THROWS_WITH(row_segments(x, {0, 4}, fn), doctest::Contains("offsets must run from 0 to 9"));
}

TEST_CASE("moe block: the gradients of h, the router and every expert match finite differences") {
  const int64_t N = 6, D = 5, I = 3, E = 4;
  for (bool renormalize : {true, false}) {
    CAPTURE(renormalize);
    MoeConfig config;
    config.num_experts = E;
    config.experts_per_token = 2;
    config.expert_intermediate_size = I;
    config.norm_topk_prob = renormalize;
    MoeExperts moe = random_experts(E, D, I, 100);
    Var h = random_var({N, D}, 7, 1.0, true);
    const Tensor r = Tensor::from_vector(randn<float>(N * D, 8), {N, D});
    auto loss = [&] {
      NoGrad ng;
      return double(scalar(sum(mul(moe.forward(h, config), Var(r)))));
    };
    backward(sum(mul(moe.forward(h, config), Var(r))));
    // The router's softmax gives the gradient of h a second path (through the weights):
    // the router's own gradient is that path's, so it is checked too. Steps of 1e-2 in
    // f32; the top-k choice does not change within them at these draws (else the
    // difference would be off by far more than the bound).
    CHECK(rel_err(grad_of(h), numeric_grad_of(h, loss, 1e-2)) < 2e-3);
    CHECK(rel_err(grad_of(moe.router), numeric_grad_of(moe.router, loss, 1e-2)) < 2e-3);
    for (int64_t e = 0; e < E; ++e) {
      CAPTURE(e);
      for (const Linear* l : {&moe.gate_proj[size_t(e)], &moe.up_proj[size_t(e)], &moe.down_proj[size_t(e)]}) {
        CAPTURE(l->name());
        if (!l->weight().grad().defined()) {  // an expert no token chose: no gradient, and none by differences
          for (double g : numeric_grad_of(l->weight(), loss, 1e-2)) CHECK(std::fabs(g) < 1e-3);
          continue;
        }
        CHECK(rel_err(grad_of(l->weight()), numeric_grad_of(l->weight(), loss, 1e-2)) < 2e-3);
      }
    }
  }
}

// ---- the decoder on tiny Qwen3-MoE models against transformers -------------------------

namespace {

const std::string kMoeFixtures = "tests/fixtures/moe/";

// max_i |a_i - b_i| / max_i |b_i|
double max_rel_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::fabs(double(x[i]) - y[i]));
    scale = std::max(scale, std::fabs(double(y[i])));
  }
  return diff / scale;
}
double norm_rel_error(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  return rel_err(std::vector<double>(x.begin(), x.end()), std::vector<double>(y.begin(), y.end()));
}
float first(const Tensor& t) { return t.to_vector()[0]; }

}  // namespace

TEST_CASE("qwen3_moe decoder: logits and loss match transformers, from the hub's and transformers 5's layouts") {
  for (const char* name : {"renorm", "plain"}) {
    const std::string model_name = name;
    CAPTURE(model_name);
    SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + name + "/reference.safetensors");
    const DecoderBatch batch = hf_decoder_batch(ref.get("input_ids"), ref.get("input_ids"));
    Tensor hub_logits;
    for (const std::string layout : {"", "/fused"}) {
      CAPTURE(layout);
      Decoder model = Decoder::load(kMoeFixtures + name + layout);
      const Tensor logits = model.logits(batch);
      const double logits_err = max_rel_error(logits, ref.get("logits"));
      CHECK(logits_err <= 1e-4);
      const float loss = first(model.forward_loss(batch).value()), want = first(ref.get("loss"));
      CHECK(std::fabs(loss - want) / want <= 1e-5);
      MESSAGE(model_name, layout, " vs transformers: logits max rel err ", logits_err, ", loss ", loss, " vs ", want);
      if (layout.empty()) hub_logits = logits;
      else CHECK(max_rel_error(logits, hub_logits) == 0.0);  // the same weights, whichever layout
    }
  }
}

TEST_CASE("qwen3_moe decoder: every parameter's gradient (router and experts too) matches transformers, with and without checkpointing") {
  for (const char* name : {"renorm", "plain"}) {
    const std::string model_name = name;
    CAPTURE(model_name);
    DecoderOptions opts;
    opts.train_all = true;
    Decoder model = Decoder::load(kMoeFixtures + name, opts);
    SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + name + "/reference.safetensors");
    const DecoderBatch batch = hf_decoder_batch(ref.get("input_ids"), ref.get("input_ids"));
    int64_t expected = 0;
    for (const std::string& n : ref.names()) expected += n.rfind("grad.", 0) == 0;
    CHECK(int64_t(model.parameters().size()) == expected);
    std::map<std::string, Tensor> grads[2];
    for (bool checkpointing : {true, false}) {
      model.options().checkpointing = checkpointing;
      for (Var p : model.parameters()) p.zero_grad();
      backward(model.forward_loss(batch));
      for (const Var& p : model.parameters()) grads[checkpointing][p.name()] = p.grad();
    }
    double worst = 0;
    for (const auto& [pname, grad] : grads[1]) {
      CAPTURE(pname);
      REQUIRE(grad.defined());
      const double err = norm_rel_error(grad, ref.get("grad." + pname));
      worst = std::max(worst, err);
      CHECK(err <= 1e-3);
      CHECK(max_rel_error(grads[0].at(pname), grad) == 0.0);  // the recomputed layer: the same bits
    }
    MESSAGE(model_name, " vs transformers: worst parameter gradient ||a-b||/||b|| ", worst, " over ", grads[1].size(),
            " parameters");
  }
}
