// bitsandbytes 4-bit checkpoints in and out, and HF directory plumbing (see bnb_checkpoint.h).
#include "model/bnb_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/safetensors.h"

namespace nq {

using json = nlohmann::json;

namespace {

json read_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str(path, ": invalid JSON: ", e.what()));
  }
}

// The suffixes of a serialized Linear4bit weight besides the packed bytes at "<name>".
const char* const kNf4Suffixes[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                    ".quant_state.bitsandbytes__nf4"};
const char* const kQuantStateSuffix = ".quant_state.bitsandbytes__nf4";

// The NF4 weights of the projections stored 4-bit in `file` (quant_state present).
Nf4Weights read_nf4_weights(const SafetensorsDir& file, const ModelConfig& config) {
  Nf4Weights nf4;
  for (const ParamSpec& spec : parameter_specs(config)) {
    if (!is_projection_weight(spec.name) || !file.has(spec.name + kQuantStateSuffix)) continue;
    std::map<std::string, Tensor> sd;
    sd[spec.name] = file.get(spec.name);
    for (const char* suffix : kNf4Suffixes)
      if (file.has(spec.name + suffix)) sd[spec.name + suffix] = file.get(spec.name + suffix);
    Nf4Tensor q;
    try {
      q = nf4_from_state_dict(sd, spec.name);
    } catch (const Error& e) {
      throw Error(str(file.file_of(spec.name).path(), ": ", e.what()));
    }
    NQ_CHECK(Shape({q.out, q.in}) == spec.shape, file.file_of(spec.name).path(), ": 4-bit tensor ", spec.name,
             " has shape [", q.out, ", ", q.in, "], expected ", spec.shape.str());
    // Owned copies: the decoder's weights must not alias the read-only mapping.
    q.packed = q.packed.clone();
    q.absmax = q.absmax.clone();
    if (q.double_quant) {
      q.nested_absmax = q.nested_absmax.clone();
      q.nested_code = q.nested_code.clone();
    }
    nf4[spec.name] = std::make_shared<const Nf4Tensor>(std::move(q));
  }
  return nf4;
}

}  // namespace

// ---------------------------------------------------------------- quantization_config

std::string Bnb4bitConfig::to_json() const {
  // The fields (and defaults) of transformers' BitsAndBytesConfig.to_dict() for 4-bit NF4.
  json j = {{"_load_in_4bit", true},
            {"_load_in_8bit", false},
            {"bnb_4bit_compute_dtype", compute_dtype},
            {"bnb_4bit_quant_storage", "uint8"},
            {"bnb_4bit_quant_type", "nf4"},
            {"bnb_4bit_use_double_quant", double_quant},
            {"llm_int8_enable_fp32_cpu_offload", false},
            {"llm_int8_has_fp16_weight", false},
            {"llm_int8_skip_modules", nullptr},
            {"llm_int8_threshold", 6.0},
            {"load_in_4bit", true},
            {"load_in_8bit", false},
            {"quant_method", "bitsandbytes"}};
  return j.dump();
}

std::optional<Bnb4bitConfig> read_bnb_4bit_config(const std::string& config_path) {
  const json j = read_json_file(config_path);
  auto it = j.find("quantization_config");
  if (it == j.end() || it->is_null()) return std::nullopt;
  const json& q = *it;
  const std::string where = config_path + ": quantization_config";
  NQ_CHECK(q.is_object(), where, " must be an object");
  try {
    const std::string method = q.value("quant_method", std::string("bitsandbytes"));
    NQ_CHECK(method == "bitsandbytes", where, ".quant_method \"", method,
             "\" is not supported (only bitsandbytes NF4 4-bit)");
    NQ_CHECK(!q.value("load_in_8bit", false), where,
             ".load_in_8bit is true; 8-bit (LLM.int8) checkpoints are not supported (only NF4 4-bit)");
    NQ_CHECK(q.value("load_in_4bit", false), where, ".load_in_4bit is not true; only NF4 4-bit is supported");
    const std::string type = q.value("bnb_4bit_quant_type", std::string("fp4"));  // transformers' default
    NQ_CHECK(type == "nf4", where, ".bnb_4bit_quant_type \"", type, "\" is not supported (only nf4)");
    const std::string storage = q.value("bnb_4bit_quant_storage", std::string("uint8"));
    NQ_CHECK(storage == "uint8", where, ".bnb_4bit_quant_storage \"", storage, "\" is not supported (only uint8)");
    Bnb4bitConfig c;
    c.double_quant = q.value("bnb_4bit_use_double_quant", false);
    const json& cd = q.value("bnb_4bit_compute_dtype", json("float32"));
    if (cd.is_string()) c.compute_dtype = cd.get<std::string>();
    return c;
  } catch (const json::exception& e) {
    throw Error(str(where, ": mistyped field: ", e.what()));
  }
}

// ---------------------------------------------------------------- loading

Decoder load_hf_decoder(const std::string& dir, DecoderOptions options) {
  const std::string config_path = dir + "/config.json";
  ModelConfig config = ModelConfig::from_file(config_path);
  if (!read_bnb_4bit_config(config_path)) return Decoder::load(dir, options);

  SafetensorsDir file = SafetensorsDir::open(dir);
  Nf4Weights nf4 = read_nf4_weights(file, config);
  std::vector<ParamSpec> dense_specs;
  std::set<std::string> expected;
  for (const ParamSpec& spec : parameter_specs(config)) {
    if (nf4.count(spec.name)) {
      expected.insert(spec.name);
      for (const char* suffix : kNf4Suffixes) expected.insert(spec.name + suffix);
    } else {
      dense_specs.push_back(spec);
      expected.insert(spec.name);
    }
  }
  check_no_unexpected_tensors(file, expected, config, dir);
  TensorMap dense = read_f32_tensors(file, dense_specs, dir);
  return Decoder(std::move(config), dense, options, nf4);
}

