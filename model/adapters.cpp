// Adapter targeting, attaching, saving and loading on a Decoder (see adapters.h).
#include "model/adapters.h"

#include <map>
#include <set>
#include <utility>

#include "model/decoder.h"
#include "model/device.h"

namespace nq {

static std::string short_name(const std::string& module) {
  size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
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
  if (model_device(model) != Device::CPU) to_device(model, model_device(model), model_compute_dtype(model));
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
  // target_modules: the full names of the adapted modules, as PEFT writes them after
  // injection (a shorthand like "all-linear" is only meaningful before).
  AdapterConfig saved = cfg;
  saved.target_modules.clear();
  std::vector<std::pair<std::string, PeftLoraWeights>> modules;
  for (Linear* l : model.linears()) {
    if (!l->has_lora()) continue;
    saved.target_modules.push_back(l->name());
    // Host copies when the adapters are on the GPU.
    modules.emplace_back(l->name(),
                         PeftLoraWeights{l->lora().A.value().to(Device::CPU), l->lora().B.value().to(Device::CPU)});
  }
  write_peft_adapter(dir, saved, modules);
}

AdapterConfig load_peft_adapter(const std::string& dir, Decoder& model) {
  AdapterConfig cfg = AdapterConfig::from_json_file(dir + "/adapter_config.json");
  std::map<std::string, Linear*> by_name;
  std::map<std::string, PeftModuleShape> shapes;
  for (Linear* l : model.linears()) {
    by_name[l->name()] = l;
    shapes[l->name()] = PeftModuleShape{l->in_features(), l->out_features()};
  }
  // Attach to every module the file has weights for (peft may list the targets
  // as short or full names; the tensors are the ground truth).
  for (const auto& [module, w] : read_peft_weights(dir, cfg, shapes)) {
    Linear* l = by_name.at(module);
    l->attach_lora(cfg.lora);
    for (auto [var, value] : {std::pair<Var*, const Tensor*>{&l->lora().A, &w.A}, {&l->lora().B, &w.B}}) {
      Tensor dst = var->value();  // shares storage with the parameter
      dst.copy_from(*value);
    }
  }
  adapters_to_model_device(model);
  return cfg;
}

}  // namespace nq
