// optim/: AdamW, clipping and LR schedules against torch / transformers
// (tests/fixtures/optim/optim.json from tools/ref/make_optim_fixtures.py), plus
// state save/load, the Optimizer interface's folded clipping against
// clip-then-step, and the accumulation scaling against a direct computation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "kernels/kernels.h"
#include "optim/accumulation.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/loss_scaler.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"

using namespace nq;
using json = nlohmann::json;

static const json& optim_fixture() {
  static json j = [] {
    std::ifstream f("tests/fixtures/optim/optim.json");
    REQUIRE_MESSAGE(f.good(), "missing tests/fixtures/optim/optim.json (run from the repository root)");
    return json::parse(f);
  }();
  return j;
}

static Shape shape_of(const json& s) { return Shape::of(s.get<std::vector<int64_t>>()); }

// Relative error of a tensor: max_i |a_i - b_i| / max_i |b_i|. (Per element it
// is ill-conditioned where a parameter crosses zero.)
static double max_rel_err(const float* a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return worst / scale;
}

static std::vector<float> span_of(const Tensor& t) { return t.to_vector(); }

static std::vector<Var> make_params(const json& c) {
  std::vector<Var> params;
  for (size_t i = 0; i < c["shapes"].size(); ++i)
    params.emplace_back(Tensor::from_vector(c["init"][i].get<std::vector<float>>(), shape_of(c["shapes"][i])), true,
                        str("p", i));
  return params;
}

static void set_grads(std::vector<Var>& params, const json& grads) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (grads[i].is_null()) { params[i].zero_grad(); continue; }
    params[i].impl()->grad = Tensor::from_vector(grads[i].get<std::vector<float>>(), params[i].shape());
  }
}

static AdamWConfig config_of(const json& c) {
  AdamWConfig cfg;
  cfg.beta1 = c["betas"][0].get<double>();
  cfg.beta2 = c["betas"][1].get<double>();
  cfg.eps = c["eps"].get<double>();
  cfg.weight_decay = c["weight_decay"].get<double>();
  return cfg;
}

TEST_CASE("AdamW matches torch.optim.AdamW over 10 steps") {
  for (const json& c : optim_fixture()["adamw"]) {
    CAPTURE(c["name"].get<std::string>());
    std::vector<Var> params = make_params(c);
    AdamW opt(params, config_of(c));
    for (size_t step = 0; step < c["lrs"].size(); ++step) {
      set_grads(params, c["grads"][step]);
      opt.step(c["lrs"][step].get<double>());
      for (size_t i = 0; i < params.size(); ++i) {
        CAPTURE(step); CAPTURE(i);
        CHECK(max_rel_err(params[i].value().data<float>(), c["after"][step][i].get<std::vector<float>>()) < 1e-6);
      }
    }
    std::map<std::string, Tensor> state = opt.state_dict();
    for (size_t i = 0; i < params.size(); ++i) {
      // The moments depend only on the gradients, with the same fused multiply-adds
      // as torch's lerp_/addcmul_ kernels: bit-identical. (The parameters go
      // through sqrt, which torch computes with MKL, hence the tolerance above.)
      CHECK(span_of(state.at(str("p", i, ".exp_avg"))) == c["exp_avg"][i].get<std::vector<float>>());
      CHECK(span_of(state.at(str("p", i, ".exp_avg_sq"))) == c["exp_avg_sq"][i].get<std::vector<float>>());
      CHECK(state.at(str("p", i, ".step")).data<int64_t>()[0] == c["step"][i].get<int64_t>());
    }
  }
}

