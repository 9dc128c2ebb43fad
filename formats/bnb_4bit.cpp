// The bitsandbytes 4-bit checkpoint format (see bnb_4bit.h).
#include "formats/bnb_4bit.h"
#include "formats/json.h"

#include <map>
#include <nlohmann/json.hpp>

#include "formats/checked_size.h"
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
  const json doc = read_json_file(config_path);
  const JsonIn j(doc, config_path);
  j.expect_object();
  auto found = j.find("quantization_config");
  if (!found) return std::nullopt;
  const JsonIn& q = *found;
  const std::string where = config_path + ": quantization_config";
  NQ_CHECK(q.is_object(), where, " must be an object");
  const std::string method = q.string_or("quant_method", "bitsandbytes");
  NQ_CHECK(method == "bitsandbytes", where, ".quant_method \"", method,
           "\" is not supported (only bitsandbytes NF4 4-bit)");
  NQ_CHECK(!q.boolean_or("load_in_8bit", false), where,
           ".load_in_8bit is true; 8-bit (LLM.int8) checkpoints are not supported (only NF4 4-bit)");
  NQ_CHECK(q.boolean_or("load_in_4bit", false), where, ".load_in_4bit is not true; only NF4 4-bit is supported");
  const std::string type = q.string_or("bnb_4bit_quant_type", "fp4");  // transformers' default
  NQ_CHECK(type == "nf4", where, ".bnb_4bit_quant_type \"", type, "\" is not supported (only nf4)");
  const std::string storage = q.string_or("bnb_4bit_quant_storage", "uint8");
  NQ_CHECK(storage == "uint8", where, ".bnb_4bit_quant_storage \"", storage, "\" is not supported (only uint8)");
  Bnb4bitConfig c;
  c.double_quant = q.boolean_or("bnb_4bit_use_double_quant", false);
  auto cd = q.find("bnb_4bit_compute_dtype");  // a string; older files may hold another form: ignored
  if (cd && cd->is_string()) c.compute_dtype = cd->string();
  return c;
}

void write_bnb_config_json(const std::string& dir, const std::string& config_json, const Bnb4bitConfig& quant) {
  json j = parse_json(config_json, dir + ": the source config.json");
  NQ_CHECK(j.is_object(), dir, ": the source config.json is not a JSON object");
  j["quantization_config"] = json::parse(quant.to_json());
  write_text_file(dir + "/config.json", j.dump(2) + "\n");
}

bool has_nf4_tensor(const SafetensorsDir& file, const std::string& name) { return file.has(name + kQuantStateSuffix); }

std::vector<std::string> nf4_tensor_names(const std::string& name) {
  std::vector<std::string> names{name};
  for (const char* suffix : kNf4Suffixes) names.push_back(name + suffix);
  return names;
}

// The quant_state JSON of a 4-bit weight, checked here (nesting, types, ranges, a
// shape whose element count fits int64) so that quant/nf4.cpp's nf4_from_state_dict,
// below the formats layer, only ever reads a well-formed one.
static void check_quant_state(const Tensor& blob, const std::string& where) {
  NQ_CHECK(blob.dtype() == DType::U8, where, " is ", blob.desc(), ", expected u8 JSON bytes");
  const char* text = static_cast<const char*>(blob.raw());
  const json doc = parse_json(text, text + blob.nbytes(), where);
  const JsonIn q(doc, where);
  q.expect_object();
  q.at("quant_type").string();
  q.at("blocksize").integer(1, 1 << 20);
  q.at("dtype").string();
  const JsonIn shape = q.at("shape").expect_array();
  NQ_CHECK(shape.size() == 2, shape.where(), " must be [out, in], got ", json_excerpt(shape.json()));
  checked_numel(std::vector<int64_t>{shape[0].integer(1), shape[1].integer(1)}, shape.where());
  if (q.json().contains("nested_offset")) {
    q.at("nested_blocksize").integer(1, 1 << 20);
    q.at("nested_offset").number();
    q.at("nested_dtype").string();
  }
}

Nf4Tensor read_nf4_tensor(const SafetensorsDir& file, const std::string& name) {
  std::map<std::string, Tensor> sd;
  sd[name] = file.get(name);
  check_quant_state(file.get(name + kQuantStateSuffix),
                    str(file.file_of(name).path(), ": tensor '", name, kQuantStateSuffix, "'"));
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
