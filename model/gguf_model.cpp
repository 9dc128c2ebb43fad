// GGUF metadata -> ModelConfig, tensors -> HF-named f32 weights, vocabulary ->
// Tokenizer (see gguf_model.h).
#include "model/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace nq {
namespace {

std::string key_error(const GGUFFile& f, const std::string& key) { return f.path() + ": metadata key '" + key + "'"; }

// A positive integer under `key` (required).
int64_t positive(const GGUFFile& f, const std::string& key) {
  int64_t v = f.get_i64(key);
  NQ_CHECK(v > 0, key_error(f, key), " must be > 0, got ", v);
  return v;
}

// A finite float under `key` (required): NaN would reach the JSON below as null, i.e. "unset".
double finite(const GGUFFile& f, const std::string& key) {
  double v = f.get_f64(key);
  NQ_CHECK(std::isfinite(v), key_error(f, key), " is ", v, ", not a finite number");
  return v;
}

// llama.cpp's RoPE scaling keys (gguf-py Keys.Rope) as config.json's hub spelling
// {"rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow"},
// or nothing for "none". Keys whose llama.cpp meaning has no transformers twin here
// (attn_factor, yarn_log_multiplier) are refused unless neutral.
void read_rope_scaling(const GGUFFile& f, const std::string& arch, nlohmann::json& config) {
  const std::string a = arch + ".rope.scaling.";
  const std::string type = f.has(a + "type") ? f.get_string(a + "type") : "none";
  NQ_CHECK(type == "none" || type == "linear" || type == "yarn", key_error(f, a + "type"), " is '", type,
           "'; supported RoPE scaling: none, linear, yarn");
  for (const auto& [key, neutral] : {std::make_pair("attn_factor", 1.0), std::make_pair("yarn_log_multiplier", 0.0)})
    if (f.has(a + key)) {
      const double v = finite(f, a + key);
      NQ_CHECK(v == neutral, key_error(f, a + key), " is ", v, "; only ", neutral, " is implemented");
    }
  if (type == "none") {
    if (f.has(a + "factor")) {
      const double v = f.get_f64(a + "factor");
      NQ_CHECK(v == 0.0 || v == 1.0, key_error(f, a + "factor"), " is ", v, " but ", a, "type is none");
    }
    return;
  }
  nlohmann::json s = {{"rope_type", type}, {"factor", finite(f, a + "factor")}};
  if (type == "yarn") {
    s["original_max_position_embeddings"] = positive(f, a + "original_context_length");
    if (f.has(a + "yarn_beta_fast")) s["beta_fast"] = finite(f, a + "yarn_beta_fast");
    if (f.has(a + "yarn_beta_slow")) s["beta_slow"] = finite(f, a + "yarn_beta_slow");
  }
  config["rope_scaling"] = s;
}

// Refuses features the decoder does not implement, naming the key at fault.
void refuse_unsupported(const GGUFFile& f, const std::string& arch) {
  const std::string experts = arch + ".expert_count";
  NQ_CHECK(arch == "qwen3moe" || !f.has(experts) || f.get_i64(experts) == 0, key_error(f, experts),
           " is set; mixture-of-experts layers are implemented for qwen3moe only");
  const std::string window = arch + ".attention.sliding_window";
  NQ_CHECK(!f.has(window), key_error(f, window), " is set; sliding-window attention is not implemented");
}

// llama.cpp's qwen3moe (convert_hf_to_gguf's Qwen3MoeModel, llm_build_qwen3moe) as
// Qwen3MoeConfig fields. Its graph makes every layer sparse (the block's tensors are required,
// there is no dense MLP) and always renormalises the top-k routing weights (build_moe_ffn with
// norm_w = true; the converter does not write norm_topk_prob), with a softmax router: so
// norm_topk_prob true, decoder_sparse_step 1, no mlp_only_layers, whatever the HF model had.
void read_moe(const GGUFFile& f, const std::string& a, nlohmann::json& config) {
  const int64_t experts = positive(f, a + "expert_count"), used = positive(f, a + "expert_used_count");
  NQ_CHECK(used <= experts, key_error(f, a + "expert_used_count"), " is ", used, ", more than ", a, "expert_count (",
           experts, ")");
  config["num_experts"] = experts;
  config["num_experts_per_tok"] = used;
  config["moe_intermediate_size"] = positive(f, a + "expert_feed_forward_length");
  config["norm_topk_prob"] = true;
  config["decoder_sparse_step"] = 1;
  config["mlp_only_layers"] = nlohmann::json::array();
  // The qwen3moe graph ignores these keys; a file saying otherwise describes another model.
  if (f.has(a + "expert_weights_norm"))
    NQ_CHECK(f.get_bool(a + "expert_weights_norm"), key_error(f, a + "expert_weights_norm"),
             " is false, but llama.cpp's qwen3moe always renormalises the top-k weights");
  if (f.has(a + "expert_gating_func")) {
    const int64_t gating = f.get_i64(a + "expert_gating_func");  // gguf-py ExpertGatingFuncType: 1 softmax
    NQ_CHECK(gating == 1, key_error(f, a + "expert_gating_func"), " is ", gating, "; only 1 (softmax) is implemented");
  }
}

// "blk.<N>.<rest>" split into N and rest; false for any other name.
bool split_block_name(const std::string& name, std::string& layer, std::string& rest) {
  if (name.compare(0, 4, "blk.") != 0) return false;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return false;
  layer = name.substr(4, dot - 4);
  if (layer.find_first_not_of("0123456789") != std::string::npos) return false;
  rest = name.substr(dot + 1);
  return true;
}

// A MoE block's 3-D expert tensors (after "blk.N.") and the HF projection that each expert's
// slice is (after "model.layers.N.mlp.experts.E.").
const std::map<std::string, std::string>& expert_names() {
  static const std::map<std::string, std::string> names = {
      {"ffn_gate_exps.weight", "gate_proj.weight"},
      {"ffn_up_exps.weight", "up_proj.weight"},
      {"ffn_down_exps.weight", "down_proj.weight"},
  };
  return names;
}

// Per-layer GGUF names (after "blk.N.") and their HF names (after "model.layers.N.").
const std::map<std::string, std::string>& layer_names() {
  static const std::map<std::string, std::string> names = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.weight", "self_attn.k_proj.weight"},      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.weight", "self_attn.v_proj.weight"},      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_output.weight", "self_attn.o_proj.weight"}, {"attn_output.bias", "self_attn.o_proj.bias"},
      {"attn_q_norm.weight", "self_attn.q_norm.weight"}, {"attn_k_norm.weight", "self_attn.k_norm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
      {"ffn_gate_inp.weight", "mlp.gate.weight"},  // a MoE block's router [E, D]
  };
  return names;
}

