// Adapter targeting, attaching, saving and loading on a Decoder (see adapters.h).
#include "model/adapters.h"

#include <cmath>
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

// ---- Qwen3-MoE: the experts' rank-r pairs in PEFT 0.21's fused layout ----
//
// transformers 5 keeps a sparse layer's experts fused (mlp.experts.gate_up_proj [E, 2I, H],
// gate rows first; mlp.experts.down_proj [E, H, I]) and PEFT 0.21 adapts those tensors
// (target_parameters), one LoRA per tensor whose rank covers all experts:
//   lora_A [E*R, in]   expert e's R rows at e*R
//   lora_B [out, E*R]  expert e's j-th rank in column j*E + e (rank-major, expert fastest)
//   delta_e = scaling * B[:, e::E] @ A[e*R:(e+1)*R]
// nanoqlora has one pair per expert and projection (rank r). down_proj: R = r, one pair.
// gate_up_proj: R = 2r (rank_pattern), alpha 2 alpha (alpha_pattern; sqrt(2) alpha with
// rsLoRA), the same scaling: ranks 0..r-1 are the gate pair (rows :I), ranks r..2r-1 the up
// pair (rows I:), and the two other blocks of B are zero, which PEFT's layout can hold but
// nanoqlora's cannot (read: refused unless zero). PEFT nests the two wrappers on mlp.experts,
// gate_up (registered first) inside: with both, gate_up's tensors are
// mlp.experts.base_layer.lora_*, down's mlp.experts.lora_*; alone, either is mlp.experts.lora_*.
// An expert left out (a target naming one expert) is written as zeros and, read back, a pair
// whose A and B are both zero is left unattached.

namespace {

// A parameter's value or gradient as a host f32 tensor (zeros for a gradient never computed).
Tensor host_f32(const Var& v, bool gradient) {
  const Tensor& t = gradient ? v.grad() : v.value();
  if (!t.defined()) return Tensor::zeros(v.value().shape());
  return t.to(Device::CPU).to_dtype(DType::F32);
}

// One projection of every expert of a sparse layer, as a block of a fused tensor: its rows
// start at `row`, its ranks at `rank` within each expert's R.
struct ExpertPart {
  std::vector<Linear*> experts;  // [E]
  int64_t row = 0, rank = 0;
};
// One fused tensor's adapter: module name as saved, the parts, R and the pattern it needs.
struct FusedExperts {
  std::string module, parameter;  // "...mlp.experts[.base_layer]", "...mlp.experts.gate_up_proj"
  std::vector<ExpertPart> parts;
  int64_t in = 0, out = 0, experts = 0, rank = 0;  // R: each expert's rank in the fused tensor
  bool gate_up = false;
};

bool is_suffix(const std::string& name, const std::string& target) {
  return name == target || (name.size() > target.size() &&
                            name.compare(name.size() - target.size(), target.size(), target) == 0 &&
                            name[name.size() - target.size() - 1] == '.');
}

// The sparse layers' fused tensors of `model` that present(fused) picks (by the model's
// adapters when saving, by target_parameters when loading); rank unset.
template <typename Present>
std::vector<FusedExperts> fused_experts(Decoder& model, Present present) {
  const ModelConfig& c = model.config();
  std::map<std::string, Linear*> by_name;
  for (Linear* l : model.linears()) by_name[l->name()] = l;
  std::vector<FusedExperts> out;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    if (!c.sparse_layer(layer)) continue;
    const std::string base = str("model.layers.", layer, ".mlp.experts");
    auto projection = [&](const char* which) {
      std::vector<Linear*> experts;
      for (int64_t e = 0; e < c.moe.num_experts; ++e) experts.push_back(by_name.at(str(base, ".", e, ".", which)));
      return experts;
    };
    const int64_t E = c.moe.num_experts, I = c.moe.expert_intermediate_size, H = c.hidden_size;
    FusedExperts gate_up{base, base + ".gate_up_proj", {{projection("gate_proj"), 0, 0}, {projection("up_proj"), I, 0}},
                         H, 2 * I, E, 0, true};
    FusedExperts down{base, base + ".down_proj", {{projection("down_proj"), 0, 0}}, I, H, E, 0, false};
    const bool has_gate_up = present(gate_up), has_down = present(down);
    if (has_gate_up && has_down) gate_up.module += ".base_layer";
    if (has_gate_up) out.push_back(std::move(gate_up));
    if (has_down) out.push_back(std::move(down));
  }
  return out;
}

bool any_adapted(const FusedExperts& f) {
  for (const ExpertPart& p : f.parts)
    for (const Linear* l : p.experts)
      if (l->has_lora()) return true;
  return false;
}

