// model/moe.h: the Qwen3-MoE block. Its pieces on their own (the grouping by expert,
// row_segments), the whole block's backward against finite differences, and the
// decoder on tiny Qwen3-MoE models against transformers and PEFT (tests/fixtures/moe,
// written by tools/ref/make_moe_fixtures.py): logits, loss (with the load-balancing
// loss), every parameter's gradient, both checkpoint layouts, a PEFT adapter on the
// fused experts, its LoRA gradients and a 10-step trajectory.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>

#include "autograd/ops.h"
#include "formats/safetensors.h"
#include "kernels/kernels.h"
#include "model/adapters.h"
#include "model/decoder.h"
#include "model/gguf_export.h"
#include "model/device.h"
#include "model/load_model.h"
#include "model/bnb_checkpoint.h"
#include "model/moe.h"
#include "optim/adamw.h"
#include "training/batch.h"
#include "runtime/cuda_runtime.h"
#include "runtime/device_copy.h"
#include "tests/gpu_test.h"
#include "tests/grad_check.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "training/trainer.h"

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

// ---- a PEFT 0.21 adapter on the fused experts --------------------------------------------
//
// tests/fixtures/moe/<name>/adapter is what PEFT 0.21 writes for transformers 5's Qwen3-MoE
// (r 4, alpha 8; gate_up_proj rank 8, alpha 16 by rank_pattern; the dense layer's MLP by
// target_parameters): random B, block-diagonal on gate_up (nanoqlora's separate gate and up
// pairs). reference.safetensors has its logits, loss, every LoRA gradient (lora_grad.*) and
// a 10-step AdamW trajectory from it (renorm only; adapter_final is where it ends).

namespace {

// The reference's gradient of a fused gate_up lora_B [2I, E*2r] with the blocks nanoqlora's
// parametrization has no parameters for set to zero (the gate rows' up ranks and the up
// rows' gate ranks; column j*E + e is rank j of expert e): ours are zero there by construction.
Tensor block_diagonal(const Tensor& B) {
  Tensor out = B.to(Device::CPU).to_dtype(DType::F32);
  const int64_t rows = out.shape()[0], cols = out.shape()[1];
  float* p = out.data<float>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c)
      if ((i < rows / 2) != (c < cols / 2)) p[i * cols + c] = 0.0f;
  return out;
}