// A 3-D expert tensor split into its experts' HF weights: ggml ne [D, I, E] (gate, up) or
// [I, D, E] (down), i.e. row-major [E, I, D] / [E, D, I], so expert e is rows [e * I, (e + 1) * I)
// (down: [e * D, (e + 1) * D)) of the 2-D view, whole quant blocks (they run along the innermost
// dim). The whole tensor is decoded to f32 once, then each expert copied or NF4-quantized.
void take_experts(const GGUFFile& f, const std::string& name, const ModelConfig& c,
                  const std::map<std::string, bool>& expected, const WeightLoad& load, HfWeights& out) {
  const int64_t E = c.moe.num_experts, I = c.moe.expert_intermediate_size, D = c.hidden_size;
  const bool down = name.find(".ffn_down_exps.") != std::string::npos;
  const int64_t rows = down ? D : I, cols = down ? I : D;  // one expert's [out, in]
  NQ_CHECK(expected.count(gguf_expert_to_hf_name(name, 0)), f.path(), ": unexpected tensor '", name,
           "' (not a parameter of this ", c.model_type, " model)");
  const Shape shape = f.tensor(name).shape(), want{E, rows, cols};
  NQ_CHECK(shape.ndim != 3 || shape[0] == E, f.path(), ": tensor '", name, "' holds ", shape[0], " experts, expected ",
           E, " (metadata key 'qwen3moe.expert_count')");
  NQ_CHECK(shape == want, f.path(), ": tensor '", name, "' has shape ", shape.str(), ", expected ", want.str(), " (",
           E, " experts of width ", I, ", hidden ", D, ")");
  const Tensor all = f.load_f32(name).view({E * rows, cols});
  for (int64_t e = 0; e < E; ++e) {
    const std::string hf = gguf_expert_to_hf_name(name, e);
    NQ_CHECK(!out.dense.count(hf) && !out.nf4.count(hf), f.path(), ": tensor '", name, "' appears twice");
    take_weight(hf, all.slice(e * rows, (e + 1) * rows), load, out);
  }
  f.release(name);
}

}  // namespace

