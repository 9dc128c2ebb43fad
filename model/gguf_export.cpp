// Merged model and LoRA adapter -> GGUF files llama.cpp loads (see gguf_export.h).
#include "model/gguf_export.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "formats/gguf_writer.h"
#include "formats/hf_files.h"
#include "formats/json.h"
#include "model/decoder.h"
#include "model/gguf_model.h"
#include "model/load_model.h"
#include "runtime/error.h"

namespace nq {

const std::vector<std::string>& gguf_export_types() {
  static const std::vector<std::string> types = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"};
  return types;
}

namespace {

using KeyValues = std::vector<std::pair<std::string, GGUFValue>>;

// llama.cpp's llama_ftype of a file whose matrices are `type` (general.file_type).
struct ExportType {
  GGMLType matrices;    // every 2-D weight
  GGMLType embeddings;  // token_embd and output (Q8_0 under a 4-bit type: see docs)
  uint32_t file_type;
};

ExportType export_type(const std::string& name) {
  if (name == "f32") return {GGMLType::F32, GGMLType::F32, 0};
  if (name == "f16") return {GGMLType::F16, GGMLType::F16, 1};
  if (name == "bf16") return {GGMLType::BF16, GGMLType::BF16, 32};
  if (name == "q8_0") return {GGMLType::Q8_0, GGMLType::Q8_0, 7};
  if (name == "q4_0") return {GGMLType::Q4_0, GGMLType::Q8_0, 2};
  if (name == "q4_1") return {GGMLType::Q4_1, GGMLType::Q8_0, 3};
  std::string all;
  for (const std::string& t : gguf_export_types()) all += (all.empty() ? "" : ", ") + t;
  throw Error(str("--type: unsupported GGUF type '", name, "' (supported: ", all, ")"));
}

// ---------------------------------------------------------------- tokenizer of a HF folder
//
// What convert_hf_to_gguf.py's _set_vocab_gpt2 + gguf-py's SpecialVocab write for a
// byte-level BPE tokenizer.json (see docs/gguf_export.md for the rules kept).

// tokenizer.ggml.pre: the llama.cpp name of the pre-tokenizer. The converter finds
// it from a hash of the tokenization of a test text; for the byte-level BPE
// pre-tokenizers nanoqlora reads (model/tokenizer.h), the tokenizer.json structure
// names it as well: Qwen2's regex (single digits), Llama 3's (\p{N}{1,3}), SmolLM's
// Digits + ByteLevel, GPT-2's ByteLevel regex.
std::string pre_tokenizer_name(const nlohmann::json& j, const std::string& path) {
  const nlohmann::json& p = j.value("pre_tokenizer", nlohmann::json());
  std::vector<nlohmann::json> parts;
  if (p.is_object() && p.value("type", "") == "Sequence") {
    for (const auto& sub : p.at("pretokenizers")) parts.push_back(sub);
  } else if (p.is_object()) {
    parts.push_back(p);
  }
  bool digits = false, byte_level_regex = false;
  std::string split;
  for (const auto& s : parts) {
    const std::string type = s.value("type", "");
    if (type == "Digits") digits = true;
    if (type == "ByteLevel") byte_level_regex = s.value("use_regex", true);
    if (type == "Split" && s.contains("pattern") && s["pattern"].contains("Regex"))
      split = s["pattern"]["Regex"].get<std::string>();
  }
  if (!split.empty()) {
    if (split.find("\\p{N}{1,3}") != std::string::npos) return "llama-bpe";
    if (split.find("\\p{N}") != std::string::npos) return "qwen2";
  } else if (byte_level_regex) {
    return digits ? "smollm" : "gpt-2";  // llama.cpp's name (not "gpt2")
  }
  throw Error(str(path, ": cannot name this pre-tokenizer for llama.cpp (known: Qwen2, Llama 3, SmolLM, GPT-2)"));
}

bool looks_special(const std::string& t) {  // the converter's does_token_look_special, for byte-level BPE
  auto wrapped = [&](const std::string& a, const std::string& b) {
    return t.size() >= a.size() + b.size() && t.compare(0, a.size(), a) == 0 &&
           t.compare(t.size() - b.size(), b.size(), b) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xef\xbd\x9c", "\xef\xbd\x9c>") || wrapped("<unused", ">");
}

KeyValues hf_tokenizer_metadata(const std::string& dir, const ModelConfig& config) {
  const std::string tok_path = dir + "/tokenizer.json";
  NQ_CHECK(std::filesystem::exists(tok_path), dir, ": no tokenizer.json; a GGUF needs the vocabulary");
  const nlohmann::json tok = parse_json(read_text_file(tok_path), tok_path);
  nlohmann::json tok_config = nlohmann::json::object();
  const std::string tc_path = dir + "/tokenizer_config.json";
  if (std::filesystem::exists(tc_path)) tok_config = parse_json(read_text_file(tc_path), tc_path);
  nlohmann::json hf_config = nlohmann::json::object();
  if (std::filesystem::exists(dir + "/config.json"))
    hf_config = parse_json(read_text_file(dir + "/config.json"), dir + "/config.json");

  KeyValues kv;
  if (config.model_type == "llama" && tok_config.contains("add_prefix_space") && tok_config["add_prefix_space"].is_boolean())
    kv.emplace_back("tokenizer.ggml.add_space_prefix", gguf_bool(tok_config["add_prefix_space"].get<bool>()));

  // Tokens 0 .. vocab_size-1: the BPE vocabulary and the added tokens; ids without
  // a token are "[PAD<id>]" of type UNUSED (5), as the converter writes them.
  const int64_t n = config.vocab_size;
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> types(static_cast<size_t>(n), 0);
  for (const auto& [token, id] : tok.at("model").at("vocab").items()) {
    const int64_t i = id.get<int64_t>();
    NQ_CHECK(i >= 0 && i < n, tok_path, ": token '", token, "' has id ", i, ", outside the model's vocabulary of ", n);
    tokens[size_t(i)] = token;
    types[size_t(i)] = 1;  // NORMAL
  }
  std::map<std::string, int64_t> added_ids;  // content -> first id, for tokenizer_config's named tokens
  for (const auto& a : tok.value("added_tokens", nlohmann::json::array())) {
    const int64_t i = a.at("id").get<int64_t>();
    const std::string content = a.at("content").get<std::string>();
    NQ_CHECK(i >= 0 && i < n, tok_path, ": added token '", content, "' has id ", i, ", outside the vocabulary of ", n);
    tokens[size_t(i)] = content;
    types[size_t(i)] = a.value("special", false) || looks_special(content) ? 3 : 4;  // CONTROL : USER_DEFINED
    added_ids.emplace(content, i);
  }
  for (int64_t i = 0; i < n; ++i)
    if (types[size_t(i)] == 0) tokens[size_t(i)] = str("[PAD", i, "]"), types[size_t(i)] = 5;

  kv.emplace_back("tokenizer.ggml.model", gguf_string("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", gguf_string(pre_tokenizer_name(tok, tok_path)));
  kv.emplace_back("tokenizer.ggml.tokens", gguf_string_array(tokens));
  kv.emplace_back("tokenizer.ggml.token_type", gguf_i32_array(types));

  // Merges as "a b" (pairs joined; a space inside a part becomes U+0120, as gguf-py).
  std::vector<std::string> merges;
  for (const auto& m : tok.at("model").value("merges", nlohmann::json::array())) {
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
      continue;
    }
    std::string joined;
    for (size_t part = 0; part < m.size(); ++part) {
      if (part) joined += ' ';
      for (char c : m[part].get<std::string>()) joined += c == ' ' ? std::string("\xc4\xa0") : std::string(1, c);
    }
    merges.push_back(joined);
  }
  if (!merges.empty()) kv.emplace_back("tokenizer.ggml.merges", gguf_string_array(merges));

  // Special token ids: tokenizer_config.json's named tokens first, then config.json's
  // *_token_id, each type once; add_*_token from the post-processor, then tokenizer_config.
  static const char* kTypes[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
  static const std::map<std::string, std::string> kIdKey = {
      {"bos", "bos_token_id"}, {"eos", "eos_token_id"}, {"unk", "unknown_token_id"}, {"sep", "seperator_token_id"},
      {"pad", "padding_token_id"}, {"cls", "cls_token_id"}, {"mask", "mask_token_id"}};
  std::vector<std::pair<std::string, int64_t>> ids;
  auto set_id = [&](const std::string& type, int64_t id) {
    for (const auto& e : ids)
      if (e.first == type) return;
    ids.emplace_back(type, id);
  };
  std::vector<std::pair<std::string, bool>> add;
  auto set_add = [&](const std::string& type, bool value, bool overwrite) {
    for (auto& e : add)
      if (e.first == type) {
        if (overwrite) e.second = value;
        return;
      }
    add.emplace_back(type, value);
  };
  const nlohmann::json& post = tok.value("post_processor", nlohmann::json());
  if (post.is_object()) {
    std::vector<nlohmann::json> procs;
    if (post.contains("processors")) for (const auto& p : post["processors"]) procs.push_back(p);
    else procs.push_back(post);
    for (const auto& p : procs)
      if (p.value("type", "") == "ByteLevel") set_add("bos", false, false), set_add("eos", false, false);
  }
  for (const char* type : kTypes) {
    const std::string t = type;
    auto add_entry = tok_config.find("add_" + t + "_token");
    if (add_entry != tok_config.end() && add_entry->is_boolean()) set_add(t, add_entry->get<bool>(), false);
    auto entry = tok_config.find(t + "_token");
    if (entry == tok_config.end()) continue;
    std::string content;
    if (entry->is_string()) content = entry->get<std::string>();
    else if (entry->is_object() && entry->contains("content") && (*entry)["content"].is_string())
      content = (*entry)["content"].get<std::string>();
    else continue;
    auto id = added_ids.find(content);
    if (id != added_ids.end()) set_id(t, id->second);
  }
  for (const char* type : kTypes) {
    auto id = hf_config.find(std::string(type) + "_token_id");
    if (id != hf_config.end() && id->is_number_integer() && id->get<int64_t>() >= 0) set_id(type, id->get<int64_t>());
  }
  for (const auto& [type, id] : ids) kv.emplace_back("tokenizer.ggml." + kIdKey.at(type), gguf_u32(uint32_t(id)));
  for (const auto& [type, value] : add) kv.emplace_back("tokenizer.ggml.add_" + type + "_token", gguf_bool(value));

  std::string chat_template;
  if (tok_config.contains("chat_template") && tok_config["chat_template"].is_string())
    chat_template = tok_config["chat_template"].get<std::string>();
  else if (std::filesystem::exists(dir + "/chat_template.jinja"))
    chat_template = read_text_file(dir + "/chat_template.jinja");
  if (!chat_template.empty()) kv.emplace_back("tokenizer.chat_template", gguf_string(chat_template));
  return kv;
}

// The HF name of a weight and its GGUF name; an error for one outside the table.
std::string gguf_name(const std::string& hf) {
  const std::string g = hf_to_gguf_name(hf);
  NQ_CHECK(!g.empty(), "GGUF export: no GGUF name for tensor '", hf, "'");
  return g;
}

bool is_qk(const std::string& gguf) {
  return gguf.find(".attn_q.") != std::string::npos || gguf.find(".attn_k.") != std::string::npos;
}

// Rows of attn_q / attn_k (weight [rows, cols] or bias [rows]) in llama.cpp's order.
Tensor permuted_for_llama(const Tensor& w, const std::string& gguf, const ModelConfig& config) {
  const int64_t heads = gguf.find(".attn_q.") != std::string::npos ? config.num_heads : config.num_kv_heads;
  Tensor out = w.clone();
  const int64_t rows = w.shape()[0], cols = w.ndim() == 2 ? w.shape()[1] : 1;
  permute_qk_rows(out.data<float>(), rows, cols, heads);
  return out;
}


}  // namespace

float gguf_lora_alpha(const LoraConfig& lora) {
  return lora.use_rslora ? float(double(lora.alpha) * std::sqrt(double(lora.r))) : lora.alpha;
}

GGUFSourceMetadata gguf_source_metadata(const std::string& source, const ModelConfig& config) {
  GGUFSourceMetadata m;
  if (is_gguf_path(source)) {
    // Written by llama.cpp's converter already: its tokenizer and descriptive keys as they are.
    const GGUFFile f = GGUFFile::open(source);
    static const std::vector<std::string> kOwn = {"general.architecture", "general.type", "general.file_type",
                                                  "general.quantization_version", "general.alignment"};
    for (const std::string& key : f.keys()) {
      if (key.compare(0, 10, "tokenizer.") == 0) m.tokenizer.emplace_back(key, f.value(key));
      else if (key.compare(0, 8, "general.") == 0 &&
               std::find(kOwn.begin(), kOwn.end(), key) == kOwn.end())
        m.general.emplace_back(key, f.value(key));
    }
    return m;
  }
  // A HF folder: its name, as the converter falls back to the folder name.
  std::string name = std::filesystem::path(source).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::path(source).lexically_normal().parent_path().filename().string();
  m.general.emplace_back("general.name", gguf_string(name));
  m.tokenizer = hf_tokenizer_metadata(source, config);
  return m;
}

namespace {

// RoPE scaling as llama.cpp's keys (gguf-py Keys.Rope; convert_hf_to_gguf writes type,
// factor and original_context_length for yarn). llama.cpp truncates the ramp and derives
// the attention factor from the factor as transformers' defaults do; a yarn config that
// sets truncate, mscale or attention_factor has no key here and is refused.
void write_rope_scaling(GGUFWriter& w, const std::string& a, const RopeScaling& s) {
  if (!s.scaled()) return;
  const bool unmapped = s.truncate.value_or(true) == false || s.mscale || s.mscale_all_dim || s.attention_factor;
  NQ_CHECK(!unmapped, "GGUF export: RoPE scaling ", s.describe(),
           " sets truncate, mscale or attention_factor, which llama.cpp's GGUF keys do not carry");
  w.set(a + "rope.scaling.type", gguf_string(s.type));
  w.set(a + "rope.scaling.factor", gguf_f32(float(s.factor)));
  if (s.type != "yarn") return;
  NQ_CHECK(s.original_max_position_embeddings <= 0xffffffffLL, "GGUF export: the original window ",
           s.original_max_position_embeddings, " does not fit the u32 of rope.scaling.original_context_length");
  w.set(a + "rope.scaling.original_context_length", gguf_u32(uint32_t(s.original_max_position_embeddings)));
  if (s.beta_fast) w.set(a + "rope.scaling.yarn_beta_fast", gguf_f32(float(*s.beta_fast)));
  if (s.beta_slow) w.set(a + "rope.scaling.yarn_beta_slow", gguf_f32(float(*s.beta_slow)));
}

}  // namespace

std::string write_merged_gguf(const std::string& path, const ModelConfig& config, const TensorMap& weights,
                              const GGUFSourceMetadata& source, const std::string& type_name) {
  const ExportType type = export_type(type_name);
  NQ_CHECK(config.model_type == "qwen3" || config.model_type == "llama", "GGUF export: model type '",
           config.model_type, "' is not supported (qwen3, llama)");
  GGUFWriter w;
  w.set("general.architecture", gguf_string(config.model_type));
  w.set("general.type", gguf_string("model"));
  for (const auto& [key, value] : source.general) w.set(key, value);
  // The hyper-parameters, in convert_hf_to_gguf's order (TextModel, then the arch's own).
  const std::string a = config.model_type + ".";
  w.set(a + "block_count", gguf_u32(uint32_t(config.num_layers)));
  if (config.max_position_embeddings > 0) w.set(a + "context_length", gguf_u32(uint32_t(config.max_position_embeddings)));
  w.set(a + "embedding_length", gguf_u32(uint32_t(config.hidden_size)));
  w.set(a + "feed_forward_length", gguf_u32(uint32_t(config.intermediate_size)));
  w.set(a + "attention.head_count", gguf_u32(uint32_t(config.num_heads)));
  w.set(a + "attention.head_count_kv", gguf_u32(uint32_t(config.num_kv_heads)));
  w.set(a + "rope.freq_base", gguf_f32(config.rope_theta));
  write_rope_scaling(w, a, config.rope_scaling);
  w.set(a + "attention.layer_norm_rms_epsilon", gguf_f32(config.rms_norm_eps));
  // Qwen3's config.json always has head_dim (128 for 0.6B, not hidden / heads = 64);
  // llama.cpp's default is hidden / heads, so a llama model states it only when it differs.
  if (config.model_type == "qwen3" || config.head_dim * config.num_heads != config.hidden_size) {
    w.set(a + "attention.key_length", gguf_u32(uint32_t(config.head_dim)));
    w.set(a + "attention.value_length", gguf_u32(uint32_t(config.head_dim)));
  }
  w.set("general.file_type", gguf_u32(type.file_type));
  if (config.model_type == "llama") {
    w.set(a + "vocab_size", gguf_u32(uint32_t(config.vocab_size)));
    w.set(a + "rope.dimension_count", gguf_u32(uint32_t(config.head_dim)));
  }
  w.set("general.quantization_version", gguf_u32(2));
  for (const auto& [key, value] : source.tokenizer) w.set(key, value);

  // Tensors, in the decoder's parameter order; the tied lm_head is token_embd itself.
  std::map<std::string, int> counts;
  for (const ParamSpec& spec : parameter_specs(config)) {
    auto it = weights.find(spec.name);
    NQ_CHECK(it != weights.end(), "GGUF export: tensor '", spec.name, "' is missing");
    const Tensor& t = it->second;
    NQ_CHECK(t.shape() == spec.shape && t.dtype() == DType::F32, "GGUF export: tensor '", spec.name, "' is ",
             t.shape().str(), ", expected f32 ", spec.shape.str());
    const std::string g = gguf_name(spec.name);
    // The converter's rules: 1-D tensors, norms and biases f32; 2-D weights in the
    // type, f16 where the row is not a whole number of blocks.
    GGMLType tt = GGMLType::F32;
    if (t.ndim() == 2 && g.size() > 7 && g.compare(g.size() - 7, 7, ".weight") == 0) {
      tt = (g == "token_embd.weight" || g == "output.weight") ? type.embeddings : type.matrices;
      if (t.shape()[1] % ggml_type_info(uint32_t(tt))->block_elems != 0) tt = GGMLType::F16;
    }
    w.add_tensor(g, config.model_type == "llama" && is_qk(g) ? permuted_for_llama(t, g, config) : t, tt);
    counts[ggml_type_info(uint32_t(tt))->name]++;
  }
  w.write(path);
  std::string summary;
  for (const auto& [name, count] : counts) summary += str(summary.empty() ? "" : ", ", count, " ", name);
  return summary;
}

void write_adapter_gguf(const std::string& path, Decoder& model, const AdapterConfig& cfg,
                        const std::string& adapter_name) {
  const ModelConfig& config = model.config();
  // llama.cpp names the MoE architecture qwen3moe and has no adapter layout here for its
  // 3-D expert tensors: refused rather than written under a name llama.cpp would misread.
  NQ_CHECK(config.model_type == "qwen3" || config.model_type == "llama", "GGUF adapter export: model type '",
           config.model_type, "' is not supported (qwen3, llama)");
  // convert_lora_to_gguf.py's keys, in its order: no hyper-parameters, no vocabulary
  // (llama.cpp takes those from the base).
  GGUFWriter w;
  w.set("general.architecture", gguf_string(config.model_type));
  w.set("general.type", gguf_string("adapter"));
  w.set("adapter.type", gguf_string("lora"));
  w.set("general.name", gguf_string(adapter_name));
  // llama.cpp scales B A by alpha / r; PEFT by alpha / r or, with rsLoRA, alpha / sqrt(r).
  w.set("adapter.lora.alpha", gguf_f32(gguf_lora_alpha(cfg.lora)));
  w.set("general.quantization_version", gguf_u32(2));
  int adapted = 0;
  for (Linear* l : model.linears()) {
    if (!l->has_lora()) continue;
    const std::string g = gguf_name(l->name() + ".weight");
    const Tensor A = l->lora().A.value().to(Device::CPU).clone();  // [r, in]
    Tensor B = l->lora().B.value().to(Device::CPU).clone();        // [out, r]
    // llama's Q/K rows are permuted in the base GGUF; B's rows are the update's rows.
    if (config.model_type == "llama" && is_qk(g)) B = permuted_for_llama(B, g, config);
    w.add_tensor(g + ".lora_a", A, GGMLType::F32);
    w.add_tensor(g + ".lora_b", B, GGMLType::F32);
    ++adapted;
  }
  NQ_CHECK(adapted > 0, "GGUF export: the model has no LoRA adapter attached");
  w.write(path);
}

}  // namespace nq