bool is_fused_gate_up(const std::string& module) {
  const std::string suffix = ".mlp.experts.base_layer";
  return module.size() > suffix.size() && module.compare(module.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lora_key(const std::string& module, const char* which) {
  return "base_model.model." + module + ".lora_" + which + ".weight";
}

// Our adapter's values (or gradients) in PEFT's layout against `ref`'s tensors (prefix + key):
// the worst ||a-b||/||b||, every tensor checked within tol.
double compare_peft(Decoder& model, const AdapterConfig& cfg, SafetensorsFile& ref, const std::string& prefix,
                    bool gradients, double tol, int64_t* count) {
  AdapterConfig saved;
  double worst = 0;
  *count = 0;
  for (const auto& [module, w] : peft_modules(model, cfg, &saved, gradients)) {
    for (auto [which, ours] : {std::pair<const char*, const Tensor*>{"A", &w.A}, {"B", &w.B}}) {
      const std::string key = prefix + lora_key(module, which);
      CAPTURE(key);
      Tensor want = ref.get(key);
      if (gradients && which[0] == 'B' && is_fused_gate_up(module)) want = block_diagonal(want);
      const double err = norm_rel_error(*ours, want);
      worst = std::max(worst, err);
      ++*count;
      CHECK(err <= tol);
    }
  }
  int64_t in_ref = 0;  // and nothing of the reference's left out
  for (const std::string& n : ref.names()) in_ref += n.rfind(prefix + "base_model.model.", 0) == 0;
  CHECK(*count == in_ref);
  return worst;
}

}  // namespace

TEST_CASE("qwen3_moe adapter: PEFT's fused-expert adapter loads; logits, loss and every LoRA gradient match PEFT") {
  for (const char* name : {"renorm", "plain"}) {
    const std::string model_name = name;
    CAPTURE(model_name);
    Decoder model = Decoder::load(kMoeFixtures + name);
    const AdapterConfig cfg = load_peft_adapter(kMoeFixtures + name + "/adapter", model);
    CHECK(cfg.gate_up_rank == 8);
    CHECK(cfg.gate_up_alpha == 16.0f);
    // Every expert's gate, up and down has its own rank-4 pair with PEFT's scaling 16/8 = 8/4.
    int64_t expert_pairs = 0;
    for (Linear* l : model.linears())
      if (l->name().find(".mlp.experts.") != std::string::npos) {
        CAPTURE(l->name());
        REQUIRE(l->has_lora());
        CHECK(l->lora().A.value().shape()[0] == 4);
        CHECK(l->lora().scaling == 2.0f);
        ++expert_pairs;
      }
    int64_t sparse_layers = 0;
    for (int64_t layer = 0; layer < model.config().num_layers; ++layer) sparse_layers += model.config().sparse_layer(layer);
    CHECK(expert_pairs == sparse_layers * 8 * 3);  // 8 experts, gate/up/down

    SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + name + "/reference.safetensors");
    SafetensorsFile file = SafetensorsFile::open(kMoeFixtures + name + "/adapter/adapter_model.safetensors");
    int64_t count = 0;
    // Read back into PEFT's layout, the values are the file's, bit for bit.
    CHECK(compare_peft(model, cfg, file, "", false, 0.0, &count) == 0.0);
    const DecoderBatch batch = hf_decoder_batch(ref.get("input_ids"), ref.get("input_ids"));
    const double logits_err = max_rel_error(model.logits(batch), ref.get("adapter_logits"));
    CHECK(logits_err <= 1e-4);
    const Var loss = model.forward_loss(batch);
    const float ours = first(loss.value()), want = first(ref.get("adapter_loss"));
    CHECK(std::fabs(ours - want) / want <= 1e-5);
    backward(loss);
    const double grad_err = compare_peft(model, cfg, ref, "lora_grad.", true, 1e-3, &count);
    MESSAGE(model_name, " + PEFT adapter vs PEFT: logits max rel err ", logits_err, ", loss ", ours, " vs ", want,
            ", worst LoRA gradient ||a-b||/||b|| ", grad_err, " over ", count, " tensors");
  }
}

TEST_CASE("qwen3_moe adapter: saved in PEFT's fused layout and read back, the same adapter") {
  Decoder model = Decoder::load(kMoeFixtures + "renorm");
  const AdapterConfig cfg = load_peft_adapter(kMoeFixtures + "renorm/adapter", model);
  TempDir dir;
  save_peft_adapter(dir.path, model, cfg);
  // The file is PEFT's: the same tensors, names and values as the one PEFT wrote.
  SafetensorsFile peft_file = SafetensorsFile::open(kMoeFixtures + "renorm/adapter/adapter_model.safetensors");
  SafetensorsFile ours = SafetensorsFile::open(dir / "adapter_model.safetensors");
  CHECK(ours.names() == peft_file.names());
  for (const std::string& n : peft_file.names()) {
    CAPTURE(n);
    CHECK(max_rel_error(ours.get(n), peft_file.get(n)) == 0.0);
  }
  const AdapterConfig saved = AdapterConfig::from_json_file(dir / "adapter_config.json");
  CHECK(saved.gate_up_rank == 8);
  CHECK(saved.gate_up_alpha == 16.0f);
  CHECK(saved.lora.r == 4);
  const std::vector<std::string> fused = {"model.layers.0.mlp.experts.gate_up_proj",
                                          "model.layers.0.mlp.experts.down_proj"};
  for (const std::string& p : fused)
    CHECK(std::find(saved.target_parameters.begin(), saved.target_parameters.end(), p) !=
          saved.target_parameters.end());
  // The dense layer's MLP is a parameter target too, as PEFT moves it there for this model.
  CHECK(std::find(saved.target_parameters.begin(), saved.target_parameters.end(),
                  "model.layers.1.mlp.gate_proj.weight") != saved.target_parameters.end());

  Decoder reloaded = Decoder::load(kMoeFixtures + "renorm");
  load_peft_adapter(dir.path, reloaded);
  SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + "renorm/reference.safetensors");
  const DecoderBatch batch = hf_decoder_batch(ref.get("input_ids"), ref.get("input_ids"));
  CHECK(max_rel_error(reloaded.logits(batch), model.logits(batch)) == 0.0);

  // The transformers-4 form, one module per expert projection (mlp.experts.N.gate_proj, ...),
  // is read too: the tensors name the modules.
  TempDir per_expert;
  AdapterConfig v4 = cfg;
  v4.target_parameters.clear();
  v4.gate_up_rank = 0;
  v4.target_modules.clear();
  std::vector<std::pair<std::string, PeftLoraWeights>> modules;
  for (Linear* l : model.linears())
    if (l->has_lora()) {
      v4.target_modules.push_back(l->name());
      modules.emplace_back(l->name(), PeftLoraWeights{l->lora().A.value(), l->lora().B.value()});
    }
  write_peft_adapter(per_expert.path, v4, modules);
  Decoder from_v4 = Decoder::load(kMoeFixtures + "renorm");
  load_peft_adapter(per_expert.path, from_v4);
  CHECK(max_rel_error(from_v4.logits(batch), model.logits(batch)) == 0.0);
}

