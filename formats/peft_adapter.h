// The PEFT LoRA adapter files both ways: adapter_config.json <-> AdapterConfig, and
// adapter_model.safetensors <-> the A, B weights of each adapted module, with all
// their validation (model/adapters.h attaches them to a Decoder and saves a model's).
//
// On disk (what peft's save_pretrained writes and from_pretrained reads):
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                               "target_modules", "use_rslora", "base_model_name_or_path", ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight  [r, in]  f32
//                              base_model.model.<module>.lora_B.weight  [out, r] f32
//
// PEFT 0.21 on transformers 5's Qwen3-MoE also adapts parameters: "target_parameters" names
// the fused expert tensors (and 2-D weights), "rank_pattern" / "alpha_pattern" give the fused
// gate_up_proj its rank 2r and alpha 2 alpha. A module's rank is then not the config's r
// (PeftModuleShape::rank); how the fused tensors map to experts is model/adapters.cpp's.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lora/lora_linear.h"
#include "runtime/tensor.h"

namespace nq {

struct AdapterConfig {
  LoraConfig lora;
  std::vector<std::string> target_modules{kDefaultLoraTargets};
  std::vector<std::string> target_parameters;  // parameters adapted (PEFT's ParamWrapper), full or suffix names
  // The one rank_pattern / alpha_pattern key read and written: ".*\\.gate_up_proj", the rank
  // and alpha PEFT gives fused gate_up_proj experts (0 = no pattern: r and alpha). Other keys
  // are refused (a pattern is a Python regex; matching strangers' regexes is not attempted).
  int64_t gate_up_rank = 0;
  float gate_up_alpha = 0;
  std::string base_model_name_or_path;

  static AdapterConfig from_json_file(const std::string& path);  // adapter_config.json
  std::string to_json() const;
};

// One module's adapter weights: A [r, in], B [out, r], f32 on the host.
struct PeftLoraWeights {
  Tensor A, B;
};

// The size of a module an adapter may target: W [out, in], and its LoRA rank (0: the
// config's r; the fused expert tensors hold E experts' ranks side by side).
struct PeftModuleShape {
  int64_t in = 0, out = 0, rank = 0;
};

// Writes adapter_config.json (`cfg`, whose target_modules name the adapted modules)
// + adapter_model.safetensors (each module's A, B) into `dir` (created if missing;
// each file written atomically).
void write_peft_adapter(const std::string& dir, const AdapterConfig& cfg,
                        const std::vector<std::pair<std::string, PeftLoraWeights>>& modules);

// The weights of dir/adapter_model.safetensors for an adapter of config `cfg`, by module
// name, each module one of `modules` (the model's projections): every tensor must be a
// lora_A / lora_B weight of a known module, in F32, BF16 or F16 (converted to f32), of
// shape [rank, in] / [out, rank]; errors name the file and the tensor (missing, wrong shape,
// unknown module).
std::map<std::string, PeftLoraWeights> read_peft_weights(const std::string& dir, const AdapterConfig& cfg,
                                                         const std::map<std::string, PeftModuleShape>& modules);

}  // namespace nq