TEST_CASE("AdamW state save/load resumes bit-identically") {
  const json& c = optim_fixture()["adamw"][1];  // has skipped gradients: per-parameter step counts differ
  std::vector<Var> straight = make_params(c);
  AdamW opt_a(straight, config_of(c));
  for (size_t s = 0; s < 10; ++s) { set_grads(straight, c["grads"][s]); opt_a.step(c["lrs"][s].get<double>()); }

  std::vector<Var> first = make_params(c);
  AdamW opt_b(first, config_of(c));
  for (size_t s = 0; s < 5; ++s) { set_grads(first, c["grads"][s]); opt_b.step(c["lrs"][s].get<double>()); }
  std::map<std::string, Tensor> saved = opt_b.state_dict();

  // A fresh optimizer over copies of the parameters, loaded from the saved state.
  std::vector<Var> resumed;
  for (size_t i = 0; i < first.size(); ++i) resumed.emplace_back(first[i].value().clone(), true, str("p", i));
  AdamW opt_c(resumed, config_of(c));
  opt_c.load_state_dict(saved);
  for (size_t s = 5; s < 10; ++s) { set_grads(resumed, c["grads"][s]); opt_c.step(c["lrs"][s].get<double>()); }
  for (size_t i = 0; i < straight.size(); ++i) {
    CHECK(opt_c.step_count(i) == opt_a.step_count(i));
    std::vector<float> a = straight[i].value().to_vector(), b = resumed[i].value().to_vector();
    CHECK(a == b);
  }

  SUBCASE("bad state is reported and leaves the optimizer untouched") {
    std::map<std::string, Tensor> bad = saved;
    bad.erase("p2.exp_avg_sq");
    CHECK_THROWS_WITH_AS(opt_c.load_state_dict(bad), "AdamW::load_state_dict: missing p2.exp_avg_sq", Error);
    bad = saved;
    bad["p1.exp_avg"] = Tensor::zeros({3});
    CHECK_THROWS_WITH_AS(opt_c.load_state_dict(bad), "AdamW::load_state_dict: p1.exp_avg is f32[3] cpu, expected f32[8]",
                         Error);
    CHECK(opt_c.step_count(0) == opt_a.step_count(0));
  }
}

TEST_CASE("AdamW rejects bad parameters and gradients") {
  Var a(Tensor::zeros({2}), true, "w"), b(Tensor::zeros({3}), true, "w");
  CHECK_THROWS_WITH_AS(AdamW({a, b}, AdamWConfig{}), "AdamW: two parameters are named w", Error);
  AdamWConfig bad_beta;
  bad_beta.beta2 = 1.0f;
  CHECK_THROWS_WITH_AS(AdamW({a}, bad_beta), "AdamW: betas must be in [0, 1), got (0.9, 1)", Error);
  AdamW opt({a}, AdamWConfig{});
  a.impl()->grad = Tensor::zeros({5});
  CHECK_THROWS_WITH_AS(opt.step(1e-3), "AdamW: gradient of w is f32[5] cpu, parameter is f32[2] cpu", Error);
}

TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_") {
  for (const json& c : optim_fixture()["clip"]) {
    std::vector<Var> params;
    for (size_t i = 0; i < c["shapes"].size(); ++i) {
      params.emplace_back(Tensor::zeros(shape_of(c["shapes"][i])), true, str("g", i));
      params.back().impl()->grad =
          Tensor::from_vector(c["grads"][i].get<std::vector<float>>(), shape_of(c["shapes"][i]));
    }
    float total = clip_grad_norm(params, c["max_norm"].get<float>());
    double want = c["total_norm"].get<double>();
    CHECK(std::fabs(total - want) / want < 1e-6);
    for (size_t i = 0; i < params.size(); ++i)
      CHECK(max_rel_err(params[i].grad().data<float>(), c["clipped"][i].get<std::vector<float>>()) < 1e-6);
  }
  CHECK_THROWS_WITH_AS(clip_grad_norm({}, 0.0f), "clip: max_norm must be > 0, got 0", Error);
}

TEST_CASE("kernels::global_grad_norm on the CPU: per-tensor norms in double rounded to f32, then their norm") {
  // A naive reference with the same roundings, on the torch clip fixture's gradients.
  for (const json& c : optim_fixture()["clip"]) {
    std::vector<Tensor> grads;
    double sum_sq = 0.0;
    for (size_t i = 0; i < c["shapes"].size(); ++i) {
      grads.push_back(Tensor::from_vector(c["grads"][i].get<std::vector<float>>(), shape_of(c["shapes"][i])));
      double t = 0.0;
      for (float x : grads.back().to_vector()) t += double(x) * double(x);
      const double norm = float(std::sqrt(t));
      sum_sq += norm * norm;
    }
    CHECK(kernels::global_grad_norm(grads) == double(float(std::sqrt(sum_sq))));
  }
  CHECK(kernels::global_grad_norm({}) == 0.0);
  CHECK_THROWS_WITH_AS(kernels::global_grad_norm({Tensor::zeros({2}), Tensor::zeros({2}, DType::I32)}),
                       "global_grad_norm: tensor 1 is i32[2] cpu, expected f32 on cpu", Error);
}