TEST_CASE("qwen3_moe adapter: 10 AdamW steps follow PEFT's trajectory; the result loads in PEFT") {
  Decoder model = Decoder::load(kMoeFixtures + "renorm");
  const AdapterConfig cfg = load_peft_adapter(kMoeFixtures + "renorm/adapter", model);
  SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + "renorm/reference.safetensors");
  const Tensor ids = ref.get("traj_ids");  // [10, 2, 13]
  const std::vector<float> want_loss = ref.get("traj_loss").to_vector();
  const int64_t steps = ids.shape()[0], B = ids.shape()[1], T = ids.shape()[2];
  AdamW optimizer(adapter_parameters(model), AdamWConfig{});  // betas (0.9, 0.999), eps 1e-8, no decay
  double worst_loss = 0;
  for (int64_t step = 0; step < steps; ++step) {
    CAPTURE(step);
    const Tensor step_ids = ids.slice(step, step + 1).view({B, T});
    optimizer.zero_grad();
    const Var loss = model.forward_loss(hf_decoder_batch(step_ids, step_ids));
    const double err = std::fabs(first(loss.value()) - want_loss[size_t(step)]) / want_loss[size_t(step)];
    worst_loss = std::max(worst_loss, err);
    CHECK(err <= 1e-4);
    backward(loss);
    optimizer.fill_missing_grads();  // an expert no token chose still steps, as PEFT's fused tensor does
    optimizer.step(1e-2);
  }
  const DecoderBatch final_batch = hf_decoder_batch(ref.get("traj_final_ids"), ref.get("traj_final_ids"));
  const Tensor final_logits = model.logits(final_batch);
  const double logits_err = max_rel_error(final_logits, ref.get("traj_final_logits"));
  CHECK(logits_err <= 1e-3);
  SafetensorsFile final_adapter =
      SafetensorsFile::open(kMoeFixtures + "renorm/adapter_final/adapter_model.safetensors");
  int64_t count = 0;
  const double adapter_err = compare_peft(model, cfg, final_adapter, "", false, 1e-3, &count);
  MESSAGE("10 steps vs PEFT: worst loss rel err ", worst_loss, " (", want_loss.front(), " -> ", want_loss.back(),
          "), final logits max rel err ", logits_err, ", adapter worst ||a-b||/||b|| ", adapter_err);

  // For tools/ref/check_moe_adapter.py (PEFT loads this adapter and must give these logits):
  //   tools/ref/.venv/bin/python tools/ref/check_moe_adapter.py --model tests/fixtures/moe/renorm
  //       --adapter build/moe_check/adapter --ref build/moe_check/logits.safetensors
  std::filesystem::create_directories("build/moe_check");
  save_peft_adapter("build/moe_check/adapter", model, cfg);
  save_safetensors("build/moe_check/logits.safetensors",
                   {{"input_ids", ref.get("traj_final_ids")}, {"adapter_logits", final_logits}});
}

