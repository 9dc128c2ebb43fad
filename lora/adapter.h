// LoRA adapters on a Decoder, and the PEFT file format both ways.
//
// Targets follow PEFT: "all-linear" selects every projection of the decoder
// (q, k, v, o, gate, up, down; never lm_head); otherwise a module is selected
// when its full name equals a target or ends with "." + target ("q_proj"
// selects model.layers.*.self_attn.q_proj).
//
// On disk (what peft's save_pretrained writes and from_pretrained reads):
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                               "target_modules", "use_rslora", "base_model_name_or_path", ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight  [r, in]  f32
//                              base_model.model.<module>.lora_B.weight  [out, r] f32
#pragma once
#include <string>
#include <vector>

#include "lora/lora_linear.h"

namespace nq {

class Decoder;
class Linear;

struct AdapterConfig {
  LoraConfig lora;
  std::vector<std::string> target_modules{kDefaultLoraTargets};
  std::string base_model_name_or_path;

  static AdapterConfig from_json_file(const std::string& path);  // adapter_config.json
  std::string to_json() const;
};

// The projections `targets` selects; an error lists the module names that exist
// when a target matches nothing.
std::vector<Linear*> select_targets(Decoder& model, const std::vector<std::string>& targets);
// The same rule on module names ("model.layers.0.self_attn.q_proj", ...): picked[i]
// for modules[i] (the config-only memory plan selects without a model).
std::vector<bool> select_target_names(const std::vector<std::string>& modules, const std::vector<std::string>& targets);

// Attaches fresh adapters (PEFT init from the RNG stream) to the selected
// projections; returns the trainable parameters in model order (A, B per module).
// The adapters are drawn on the host and live where the model is: attaching
// after to_device(model, Device::CUDA) puts them on the GPU (NF4 bases; a dense
// base must be f32, so attach before moving a --no-quant model).
std::vector<Var> attach_adapters(Decoder& model, const AdapterConfig& cfg);

// Every attached adapter's parameters, in model order.
std::vector<Var> adapter_parameters(Decoder& model);

// Writes adapter_config.json + adapter_model.safetensors into `dir` (created if
// missing; each file written atomically) from host copies of the adapters.
void save_peft_adapter(const std::string& dir, Decoder& model, const AdapterConfig& cfg);

// Reads a PEFT adapter directory, attaches adapters to the modules it names and
// loads their weights (where the model is, as attach_adapters); errors name the
// file and the tensor (missing, wrong shape, unknown module).
AdapterConfig load_peft_adapter(const std::string& dir, Decoder& model);

}  // namespace nq