TEST_CASE("kernels::adamw_update on the CPU is adamw_update_element per element; spans and mismatches") {
  const AdamWConfig cfg{0.9, 0.999, 1e-8, 0.1};
  const AdamWScalars sc = adamw_scalars(cfg, 1e-2, 3);
  const int64_t n = 37;
  Tensor p = Tensor::empty({n}), g = Tensor::empty({n}), m = Tensor::empty({n}), v = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) {
    p.data<float>()[i] = 0.1f * float(i % 7) - 0.3f;
    g.data<float>()[i] = 0.01f * float(i % 5) - 0.02f;
    m.data<float>()[i] = 0.001f * float(i % 3);
    v.data<float>()[i] = 1e-5f * float(i % 4);
  }
  std::vector<float> want_p = p.to_vector(), want_m = m.to_vector(), want_v = v.to_vector();
  for (int64_t i = 0; i < n; ++i)
    adamw_update_element(want_p[size_t(i)], g.data<float>()[i] * 0.5f, want_m[size_t(i)], want_v[size_t(i)], sc);
  // Two spans (slices of the flat tensors), as the paged optimizer cuts them.
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 20}, {20, n}}) {
    Tensor ps = p.slice(b, e), ms = m.slice(b, e), vs = v.slice(b, e);
    kernels::adamw_update(ps, g.slice(b, e), ms, vs, sc, 0.5f);
  }
  CHECK(std::memcmp(p.raw(), want_p.data(), size_t(n) * 4) == 0);
  CHECK(std::memcmp(m.raw(), want_m.data(), size_t(n) * 4) == 0);
  CHECK(std::memcmp(v.raw(), want_v.data(), size_t(n) * 4) == 0);
  Tensor short_m = Tensor::zeros({n - 1});
  CHECK_THROWS_WITH_AS(kernels::adamw_update(p, g, short_m, v, sc),
                       "adamw_update: param, grad, exp_avg, exp_avg_sq must be f32 with one element count, got "
                       "f32[36] cpu for param f32[37] cpu",
                       Error);
}

TEST_CASE("clip_scale is torch's min(max_norm / (norm + 1e-6), 1) in f32; bad max_norm refused") {
  for (const json& c : optim_fixture()["clip"]) {
    const float total = c["total_norm"].get<float>(), max_norm = c["max_norm"].get<float>();
    const float want = std::min(max_norm / (total + 1e-6f), 1.0f);
    CHECK(clip_scale(total, max_norm) == want);
  }
  CHECK(clip_scale(0.5, 1.0) == 1.0f);
  CHECK(clip_scale(0.0, 1.0) == 1.0f);
  CHECK_THROWS_WITH_AS(clip_scale(1.0, 0.0), "clip: max_norm must be > 0, got 0", Error);
  CHECK_THROWS_WITH_AS(clip_scale(1.0, -2.0), "clip: max_norm must be > 0, got -2", Error);
}

TEST_CASE("AdamW through the Optimizer interface: step(lr, clip_scale) equals clip_grad_norm then step, bit for bit") {
  for (const json& c : optim_fixture()["adamw"]) {
    CAPTURE(c["name"].get<std::string>());
    // max_norm between the smallest and the largest gradient norm of the run: some steps clip, some do not.
    std::vector<Var> probe = make_params(c);
    std::vector<float> norms;
    for (const json& g : c["grads"]) {
      set_grads(probe, g);
      norms.push_back(grad_global_norm(probe));
    }
    const float max_norm = 0.5f * (*std::min_element(norms.begin(), norms.end()) +
                                   *std::max_element(norms.begin(), norms.end()));
    std::vector<Var> clipped = make_params(c), scaled = make_params(c);
    AdamW reference(clipped, config_of(c));
    AdamW opt(scaled, config_of(c));
    Optimizer& through_interface = opt;
    int clipped_steps = 0;
    for (size_t step = 0; step < c["lrs"].size(); ++step) {
      CAPTURE(step);
      const double lr = c["lrs"][step].get<double>();
      set_grads(clipped, c["grads"][step]);
      set_grads(scaled, c["grads"][step]);
      const float total = clip_grad_norm(clipped, max_norm);  // scales the gradients in place
      reference.step(lr);
      const double norm = through_interface.grad_global_norm();
      CHECK(norm == double(total));
      const float scale = clip_scale(norm, max_norm);
      clipped_steps += scale < 1.0f;
      through_interface.step(lr, scale);  // the gradients stay as they are
      for (size_t i = 0; i < scaled.size(); ++i) CHECK(scaled[i].value().to_vector() == clipped[i].value().to_vector());
    }
    CHECK(clipped_steps > 0);
    CHECK(clipped_steps < int(c["lrs"].size()));
    OptimizerState a = reference.state_dict(), b = through_interface.state_dict();
    REQUIRE(a.size() == b.size());
    for (const auto& [key, t] : a) {
      CAPTURE(key);
      CHECK(t.dtype() == b.at(key).dtype());
      if (t.dtype() == DType::F32) CHECK(t.to_vector() == b.at(key).to_vector());
      else CHECK(t.data<int64_t>()[0] == b.at(key).data<int64_t>()[0]);
    }
  }
}

