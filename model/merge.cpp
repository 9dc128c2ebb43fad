// W' = W + s B A for every adapted projection of a Decoder, and the dense HF folder
// ./merge writes from it (see merge.h).
#include "model/merge.h"

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/hf_files.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "lora/lora_merge.h"
#include "model/decoder.h"
#include "model/load_model.h"
#include "model/tokenizer.h"

namespace nq {

TensorMap merged_weights(Decoder& model) {
  TensorMap out;
  // Embeddings, norms, biases, an untied lm_head: as they are. Projection weights
  // (dense ones are among the parameters, NF4 ones are not) come from the loop below.
  for (const Var& p : model.parameters())
    if (!is_projection_weight(p.name())) out[p.name()] = p.value().to(Device::CPU).clone();
  for (Linear* l : model.linears()) {
    Tensor w = l->dense_weight().to(Device::CPU).clone();  // [out, in] f32 (NF4 dequantized)
    if (l->has_lora()) merge_lora_into(w, l->lora());  // W + s B A
    out[l->name() + ".weight"] = w;
  }
  return out;
}

void write_hf_tokenizer_from_gguf(const std::string& gguf_path, const std::string& dir) {
  const GGUFFile f = GGUFFile::open(gguf_path);
  const std::string model = f.get_string("tokenizer.ggml.model");
  NQ_CHECK(model == "gpt2", gguf_path, ": metadata key 'tokenizer.ggml.model' is '", model,
           "'; only byte-level BPE ('gpt2') vocabularies can be written as tokenizer.json");
  const std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  std::vector<int64_t> types;
  if (f.has("tokenizer.ggml.token_type")) types = f.get_int_array("tokenizer.ggml.token_type");
  const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
  const char* regex = Tokenizer::split_regex_of(pre);
  NQ_CHECK(regex, gguf_path, ": metadata key 'tokenizer.ggml.pre' is '", pre, "', which is not supported");

  using json = nlohmann::json;
  json vocab = json::object(), added = json::array(), merges = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t type = i < types.size() ? types[i] : 1;
    if (type == 3 || type == 4)  // control (special) and user-defined tokens are matched whole in the text
      added.push_back({{"id", i}, {"content", tokens[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", type == 4}, {"special", type == 3}});
    vocab[tokens[i]] = i;
  }
  if (f.has("tokenizer.ggml.merges"))
    for (const std::string& m : f.get_string_array("tokenizer.ggml.merges")) {
      const size_t space = m.find(' ');
      NQ_CHECK(space != std::string::npos, gguf_path, ": merge '", m, "' has no space");
      merges.push_back({m.substr(0, space), m.substr(space + 1)});
    }
  // The pre-tokenizer Tokenizer::from_vocab uses for `pre`: its split regex, then
  // the byte-level map (Qwen2 also normalizes NFC; Llama 3 looks whole words up first).
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  json split = {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", pre == "qwen2" ? json{{"type", "NFC"}} : json(nullptr)},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
        {"ignore_merges", pre == "llama-bpe" || pre == "llama3"}, {"vocab", vocab}, {"merges", merges}}},
  };
  write_text_file(dir + "/tokenizer.json", tok.dump(2) + "\n");

  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"clean_up_tokenization_spaces", false}};
  auto token_of = [&](const char* key) -> json {
    if (!f.has(key)) return nullptr;
    const int64_t id = f.get_i64(key);
    NQ_CHECK(id >= 0 && id < int64_t(tokens.size()), gguf_path, ": metadata key '", key, "' is ", id,
             ", outside the vocabulary");
    return tokens[size_t(id)];
  };
  config["bos_token"] = token_of("tokenizer.ggml.bos_token_id");
  config["eos_token"] = token_of("tokenizer.ggml.eos_token_id");
  config["pad_token"] = token_of("tokenizer.ggml.padding_token_id");
  config["unk_token"] = token_of("tokenizer.ggml.unknown_token_id");
  if (f.has("tokenizer.ggml.add_bos_token")) config["add_bos_token"] = f.get_bool("tokenizer.ggml.add_bos_token");
  if (f.has("tokenizer.chat_template")) config["chat_template"] = f.get_string("tokenizer.chat_template");
  write_text_file(dir + "/tokenizer_config.json", config.dump(2) + "\n");
}

void save_merged_model(const std::string& out_dir, Decoder& model, const std::string& source, DType dtype) {
  nlohmann::json config;
  if (is_gguf_path(source)) {
    config = parse_json(model.config().to_hf_json(), source + " (as config.json)");
  } else {
    check_not_same_dir(source, out_dir);
    const std::string config_path = source + "/config.json";
    config = parse_json(read_text_file(config_path), config_path);
    config.erase("quantization_config");
  }
  // The RoPE the model ran with (--rope-scaling switches it on after loading), in transformers 5's
  // spelling, which replaces the hub's rope_scaling (the two together are refused when read).
  if (model.config().rope_scaling.scaled()) {
    config.erase("rope_scaling");
    config["rope_parameters"] = parse_json(model.config().to_hf_json(), source)["rope_parameters"];
  }
  config.erase("torch_dtype");  // transformers < 5 spelling; >= 5 reads and writes "dtype"
  config["dtype"] = torch_name_of_dtype(dtype);

  TensorMap merged = merged_weights(model);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamSpec& spec : parameter_specs(model.config())) {
    Tensor& t = merged.at(spec.name);
    tensors.emplace_back(spec.name, t.dtype() == dtype ? t : t.to_dtype(dtype));
    t = Tensor();  // one converted copy at a time besides the merged set
  }
  make_dir(out_dir);
  save_safetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(out_dir + "/config.json", config.dump(2) + "\n");
  if (is_gguf_path(source)) write_hf_tokenizer_from_gguf(source, out_dir);
  else copy_tokenizer_files(source, out_dir);
}

}  // namespace nq
