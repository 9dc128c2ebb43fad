// The PEFT adapter files (see peft_adapter.h).
#include "formats/peft_adapter.h"
#include "formats/json.h"

#include <nlohmann/json.hpp>
#include <limits>
#include <set>
#include <tuple>

#include "formats/hf_files.h"
#include "formats/safetensors.h"

namespace nq {

using json = nlohmann::json;

static const char* kPeftPrefix = "base_model.model.";

// The largest LoRA rank read from a file: a rank above the width of every model the
// decoder loads (hidden 2^17 at most, model/config.cpp) would be no low-rank adapter;
// 2^16 leaves room for full-rank experiments on any real model.
constexpr int64_t kMaxLoraRank = 1 << 16;

// The rank_pattern / alpha_pattern key of PEFT's fused gate_up_proj experts (the regex .*\.gate_up_proj).
static const char* kGateUpPattern = ".*\\.gate_up_proj";

AdapterConfig AdapterConfig::from_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  const json doc = parse_json(text, path);
  NQ_CHECK(doc.is_object(), path, ": adapter config must be a JSON object");
  const JsonIn j(doc, path);  // PEFT writes null for unset optional fields: null reads as absent
  AdapterConfig c;
  const std::string type = j.string_or("peft_type", "LORA");
  NQ_CHECK(type == "LORA", path, ": peft_type \"", type, "\" is not supported (only LORA)");
  NQ_CHECK(!j.boolean_or("use_dora", false), path, ": use_dora is not supported");
  c.lora.r = j.at("r").integer();
  NQ_CHECK(c.lora.r > 0, path, ": r must be positive, got ", c.lora.r);
  NQ_CHECK(c.lora.r <= kMaxLoraRank, path, ": r = ", c.lora.r, " is above the largest supported rank ", kMaxLoraRank);
  const double kMaxFloat = std::numeric_limits<float>::max();
  c.lora.alpha = float(j.at("lora_alpha").number(-kMaxFloat, kMaxFloat));
  c.lora.dropout = float(j.number_or("lora_dropout", 0.0, 0.0, 1.0));
  NQ_CHECK(c.lora.dropout < 1.0f, path, ": lora_dropout must be below 1, got ", c.lora.dropout);
  c.lora.use_rslora = j.boolean_or("use_rslora", false);
  if (auto p = j.find("target_parameters"))
    c.target_parameters = p->is_string() ? std::vector<std::string>{p->string()} : p->strings();
  if (c.target_parameters.empty() || j.has("target_modules")) {
    const JsonIn t = j.at("target_modules");
    c.target_modules = t.is_string() ? std::vector<std::string>{t.string()} : t.strings();
  } else {
    c.target_modules.clear();  // PEFT allows parameters alone
  }
  c.base_model_name_or_path = j.string_or("base_model_name_or_path", "");
  bool rank_given = false, alpha_given = false;
  for (const char* pattern : {"rank_pattern", "alpha_pattern"}) {
    auto p = j.find(pattern);
    if (!p) continue;
    p->for_each_member([&](const std::string& key, const JsonIn& value) {
      NQ_CHECK(key == kGateUpPattern, path, ": ", pattern, " key \"", key, "\" is not supported (only \"",
               kGateUpPattern, "\", which PEFT writes for fused Qwen3-MoE experts)");
      if (pattern == std::string("rank_pattern")) {
        c.gate_up_rank = value.integer(1, kMaxLoraRank);
        rank_given = true;
      } else {
        alpha_given = true;
        c.gate_up_alpha = float(value.number(-kMaxFloat, kMaxFloat));
      }
    });
  }
  NQ_CHECK(rank_given == alpha_given, path,
           ": rank_pattern and alpha_pattern must both give \"", kGateUpPattern, "\" or neither");
  return c;
}