TEST_CASE("Optimizer: unnamed parameters are saved as param.<index>; zero_grad clears every gradient") {
  std::vector<Var> params = {Var(Tensor::zeros({2}), true), Var(Tensor::zeros({3}), true, "b")};
  AdamW opt(params, AdamWConfig{});
  Optimizer& o = opt;
  CHECK(o.param_name(0) == "param.0");
  CHECK(o.param_name(1) == "b");
  const OptimizerState st = o.state_dict();
  CHECK(st.count("param.0.exp_avg") == 1);
  CHECK(st.count("b.step") == 1);
  CHECK(st.size() == 6);
  params[0].impl()->grad = Tensor::full({2}, 1.0f);
  params[1].impl()->grad = Tensor::full({3}, 1.0f);
  o.zero_grad();
  for (const Var& p : o.params()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("LR schedules match transformers' get_*_schedule_with_warmup") {
  for (const json& c : optim_fixture()["schedules"]) {
    LrSchedule sched;
    sched.kind = parse_schedule_kind(c["kind"].get<std::string>());
    sched.base_lr = 1.0;
    sched.warmup_steps = c["warmup"].get<int64_t>();
    sched.total_steps = c["total"].get<int64_t>();
    sched.validate();
    std::vector<double> want = c["factors"].get<std::vector<double>>();
    for (size_t s = 0; s < want.size(); ++s) {
      CAPTURE(c["kind"].get<std::string>()); CAPTURE(s);
      CHECK(std::fabs(sched.lr(int64_t(s)) - want[s]) <= 1e-12 + 1e-6 * std::fabs(want[s]));
    }
  }
  CHECK_THROWS_WITH_AS(parse_schedule_kind("step"), "unknown lr schedule 'step' (expected constant, linear or cosine)",
                       Error);
  LrSchedule neg;
  neg.warmup_steps = -1;
  CHECK_THROWS_WITH_AS(neg.validate(), "lr schedule: warmup steps must be >= 0, got -1", Error);
}

TEST_CASE("accumulation scaling reproduces the loss of the whole window") {
  // Per-token losses of three micro-batches with different numbers of trained tokens.
  std::vector<std::vector<double>> micro = {{1.0, 2.0, 3.0}, {4.0}, {0.5, 0.25}};
  double total_sum = 0, mean_of_means = 0;
  int64_t window = 0;
  for (auto& m : micro) {
    double s = 0;
    for (double x : m) s += x;
    total_sum += s;
    mean_of_means += s / double(m.size()) / double(micro.size());
    window += int64_t(m.size());
  }
  double tokens = 0, batches = 0;
  for (auto& m : micro) {
    double mean = 0;
    for (double x : m) mean += x / double(m.size());
    tokens += micro_batch_loss_scale(AccumulationNorm::Tokens, int64_t(m.size()), window, 3) * mean;
    batches += micro_batch_loss_scale(AccumulationNorm::MicroBatches, int64_t(m.size()), window, 3) * mean;
  }
  CHECK(tokens == doctest::Approx(total_sum / double(window)).epsilon(1e-12));
  CHECK(batches == doctest::Approx(mean_of_means).epsilon(1e-12));
  CHECK(micro_batch_loss_scale(AccumulationNorm::Tokens, 0, 0, 2) == 0.0);
  CHECK_THROWS_WITH_AS(parse_accumulation_norm("sum"),
                       "unknown accumulation normalisation 'sum' (expected tokens or micro_batches)", Error);
}

// ---- dynamic loss scaling (optim/loss_scaler.h) against torch.amp.GradScaler
// (tests/fixtures/optim/loss_scaler.json from tools/ref/make_loss_scaler_fixtures.py)

TEST_CASE("LossScaler reproduces torch.amp.GradScaler step by step: skips, backoff, growth, overflowing growth") {
  std::ifstream f("tests/fixtures/optim/loss_scaler.json");
  REQUIRE_MESSAGE(f.good(), "missing tests/fixtures/optim/loss_scaler.json (run from the repository root)");
  const json fixture = json::parse(f);
  REQUIRE(fixture["cases"].size() >= 4);
  for (const json& c : fixture["cases"]) {
    CAPTURE(c["name"].get<std::string>());
    LossScalerConfig config;
    config.init_scale = c["config"]["init_scale"].get<float>();
    config.growth_factor = c["config"]["growth_factor"].get<float>();
    config.backoff_factor = c["config"]["backoff_factor"].get<float>();
    config.growth_interval = c["config"]["growth_interval"].get<int64_t>();
    LossScaler scaler(config);
    REQUIRE(scaler.enabled());
    CHECK(scaler.scale() == config.init_scale);
    const std::string pattern = c["pattern"], stepped = c["stepped"];
    const json& trackers = c["growth_tracker"];
    std::map<int64_t, float> changes_at;  // step -> the scale after it, where torch's changed
    for (const json& ch : c["scale_changes"]) changes_at[ch[0].get<int64_t>()] = ch[1].get<float>();
    REQUIRE(stepped.size() == pattern.size());
    REQUIRE(trackers.size() == pattern.size());
    float expected_scale = config.init_scale;
    int64_t changes = 0;
    for (size_t step = 0; step < pattern.size(); ++step) {
      CAPTURE(step);
      const float before = scaler.scale();
      const bool took = scaler.update(/*found_inf=*/pattern[step] != '.');
      REQUIRE(took == (stepped[step] == '1'));
      if (changes_at.count(int64_t(step))) expected_scale = changes_at[int64_t(step)];
      REQUIRE(scaler.scale() == expected_scale);  // exact: f32 as torch keeps it
      REQUIRE(scaler.state().growth_tracker == trackers[step].get<int64_t>());
      changes += scaler.scale() != before;
    }
    CHECK(changes == int64_t(changes_at.size()));
    CHECK(changes > 0);  // every case moves the scale at least once (else it tests nothing)
  }
}

TEST_CASE("LossScaler: disabled is scale 1 and always steps; inv_scale; state round trip and bad states refused") {
  LossScaler off;
  CHECK_FALSE(off.enabled());
  CHECK(off.scale() == 1.0f);
  CHECK(off.update(true));
  CHECK(off.scale() == 1.0f);

  LossScaler on(LossScalerConfig{});
  CHECK(on.scale() == 65536.0f);
  CHECK(on.inv_scale() == 1.0f / 65536.0f);
  CHECK_FALSE(on.update(true));
  CHECK(on.scale() == 32768.0f);
  for (int i = 0; i < 7; ++i) on.update(false);
  LossScaler resumed(LossScalerConfig{});
  resumed.load_state(on.state(), "trainer_state.json");
  CHECK(resumed.scale() == on.scale());
  CHECK(resumed.state().growth_tracker == 7);

  CHECK_THROWS_WITH(resumed.load_state(LossScalerState{0.0f, 0}, "ckpt/trainer_state.json"),
                    doctest::Contains("ckpt/trainer_state.json: loss scale must be finite and > 0"));
  CHECK_THROWS_WITH(resumed.load_state(LossScalerState{INFINITY, 0}, "x"), doctest::Contains("finite"));
  CHECK_THROWS_WITH(resumed.load_state(LossScalerState{1024.0f, 2000}, "x"), doctest::Contains("growth_tracker"));
  LossScalerConfig bad;
  bad.backoff_factor = 1.5f;
  CHECK_THROWS_WITH(LossScaler{bad}, doctest::Contains("backoff_factor"));
}
