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

// ./merge: writes merged_weights(model) in `dtype` to out_dir/model.safetensors, and
// from a HF folder `source` its config.json (quantization_config removed, the dtype
// set) and tokenizer files; from a .gguf `source` the config.json transformers
// writes for the model, and tokenizer.json + tokenizer_config.json (chat template,
// bos/eos/pad) built from the GGUF vocabulary: a plain dense checkpoint that
// transformers loads either way.
void save_merged_model(const std::string& out_dir, Decoder& model, const std::string& source, DType dtype);

// tokenizer.json + tokenizer_config.json for the vocabulary of the GGUF at `gguf_path`
// (tokenizer.ggml.*, tokenizer.chat_template) into `dir`: the byte-level BPE that
// Tokenizer::from_file reads back with the same ids as the GGUF's own vocabulary.
void write_hf_tokenizer_from_gguf(const std::string& gguf_path, const std::string& dir);

}  // namespace nq
