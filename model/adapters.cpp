// Adapter targeting and the PEFT on-disk format (see adapter.h).
#include "model/adapters.h"

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "model/bnb_checkpoint.h"
#include "model/decoder.h"
#include "model/device.h"
#include "formats/safetensors.h"

namespace nq {

using json = nlohmann::json;

static const char* kPeftPrefix = "base_model.model.";

static std::string short_name(const std::string& module) {
  size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

AdapterConfig AdapterConfig::from_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str(path, ": invalid JSON: ", e.what()));
  }
  NQ_CHECK(j.is_object(), path, ": adapter config must be a JSON object");
  auto field = [&](const char* key) -> const json& {
    NQ_CHECK(j.contains(key) && !j[key].is_null(), path, ": missing field \"", key, "\"");
    return j[key];
  };
  // PEFT writes null for unset optional fields: treat null like absent.
  auto opt = [&](const char* key, auto fallback) {
    return j.contains(key) && !j[key].is_null() ? j[key].get<decltype(fallback)>() : fallback;
  };
  AdapterConfig c;
  try {
    const std::string type = opt("peft_type", std::string("LORA"));
    NQ_CHECK(type == "LORA", path, ": peft_type \"", type, "\" is not supported (only LORA)");
    NQ_CHECK(!opt("use_dora", false), path, ": use_dora is not supported");
    c.lora.r = field("r").get<int64_t>();
    c.lora.alpha = field("lora_alpha").get<float>();
    c.lora.dropout = opt("lora_dropout", 0.0f);
    c.lora.use_rslora = opt("use_rslora", false);
    const json& t = field("target_modules");
    c.target_modules = t.is_string() ? std::vector<std::string>{t.get<std::string>()} : t.get<std::vector<std::string>>();
    c.base_model_name_or_path = opt("base_model_name_or_path", std::string());
    NQ_CHECK(opt("rank_pattern", json::object()).empty() && opt("alpha_pattern", json::object()).empty(),
             path, ": rank_pattern / alpha_pattern are not supported");
  } catch (const json::exception& e) {
    throw Error(str(path, ": mistyped field: ", e.what()));
  }
  NQ_CHECK(c.lora.r > 0, path, ": r must be positive, got ", c.lora.r);
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

std::vector<bool> select_target_names(const std::vector<std::string>& modules, const std::vector<std::string>& targets) {
  NQ_CHECK(!targets.empty(), "lora: no target modules given");
  bool all_linear = targets.size() == 1 && targets[0] == "all-linear";
  std::set<std::string> matched;
  std::vector<bool> picked;
  for (const std::string& name : modules) {
    bool hit = all_linear;
    for (const std::string& t : targets) {
      if (name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                        name[name.size() - t.size() - 1] == '.')) {
        hit = true;
        matched.insert(t);
      }
    }
    picked.push_back(hit);
  }
  if (!all_linear) {
    for (const std::string& t : targets) {
      if (matched.count(t)) continue;
      std::set<std::string> names;
      for (const std::string& m : modules) names.insert(short_name(m));
      std::string list;
      for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
      throw Error(str("lora: target module \"", t, "\" matches no module; the model has: ", list,
                      " (or full names like ", modules.empty() ? "" : modules[0], ", or all-linear)"));
    }
  }
  return picked;
}

std::vector<Linear*> select_targets(Decoder& model, const std::vector<std::string>& targets) {
  std::vector<Linear*> all = model.linears(), picked;
  std::vector<std::string> names;
  for (Linear* l : all) names.push_back(l->name());
  const std::vector<bool> hit = select_target_names(names, targets);
  for (size_t i = 0; i < all.size(); ++i)
    if (hit[i]) picked.push_back(all[i]);
  return picked;
}

// New adapters are made on the host; on a model already on the GPU they follow
// it there (to_device moves only what is not on the device yet).
static void adapters_to_model_device(Decoder& model) {
  if (model_device(model) != Device::CPU) to_device(model, model_device(model));
}

std::vector<Var> attach_adapters(Decoder& model, const AdapterConfig& cfg) {
  for (Linear* l : select_targets(model, cfg.target_modules)) l->attach_lora(cfg.lora);
  adapters_to_model_device(model);
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
  // target_modules: the full names of the adapted modules, as PEFT writes them after
  // injection (a shorthand like "all-linear" is only meaningful before).
  AdapterConfig saved = cfg;
  saved.target_modules.clear();
  for (Linear* l : model.linears()) {
    if (!l->has_lora()) continue;
    saved.target_modules.push_back(l->name());
    // Host copies when the adapters are on the GPU.
    tensors.emplace_back(kPeftPrefix + l->name() + ".lora_A.weight", l->lora().A.value().to(Device::CPU));
    tensors.emplace_back(kPeftPrefix + l->name() + ".lora_B.weight", l->lora().B.value().to(Device::CPU));
  }
  NQ_CHECK(!tensors.empty(), dir, ": the model has no LoRA adapters to save");
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(dir + "/adapter_config.json", saved.to_json());  // atomic like the tensors
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
    bool lora_weight = false;
    for (const char* which : {".lora_A.weight", ".lora_B.weight"}) {
      std::string w = which;
      if (key.size() <= w.size() || key.compare(key.size() - w.size(), w.size(), w) != 0) continue;
      lora_weight = true;
      std::string module = key.substr(0, key.size() - w.size());
      NQ_CHECK(module.rfind(kPeftPrefix, 0) == 0, dir, "/adapter_model.safetensors: tensor ", key,
               " does not start with \"", kPeftPrefix, "\" (not a PEFT causal-LM adapter)");
      module = module.substr(std::string(kPeftPrefix).size());
      NQ_CHECK(by_name.count(module), dir, "/adapter_model.safetensors: tensor ", key,
               " is for module ", module, ", which this model does not have");
      seen.insert(module);
    }
    // Anything else (modules_to_save copies, DoRA magnitudes, embedding adapters)
    // would change the model in ways this loader does not implement.
    NQ_CHECK(lora_weight, dir, "/adapter_model.safetensors: tensor ", key,
             " is not a lora_A / lora_B weight (only plain LoRA on linear layers is supported)");
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
      NQ_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16, dir,
               "/adapter_model.safetensors: tensor ", key, " has dtype ", dtype_name(t.dtype()),
               " (expected F32, BF16 or F16)");
      NQ_CHECK(t.shape() == Shape({rows, cols}), dir, "/adapter_model.safetensors: tensor ", key, " has shape ",
               t.shape().str(), ", expected [", rows, ", ", cols, "]");
      Tensor v = t.dtype() == DType::F32 ? t.clone() : t.to_dtype(DType::F32);
      Tensor dst = var->value();  // shares storage with the parameter
      dst.copy_from(v);
    }
  }
  adapters_to_model_device(model);
  return cfg;
}

}  // namespace nq
