// Merging a Decoder's LoRA adapters into its base weights, for a plain dense
// checkpoint (./merge). Each adapted projection becomes W' = W + s * B A
// (lora/lora_merge.h). An NF4 base is dequantized first (W = dequant(NF4)), as PEFT's
// merge_and_unload does, and the merged weight is kept dense instead of being
// quantized again.
#pragma once
#include <string>

#include "model/weights.h"

namespace nq {

class Decoder;

// Every parameter of `model` as a dense f32 CPU tensor by HF name, each adapted
// projection merged (W + s B A); an NF4 projection without adapter is dequantized.
TensorMap merged_weights(Decoder& model);

// ./merge: writes merged_weights(model) in `dtype` to out_dir/model.safetensors, the
// source's config.json with quantization_config removed and the dtype set, and the
// source's tokenizer files: a plain dense checkpoint that transformers loads.
void save_merged_model(const std::string& out_dir, Decoder& model, const std::string& source_dir, DType dtype);

}  // namespace nq