TEST_CASE("qwen3_moe adapter: the same 10 steps over NF4 bases, beside PEFT's dense-base trajectory") {
  // bitsandbytes cannot quantize transformers 5's fused 3-D experts, so PEFT's trajectory has
  // an f32 base; this is ours with every projection NF4 (experts, attention, the dense MLP; the
  // router and norms f32), as ./train runs it. The difference is the 4-bit bases' alone.
  const LoadedModel m = load_model(kMoeFixtures + "renorm", WeightLoad::qlora(true, Device::CPU, DType::F32));
  Decoder model(m.config, m.weights, {}, m.nf4);
  load_peft_adapter(kMoeFixtures + "renorm/adapter", model);
  SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + "renorm/reference.safetensors");
  const Tensor ids = ref.get("traj_ids");  // [10, 2, 13]
  const std::vector<float> want_loss = ref.get("traj_loss").to_vector();
  const int64_t steps = ids.shape()[0], B = ids.shape()[1], T = ids.shape()[2];
  AdamW optimizer(adapter_parameters(model), AdamWConfig{});
  double worst = 0;
  std::string losses;
  for (int64_t step = 0; step < steps; ++step) {
    const Tensor step_ids = ids.slice(step, step + 1).view({B, T});
    optimizer.zero_grad();
    const Var loss = model.forward_loss(hf_decoder_batch(step_ids, step_ids));
    const float got = first(loss.value());
    worst = std::max(worst, std::fabs(double(got) - want_loss[size_t(step)]) / want_loss[size_t(step)]);
    losses += str(" ", got, "/", want_loss[size_t(step)]);
    backward(loss);
    optimizer.fill_missing_grads();
    optimizer.step(1e-2);
  }
  // Measured: 3.7e-3 at step 0 (the bases alone), 2.75e-2 at most over the 10 steps (docs/model.md).
  CHECK(worst <= 5e-2);
  MESSAGE("10 steps, NF4 bases vs PEFT's f32 base: worst loss rel difference ", worst, "; loss ours/PEFT:", losses);
}

TEST_CASE("qwen3_moe adapter: what nanoqlora's pairs cannot hold is refused, naming the file and tensor") {
  const std::string src = kMoeFixtures + "renorm/adapter/";
  std::ifstream in(src + "adapter_config.json");
  std::stringstream config_text;
  config_text << in.rdbuf();
  const std::string gate_up_b = "base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight";
  const std::string gate_up_a = "base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight";
  // A copy of the adapter with `edit` applied to its tensors (writable host copies) and
  // `from` -> `to` in its config; returns load_peft_adapter's error.
  auto load_error = [&](const std::function<void(std::map<std::string, Tensor>&)>& edit, const std::string& from,
                        const std::string& to) {
    TempDir dir;
    std::string text = config_text.str();
    if (!from.empty()) {
      const size_t at = text.find(from);
      REQUIRE(at != std::string::npos);
      text.replace(at, from.size(), to);
    }
    write_bytes(dir / "adapter_config.json", text);
    SafetensorsFile file = SafetensorsFile::open(src + "adapter_model.safetensors");
    std::map<std::string, Tensor> tensors;
    for (const std::string& n : file.names()) {
      const Tensor t = file.get(n);
      tensors[n] = Tensor::from_vector(t.to_vector(), t.shape());
    }
    edit(tensors);
    save_safetensors(dir / "adapter_model.safetensors", {tensors.begin(), tensors.end()});
    Decoder model = Decoder::load(kMoeFixtures + "renorm");
    std::string message;
    try {
      load_peft_adapter(dir.path, model);
    } catch (const Error& e) {
      message = e.what();
    }
    return message;
  };
  auto unchanged = [](std::map<std::string, Tensor>&) {};

  // An up rank (the last column: rank 7 of expert 7) reaching into a gate row (row 0).
  const std::string off_diagonal = load_error(
      [&](std::map<std::string, Tensor>& t) {
        Tensor& b = t.at(gate_up_b);
        b.data<float>()[b.shape()[1] - 1] = 0.5f;
      },
      "", "");
  CHECK(off_diagonal.find("tensor " + gate_up_b + " gives expert 7's rank 7 a non-zero row 0 outside its up rows") !=
        std::string::npos);
  CHECK(off_diagonal.find("adapter_model.safetensors") != std::string::npos);
  // A gate_up rank that is not two pairs of one rank (tensors of that shape, so that only the rank is wrong).
  const std::string odd_rank = load_error(
      [&](std::map<std::string, Tensor>& t) {
        for (int layer : {0, 2}) {
          const std::string m = str("base_model.model.model.layers.", layer, ".mlp.experts.base_layer");
          t[m + ".lora_A.weight"] = Tensor::zeros({8 * 7, 32});
          t[m + ".lora_B.weight"] = Tensor::zeros({48, 8 * 7});
        }
      },
      "\".*\\\\.gate_up_proj\": 8", "\".*\\\\.gate_up_proj\": 7");
  CHECK(odd_rank.find("model.layers.0.mlp.experts.gate_up_proj has LoRA rank 7 (rank_pattern), which is not 2 pairs") !=
        std::string::npos);
  // A pattern for anything else is refused (matching Python regexes is not attempted).
  const std::string pattern = load_error(unchanged, "\".*\\\\.gate_up_proj\": 8", "\"q_proj\": 8");
  CHECK(pattern.find("rank_pattern key \"q_proj\" is not supported") != std::string::npos);
  // The fused tensor named without its rank, and a wrong shape.
  const std::string no_rank = load_error(unchanged, "\"rank_pattern\": {\n    \".*\\\\.gate_up_proj\": 8\n  }",
                                         "\"rank_pattern\": {}");
  CHECK(no_rank.find("rank_pattern and alpha_pattern must both give") != std::string::npos);
  const std::string shape = load_error(
      [&](std::map<std::string, Tensor>& t) { t[gate_up_a] = Tensor::zeros({8 * 8, 31}); }, "", "");
  CHECK(shape.find(gate_up_a) != std::string::npos);
  MESSAGE("refusals: ", off_diagonal, " | ", odd_rank, " | ", pattern, " | ", no_rank, " | ", shape);
}

