// load_model: HF directory or GGUF file -> LoadedModel (see load_model.h).
#include "model/load_model.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/json.h"
#include "model/bnb_checkpoint.h"
#include "model/decoder.h"
#include "model/gguf_model.h"
#include "runtime/error.h"

namespace nq {
namespace {

// The chat format of a Jinja template, or the reason it is not recognised.
void set_chat_format(LoadedModel& m, const std::optional<std::string>& jinja, const std::string& source) {
  if (!jinja) return void(m.chat = ChatFormat::for_config(m.config));
  try {
    m.chat = ChatFormat::from_template(*jinja, source);
  } catch (const Error& e) {
    m.chat_error = e.what();
  }
}

// tokenizer_config.json's "chat_template" (a string) when the directory has one.
std::optional<std::string> hf_chat_template(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  std::ifstream in(path);
  if (!in.good()) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json doc = parse_json(text.str(), path);
  const JsonIn j(doc, path);
  j.expect_object();
  // A list of named templates (older tokenizer_config.json files) is not read: no template.
  auto t = j.find("chat_template");
  if (!t || !t->is_string()) return std::nullopt;
  return t->string();
}

LoadedModel load_hf_dir(const std::string& dir, const WeightLoad& load) {
  LoadedModel m;
  m.source = dir;
  m.config = ModelConfig::from_file(dir + "/config.json");
  HfWeights w = load_hf_weights(dir, m.config, load);
  m.weights = std::move(w.dense);
  m.nf4 = std::move(w.nf4);
  if (std::filesystem::exists(dir + "/tokenizer.json")) m.tokenizer = Tokenizer::from_file(dir + "/tokenizer.json");
  set_chat_format(m, hf_chat_template(dir), dir + "/tokenizer_config.json chat_template");
  return m;
}

LoadedModel load_gguf(const std::string& path, const WeightLoad& load) {
  GGUFFile file = GGUFFile::open(path);
  LoadedModel m;
  m.source = path;
  m.config = gguf_config(file);
  HfWeights w = gguf_weights(file, m.config, load);
  m.weights = std::move(w.dense);
  m.nf4 = std::move(w.nf4);
  if (file.has("tokenizer.ggml.model")) {
    m.tokenizer = gguf_tokenizer(file);
    NQ_CHECK(m.tokenizer->vocab_size() <= m.config.vocab_size, path, ": the vocabulary has ",
             m.tokenizer->vocab_size(), " tokens but the model only ", m.config.vocab_size, " embeddings");
  }
  std::optional<std::string> jinja;
  if (file.has("tokenizer.chat_template")) jinja = file.get_string("tokenizer.chat_template");
  set_chat_format(m, jinja, path + " tokenizer.chat_template");
  return m;
}

}  // namespace

const ChatFormat& LoadedModel::chat_format() const {
  NQ_CHECK(chat.has_value(), chat_error);
  return *chat;
}

bool is_gguf_path(const std::string& path) {
  return path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
}

Decoder build_decoder(LoadedModel& m, DecoderOptions options, bool nf4_base) {
  NQ_CHECK(nf4_base || m.nf4.empty(), m.source, ": a 4-bit (bitsandbytes NF4) checkpoint cannot be a dense f32 base; ",
           "give its dense original or keep the NF4 base");
  Decoder model(m.config, m.weights, options, m.nf4);
  m.weights.clear();  // the decoder holds the tensors now: quantize_nf4 below frees the dense copies
  m.nf4.clear();
  if (nf4_base)
    for (Linear* l : model.linears()) l->quantize_nf4();  // no-op for the stored NF4 projections
  return model;
}

Tokenizer load_tokenizer(const std::string& path) {
  NQ_CHECK(std::filesystem::exists(path), path, ": no such file or directory");
  if (is_gguf_path(path)) {
    const GGUFFile file = GGUFFile::open(path);
    NQ_CHECK(file.has("tokenizer.ggml.model"), path, ": this GGUF has no vocabulary (tokenizer.ggml.*)");
    return gguf_tokenizer(file);
  }
  if (std::filesystem::is_directory(path)) {
    NQ_CHECK(std::filesystem::exists(path + "/tokenizer.json"), path, ": no tokenizer.json in this folder");
    return Tokenizer::from_file(path + "/tokenizer.json");
  }
  return Tokenizer::from_file(path);
}

LoadedModel load_model(const std::string& path, const WeightLoad& load) {
  NQ_CHECK(std::filesystem::exists(path), path, ": no such file or directory");
  if (is_gguf_path(path)) return load_gguf(path, load);
  NQ_CHECK(std::filesystem::is_directory(path), path,
           ": not a model directory (config.json + *.safetensors) nor a .gguf file");
  return load_hf_dir(path, load);
}

}  // namespace nq