std::string gguf_to_hf_name(const std::string& name) {
  static const std::map<std::string, std::string> global = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  auto g = global.find(name);
  if (g != global.end()) return g->second;
  std::string layer, rest;
  if (!split_block_name(name, layer, rest)) return "";
  auto l = layer_names().find(rest);
  if (l == layer_names().end()) return "";
  return "model.layers." + layer + "." + l->second;
}

std::string gguf_expert_to_hf_name(const std::string& name, int64_t expert) {
  std::string layer, rest;
  if (!split_block_name(name, layer, rest)) return "";
  auto x = expert_names().find(rest);
  if (x == expert_names().end()) return "";
  return str("model.layers.", layer, ".mlp.experts.", expert, ".", x->second);
}

std::string hf_to_gguf_name(const std::string& name) {
  static const std::map<std::string, std::string> global = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  auto g = global.find(name);
  if (g != global.end()) return g->second;
  const std::string prefix = "model.layers.";  // "model.layers.<N>.<rest>"
  if (name.compare(0, prefix.size(), prefix) != 0) return "";
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return "";
  const std::string layer = name.substr(prefix.size(), dot - prefix.size());
  if (layer.find_first_not_of("0123456789") != std::string::npos) return "";
  for (const auto& [gguf, hf] : layer_names())
    if (hf == name.substr(dot + 1)) return "blk." + layer + "." + gguf;
  return "";
}

