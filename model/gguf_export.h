// The fine-tuned model as llama.cpp reads it: the merged model as one GGUF file
// (the metadata and tensor layout of llama.cpp's convert_hf_to_gguf.py for the
// "qwen3" and "llama" architectures) and the LoRA adapter as a GGUF adapter (the
// layout of convert_lora_to_gguf.py), for llama-cli / llama-server / Ollama / LM Studio.
//
//   merged    general.* + {arch}.* hyper-parameters + tokenizer.* + chat template;
//             tensors by GGUF name (blk.N.attn_q.weight, ...), 2-D weights in the
//             requested type, norms and biases f32; llama's attn_q / attn_k rows
//             permuted as the converter does (the reader undoes it); a tied lm_head
//             is not written (llama.cpp reuses token_embd).
//   adapter   general.type "adapter", adapter.type "lora", adapter.lora.alpha, and
//             blk.N.<name>.weight.lora_a [r, in] / .lora_b [out, r] in f32, so that
//             llama.cpp's update (alpha / r) * B A equals ours (rsLoRA folded into alpha).
//
// The tokenizer metadata of a GGUF base is copied from it as it is; that of a HF
// folder is built from tokenizer.json / tokenizer_config.json / config.json with the
// converter's rules. Details and the list of keys: docs/gguf_export.md.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "formats/gguf.h"
#include "formats/peft_adapter.h"
#include "model/config.h"
#include "model/weights.h"

namespace nq {

class Decoder;

// The --type names: "f32" "f16" "bf16" "q8_0" "q4_0" "q4_1".
const std::vector<std::string>& gguf_export_types();

// The metadata keys taken from the base model at `source` (a .gguf file or a HF
// folder): the tokenizer (tokenizer.*, chat template included) and the descriptive
// general.* keys (name, license, ...), in the order the converter writes them.
struct GGUFSourceMetadata {
  std::vector<std::pair<std::string, GGUFValue>> general, tokenizer;
};
GGUFSourceMetadata gguf_source_metadata(const std::string& source, const ModelConfig& config);

// Writes `weights` (every parameter of `config`, f32 by HF name: merged_weights())
// to `path` as a GGUF model in `type` (one of gguf_export_types()), atomically.
// Returns a one-line summary of the tensor types written.
std::string write_merged_gguf(const std::string& path, const ModelConfig& config, const TensorMap& weights,
                              const GGUFSourceMetadata& source, const std::string& type);

// Writes the LoRA adapters attached to `model` (configured by `cfg`) as a llama.cpp
// LoRA adapter GGUF, atomically. adapter.lora.alpha = scaling * r, so llama.cpp's
// alpha / r is our scaling for plain LoRA (= alpha) and rsLoRA (alpha * sqrt(r)) alike.
// The alpha llama.cpp needs for `lora`: alpha, or alpha * sqrt(r) under rsLoRA.
float gguf_lora_alpha(const LoraConfig& lora);

// general.name is `adapter_name` (the adapter folder's name).
void write_adapter_gguf(const std::string& path, Decoder& model, const AdapterConfig& cfg,
                        const std::string& adapter_name);

}  // namespace nq