// The fused A [E*R, in], B [out, E*R] from the experts' pairs (values or gradients); sets f.rank
// and the scaling they share.
PeftLoraWeights fuse(FusedExperts& f, bool gradients, float* scaling) {
  int64_t r = 0;
  *scaling = 0;
  for (const ExpertPart& p : f.parts)
    for (const Linear* l : p.experts) {
      if (!l->has_lora()) continue;
      const int64_t rank = l->lora().A.value().shape()[0];
      NQ_CHECK((r == 0 || (rank == r && l->lora().scaling == *scaling)), "save adapter: ", l->name(),
               " has LoRA rank ", rank, " and scaling ", l->lora().scaling, ", but another expert of ", f.parameter,
               " has ", r, " and ", *scaling, " (PEFT's fused layout holds one rank and scaling per tensor)");
      r = rank;
      *scaling = l->lora().scaling;
    }
  const int64_t parts = int64_t(f.parts.size()), E = f.experts, R = parts * r;
  f.rank = R;
  PeftLoraWeights w{Tensor::zeros({E * R, f.in}), Tensor::zeros({f.out, E * R})};
  float* A = w.A.data<float>();
  float* B = w.B.data<float>();
  for (int64_t part = 0; part < parts; ++part) {
    const ExpertPart& p = f.parts[size_t(part)];
    for (int64_t e = 0; e < E; ++e) {
      const Linear* l = p.experts[size_t(e)];
      if (!l->has_lora()) continue;
      const Tensor a = host_f32(l->lora().A, gradients), b = host_f32(l->lora().B, gradients);
      const int64_t rows = l->out_features(), in = l->in_features();
      const float* pa = a.data<float>();
      const float* pb = b.data<float>();
      for (int64_t j = 0; j < r; ++j) {
        const int64_t rank = part * r + j;  // within the expert's R
        std::copy(pa + j * in, pa + (j + 1) * in, A + (e * R + rank) * f.in);
        for (int64_t i = 0; i < rows; ++i) B[(p.row + i) * E * R + rank * E + e] = pb[i * r + j];
      }
    }
  }
  return w;
}

// Splits a fused adapter read from `file` onto the experts: attaches `pair` (rank R / parts)
// and copies each expert's block, refusing a non-zero block outside the parts.
void unfuse(const FusedExperts& f, const PeftLoraWeights& w, const LoraConfig& pair, const std::string& file) {
  const int64_t parts = int64_t(f.parts.size()), E = f.experts, R = f.rank;
  NQ_CHECK(R % parts == 0, file, ": ", f.parameter, " has LoRA rank ", R, " (rank_pattern), which is not ", parts,
           " pairs (gate and up) of one rank");
  const int64_t r = R / parts;
  const float* A = w.A.data<float>();
  const float* B = w.B.data<float>();
  const std::string b_name = "base_model.model." + f.module + ".lora_B.weight";
  for (int64_t part = 0; part < parts; ++part) {
    const ExpertPart& p = f.parts[size_t(part)];
    for (int64_t e = 0; e < E; ++e) {
      Linear* l = p.experts[size_t(e)];
      const int64_t rows = l->out_features(), in = l->in_features();
      Tensor a = Tensor::zeros({r, in}), b = Tensor::zeros({rows, r});
      float* pa = a.data<float>();
      float* pb = b.data<float>();
      bool nonzero = false;
      for (int64_t j = 0; j < r; ++j) {
        const int64_t rank = part * r + j;
        for (int64_t x = 0; x < in; ++x) nonzero |= (pa[j * in + x] = A[(e * R + rank) * f.in + x]) != 0.0f;
        for (int64_t i = 0; i < f.out; ++i) {
          const float v = B[i * E * R + rank * E + e];
          if (i >= p.row && i < p.row + rows) {
            nonzero |= (pb[(i - p.row) * r + j] = v) != 0.0f;
          } else {
            NQ_CHECK(v == 0.0f, file, ": tensor ", b_name, " gives expert ", e, "'s rank ", rank, " a non-zero row ", i,
                     " outside its ", part == 0 ? "gate" : "up",
                     " rows: nanoqlora keeps the gate and up LoRA of an expert as separate pairs, so it cannot hold "
                     "this adapter");
          }
        }
      }
      if (!nonzero) continue;  // not adapted (written as zeros)
      l->attach_lora(pair);
      Tensor dst = l->lora().A.value();
      dst.copy_from(a);
      dst = l->lora().B.value();
      dst.copy_from(b);
    }
  }
}

// The LoRA of one expert pair inside a fused tensor of rank R and alpha `alpha`: rank R / parts,
// the same scaling (alpha / R, or alpha / sqrt(R) with rsLoRA).
LoraConfig pair_config(LoraConfig cfg, int64_t R, float alpha, int64_t parts) {
  const float scaling = cfg.use_rslora ? alpha / std::sqrt(float(R)) : alpha / float(R);
  cfg.r = R / parts;
  cfg.alpha = cfg.use_rslora ? scaling * std::sqrt(float(cfg.r)) : scaling * float(cfg.r);
  return cfg;
}

}  // namespace