// ---- ./train's job on a Qwen3-MoE --------------------------------------------------------

TEST_CASE("qwen3_moe trainer: a QLoRA run on a random NF4 Qwen3-MoE; the adapter it writes reloads in PEFT's layout") {
  test::TinyRun run;  // its chats, the test tokenizer and TrainConfig; the model replaced by a Qwen3-MoE
  const std::string dir = run.tmp / "moe";
  std::filesystem::create_directory(dir);
  // 3 layers (layer 1 dense), 8 experts of width 24, top 2, the load-balancing loss on.
  const ModelConfig config = ModelConfig::from_json(
      R"({"model_type": "qwen3_moe", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1003,
          "tie_word_embeddings": true, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
          "max_position_embeddings": 256, "hidden_act": "silu", "torch_dtype": "float32",
          "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 24, "norm_topk_prob": true,
          "decoder_sparse_step": 1, "mlp_only_layers": [1], "output_router_logits": true,
          "router_aux_loss_coef": 0.01, "initializer_range": 0.2})",
      "config.json");
  write_random_bnb_checkpoint(dir, config, 3);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    std::filesystem::copy_file(run.cfg.model + "/" + f, dir + "/" + f);
  run.cfg.model = dir;
  run.cfg.max_steps = 12;
  run.cfg.lr = 1e-2;
  run.cfg.verbose = true;
  std::ostringstream log;
  const TrainResult result = train(run.cfg, log);
  CAPTURE(log.str());
  REQUIRE(result.steps.size() == 12);
  for (const StepMetrics& m : result.steps) CHECK(std::isfinite(m.loss));
  CHECK(result.steps.back().loss < result.steps.front().loss);
  CHECK(log.str().find("8 experts of width 24, top 2 renormalised") != std::string::npos);
  CHECK(log.str().find("memory: plan vs measured peak") != std::string::npos);  // the plan has the experts' terms
  MESSAGE("qwen3_moe QLoRA run: loss ", result.steps.front().loss, " -> ", result.steps.back().loss, " in 12 steps");

  // The written adapter is PEFT's fused layout (target_parameters, rank_pattern), read back
  // onto every expert: the run's model and the reloaded one give the same logits.
  const AdapterConfig saved = AdapterConfig::from_json_file(result.adapter_dir + "/adapter_config.json");
  CHECK(saved.gate_up_rank == 2 * run.cfg.r);
  CHECK(std::find(saved.target_parameters.begin(), saved.target_parameters.end(),
                  "model.layers.2.mlp.experts.down_proj") != saved.target_parameters.end());
  auto load_nf4 = [&] {  // the 4-bit checkpoint as ./train loads it, with the adapter the run wrote
    const LoadedModel m = load_model(dir, WeightLoad::qlora(true, Device::CPU, DType::F32));
    Decoder d(m.config, m.weights, {}, m.nf4);
    load_peft_adapter(result.adapter_dir, d);
    return d;
  };
  Decoder model = load_nf4();
  int64_t adapted = 0;
  for (Linear* l : model.linears()) adapted += l->has_lora();
  CHECK(adapted == 3 * 4 + 3 + 2 * 8 * 3);  // attention, the dense MLP, every expert of the 2 sparse layers
  Decoder again = load_nf4();
  const Tensor ids = Tensor::from_ids({5, 17, 250, 9, 33, 71}, {1, 6});
  CHECK(max_rel_error(model.logits(hf_decoder_batch(ids, ids)), again.logits(hf_decoder_batch(ids, ids))) == 0.0);
}

