// config.json parsing, validation and the Qwen3 presets (see config.h).
#include "model/config.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/error.h"

namespace nq {
namespace {

using json = nlohmann::json;

// Reads field `key` as T; `fallback` when absent (or null) unless the field is required.
template <typename T>
T field(const json& j, const char* key, const std::string& source, const T* fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    NQ_CHECK(fallback != nullptr, source, ": missing required field \"", key, "\"");
    return *fallback;
  }
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw Error(str(source, ": field \"", key, "\" has the wrong type (", it->type_name(), ")"));
  }
}
template <typename T>
T required(const json& j, const char* key, const std::string& source) {
  return field<T>(j, key, source, nullptr);
}
template <typename T>
T optional(const json& j, const char* key, const std::string& source, T fallback) {
  return field<T>(j, key, source, &fallback);
}

// eos_token_id is an int, a list of ints, or null.
std::vector<int32_t> eos_ids(const json& j, const std::string& source) {
  auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int32_t>()};
  NQ_CHECK(it->is_array(), source, ": field \"eos_token_id\" must be an integer or a list of integers");
  std::vector<int32_t> ids;
  for (const auto& e : *it) {
    NQ_CHECK(e.is_number_integer(), source, ": field \"eos_token_id\" must be an integer or a list of integers");
    ids.push_back(e.get<int32_t>());
  }
  return ids;
}

void validate(const ModelConfig& c, const std::string& source) {
  auto positive = [&](const char* name, int64_t v) { NQ_CHECK(v > 0, source, ": field \"", name, "\" must be > 0, got ", v); };
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_layers);
  positive("num_attention_heads", c.num_heads);
  positive("num_key_value_heads", c.num_kv_heads);
  positive("head_dim", c.head_dim);
  positive("vocab_size", c.vocab_size);
  NQ_CHECK(c.num_heads % c.num_kv_heads == 0, source, ": num_attention_heads (", c.num_heads,
           ") must be a multiple of num_key_value_heads (", c.num_kv_heads, ")");
  NQ_CHECK(c.head_dim % 2 == 0, source, ": head_dim must be even for RoPE, got ", c.head_dim);
  NQ_CHECK(c.rope_theta > 0, source, ": rope_theta must be > 0");
  NQ_CHECK(c.rms_norm_eps > 0, source, ": rms_norm_eps must be > 0");
  NQ_CHECK(c.initializer_range > 0, source, ": initializer_range must be > 0");
  if (c.bos_token_id >= c.vocab_size) throw Error(str(source, ": bos_token_id ", c.bos_token_id, " >= vocab_size"));
  for (int32_t e : c.eos_token_ids)
    NQ_CHECK(e >= 0 && e < c.vocab_size, source, ": eos_token_id ", e, " is outside the vocabulary [0, ", c.vocab_size, ")");
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

}  // namespace

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(str(source, ": invalid JSON at byte ", e.byte));
  }
  NQ_CHECK(j.is_object(), source, ": expected a JSON object");

  ModelConfig c;
  c.model_type = required<std::string>(j, "model_type", source);
  NQ_CHECK(c.model_type == "qwen3" || c.model_type == "llama", source, ": model_type \"", c.model_type,
           "\" is not supported (qwen3, llama)");
  const bool qwen3 = c.model_type == "qwen3";

  // Features we do not implement: refuse rather than compute a different model.
  NQ_CHECK(!optional<bool>(j, "use_sliding_window", source, false), source,
           ": use_sliding_window is true; sliding-window attention is not implemented");
  NQ_CHECK(!optional<bool>(j, "mlp_bias", source, false), source, ": mlp_bias is true; MLP biases are not implemented");
  std::string act = optional<std::string>(j, "hidden_act", source, "silu");
  NQ_CHECK(act == "silu", source, ": hidden_act \"", act, "\" is not supported (silu)");
  auto scaling = j.find("rope_scaling");
  NQ_CHECK(scaling == j.end() || scaling->is_null(), source,
           ": rope_scaling is set; RoPE scaling (linear, dynamic, yarn, llama3) is not implemented");

  c.hidden_size = required<int64_t>(j, "hidden_size", source);
  c.intermediate_size = required<int64_t>(j, "intermediate_size", source);
  c.num_layers = required<int64_t>(j, "num_hidden_layers", source);
  c.num_heads = required<int64_t>(j, "num_attention_heads", source);
  c.vocab_size = required<int64_t>(j, "vocab_size", source);
  c.num_kv_heads = optional<int64_t>(j, "num_key_value_heads", source, c.num_heads);
  NQ_CHECK(c.num_heads > 0, source, ": field \"num_attention_heads\" must be > 0, got ", c.num_heads);
  // HF defaults: Qwen3Config.head_dim = 128; Llama derives it from the hidden size.
  c.head_dim = optional<int64_t>(j, "head_dim", source, qwen3 ? 128 : c.hidden_size / c.num_heads);
  c.rms_norm_eps = optional<float>(j, "rms_norm_eps", source, 1e-6f);
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", source, false);
  c.attention_bias = optional<bool>(j, "attention_bias", source, false);
  c.max_position_embeddings = optional<int64_t>(j, "max_position_embeddings", source, qwen3 ? 32768 : 2048);
  // transformers < 5 writes "torch_dtype", >= 5 writes "dtype".
  c.torch_dtype = optional<std::string>(j, "torch_dtype", source, optional<std::string>(j, "dtype", source, "float32"));
  c.initializer_range = optional<float>(j, "initializer_range", source, 0.02f);
  c.bos_token_id = optional<int32_t>(j, "bos_token_id", source, -1);
  c.eos_token_ids = eos_ids(j, source);

  // RoPE base: top-level "rope_theta" (transformers < 5) or "rope_parameters" (>= 5).
  c.rope_theta = optional<float>(j, "rope_theta", source, 10000.0f);
  auto params = j.find("rope_parameters");
  if (params != j.end() && !params->is_null()) {
    NQ_CHECK(params->is_object(), source, ": field \"rope_parameters\" must be an object");
    std::string type = optional<std::string>(*params, "rope_type", source + " rope_parameters", "default");
    NQ_CHECK(type == "default", source, ": rope_parameters.rope_type \"", type,
             "\" is not supported; only unscaled (default) RoPE is implemented");
    c.rope_theta = optional<float>(*params, "rope_theta", source + " rope_parameters", c.rope_theta);
  }
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

