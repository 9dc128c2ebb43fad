// Qwen3-MoE's configuration (model/config.h MoeConfig) and checkpoint layout
// (model/weights.h parameter_specs) against what transformers 5 writes: two tiny
// Qwen3MoeForCausalLM saved with save_pretrained (tests/fixtures/moe/configs.json,
// tools/ref/make_moe_config_fixtures.py): every config value, which layers are sparse,
// every tensor name and shape, the parameter count; the official presets; one-line
// errors for configs that cannot be right; and the memory plan's expert terms. The MoE
// block itself is tested in tests/test_moe.cpp.
#include <doctest/doctest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "model/adapters.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/load_model.h"
#include "model/weights.h"
#include "tests/fixture_compare.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "training/memory_plan.h"

using namespace nq;

namespace {

const nlohmann::json& fixture() {
  static const nlohmann::json f = test::read_json("tests/fixtures/moe/configs.json");
  return f;
}

}  // namespace

TEST_CASE("qwen3_moe config: transformers' config.json, both expert-count spellings, sparse layers, tensors") {
  for (const char* name : {"dense_layer_1", "sparse_step_2"}) {
    CAPTURE(name);
    const nlohmann::json& f = fixture()[name];
    const nlohmann::json& hf = f["config_json"];
    const ModelConfig c = ModelConfig::from_json(hf.dump(), "config.json");
    CHECK(c.model_type == "qwen3_moe");
    CHECK(c.qk_norm());
    CHECK(c.is_moe());
    // save_pretrained (transformers 5.24) writes num_local_experts; the hub's files say num_experts.
    const int64_t experts = hf.contains("num_local_experts") ? hf["num_local_experts"].get<int64_t>()
                                                              : hf["num_experts"].get<int64_t>();
    CHECK(c.moe.num_experts == experts);
    CHECK(c.moe.experts_per_token == hf["num_experts_per_tok"].get<int64_t>());
    CHECK(c.moe.expert_intermediate_size == hf["moe_intermediate_size"].get<int64_t>());
    CHECK(c.moe.norm_topk_prob == hf["norm_topk_prob"].get<bool>());
    CHECK(c.moe.decoder_sparse_step == hf["decoder_sparse_step"].get<int64_t>());
    CHECK(c.moe.mlp_only_layers == hf["mlp_only_layers"].get<std::vector<int64_t>>());
    CHECK(c.moe.router_aux_loss_coef == hf["router_aux_loss_coef"].get<float>());
    CHECK(c.moe.output_router_logits == hf["output_router_logits"].get<bool>());
    std::vector<int64_t> sparse;
    for (int64_t i = 0; i < c.num_layers; ++i)
      if (c.sparse_layer(i)) sparse.push_back(i);
    CHECK(sparse == f["sparse_layers"].get<std::vector<int64_t>>());
    // Every tensor save_pretrained wrote, with its shape, and nothing else.
    std::map<std::string, std::vector<int64_t>> want, got;
    for (auto it = f["tensors"].begin(); it != f["tensors"].end(); ++it)
      want[it.key()] = it.value().get<std::vector<int64_t>>();
    for (const ParamSpec& spec : parameter_specs(c))
      got[spec.name] = std::vector<int64_t>(spec.shape.dims.begin(), spec.shape.dims.begin() + spec.shape.ndim);
    CHECK(got == want);
    CHECK(c.num_parameters() == f["num_parameters"].get<int64_t>());
    // The hub's spelling parses the same, and our config.json reads back as itself.
    nlohmann::json hub = hf;
    if (hub.contains("num_local_experts")) {
      hub["num_experts"] = hub["num_local_experts"];
      hub.erase("num_local_experts");
    }
    CHECK(ModelConfig::from_json(hub.dump(), "hub").to_hf_json() == c.to_hf_json());
    CHECK(ModelConfig::from_json(c.to_hf_json(), "ours").to_hf_json() == c.to_hf_json());
    CHECK(c.summary().find("8 experts of width 8, top 2") != std::string::npos);
  }
}