// The renorm fixture's NF4 model with PEFT's adapter, on every expert too or (expert_lora
// false) on attention and the dense MLP only. Either way each expert projection runs as one
// grouped op over all the experts' rows (MoeExperts::grouped).
static Decoder moe_nf4_model(bool expert_lora) {
  const LoadedModel m = load_model(kMoeFixtures + "renorm", WeightLoad::qlora(true, Device::CPU, DType::F32));
  Decoder d(m.config, m.weights, {}, m.nf4);
  load_peft_adapter(kMoeFixtures + "renorm/adapter", d);
  if (!expert_lora)
    for (Linear* l : d.linears())
      if (l->name().find(".mlp.experts.") != std::string::npos) l->detach_lora();
  return d;
}

// f16 runs with a fixed loss scale (the gradients are unscaled before they are compared).
static float gpu_loss_scale(DType compute) { return compute == DType::F16 ? 65536.0f : 1.0f; }

// The fixture's batch through both models (gpu_model moved to the GPU in `compute`),
// backward on each; the loss's relative difference (bounded here: the dense QLoRA test's).
static double loss_on_gpu_vs_cpu(Decoder& cpu_model, Decoder& gpu_model, DType compute) {
  to_device(gpu_model, Device::CUDA, compute);
  SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + "renorm/reference.safetensors");
  const Tensor ids = ref.get("input_ids");
  auto run = [&](Decoder& m, Device d, float seed) {
    Var loss = m.forward_loss(hf_decoder_batch(ids, ids, d));
    backward(loss, Tensor::full({1}, seed, d));
    return loss.value().to_vector()[0];
  };
  const float cpu_loss = run(cpu_model, Device::CPU, 1.0f);
  const float gpu_loss = run(gpu_model, Device::CUDA, gpu_loss_scale(compute));
  const double loss_err = std::fabs(gpu_loss - cpu_loss) / std::fabs(cpu_loss);
  CHECK(loss_err <= (compute == DType::F16 ? 2e-3 : 2e-2));
  return loss_err;
}

// ---- the MoE decoder on the GPU against the CPU ------------------------------------------

#define GPU_TEST(name) NQ_GPU_TEST("cuda " #name, name)

GPU_TEST(moe_decoder_loss_and_lora_grads_match_cpu) {
  // The renorm fixture with NF4 experts and PEFT's adapter, on the CPU (f32) and on the GPU:
  // bf16 (where the GPU has it) and f16, gradient checkpointing on. The bounds are the dense
  // QLoRA test's (tests/test_gpu_train.cpp): the fixture's router gaps are wide enough that
  // bf16 hidden states choose the same experts.
  for (DType compute : {DType::BF16, DType::F16}) {
    if (compute == DType::BF16 && !cuda_has_bf16()) continue;
    const std::string dtype = dtype_name(compute);
    CAPTURE(dtype);
    Decoder cpu_model = moe_nf4_model(true), gpu_model = moe_nf4_model(true);
    const double loss_err = loss_on_gpu_vs_cpu(cpu_model, gpu_model, compute);
    const float loss_scale = gpu_loss_scale(compute);
    const std::vector<Var> cpu_params = adapter_parameters(cpu_model), gpu_params = adapter_parameters(gpu_model);
    REQUIRE(cpu_params.size() == gpu_params.size());
    double worst = 0, diff2 = 0, norm2 = 0;
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      CAPTURE(cpu_params[i].name());
      if (!cpu_params[i].grad().defined()) {  // an expert no token chose, on both
        CHECK_FALSE(gpu_params[i].grad().defined());
        continue;
      }
      REQUIRE(gpu_params[i].grad().defined());
      const Tensor unscaled = kernels::scale(gpu_params[i].grad(), 1.0f / loss_scale).to(Device::CPU);
      const double err = norm_rel_error(unscaled, cpu_params[i].grad());
      worst = std::max(worst, err);
      // bf16 on an expert that saw one or two tokens: up to 6.3e-2 measured on the emulated
      // GPU (f16 5.4e-3); all gradients together are bounded as the dense test's, below.
      CHECK(err <= (compute == DType::F16 ? 1e-2 : 1e-1));
      const std::vector<float> a = unscaled.to_vector(), b = cpu_params[i].grad().to_vector();
      for (size_t j = 0; j < a.size(); ++j) {
        diff2 += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
        norm2 += double(b[j]) * b[j];
      }
    }
    const double all = std::sqrt(diff2 / norm2);
    CHECK(all <= (compute == DType::F16 ? 1e-2 : 5e-2));
    MESSAGE(dtype, " MoE decoder on the GPU vs the CPU: loss rel err ", loss_err, ", worst LoRA gradient rel err ",
            worst, " over ", cpu_params.size(), " parameters, all of them together ", all);
  }
}