// Values of the official Qwen/Qwen3-*B config.json files (transformers 4.51 era).
ModelConfig ModelConfig::preset(const std::string& name) {
  struct Size { int64_t hidden, intermediate, layers, heads, kv_heads; bool tied; };
  static const std::map<std::string, Size> sizes = {
      {"qwen3-0.6b", {1024, 3072, 28, 16, 8, true}},
      {"qwen3-1.7b", {2048, 6144, 28, 16, 8, true}},
      {"qwen3-4b", {2560, 9728, 36, 32, 8, true}},
      {"qwen3-8b", {4096, 12288, 36, 32, 8, false}},
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
  return c;
}

std::string ModelConfig::to_hf_json() const {
  const bool qwen3 = model_type == "qwen3";
  json j = {{"architectures", {qwen3 ? "Qwen3ForCausalLM" : "LlamaForCausalLM"}},
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
            {"rope_parameters", {{"rope_theta", shortest(rope_theta)}, {"rope_type", "default"}}},
            {"tie_word_embeddings", tie_word_embeddings},
            {"attention_bias", attention_bias},
            {"attention_dropout", 0.0},
            {"max_position_embeddings", max_position_embeddings},
            {"initializer_range", shortest(initializer_range)},
            {"dtype", torch_dtype},
            {"use_cache", true}};
  if (qwen3) j["use_sliding_window"] = false;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  else j["bos_token_id"] = nullptr;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else if (eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else j["eos_token_id"] = eos_token_ids;
  return j.dump(2) + "\n";
}

std::vector<std::string> ModelConfig::preset_names() { return {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"}; }

int64_t ModelConfig::num_parameters() const {
  const int64_t D = hidden_size, q = num_heads * head_dim, kv = num_kv_heads * head_dim;
  int64_t attn = D * q + 2 * D * kv + q * D + (attention_bias ? q + 2 * kv + D : 0) + (qk_norm() ? 2 * head_dim : 0);
  int64_t layer = attn + 3 * D * intermediate_size + 2 * D;
  return vocab_size * D * (tie_word_embeddings ? 1 : 2) + num_layers * layer + D;
}

std::string ModelConfig::summary() const {
  return str(model_type, ": ", num_layers, " layers, hidden ", hidden_size, ", mlp ", intermediate_size, ", heads ",
             num_heads, "/", num_kv_heads, " x ", head_dim, ", vocab ", vocab_size, ", rope theta ", rope_theta,
             tie_word_embeddings ? ", tied lm_head" : "", attention_bias ? ", attention bias" : "", ", ",
             double(num_parameters()) / 1e6, "M parameters");
}

}  // namespace nq