ModelConfig gguf_config(const GGUFFile& f) {
  const std::string arch = f.get_string("general.architecture");
  NQ_CHECK(arch == "llama" || arch == "qwen3" || arch == "qwen3moe", key_error(f, "general.architecture"), " is '",
           arch, "'; supported architectures: llama, qwen3, qwen3moe");
  refuse_unsupported(f, arch);
  const std::string a = arch + ".";

  // The equivalent HF config.json, so that defaults and validation are those of
  // ModelConfig::from_json; GGUF-specific checks come first and name GGUF keys.
  nlohmann::json j;
  j["model_type"] = arch == "qwen3moe" ? "qwen3_moe" : arch;
  j["num_hidden_layers"] = positive(f, a + "block_count");
  j["hidden_size"] = positive(f, a + "embedding_length");
  j["intermediate_size"] = positive(f, a + "feed_forward_length");
  const int64_t heads = positive(f, a + "attention.head_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = f.has(a + "attention.head_count_kv") ? positive(f, a + "attention.head_count_kv") : heads;
  j["rms_norm_eps"] = finite(f, a + "attention.layer_norm_rms_epsilon");
  if (f.has(a + "rope.freq_base")) j["rope_theta"] = finite(f, a + "rope.freq_base");
  if (f.has(a + "context_length")) j["max_position_embeddings"] = positive(f, a + "context_length");
  read_rope_scaling(f, arch, j);
  if (arch == "qwen3moe") read_moe(f, a, j);

  // head_dim: attention.key_length when given, else D / heads (llama.cpp's rule).
  // The decoder rotates the whole head, so a narrower RoPE (partial rotary) is refused.
  int64_t head_dim = j["hidden_size"].get<int64_t>() / heads;
  if (f.has(a + "attention.key_length")) head_dim = positive(f, a + "attention.key_length");
  if (f.has(a + "rope.dimension_count")) {
    int64_t rotated = positive(f, a + "rope.dimension_count");
    NQ_CHECK(rotated == head_dim, key_error(f, a + "rope.dimension_count"), " is ", rotated, " but heads are ",
             head_dim, " wide; partial RoPE is not implemented");
  }
  if (f.has(a + "attention.value_length")) {
    int64_t v = positive(f, a + "attention.value_length");
    NQ_CHECK(v == head_dim, key_error(f, a + "attention.value_length"), " is ", v, ", expected the key length ",
             head_dim);
  }
  j["head_dim"] = head_dim;

  // Vocabulary: the explicit key, else the tokenizer's size, else the embedding's rows.
  if (f.has(a + "vocab_size")) j["vocab_size"] = positive(f, a + "vocab_size");
  else if (f.has("tokenizer.ggml.tokens")) j["vocab_size"] = f.value("tokenizer.ggml.tokens").array.size();
  else j["vocab_size"] = f.tensor("token_embd.weight").shape()[0];

  j["tie_word_embeddings"] = !f.has_tensor("output.weight");  // llama.cpp omits a tied lm_head
  j["attention_bias"] = f.has_tensor("blk.0.attn_q.bias");
  if (f.has("tokenizer.ggml.bos_token_id")) j["bos_token_id"] = f.get_i64("tokenizer.ggml.bos_token_id");
  std::vector<int64_t> eos;
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"})
    if (f.has(key) && std::find(eos.begin(), eos.end(), f.get_i64(key)) == eos.end()) eos.push_back(f.get_i64(key));
  if (!eos.empty()) j["eos_token_id"] = eos;

  // from_json's checks (ranges, limits) name the config.json field; say which GGUF key
  // it came from too.
  ModelConfig c;
  try {
    c = ModelConfig::from_json(j.dump(), f.path());
  } catch (const Error& e) {
    static const std::pair<const char*, const char*> kFrom[] = {
        {"num_hidden_layers", "block_count"},           {"hidden_size", "embedding_length"},
        {"intermediate_size", "feed_forward_length"},   {"num_attention_heads", "attention.head_count"},
        {"num_key_value_heads", "attention.head_count_kv"}, {"head_dim", "attention.key_length"},
        {"vocab_size", "vocab_size"},                   {"max_position_embeddings", "context_length"},
        {"num_experts", "expert_count"},                {"num_experts_per_tok", "expert_used_count"},
        {"moe_intermediate_size", "expert_feed_forward_length"}};
    const std::string message = e.what();
    for (const auto& [field, key] : kFrom)
      if (message.find(str("\"", field, "\"")) != std::string::npos && f.has(a + key))
        throw Error(str(message, " (metadata key '", a, key, "')"));
    throw;
  }
  // A BOS in front of plain text only when the vocabulary asks for one (SmolLM2's does not).
  if (f.has("tokenizer.ggml.add_bos_token")) c.add_bos_token = f.get_bool("tokenizer.ggml.add_bos_token");
  else if (f.has("tokenizer.ggml.model")) c.add_bos_token = f.get_string("tokenizer.ggml.model") == "llama";
  return c;
}

HfWeights gguf_weights(const GGUFFile& f, const ModelConfig& config, const WeightLoad& load) {
  std::map<std::string, bool> expected;
  for (const ParamSpec& s : parameter_specs(config)) expected[s.name] = true;
  const bool permuted = config.model_type == "llama";  // convert_hf_to_gguf permutes llama's Q/K rows

  HfWeights weights;
  for (const GGUFTensorInfo& t : f.tensors()) {
    if (!gguf_expert_to_hf_name(t.name, 0).empty()) {
      take_experts(f, t.name, config, expected, load, weights);
      continue;
    }
    const std::string hf = gguf_to_hf_name(t.name);
    const bool dense_mlp = config.is_moe() && hf.find(".mlp.") != std::string::npos &&
                           hf.find(".mlp.gate.") == std::string::npos;
    NQ_CHECK(!hf.empty() && expected.count(hf), f.path(), ": unexpected tensor '", t.name,
             "' (not a parameter of this ", config.model_type, " model",
             t.name == "rope_freqs.weight" ? "; it carries RoPE scaling, which is not implemented"
             : dense_mlp                   ? "; llama.cpp's qwen3moe has experts in every layer, no dense MLP"
                                           : "",
             ")");
    Tensor w = f.load_f32(t.name);  // [ne[n-1], ..., ne[0]] = HF's [out, in]
    if (permuted && (t.name.find(".attn_q.") != std::string::npos || t.name.find(".attn_k.") != std::string::npos)) {
      const int64_t heads = t.name.find(".attn_q.") != std::string::npos ? config.num_heads : config.num_kv_heads;
      const int64_t rows = w.shape()[0], cols = w.shape().ndim == 2 ? w.shape()[1] : 1;
      NQ_CHECK(rows == heads * config.head_dim, f.path(), ": tensor '", t.name, "' has ", rows, " rows, expected ",
               heads, " heads x ", config.head_dim);
      unpermute_qk_rows(w.data<float>(), rows, cols, heads);
    }
    NQ_CHECK(!weights.dense.count(hf) && !weights.nf4.count(hf), f.path(), ": tensor '", t.name, "' appears twice");
    take_weight(hf, w, load, weights);
    f.release(t.name);
  }
  // Named here as GGUF tensors (check_weights would name the HF experts they stand for).
  for (int64_t l = 0; l < config.num_layers; ++l)
    if (config.sparse_layer(l))
      for (const char* part : {"ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"})
        NQ_CHECK(f.has_tensor(str("blk.", l, ".", part, ".weight")), f.path(), ": missing tensor 'blk.", l, ".", part,
                 ".weight' (layer ", l, " is a mixture-of-experts block)");
  check_weights(weights.dense, config, f.path(), weights.nf4);
  return weights;
}

Tokenizer gguf_tokenizer(const GGUFFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  NQ_CHECK(model == "gpt2", key_error(f, "tokenizer.ggml.model"), " is '", model,
           "'; only byte-level BPE ('gpt2') vocabularies are supported");
  std::vector<int32_t> types;
  if (f.has("tokenizer.ggml.token_type"))
    for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) types.push_back(int32_t(t));
  const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
  Tokenizer tok;
  try {
    tok = Tokenizer::from_vocab(f.get_string_array("tokenizer.ggml.tokens"),
                                f.has("tokenizer.ggml.merges") ? f.get_string_array("tokenizer.ggml.merges")
                                                               : std::vector<std::string>{},
                                types, pre);
  } catch (const Error& e) {
    throw Error(f.path() + ": " + e.what());
  }
  auto special = [&](const char* key) {
    if (!f.has(key)) return int32_t(-1);
    int64_t id = f.get_i64(key);
    NQ_CHECK(id >= 0 && id < tok.vocab_size(), key_error(f, key), " is ", id, ", outside the vocabulary [0, ",
             tok.vocab_size(), ")");
    return int32_t(id);
  };
  tok.bos_id = special("tokenizer.ggml.bos_token_id");
  tok.eos_id = special("tokenizer.ggml.eos_token_id");
  tok.pad_id = special("tokenizer.ggml.padding_token_id");
  return tok;
}

}  // namespace nq
