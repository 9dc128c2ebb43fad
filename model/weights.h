// Decoder weights by Hugging Face name: loading a HF model directory
// (config.json + model.safetensors, or a sharded model.safetensors.index.json)
// and building random weights for a config (benchmarks, presets).
//
// Every parameter the config implies must be present with its exact shape;
// BF16 / F16 / F32 tensors are converted to f32. Extra tensors: a duplicated
// lm_head.weight in a tied model and rotary_emb.inv_freq buffers (older
// checkpoints) are skipped; any other unknown tensor is an error, because it
// means the checkpoint describes a model this decoder would compute wrongly.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/tensor.h"

namespace nq {

using TensorMap = std::map<std::string, Tensor>;

struct ParamSpec {
  std::string name;  // "model.layers.0.self_attn.q_proj.weight"
  Shape shape;
};
// Every parameter of the decoder for `config`, in model order (lm_head only when untied).
std::vector<ParamSpec> parameter_specs(const ModelConfig& config);

// Every spec present as an f32 tensor of its shape; errors start with `source`.
void check_weights(const TensorMap& weights, const ModelConfig& config, const std::string& source);

// f32 CPU tensors of `dir`, checked against parameter_specs(config).
TensorMap load_weights(const std::string& dir, const ModelConfig& config);

// HF-style init: linears and embeddings ~ N(0, init_std) from the seeded Philox
// stream, norms = 1, biases = 0.
TensorMap random_weights(const ModelConfig& config, uint64_t seed, float init_std = 0.02f);

}  // namespace nq
