// A model out of a GGUF file: llama.cpp's metadata keys and tensor names turned
// into what the rest of nanoqlora speaks (a ModelConfig, HF-named f32 weights,
// the byte-level BPE tokenizer and the chat template).
//
//   GGUF metadata  "{arch}.block_count", "{arch}.embedding_length", ...  -> ModelConfig
//   GGUF tensors   "blk.3.attn_q.weight" (block-quantized, Q/K rows permuted)
//                  -> "model.layers.3.self_attn.q_proj.weight" [out, in] f32, HF row order
//                  "blk.3.ffn_up_exps.weight" [E, I, D] (qwen3moe) -> E tensors
//                  "model.layers.3.mlp.experts.<e>.up_proj.weight" [I, D]
//   tokenizer.ggml.{model, tokens, merges, token_type, pre, *_token_id} -> Tokenizer
//   tokenizer.chat_template (Jinja text) -> ChatFormat, in model/load_model.cpp
//
// Architectures: "llama" (SmolLM2, Llama 2/3 without RoPE scaling), "qwen3" and
// "qwen3moe" (Qwen3-MoE: every layer sparse, top-k weights renormalised, as llama.cpp
// computes it). Anything the decoder would compute differently (RoPE scaling, partial
// RoPE, sliding windows, experts outside qwen3moe, unknown tensors) is refused with an
// error naming the file and the key or tensor. The math and the name table: docs/gguf_model.md.
#pragma once
#include <string>

#include "model/config.h"
#include "formats/gguf.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace nq {

// The decoder's hyper-parameters from the GGUF metadata (validated like a config.json).
ModelConfig gguf_config(const GGUFFile& file);

// Every parameter of `config` dequantized to f32 under its HF name; llama's
// attn_q / attn_k rows (and biases) are un-permuted back to rotate-half order.
// With `load` asking for NF4 (model/weights.h) each projection is quantized as soon
// as it is decoded and its f32 copy freed: one tensor in f32 at a time (a qwen3moe
// expert tensor [E, I, D] is decoded whole, then split into its E experts).
HfWeights gguf_weights(const GGUFFile& file, const ModelConfig& config, const WeightLoad& load = {});

// The byte-level BPE tokenizer (tokenizer.ggml.model "gpt2") with bos/eos/pad ids.
Tokenizer gguf_tokenizer(const GGUFFile& file);

// The HF name of a GGUF tensor ("blk.0.ffn_up.weight" -> "model.layers.0.mlp.up_proj.weight"),
// or "" for a name outside the table (a 3-D expert tensor is several HF tensors: see below).
std::string gguf_to_hf_name(const std::string& gguf_name);
// The HF name of expert `expert`'s slice of a MoE block's 3-D expert tensor
// ("blk.0.ffn_up_exps.weight", 5 -> "model.layers.0.mlp.experts.5.up_proj.weight"), or "" for
// a name that is not one.
std::string gguf_expert_to_hf_name(const std::string& gguf_name, int64_t expert);
// The inverse ("model.layers.0.mlp.up_proj.weight" -> "blk.0.ffn_up.weight"), or "".
std::string hf_to_gguf_name(const std::string& hf_name);

}  // namespace nq