TEST_CASE("qwen3_moe: NF4 experts run as one grouped op per projection; logits and gradients as expert by expert") {
  // The same model twice: the experts' NF4 bases (grouped: nf4_grouped_linear without expert
  // adapters, lora_grouped_linear with them) and their dequantized copies as dense bases with
  // the same adapters (expert by expert through row_segments, the reference path). Same
  // weights, so logits, loss and every LoRA gradient agree to f32 rounding.
  for (bool expert_lora : {false, true}) {
    CAPTURE(expert_lora);
    Decoder grouped = moe_nf4_model(expert_lora), dense = moe_nf4_model(expert_lora);
    for (Linear* l : dense.linears()) {
      if (l->name().find(".mlp.experts.") == std::string::npos) continue;
      const std::optional<LoraLinear> adapter = l->has_lora() ? std::optional<LoraLinear>(l->lora()) : std::nullopt;
      *l = Linear(l->name(), Var(l->dense_weight()));
      if (!adapter) continue;
      LoraConfig cfg;
      cfg.r = adapter->A.shape()[0];
      l->attach_lora(cfg);
      l->lora() = *adapter;  // the fixture's A and B (this model's own Vars)
    }
    int64_t nf4_experts = 0, adapted = 0;
    for (const Linear* l : grouped.linears()) {
      nf4_experts += l->is_nf4() && l->name().find(".mlp.experts.") != std::string::npos;
      adapted += l->has_lora();
    }
    CHECK(nf4_experts == 2 * 8 * 3);  // the experts of the two sparse layers
    CHECK(adapted == 3 * 4 + 3 + (expert_lora ? 2 * 8 * 3 : 0));
    SafetensorsFile ref = SafetensorsFile::open(kMoeFixtures + "renorm/reference.safetensors");
    const Tensor ids = ref.get("input_ids");
    auto run = [&](Decoder& m) {
      Var loss = m.forward_loss(hf_decoder_batch(ids, ids));
      backward(loss);
      return loss.value().to_vector()[0];
    };
    const float grouped_loss = run(grouped), dense_loss = run(dense);
    CHECK(std::fabs(grouped_loss - dense_loss) <= 1e-6 * std::fabs(dense_loss));
    const std::vector<Var> a = adapter_parameters(grouped), b = adapter_parameters(dense);
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() == size_t(2 * adapted));
    double worst = 0;
    int64_t unused = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(a[i].name());
      REQUIRE(a[i].grad().defined() == b[i].grad().defined());  // an expert no token chose: none on both
      if (!a[i].grad().defined()) {
        ++unused;
        continue;
      }
      worst = std::max(worst, norm_rel_error(a[i].grad(), b[i].grad()));
    }
    CHECK(worst <= 1e-5);
    const double logits =
        max_rel_error(grouped.logits(hf_decoder_batch(ids, ids)), dense.logits(hf_decoder_batch(ids, ids)));
    CHECK(logits <= 1e-5);
    MESSAGE(std::string(expert_lora ? "with" : "without"), " expert LoRA, grouped NF4 experts vs expert by expert: loss ",
            grouped_loss, " vs ", dense_loss, ", logits rel err ", logits, ", worst LoRA gradient rel err ", worst,
            " over ", a.size() - unused, " parameters (", unused, " of unused experts, none on both)");
  }
}

