// config.json parsing, validation and the Qwen3 presets (see config.h).
#include "model/config.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/json.h"
#include "runtime/error.h"

namespace nq {
namespace {

using json = nlohmann::json;

// Limits on what a config.json may claim, each far above every published model
// (Llama-3.1-405B: 126 layers, hidden 16384, MLP 53248, 128 heads; Gemma 3: vocabulary
// 262144; head_dim 256 at most), so a real model never meets them, while a file
// claiming 10^9 layers is refused before anything is sized by it (docs/formats.md).
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHidden = 1 << 17;
constexpr int64_t kMaxIntermediate = 1 << 20;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 4096;
constexpr int64_t kMaxVocab = 1 << 22;
constexpr int64_t kMaxExperts = 1024;  // Qwen3's MoE models have 128
constexpr int64_t kMaxPositions = int64_t(1) << 32;
// RoPE scaling factors (and YaRN's betas and mscales): published ones are 2 to 40.
constexpr double kMaxRopeFactor = 1024;

// eos_token_id is an int, a list of ints, or null.
std::vector<int32_t> eos_ids(const JsonIn& j, int64_t vocab) {
  auto e = j.find("eos_token_id");
  if (!e) return {};
  if (!e->is_array()) return {int32_t(e->integer(0, vocab - 1))};
  std::vector<int32_t> ids;
  e->for_each_element([&](const JsonIn& id) { ids.push_back(int32_t(id.integer(0, vocab - 1))); });
  return ids;
}

// RoPE, in either spelling (docs/formats.md, "config.json: RoPE and its scaling"):
//   transformers >= 5:  "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4, ...}
//   the hub, < 5:       "rope_theta": 1e6, "rope_scaling": {"rope_type" or "type": "yarn", "factor": 4, ...}
// A rope_theta inside the object wins over the top-level one, as transformers'
// standardize_rope_params has it. Only the keys of the named type are read; yarn's
// original window defaults to max_position_embeddings, its optional keys to
// transformers' defaults (left unset, so to_hf_json writes back what it read).
void read_rope(const JsonIn& j, ModelConfig& c) {
  const double kMaxFloat = std::numeric_limits<float>::max();
  c.rope_theta = float(j.number_or("rope_theta", 10000.0, -kMaxFloat, kMaxFloat));
  auto params = j.find("rope_parameters"), scaling = j.find("rope_scaling");
  NQ_CHECK(!(params && scaling), j.source(),
           ": both rope_parameters and rope_scaling are set; give one (transformers 5 writes rope_parameters)");
  const std::optional<JsonIn>& p = params ? params : scaling;
  if (!p) return;
  p->expect_object();
  RopeScaling& s = c.rope_scaling;
  const char* type_key = p->has("rope_type") || !p->has("type") ? "rope_type" : "type";
  if (auto t = p->find(type_key)) {
    s.type = t->string();
    NQ_CHECK(s.type == "default" || s.type == "linear" || s.type == "yarn", t->where(), " \"", s.type,
             "\" is not supported (default, linear, yarn)");
  }
  c.rope_theta = float(p->number_or("rope_theta", c.rope_theta, -kMaxFloat, kMaxFloat));
  if (auto partial = p->find("partial_rotary_factor"))
    NQ_CHECK(partial->number() == 1.0, partial->where(), " is ", partial->number(), "; partial RoPE is not implemented");
  if (!s.scaled()) return;
  s.factor = p->at("factor").number(1, kMaxRopeFactor);
  if (s.type == "yarn") {
    s.original_max_position_embeddings =
        p->integer_or("original_max_position_embeddings", c.max_position_embeddings, 1, kMaxPositions);
    auto optional_number = [&](const char* key, double lo) -> std::optional<double> {
      if (auto v = p->find(key)) return v->number(lo, kMaxRopeFactor);
      return std::nullopt;
    };
    s.beta_fast = optional_number("beta_fast", 0);
    s.beta_slow = optional_number("beta_slow", 0);
    s.mscale = optional_number("mscale", 0);
    s.mscale_all_dim = optional_number("mscale_all_dim", 0);
    s.attention_factor = optional_number("attention_factor", 0);
    // transformers reads truncate with .get("truncate", True): null is falsy there, not absent.
    const auto& raw = p->json();
    if (raw.contains("truncate")) s.truncate = raw["truncate"].is_null() ? false : p->at("truncate").boolean();
  }
  s.check(p->where());
}

void validate(const ModelConfig& c, const std::string& source) {
  NQ_CHECK(c.num_heads % c.num_kv_heads == 0, source, ": num_attention_heads (", c.num_heads,
           ") must be a multiple of num_key_value_heads (", c.num_kv_heads, ")");
  NQ_CHECK(c.head_dim % 2 == 0, source, ": head_dim must be even for RoPE, got ", c.head_dim);
  NQ_CHECK(c.rope_theta > 0, source, ": rope_theta must be > 0");
  NQ_CHECK(c.rms_norm_eps > 0, source, ": rms_norm_eps must be > 0");
  NQ_CHECK(c.initializer_range > 0, source, ": initializer_range must be > 0");
  if (c.model_type == "qwen3_moe") {
    const MoeConfig& m = c.moe;
    NQ_CHECK(m.experts_per_token <= m.num_experts, source, ": num_experts_per_tok (", m.experts_per_token,
             ") is larger than num_experts (", m.num_experts, ")");
    for (int64_t layer : m.mlp_only_layers)
      NQ_CHECK(layer >= 0 && layer < c.num_layers, source, ": mlp_only_layers names layer ", layer, ", but the model has ",
               c.num_layers, " (0 to ", c.num_layers - 1, ")");
  }
}

// Qwen3MoeConfig's keys (and its defaults, transformers 5.24).
void read_moe(const JsonIn& j, ModelConfig& c) {
  MoeConfig& m = c.moe;
  const bool hub = j.find("num_experts").has_value(), in_memory = j.find("num_local_experts").has_value();
  NQ_CHECK(!(hub && in_memory), j.source(), ": num_experts and num_local_experts are both given (one name, two spellings)");
  m.num_experts = in_memory ? j.at("num_local_experts").integer(1, kMaxExperts)
                            : j.integer_or("num_experts", 128, 1, kMaxExperts);
  m.experts_per_token = j.integer_or("num_experts_per_tok", 8, 1, kMaxExperts);
  m.expert_intermediate_size = j.integer_or("moe_intermediate_size", 768, 1, kMaxIntermediate);
  m.norm_topk_prob = j.boolean_or("norm_topk_prob", false);
  m.decoder_sparse_step = j.integer_or("decoder_sparse_step", 1, 1, kMaxLayers);
  if (auto layers = j.find("mlp_only_layers"); layers && !layers->is_null())
    layers->for_each_element([&](const JsonIn& l) { m.mlp_only_layers.push_back(l.integer(0, kMaxLayers)); });
  const double kMaxFloat = std::numeric_limits<float>::max();
  m.router_aux_loss_coef = float(j.number_or("router_aux_loss_coef", 0.001, 0, kMaxFloat));
  m.output_router_logits = j.boolean_or("output_router_logits", false);
}

// The shortest decimal that reads back as `f` (1e-06, not 9.999999974752427e-07), as a JSON number.
json shortest(float f) {
  char buf[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, double(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return json(std::strtod(buf, nullptr));
}

// transformers 5's "rope_parameters": the type, the base and the keys the type has, the
// optional yarn ones only where they were given.
json rope_parameters_json(float theta, const RopeScaling& s) {
  json j = {{"rope_theta", shortest(theta)}, {"rope_type", s.type}};
  if (!s.scaled()) return j;
  j["factor"] = s.factor;
  if (s.type != "yarn") return j;
  j["original_max_position_embeddings"] = s.original_max_position_embeddings;
  const std::pair<const char*, const std::optional<double>*> optional[] = {
      {"beta_fast", &s.beta_fast}, {"beta_slow", &s.beta_slow}, {"mscale", &s.mscale},
      {"mscale_all_dim", &s.mscale_all_dim}, {"attention_factor", &s.attention_factor}};
  for (const auto& [key, value] : optional)
    if (*value) j[key] = **value;
  if (s.truncate) j["truncate"] = *s.truncate;
  return j;
}

}  // namespace

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source) {
  const json doc = parse_json(text, source);
  const JsonIn j(doc, source);
  j.expect_object();

  ModelConfig c;
  c.model_type = j.at("model_type").string();
  NQ_CHECK(c.model_type == "qwen3" || c.model_type == "llama" || c.model_type == "qwen3_moe", source,
           ": model_type \"", c.model_type, "\" is not supported (qwen3, llama, qwen3_moe)");
  const bool qwen3 = c.model_type == "qwen3";

  // Features we do not implement: refuse rather than compute a different model.
  NQ_CHECK(!j.boolean_or("use_sliding_window", false), source,
           ": use_sliding_window is true; sliding-window attention is not implemented");
  NQ_CHECK(!j.boolean_or("mlp_bias", false), source, ": mlp_bias is true; MLP biases are not implemented");
  std::string act = j.string_or("hidden_act", "silu");
  NQ_CHECK(act == "silu", source, ": hidden_act \"", act, "\" is not supported (silu)");

  c.hidden_size = j.at("hidden_size").integer(1, kMaxHidden);
  c.intermediate_size = j.at("intermediate_size").integer(1, kMaxIntermediate);
  c.num_layers = j.at("num_hidden_layers").integer(1, kMaxLayers);
  c.num_heads = j.at("num_attention_heads").integer(1, kMaxHeads);
  c.vocab_size = j.at("vocab_size").integer(1, kMaxVocab);
  c.num_kv_heads = j.integer_or("num_key_value_heads", c.num_heads, 1, kMaxHeads);
  // HF defaults: Qwen3Config.head_dim = 128; Llama and Qwen3-MoE derive it from the hidden size.
  c.head_dim = j.integer_or("head_dim", qwen3 ? 128 : c.hidden_size / c.num_heads, 1, kMaxHeadDim);
  NQ_CHECK(c.head_dim > 0, source, ": head_dim must be > 0, got ", c.head_dim);
  const double kMaxFloat = std::numeric_limits<float>::max();
  c.rms_norm_eps = float(j.number_or("rms_norm_eps", 1e-6, -kMaxFloat, kMaxFloat));
  c.tie_word_embeddings = j.boolean_or("tie_word_embeddings", false);
  c.attention_bias = j.boolean_or("attention_bias", false);
  c.max_position_embeddings =
      j.integer_or("max_position_embeddings", c.model_type == "llama" ? 2048 : 32768, 1, kMaxPositions);
  // transformers < 5 writes "torch_dtype", >= 5 writes "dtype".
  c.torch_dtype = j.string_or("torch_dtype", j.string_or("dtype", "float32"));
  c.initializer_range = float(j.number_or("initializer_range", 0.02, -kMaxFloat, kMaxFloat));
  c.bos_token_id = int32_t(j.integer_or("bos_token_id", -1, -1, c.vocab_size - 1));
  c.eos_token_ids = eos_ids(j, c.vocab_size);

  if (c.model_type == "qwen3_moe") read_moe(j, c);
  read_rope(j, c);
  validate(c, source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  NQ_CHECK(in.good(), path, ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str(), path);
}

// Values of the official Qwen/Qwen3-* config.json files (transformers 4.51 era). The MoE
// ones: 128 experts, top 8, renormalised, every layer sparse, router_aux_loss_coef 0.001.
ModelConfig ModelConfig::preset(const std::string& name) {
  struct Size { int64_t hidden, intermediate, layers, heads, kv_heads; bool tied; int64_t expert_width; };
  static const std::map<std::string, Size> sizes = {
      {"qwen3-0.6b", {1024, 3072, 28, 16, 8, true, 0}},
      {"qwen3-1.7b", {2048, 6144, 28, 16, 8, true, 0}},
      {"qwen3-4b", {2560, 9728, 36, 32, 8, true, 0}},
      {"qwen3-8b", {4096, 12288, 36, 32, 8, false, 0}},
      {"qwen3-30b-a3b", {2048, 6144, 48, 32, 4, false, 768}},
      {"qwen3-235b-a22b", {4096, 12288, 94, 64, 4, false, 1536}},
  };
  auto it = sizes.find(name);
  if (it == sizes.end()) {
    std::string known;
    for (const auto& [n, s] : sizes) known += (known.empty() ? "" : ", ") + n;
    throw Error(str("unknown model preset \"", name, "\" (known: ", known, ")"));
  }
  const Size& s = it->second;
  ModelConfig c;
  c.model_type = "qwen3";
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_layers = s.layers;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = 128;
  c.vocab_size = 151936;
  c.rope_theta = 1000000.0f;
  c.rms_norm_eps = 1e-6f;
  c.tie_word_embeddings = s.tied;
  c.max_position_embeddings = 40960;
  c.torch_dtype = "bfloat16";
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645};
  if (s.expert_width > 0) {
    c.model_type = "qwen3_moe";
    c.moe.num_experts = 128;
    c.moe.experts_per_token = 8;
    c.moe.expert_intermediate_size = s.expert_width;
    c.moe.norm_topk_prob = true;
  }
  return c;
}

std::string ModelConfig::to_hf_json() const {
  const bool qwen3 = model_type == "qwen3", moe_model = model_type == "qwen3_moe";
  const char* architecture = qwen3 ? "Qwen3ForCausalLM" : moe_model ? "Qwen3MoeForCausalLM" : "LlamaForCausalLM";
  json j = {{"architectures", {architecture}},
            {"model_type", model_type},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"num_hidden_layers", num_layers},
            {"num_attention_heads", num_heads},
            {"num_key_value_heads", num_kv_heads},
            {"head_dim", head_dim},
            {"vocab_size", vocab_size},
            {"hidden_act", "silu"},
            {"rms_norm_eps", shortest(rms_norm_eps)},
            {"rope_parameters", rope_parameters_json(rope_theta, rope_scaling)},
            {"tie_word_embeddings", tie_word_embeddings},
            {"attention_bias", attention_bias},
            {"attention_dropout", 0.0},
            {"max_position_embeddings", max_position_embeddings},
            {"initializer_range", shortest(initializer_range)},
            {"dtype", torch_dtype},
            {"use_cache", true}};
  if (qwen3 || moe_model) j["use_sliding_window"] = false;
  if (moe_model) {  // the hub's spelling (save_pretrained's)
    j["num_experts"] = moe.num_experts;
    j["num_experts_per_tok"] = moe.experts_per_token;
    j["moe_intermediate_size"] = moe.expert_intermediate_size;
    j["norm_topk_prob"] = moe.norm_topk_prob;
    j["decoder_sparse_step"] = moe.decoder_sparse_step;
    j["mlp_only_layers"] = moe.mlp_only_layers;
    j["router_aux_loss_coef"] = shortest(moe.router_aux_loss_coef);
    j["output_router_logits"] = moe.output_router_logits;
  }
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  else j["bos_token_id"] = nullptr;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else if (eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else j["eos_token_id"] = eos_token_ids;
  return j.dump(2) + "\n";
}

RopeScaling parse_rope_scaling_spec(const std::string& spec, int64_t max_position_embeddings) {
  const std::string flag = "--rope-scaling " + spec;
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t colon = spec.find(':', at);
    parts.push_back(spec.substr(at, colon == std::string::npos ? std::string::npos : colon - at));
    if (colon == std::string::npos) break;
    at = colon + 1;
  }
  const bool yarn = parts[0] == "yarn";
  NQ_CHECK((yarn && (parts.size() == 2 || parts.size() == 3)) || (parts[0] == "linear" && parts.size() == 2), flag,
           ": expected yarn:FACTOR, yarn:FACTOR:ORIGINAL_WINDOW or linear:FACTOR");
  auto number = [&](const std::string& text, const char* what) {
    char* end = nullptr;
    const double v = text.empty() ? 0 : std::strtod(text.c_str(), &end);
    NQ_CHECK(!text.empty() && end == text.c_str() + text.size() && std::isfinite(v), flag, ": the ", what,
             " must be a number, got '", text, "'");
    return v;
  };
  RopeScaling s;
  s.type = parts[0];
  s.factor = number(parts[1], "factor");
  NQ_CHECK(s.factor >= 1 && s.factor <= kMaxRopeFactor, flag, ": the factor must be in [1, ", kMaxRopeFactor, "]");
  if (yarn) {
    const double window = parts.size() == 3 ? number(parts[2], "original window") : double(max_position_embeddings);
    NQ_CHECK(window >= 1 && window <= double(kMaxPositions) && window == std::floor(window), flag,
             ": the original window must be a whole number of positions in [1, ", kMaxPositions, "]");
    s.original_max_position_embeddings = int64_t(window);
  }
  s.check(flag);
  return s;
}

void ModelConfig::apply_rope_scaling_flag(const std::string& spec) {
  if (spec.empty()) return;
  const RopeScaling wanted = parse_rope_scaling_spec(spec, max_position_embeddings);
  if (!rope_scaling.scaled()) {
    rope_scaling = wanted;
    return;
  }
  // The config's own may carry yarn's optional keys: the flag agrees when type, factor and window do.
  const bool same = rope_scaling.type == wanted.type && rope_scaling.factor == wanted.factor &&
                    rope_scaling.original_max_position_embeddings == wanted.original_max_position_embeddings;
  NQ_CHECK(same, "--rope-scaling ", spec, " asks for ", wanted.describe(), " but the model's config already has ",
           rope_scaling.describe(), "; leave the flag out to use it");
}

std::vector<std::string> ModelConfig::preset_names() { return {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"}; }
std::vector<std::string> ModelConfig::moe_preset_names() { return {"qwen3-30b-a3b", "qwen3-235b-a22b"}; }

bool ModelConfig::sparse_layer(int64_t i) const {
  if (!is_moe()) return false;
  for (int64_t dense : moe.mlp_only_layers)
    if (dense == i) return false;
  return (i + 1) % moe.decoder_sparse_step == 0;
}

// Within the limits of from_json every term below fits int64 with room to spare
// (the largest, L x E x 3 D F, is 2^10 x 2^10 x 3 x 2^17 x 2^20 < 2^59).
int64_t ModelConfig::num_parameters() const {
  const int64_t D = hidden_size, q = num_heads * head_dim, kv = num_kv_heads * head_dim;
  int64_t attn = D * q + 2 * D * kv + q * D + (attention_bias ? q + 2 * kv + D : 0) + (qk_norm() ? 2 * head_dim : 0);
  int64_t layers = 0;
  for (int64_t i = 0; i < num_layers; ++i)  // a sparse layer: the router [E, D] and E experts
    layers += attn + 2 * D + (sparse_layer(i) ? moe.num_experts * (D + 3 * D * moe.expert_intermediate_size)
                                              : 3 * D * intermediate_size);
  return vocab_size * D * (tie_word_embeddings ? 1 : 2) + layers + D;
}

std::string ModelConfig::summary() const {
  return str(model_type, ": ", num_layers, " layers, hidden ", hidden_size, ", mlp ", intermediate_size, ", heads ",
             num_heads, "/", num_kv_heads, " x ", head_dim, ", vocab ", vocab_size, ", rope theta ", rope_theta,
             rope_scaling.scaled() ? ", rope scaling " + rope_scaling.describe() : "",
             is_moe() ? str(", ", moe.num_experts, " experts of width ", moe.expert_intermediate_size, ", top ",
                            moe.experts_per_token, moe.norm_topk_prob ? " renormalised" : "")
                      : std::string(),
             tie_word_embeddings ? ", tied lm_head" : "", attention_bias ? ", attention bias" : "", ", ",
             double(num_parameters()) / 1e6, "M parameters");
}

}  // namespace nq
