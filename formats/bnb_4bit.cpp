// The bitsandbytes 4-bit checkpoint format (see bnb_4bit.h).
#include "formats/bnb_4bit.h"
#include "formats/json.h"

#include <map>
#include <nlohmann/json.hpp>

#include "formats/hf_files.h"

namespace nq {

using json = nlohmann::json;

namespace {

json read_json_file(const std::string& path) {
  return parse_json(read_text_file(path), path);
}

// The suffixes of a serialized Linear4bit weight besides the packed bytes at "<name>".
const char* const kNf4Suffixes[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                    ".quant_state.bitsandbytes__nf4"};
const char* const kQuantStateSuffix = ".quant_state.bitsandbytes__nf4";

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

void write_bnb_config_json(const std::string& dir, const std::string& config_json, const Bnb4bitConfig& quant) {
  json j;
  try {
    j = json::parse(config_json);
  } catch (const json::exception& e) {
    throw Error(str(dir, ": the source config.json is not valid JSON: ", e.what()));
  }
  j["quantization_config"] = json::parse(quant.to_json());
  write_text_file(dir + "/config.json", j.dump(2) + "\n");
}

bool has_nf4_tensor(const SafetensorsDir& file, const std::string& name) { return file.has(name + kQuantStateSuffix); }

std::vector<std::string> nf4_tensor_names(const std::string& name) {
  std::vector<std::string> names{name};
  for (const char* suffix : kNf4Suffixes) names.push_back(name + suffix);
  return names;
}

Nf4Tensor read_nf4_tensor(const SafetensorsDir& file, const std::string& name) {
  std::map<std::string, Tensor> sd;
  sd[name] = file.get(name);
  for (const char* suffix : kNf4Suffixes)
    if (file.has(name + suffix)) sd[name + suffix] = file.get(name + suffix);
  Nf4Tensor q;
  try {
    q = nf4_from_state_dict(sd, name);
  } catch (const Error& e) {
    throw Error(str(file.file_of(name).path(), ": ", e.what()));
  }
  // Owned copies: the decoder's weights must not alias the read-only mapping.
  q.packed = q.packed.clone();
  q.absmax = q.absmax.clone();
  if (q.double_quant) {
    q.nested_absmax = q.nested_absmax.clone();
    q.nested_code = q.nested_code.clone();
  }
  return q;
}

}  // namespace nq
