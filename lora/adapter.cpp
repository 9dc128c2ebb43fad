// Adapter targeting and the PEFT on-disk format (see adapter.h).
#include "lora/adapter.h"

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "model/bnb_checkpoint.h"
#include "model/decoder.h"
#include "runtime/safetensors.h"

namespace nq {

using json = nlohmann::json;

static const char* kPeftPrefix = "base_model.model.";

static std::string short_name(const std::string& module) {
  size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

AdapterConfig AdapterConfig::from_json_file(const std::string& path) {
  std::ifstream f(path);
  NQ_CHECK(f.good(), path, ": cannot read adapter config");
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    throw Error(str(path, ": invalid JSON: ", e.what()));
  }
  NQ_CHECK(j.is_object(), path, ": adapter config must be a JSON object");
  auto field = [&](const char* key) -> const json& {
    NQ_CHECK(j.contains(key) && !j[key].is_null(), path, ": missing field \"", key, "\"");
    return j[key];
  };
  NQ_CHECK(j.value("peft_type", std::string("LORA")) == "LORA", path, ": peft_type \"", j.value("peft_type", ""),
           "\" is not supported (only LORA)");
  NQ_CHECK(!j.value("use_dora", false), path, ": use_dora is not supported");
  AdapterConfig c;
  try {
    c.lora.r = field("r").get<int64_t>();
    c.lora.alpha = field("lora_alpha").get<float>();
    c.lora.dropout = j.value("lora_dropout", 0.0f);
    c.lora.use_rslora = j.value("use_rslora", false);
    const json& t = field("target_modules");
    c.target_modules = t.is_string() ? std::vector<std::string>{t.get<std::string>()} : t.get<std::vector<std::string>>();
    c.base_model_name_or_path = j.value("base_model_name_or_path", std::string());
  } catch (const json::exception& e) {
    throw Error(str(path, ": mistyped field: ", e.what()));
  }
  NQ_CHECK(c.lora.r > 0, path, ": r must be positive, got ", c.lora.r);
  NQ_CHECK(j.value("rank_pattern", json::object()).empty() && j.value("alpha_pattern", json::object()).empty(), path,
           ": rank_pattern / alpha_pattern are not supported");
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
  return j.dump(2) + "\n";
}

std::vector<Linear*> select_targets(Decoder& model, const std::vector<std::string>& targets) {
  std::vector<Linear*> all = model.linears(), picked;
  NQ_CHECK(!targets.empty(), "lora: no target modules given");
  bool all_linear = targets.size() == 1 && targets[0] == "all-linear";
  std::set<std::string> matched;
  for (Linear* l : all) {
    const std::string& name = l->name();
    bool hit = all_linear;
    for (const std::string& t : targets) {
      if (name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                        name[name.size() - t.size() - 1] == '.')) {
        hit = true;
        matched.insert(t);
      }
    }
    if (hit) picked.push_back(l);
  }
  if (!all_linear) {
    for (const std::string& t : targets) {
      if (matched.count(t)) continue;
      std::set<std::string> names;
      for (Linear* l : all) names.insert(short_name(l->name()));
      std::string list;
      for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
      throw Error(str("lora: target module \"", t, "\" matches no module; the model has: ", list,
                      " (or full names like ", all.empty() ? "" : all[0]->name(), ", or all-linear)"));
    }
  }
  return picked;
}

std::vector<Var> attach_adapters(Decoder& model, const AdapterConfig& cfg) {
  for (Linear* l : select_targets(model, cfg.target_modules)) l->attach_lora(cfg.lora);
  return adapter_parameters(model);
}

std::vector<Var> adapter_parameters(Decoder& model) {
  std::vector<Var> params;
  for (Linear* l : model.linears()) {
    if (!l->has_lora()) continue;
    params.push_back(l->lora().A);
    params.push_back(l->lora().B);
  }
  return params;
}

void save_peft_adapter(const std::string& dir, Decoder& model, const AdapterConfig& cfg) {
  make_dir(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::string> targets;
  for (Linear* l : model.linears()) {
    if (!l->has_lora()) continue;
    tensors.emplace_back(kPeftPrefix + l->name() + ".lora_A.weight", l->lora().A.value().to(Device::CPU));
    tensors.emplace_back(kPeftPrefix + l->name() + ".lora_B.weight", l->lora().B.value().to(Device::CPU));
  }
  NQ_CHECK(!tensors.empty(), dir, ": the model has no LoRA adapters to save");
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(dir + "/adapter_config.json", cfg.to_json());  // atomic like the tensors
}

AdapterConfig load_peft_adapter(const std::string& dir, Decoder& model) {
  AdapterConfig cfg = AdapterConfig::from_json_file(dir + "/adapter_config.json");
  SafetensorsFile file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  std::map<std::string, Linear*> by_name;
  for (Linear* l : model.linears()) by_name[l->name()] = l;
  // Attach to every module the file has weights for (peft may list the targets
  // as short or full names; the tensors are the ground truth).
  std::set<std::string> seen;
  for (const std::string& key : file.names()) {
    for (const char* which : {".lora_A.weight", ".lora_B.weight"}) {
      std::string w = which;
      if (key.size() <= w.size() || key.compare(key.size() - w.size(), w.size(), w) != 0) continue;
      std::string module = key.substr(0, key.size() - w.size());
      if (module.rfind(kPeftPrefix, 0) == 0) module = module.substr(std::string(kPeftPrefix).size());
      NQ_CHECK(by_name.count(module), dir, "/adapter_model.safetensors: tensor ", key,
               " is for module ", module, ", which this model does not have");
      seen.insert(module);
    }
  }
  NQ_CHECK(!seen.empty(), dir, "/adapter_model.safetensors: no lora_A / lora_B tensors");
  for (const std::string& module : seen) {
    Linear* l = by_name[module];
    l->attach_lora(cfg.lora);
    for (auto [suffix, var, rows, cols] :
         {std::tuple<const char*, Var*, int64_t, int64_t>{".lora_A.weight", &l->lora().A, cfg.lora.r, l->in_features()},
          {".lora_B.weight", &l->lora().B, l->out_features(), cfg.lora.r}}) {
      std::string key = kPeftPrefix + module + suffix;
      NQ_CHECK(file.has(key), dir, "/adapter_model.safetensors: missing tensor ", key);
      Tensor t = file.get(key);
      NQ_CHECK(t.shape() == Shape({rows, cols}), dir, "/adapter_model.safetensors: tensor ", key, " has shape ",
               t.shape().str(), ", expected [", rows, ", ", cols, "]");
      Tensor v = t.dtype() == DType::F32 ? t.clone() : t.to_dtype(DType::F32);
      Tensor dst = var->value();  // shares storage with the parameter
      dst.copy_from(v);
    }
  }
  return cfg;
}

}  // namespace nq