GPU_TEST(moe_grouped_experts_match_cpu) {
  // The model with bare NF4 experts (one grouped NF4 matmul per projection, no bypass) on
  // the GPU against the CPU, bf16 (where the GPU has it) and f16: loss and every LoRA
  // gradient, with the bounds of moe_decoder_loss_and_lora_grads_match_cpu (which has the
  // experts' LoRA).
  for (DType compute : {DType::BF16, DType::F16}) {
    if (compute == DType::BF16 && !cuda_has_bf16()) continue;
    const std::string dtype = dtype_name(compute);
    CAPTURE(dtype);
    Decoder cpu_model = moe_nf4_model(false), gpu_model = moe_nf4_model(false);
    const double loss_err = loss_on_gpu_vs_cpu(cpu_model, gpu_model, compute);
    const float loss_scale = gpu_loss_scale(compute);
    const std::vector<Var> cpu_params = adapter_parameters(cpu_model), gpu_params = adapter_parameters(gpu_model);
    REQUIRE(cpu_params.size() == gpu_params.size());
    double worst = 0;
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      CAPTURE(cpu_params[i].name());
      REQUIRE(gpu_params[i].grad().defined());
      const Tensor unscaled = kernels::scale(gpu_params[i].grad(), 1.0f / loss_scale).to(Device::CPU);
      worst = std::max(worst, norm_rel_error(unscaled, cpu_params[i].grad()));
    }
    CHECK(worst <= (compute == DType::F16 ? 1e-2 : 5e-2));
    MESSAGE(dtype, " grouped NF4 experts on the GPU vs the CPU: loss rel err ", loss_err,
            ", worst LoRA gradient rel err ", worst, " over ", cpu_params.size(), " parameters");
  }
}

TEST_CASE("qwen3_moe: GGUF export of the model or its adapter is refused with the model type") {
  Decoder model = Decoder::load(kMoeFixtures + "renorm");
  const AdapterConfig cfg = load_peft_adapter(kMoeFixtures + "renorm/adapter", model);
  TempDir dir;
  std::string message;
  try {
    write_adapter_gguf(dir / "adapter.gguf", model, cfg, "test");
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK(message.find("GGUF adapter export: model type 'qwen3_moe' is not supported") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "adapter.gguf"));
  message.clear();
  try {
    write_merged_gguf(dir / "model.gguf", model.config(), {}, GGUFSourceMetadata{}, "f16");
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK(message.find("GGUF export: model type 'qwen3_moe' is not supported") != std::string::npos);
}

TEST_CASE("qwen3_moe checkpoint: a missing router, experts the config does not have, a fused tensor of the wrong count") {
  // The renorm fixture's files with one edit each; Decoder::load's error names the tensor.
  auto load_error = [](const std::string& layout, const std::function<void(std::map<std::string, Tensor>&)>& edit) {
    TempDir dir;
    const std::string src = kMoeFixtures + "renorm" + layout;
    std::filesystem::copy_file(src + "/config.json", dir / "config.json");
    SafetensorsFile file = SafetensorsFile::open(src + "/model.safetensors");
    std::map<std::string, Tensor> tensors;
    for (const std::string& n : file.names()) {
      const Tensor t = file.get(n);
      tensors[n] = Tensor::from_vector(t.to_vector(), t.shape());
    }
    edit(tensors);
    save_safetensors(dir / "model.safetensors", {tensors.begin(), tensors.end()});
    std::string message;
    try {
      Decoder::load(dir.path);
    } catch (const Error& e) {
      message = e.what();
    }
    return message;
  };
  const std::string router = load_error("", [](auto& t) { t.erase("model.layers.2.mlp.gate.weight"); });
  CHECK(router.find("model.layers.2.mlp.gate.weight") != std::string::npos);
  const std::string extra = load_error("", [](auto& t) {
    t["model.layers.0.mlp.experts.8.up_proj.weight"] = Tensor::zeros({24, 32});  // a ninth expert
  });
  CHECK(extra.find("model.layers.0.mlp.experts.8.up_proj.weight") != std::string::npos);
  const std::string fused = load_error("/fused", [](auto& t) {
    const std::string name = "model.layers.0.mlp.experts.gate_up_proj";  // [8, 48, 32] -> 7 experts
    t[name] = Tensor::zeros({7, 48, 32});
  });
  CHECK(fused.find("model.layers.0.mlp.experts.gate_up_proj") != std::string::npos);
  MESSAGE("refusals: ", router, " | ", extra, " | ", fused);
}
