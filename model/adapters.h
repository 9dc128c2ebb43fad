// LoRA adapters on a Decoder: targeting, attaching, and saving / loading them as PEFT
// adapter files (the file format itself: formats/peft_adapter.h).
//
// Targets follow PEFT: "all-linear" selects every projection of the decoder
// (q, k, v, o, gate, up, down; never lm_head); otherwise a module is selected
// when its full name equals a target or ends with "." + target ("q_proj"
// selects model.layers.*.self_attn.q_proj).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "formats/peft_adapter.h"

namespace nq {

class Decoder;
class Linear;

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

// The adapter as PEFT writes it for this model: (module, A and B) for every adapted module in
// file order, host f32 copies of the values or (gradients) of the gradients; `saved` gets the
// config written beside them (the full target names). A Qwen3-MoE's expert pairs are fused
// into PEFT 0.21's layout on transformers 5's 3-D expert tensors (see adapters.cpp).
std::vector<std::pair<std::string, PeftLoraWeights>> peft_modules(Decoder& model, const AdapterConfig& cfg,
                                                                   AdapterConfig* saved, bool gradients = false);

// Writes adapter_config.json + adapter_model.safetensors into `dir` (created if
// missing; each file written atomically) from host copies of the adapters.
void save_peft_adapter(const std::string& dir, Decoder& model, const AdapterConfig& cfg);

// Reads a PEFT adapter directory, attaches adapters to the modules it names and
// loads their weights (where the model is, as attach_adapters); errors name the
// file and the tensor (missing, wrong shape, unknown module).
AdapterConfig load_peft_adapter(const std::string& dir, Decoder& model);

}  // namespace nq
