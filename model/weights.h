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
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "model/config.h"
#include "quant/nf4.h"
#include "runtime/tensor.h"

namespace nq {

using TensorMap = std::map<std::string, Tensor>;

struct ParamSpec {
  std::string name;  // "model.layers.0.self_attn.q_proj.weight"
  Shape shape;
};
// Every parameter of the decoder for `config`, in model order (lm_head only when untied).
std::vector<ParamSpec> parameter_specs(const ModelConfig& config);

// NF4 base weights by parameter name ("model.layers.0.mlp.up_proj.weight"), e.g.
// read from a bitsandbytes checkpoint (model/bnb_checkpoint.h).
using Nf4Weights = std::map<std::string, std::shared_ptr<const Nf4Tensor>>;

// How a loader hands over the projection weights it reads: as f32 copies, or (a
// QLoRA base) each quantized to NF4 the moment it is read, straight from the
// file's bf16 / f16 / f32 bytes (quantize_nf4 on the mapped view), its mapped pages
// then dropped, so that the host never holds an f32 copy of the model: host memory
// peaks at the NF4 model plus the f32 embeddings, not at 4 bytes per parameter.
// The NF4 bytes are those of quantizing the f32 copy (Linear::quantize_nf4).
struct WeightLoad {
  bool nf4_projections = false;
  int64_t nf4_blocksize = 64;
  bool nf4_double_quant = true;
  std::string nf4_dtype = "float32";  // the torch dtype name each NF4 quant_state records
  // embed_tokens and an untied lm_head, the largest dense tensors: f32 for the CPU
  // path, bf16 for a GPU run (what to_device makes of them: model/device.h), so the
  // host does not hold them in f32 first.
  DType embedding_dtype = DType::F32;
  // Where each NF4 projection and embedding goes the moment it is made: a GPU run
  // uploads them one at a time, so the host never holds the 4-bit model (the norms,
  // small, stay f32 on the host until to_device).
  Device place = Device::CPU;
  // ./train's load for a model that will run on `device` computing in `compute`
  // (model/device.h): NF4 projections (blocksize 64, double quant) when nf4_base,
  // embeddings in the compute dtype (f32 on the CPU), both placed on `device`.
  static WeightLoad qlora(bool nf4_base, Device device = Device::CPU, DType compute = DType::BF16) {
    return WeightLoad{nf4_base, 64, true, "float32", device == Device::CPU ? DType::F32 : compute, device};
  }
};

// A model's weights by HF name: the f32 tensors, and the projections held as NF4
// (a 4-bit checkpoint's as stored, or quantized while loading by WeightLoad).
struct HfWeights {
  TensorMap dense;
  Nf4Weights nf4;
};

// One tensor read from a file (any float dtype, typically a view of the mapping)
// into `out`: NF4 when `load` asks for it and `name` is a projection, else f32.
void take_weight(const std::string& name, const Tensor& stored, const WeightLoad& load, HfWeights& out);

// Every spec present as an f32 tensor of its shape (the embeddings may be bf16:
// WeightLoad), or (projection weights only) as an NF4 tensor of that shape in `nf4`;
// errors start with `source`.
void check_weights(const TensorMap& weights, const ModelConfig& config, const std::string& source,
                   const Nf4Weights& nf4 = {});

// The tensors of `dir`, checked against parameter_specs(config): f32, or with the
// projections NF4 as `load` says. load_weights: all f32.
HfWeights load_dense_weights(const std::string& dir, const ModelConfig& config, const WeightLoad& load);
TensorMap load_weights(const std::string& dir, const ModelConfig& config);

// "model.embed_tokens.weight" or "lm_head.weight" (WeightLoad::embedding_dtype).
bool is_embedding_weight(const std::string& name);

// "model.layers.<i>.<block>.<x>_proj.weight": the weights of the decoder's Linears
// (q/k/v/o/gate/up/down), the ones QLoRA quantizes and LoRA adapts.
bool is_projection_weight(const std::string& name);

class SafetensorsDir;
// Every tensor of `file` is in `expected` or safe to skip (a tied model's duplicate
// lm_head.weight, rotary inv_freq buffers: a note on stderr); anything else is an
// error naming the tensor and its shard.
void check_no_unexpected_tensors(const SafetensorsDir& file, const std::set<std::string>& expected,
                                 const ModelConfig& config, const std::string& dir);
// The tensors named by `specs` into `out` (take_weight: owned f32 copies or NF4), each
// checked for its shape and a float dtype, one at a time, each tensor's mapped pages
// released once read (the part of load_weights that other checkpoint readers share).
void read_weights(const SafetensorsDir& file, const std::vector<ParamSpec>& specs, const std::string& dir,
                  const WeightLoad& load, HfWeights& out);

// HF-style init: linears and embeddings ~ N(0, init_std) from the seeded Philox
// stream, norms = 1, biases = 0.
TensorMap random_weights(const ModelConfig& config, uint64_t seed, float init_std = 0.02f);
// One parameter of that init, f32 [spec.shape]: drawn from the Philox stream (seed,
// offset), `offset` advanced past the blocks used. Called for every spec of
// parameter_specs() in order from offset 0, it yields random_weights() tensor by
// tensor (./quantize --random writes 8B models this way, one tensor in memory).
Tensor random_parameter(const ParamSpec& spec, uint64_t seed, uint64_t& offset, float init_std);

}  // namespace nq