std::string AdapterConfig::to_json() const {
  // The fields peft writes for a plain LoRA adapter (others left at peft's defaults).
  json j = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", base_model_name_or_path},
            {"r", lora.r},
            {"lora_alpha", lora.alpha},
            {"lora_dropout", lora.dropout},
            {"target_modules", target_modules},
            {"use_rslora", lora.use_rslora},
            {"use_dora", false},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"inference_mode", true},
            {"init_lora_weights", true},
            {"modules_to_save", nullptr},
            {"layers_to_transform", nullptr},
            {"layers_pattern", nullptr},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()},
            {"revision", nullptr}};
  if (!target_parameters.empty()) j["target_parameters"] = target_parameters;
  if (gate_up_rank > 0) {
    j["rank_pattern"][kGateUpPattern] = gate_up_rank;
    j["alpha_pattern"][kGateUpPattern] = gate_up_alpha;
  }
  return j.dump(2) + "\n";
}

void write_peft_adapter(const std::string& dir, const AdapterConfig& cfg,
                        const std::vector<std::pair<std::string, PeftLoraWeights>>& modules) {
  make_dir(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [module, w] : modules) {
    tensors.emplace_back(kPeftPrefix + module + ".lora_A.weight", w.A);
    tensors.emplace_back(kPeftPrefix + module + ".lora_B.weight", w.B);
  }
  NQ_CHECK(!tensors.empty(), dir, ": the model has no LoRA adapters to save");
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(dir + "/adapter_config.json", cfg.to_json());  // atomic like the tensors
}

std::map<std::string, PeftLoraWeights> read_peft_weights(const std::string& dir, const AdapterConfig& cfg,
                                                         const std::map<std::string, PeftModuleShape>& modules) {
  SafetensorsFile file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  std::set<std::string> seen;
  for (const std::string& key : file.names()) {
    bool lora_weight = false;
    for (const char* which : {".lora_A.weight", ".lora_B.weight"}) {
      std::string w = which;
      if (key.size() <= w.size() || key.compare(key.size() - w.size(), w.size(), w) != 0) continue;
      lora_weight = true;
      std::string module = key.substr(0, key.size() - w.size());
      NQ_CHECK(module.rfind(kPeftPrefix, 0) == 0, dir, "/adapter_model.safetensors: tensor ", key,
               " does not start with \"", kPeftPrefix, "\" (not a PEFT causal-LM adapter)");
      module = module.substr(std::string(kPeftPrefix).size());
      NQ_CHECK(modules.count(module), dir, "/adapter_model.safetensors: tensor ", key,
               " is for module ", module, ", which this model does not have");
      seen.insert(module);
    }
    // Anything else (modules_to_save copies, DoRA magnitudes, embedding adapters)
    // would change the model in ways this loader does not implement.
    NQ_CHECK(lora_weight, dir, "/adapter_model.safetensors: tensor ", key,
             " is not a lora_A / lora_B weight (only plain LoRA on linear layers is supported)");
  }
  NQ_CHECK(!seen.empty(), dir, "/adapter_model.safetensors: no lora_A / lora_B tensors");
  std::map<std::string, PeftLoraWeights> weights;
  for (const std::string& module : seen) {
    const PeftModuleShape& shape = modules.at(module);
    const int64_t rank = shape.rank > 0 ? shape.rank : cfg.lora.r;
    PeftLoraWeights& w = weights[module];
    for (auto [suffix, value, rows, cols] :
         {std::tuple<const char*, Tensor*, int64_t, int64_t>{".lora_A.weight", &w.A, rank, shape.in},
          {".lora_B.weight", &w.B, shape.out, rank}}) {
      std::string key = kPeftPrefix + module + suffix;
      NQ_CHECK(file.has(key), dir, "/adapter_model.safetensors: missing tensor ", key);
      Tensor t = file.get(key);
      NQ_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16, dir,
               "/adapter_model.safetensors: tensor ", key, " has dtype ", dtype_name(t.dtype()),
               " (expected F32, BF16 or F16)");
      NQ_CHECK(t.shape() == Shape({rows, cols}), dir, "/adapter_model.safetensors: tensor ", key, " has shape ",
               t.shape().str(), ", expected [", rows, ", ", cols, "]");
      *value = t.dtype() == DType::F32 ? t.clone() : t.to_dtype(DType::F32);  // owned: not the file's mapping
    }
  }
  return weights;
}

}  // namespace nq