// ---------------------------------------------------------------- quantizing and saving

Nf4Weights quantize_projections(TensorMap& weights, const ModelConfig& config, int64_t blocksize, bool double_quant,
                                const std::string& dtype) {
  Nf4Weights nf4;
  for (const ParamSpec& spec : parameter_specs(config)) {
    if (!is_projection_weight(spec.name)) continue;
    auto it = weights.find(spec.name);
    NQ_CHECK(it != weights.end(), "quantize: missing tensor ", spec.name);
    const Tensor& w = it->second;  // [out, in] f32
    NQ_CHECK(w.dtype() == DType::F32 && w.shape() == spec.shape, "quantize: tensor ", spec.name, " is ", w.desc(),
             ", expected f32", spec.shape.str());
    Nf4Tensor q = quantize_nf4(w.data<float>(), w.size(0), w.size(1), blocksize, double_quant, spec.name);
    q.dtype = dtype;
    nf4[spec.name] = std::make_shared<const Nf4Tensor>(std::move(q));
    weights.erase(it);
  }
  return nf4;
}

void save_bnb_4bit(const std::string& dir, const std::string& config_json, const ModelConfig& config,
                   const TensorMap& dense, const Nf4Weights& nf4, const Bnb4bitConfig& quant, DType dtype) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamSpec& spec : parameter_specs(config)) {
    auto q = nf4.find(spec.name);
    if (q != nf4.end()) {
      for (auto& [name, t] : nf4_to_state_dict(*q->second, spec.name)) tensors.emplace_back(name, t);
      continue;
    }
    auto it = dense.find(spec.name);
    NQ_CHECK(it != dense.end(), dir, ": no tensor for ", spec.name, " to save");
    tensors.emplace_back(spec.name, it->second.dtype() == dtype ? it->second : it->second.to_dtype(dtype));
  }
  json j;
  try {
    j = json::parse(config_json);
  } catch (const json::exception& e) {
    throw Error(str("save_bnb_4bit: the source config.json is not valid JSON: ", e.what()));
  }
  j["quantization_config"] = json::parse(quant.to_json());
  make_dir(dir);
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(dir + "/config.json", j.dump(2) + "\n");
}

QuantizeReport quantize_checkpoint(const std::string& src, const std::string& dst, int64_t blocksize,
                                   bool double_quant) {
  check_not_same_dir(src, dst);
  const std::string config_path = src + "/config.json";
  NQ_CHECK(!read_bnb_4bit_config(config_path), config_path,
           ": the model is already quantized (quantization_config is set); quantize its dense original");
  const ModelConfig config = ModelConfig::from_file(config_path);
  const DType dtype = dtype_of_torch_name(config.torch_dtype, config_path);
  TensorMap weights = load_weights(src, config);
  QuantizeReport report;
  const SafetensorsDir source = SafetensorsDir::open(src);
  for (const SafetensorsFile& f : source.files()) report.bytes_before += std::filesystem::file_size(f.path());
  Nf4Weights nf4 = quantize_projections(weights, config, blocksize, double_quant, config.torch_dtype);
  for (const auto& [name, q] : nf4) {
    report.quantized_params += q->numel();
    report.nf4_bits += q->bits_per_parameter() * double(q->numel());
  }
  for (const auto& [name, t] : weights) report.dense_params += t.numel();

  Bnb4bitConfig quant;
  quant.double_quant = double_quant;
  save_bnb_4bit(dst, read_text_file(config_path), config, weights, nf4, quant, dtype);
  copy_tokenizer_files(src, dst);
  report.bytes_after = std::filesystem::file_size(dst + "/model.safetensors");
  return report;
}

// ---------------------------------------------------------------- HF directory plumbing

std::string read_text_file(const std::string& path) {
  std::ifstream f(path);
  NQ_CHECK(f.good(), path, ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

DType dtype_of_torch_name(const std::string& name, const std::string& what) {
  if (name == "float32") return DType::F32;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  throw Error(str(what, ": dtype \"", name, "\" is not supported (float32, bfloat16, float16)"));
}

const char* torch_name_of_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: throw Error(str("no torch float dtype for ", dtype_name(dtype)));
  }
}

std::vector<std::string> copy_tokenizer_files(const std::string& src, const std::string& dst) {
  std::vector<std::string> copied;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                           "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json"}) {
    const std::filesystem::path from = std::filesystem::path(src) / name;
    if (!std::filesystem::is_regular_file(from)) continue;
    std::error_code ec;
    std::filesystem::copy_file(from, std::filesystem::path(dst) / name,
                               std::filesystem::copy_options::overwrite_existing, ec);
    NQ_CHECK(!ec, from.string(), ": cannot copy to ", dst, ": ", ec.message());
    copied.push_back(name);
  }
  return copied;
}

void check_not_same_dir(const std::string& src, const std::string& dst) {
  std::error_code ec;
  NQ_CHECK(!std::filesystem::equivalent(src, dst, ec), dst, ": the output directory is the input model ", src,
           "; give another --out");
}

void make_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  NQ_CHECK(!ec && std::filesystem::is_directory(dir), dir, ": cannot create the directory",
           ec ? ": " + ec.message() : "");
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << text;
    f.flush();
    NQ_CHECK(f.good(), tmp, ": write failed");
  }
  NQ_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, path, ": cannot rename ", tmp);
}

}  // namespace nq