std::vector<std::pair<std::string, PeftLoraWeights>> peft_modules(Decoder& model, const AdapterConfig& cfg,
                                                                   AdapterConfig* saved, bool gradients) {
  // target_modules: the full names of the adapted modules, as PEFT writes them after
  // injection (a shorthand like "all-linear" is only meaningful before).
  *saved = cfg;
  saved->target_modules.clear();
  saved->target_parameters.clear();
  saved->gate_up_rank = 0;
  saved->gate_up_alpha = 0;
  const bool moe = model.config().is_moe();
  std::vector<FusedExperts> fused = fused_experts(model, any_adapted);
  std::set<const Linear*> in_fused;
  for (const FusedExperts& f : fused)
    for (const ExpertPart& p : f.parts) in_fused.insert(p.experts.begin(), p.experts.end());
  std::vector<std::pair<std::string, PeftLoraWeights>> modules;
  for (Linear* l : model.linears()) {
    if (!l->has_lora() || in_fused.count(l)) continue;
    // PEFT 0.21 moves a Qwen3-MoE's gate/up/down_proj targets to the fused experts, so a
    // dense MLP layer of that model is adapted as a parameter (the same tensors and names).
    const bool mlp = is_suffix(l->name(), "gate_proj") || is_suffix(l->name(), "up_proj") ||
                     is_suffix(l->name(), "down_proj");
    if (moe && mlp) saved->target_parameters.push_back(l->name() + ".weight");
    else saved->target_modules.push_back(l->name());
    modules.emplace_back(l->name(), PeftLoraWeights{host_f32(l->lora().A, gradients), host_f32(l->lora().B, gradients)});
  }
  for (FusedExperts& f : fused) {
    float scaling = 0;
    PeftLoraWeights w = fuse(f, gradients, &scaling);
    saved->target_parameters.push_back(f.parameter);
    if (f.gate_up) {
      const float alpha = cfg.lora.use_rslora ? scaling * std::sqrt(float(f.rank)) : scaling * float(f.rank);
      NQ_CHECK(saved->gate_up_rank == 0 || (saved->gate_up_rank == f.rank && saved->gate_up_alpha == alpha),
               "save adapter: ", f.parameter, " has LoRA rank ", f.rank, " and alpha ", alpha, ", another layer's ",
               saved->gate_up_rank, " and ", saved->gate_up_alpha, " (PEFT's rank_pattern holds one)");
      saved->gate_up_rank = f.rank;
      saved->gate_up_alpha = alpha;
    } else {
      NQ_CHECK(f.rank == cfg.lora.r && scaling == cfg.lora.scaling(), "save adapter: ", f.parameter,
               " has LoRA rank ", f.rank, " and scaling ", scaling, ", not the adapter's ", cfg.lora.r, " and ",
               cfg.lora.scaling());
    }
    modules.emplace_back(f.module, std::move(w));
  }
  return modules;
}

void save_peft_adapter(const std::string& dir, Decoder& model, const AdapterConfig& cfg) {
  AdapterConfig saved;
  const auto modules = peft_modules(model, cfg, &saved);
  write_peft_adapter(dir, saved, modules);
}

AdapterConfig load_peft_adapter(const std::string& dir, Decoder& model) {
  const std::string config_file = dir + "/adapter_config.json";
  AdapterConfig cfg = AdapterConfig::from_json_file(config_file);
  std::map<std::string, Linear*> by_name;
  std::map<std::string, PeftModuleShape> shapes;
  for (Linear* l : model.linears()) {
    by_name[l->name()] = l;
    shapes[l->name()] = PeftModuleShape{l->in_features(), l->out_features()};
  }
  // The fused expert tensors the config targets (PEFT injects parameters by target_parameters).
  auto targeted = [&](const FusedExperts& f) {
    for (const std::string& t : cfg.target_parameters)
      if (is_suffix(f.parameter, t)) return true;
    return false;
  };
  std::vector<FusedExperts> fused = fused_experts(model, targeted);
  std::map<std::string, const FusedExperts*> fused_by_module;
  for (FusedExperts& f : fused) {
    if (f.gate_up) {
      NQ_CHECK(cfg.gate_up_rank > 0, config_file, ": target_parameters names ", f.parameter,
               " but rank_pattern gives no \".*\\\\.gate_up_proj\" rank (PEFT writes 2r for the gate and up pairs)");
      f.rank = cfg.gate_up_rank;
    } else {
      f.rank = cfg.lora.r;
    }
    shapes[f.module] = PeftModuleShape{f.in, f.out, f.experts * f.rank};
    fused_by_module[f.module] = &f;
  }
  // Attach to every module the file has weights for (peft may list the targets
  // as short or full names; the tensors are the ground truth).
  for (const auto& [module, w] : read_peft_weights(dir, cfg, shapes)) {
    if (auto f = fused_by_module.find(module); f != fused_by_module.end()) {
      const FusedExperts& experts = *f->second;
      const float alpha = experts.gate_up ? cfg.gate_up_alpha : cfg.lora.alpha;
      const int64_t parts = int64_t(experts.parts.size());
      unfuse(experts, w, pair_config(cfg.lora, experts.rank, alpha, parts), dir + "/adapter_model.safetensors");
      continue;
    }
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