TEST_CASE("qwen3_moe presets: the official Qwen3-30B-A3B and Qwen3-235B-A22B sizes") {
  const ModelConfig a = ModelConfig::preset("qwen3-30b-a3b");
  CHECK(a.model_type == "qwen3_moe");
  CHECK(a.moe.num_experts == 128);
  CHECK(a.moe.experts_per_token == 8);
  CHECK(a.moe.expert_intermediate_size == 768);
  CHECK(a.moe.norm_topk_prob);
  CHECK(a.num_layers == 48);
  CHECK(a.sparse_layer(0));
  CHECK(a.sparse_layer(47));
  // Qwen's model cards: 30.5B parameters in total, 235B.
  CHECK(a.num_parameters() > 30.4e9);
  CHECK(a.num_parameters() < 30.6e9);
  const ModelConfig b = ModelConfig::preset("qwen3-235b-a22b");
  CHECK(b.num_layers == 94);
  CHECK(b.moe.expert_intermediate_size == 1536);
  CHECK(b.num_parameters() > 234.5e9);
  CHECK(b.num_parameters() < 235.5e9);
  MESSAGE("qwen3-30b-a3b " << a.num_parameters() << " parameters, qwen3-235b-a22b " << b.num_parameters());
  for (const std::string& name : ModelConfig::moe_preset_names()) CHECK(ModelConfig::preset(name).is_moe());
}

TEST_CASE("qwen3_moe config: what cannot be right is one line naming the key") {
  const nlohmann::json base = fixture()["dense_layer_1"]["config_json"];
  auto error = [&](const nlohmann::json& edit) {
    nlohmann::json j = base;
    j.merge_patch(edit);
    return thrown_message([&] { ModelConfig::from_json(j.dump(), "cfg.json"); });
  };
  CHECK(error({{"num_experts_per_tok", 9}}) == "cfg.json: num_experts_per_tok (9) is larger than num_experts (8)");
  CHECK(error({{"mlp_only_layers", {3}}}) ==
        "cfg.json: mlp_only_layers names layer 3, but the model has 3 (0 to 2)");
  CHECK(error({{"num_experts", 8}}).find("num_experts and num_local_experts are both given") != std::string::npos);
  CHECK(error({{"num_local_experts", 0}}).find("\"num_local_experts\"") != std::string::npos);
  CHECK(error({{"decoder_sparse_step", 0}}).find("\"decoder_sparse_step\"") != std::string::npos);
  CHECK(error({{"mlp_only_layers", "all"}}).find("mlp_only_layers") != std::string::npos);
}

TEST_CASE("qwen3_moe: the memory plan counts the experts, from the config as from the model") {
  const ModelConfig c = ModelConfig::from_json(fixture()["dense_layer_1"]["config_json"].dump(), "config.json");
  Decoder decoder(c, random_weights(c, 1));  // f32 bases: the config's plan with nf4_base false
  CHECK_FALSE(decoder.layers()[1].sparse());  // mlp_only_layers [1]
  CHECK(decoder.layers()[0].sparse());
  QloraShape q;
  q.r = 4;
  q.nf4_base = false;
  AdapterConfig adapter;
  adapter.lora.r = 4;
  attach_adapters(decoder, adapter);  // all-linear: attention, the dense MLP and every expert, never the router
  TrainShape shape;
  shape.batch = 2;
  shape.seq = 64;
  const MemoryPlan from_config = plan_memory(c, q, shape, Device::CPU), from_model = plan_memory(decoder, shape);
  for (size_t i = 0; i < size_t(MemCategory::Count); ++i) {
    CAPTURE(mem_category_name(MemCategory(i)));
    CHECK(from_config.bytes[i] == from_model.bytes[i]);
  }
  // The LoRA term: A [r, in] + B [out, r] in f32 on each of 3 layers' q/k/v/o, the dense
  // layer's gate/up/down and the sparse layers' E experts' gate/up/down.
  const int64_t D = c.hidden_size, Hq = c.num_heads * c.head_dim, Hkv = c.num_kv_heads * c.head_dim,
                F = c.intermediate_size, I = c.moe.expert_intermediate_size, E = c.moe.num_experts;
  const int64_t attention = (D + Hq) + 2 * (D + Hkv) + (Hq + D), mlp = 3 * (D + F), experts = E * 3 * (D + I);
  CHECK(from_config[MemCategory::LoRA] == size_t(4 * 4 * (3 * attention + mlp + 2 * experts)));
  // A sparse layer's recomputed outputs grow with the token copies it routes (k per token).
  ModelConfig top4 = c;
  top4.moe.experts_per_token = 4;
  CHECK(plan_memory(top4, q, shape, Device::CPU).recomputed_layer > from_config.recomputed_layer);
}
