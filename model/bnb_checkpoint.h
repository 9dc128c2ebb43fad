// transformers + bitsandbytes 4-bit checkpoints, read into the decoder (./train,
// ./merge) and written by ./quantize, from a dense model or, with --random, from a
// config alone.
//
// The format itself (quantization_config, the serialized NF4 tensors) is
// formats/bnb_4bit.h; the HF directory plumbing formats/hf_files.h.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "formats/bnb_4bit.h"
#include "formats/hf_files.h"
#include "model/decoder.h"

namespace nq {

// The weights of a HF model directory, dense or bitsandbytes 4-bit: the projections
// a 4-bit checkpoint stores as NF4 go to `nf4` as they are (no dense copy ever
// exists); a dense checkpoint's projections go there too, quantized as they are
// read, when `load` asks for NF4 (model/weights.h); every other tensor to `dense`
// as f32. Errors name the file and the tensor.
HfWeights load_hf_weights(const std::string& dir, const ModelConfig& config, const WeightLoad& load = {});

// The decoder of a HF model directory (load_hf_weights), NF4 projections in place.
Decoder load_hf_decoder(const std::string& dir, DecoderOptions options = {});

// Writes a 4-bit checkpoint transformers loads: model.safetensors (every NF4 weight
// serialized, `dense` tensors converted to `dtype`) and config.json = `config_json`
// (the source model's config.json text) with `quant`'s quantization_config added.
void save_bnb_4bit(const std::string& dir, const std::string& config_json, const ModelConfig& config,
                   const TensorMap& dense, const Nf4Weights& nf4, const Bnb4bitConfig& quant, DType dtype);

// ./quantize: the HF model in `src` -> a 4-bit checkpoint in `dst` (projections NF4,
// other tensors in the config's dtype, tokenizer files copied). Refuses a source
// that is already quantized.
struct QuantizeReport {
  int64_t quantized_params = 0;  // weights stored as NF4
  int64_t dense_params = 0;      // embeddings, norms, lm_head
  double nf4_bits = 0;           // stored bits of the NF4 weights (codes + block statistics)
  uint64_t bytes_before = 0;     // the source's *.safetensors files
  uint64_t bytes_after = 0;      // dst/model.safetensors
  double bits_per_quantized_param() const { return nf4_bits / double(quantized_params); }
};
QuantizeReport quantize_checkpoint(const std::string& src, const std::string& dst, int64_t blocksize = 64,
                                   bool double_quant = true);

// ./quantize --random: a random-init 4-bit checkpoint of `config` written straight
// into `dir`, tensor by tensor (host memory: about one tensor's f32 and one layer's
// NF4, so an 8B model needs ~4 GB, not 32). Each tensor is random_parameter() of
// model/weights.h (normal(0, config.initializer_range), norms 1: transformers'
// _init_weights) rounded to the config's dtype, as a model created in that dtype
// holds it; projections are then quantized (quantize_nf4, double quant, blocksize
// 64: what transformers + bitsandbytes would save), the rest kept in that dtype.
// Files: one safetensors shard per layer (+ one for the embeddings, one for the
// final norm and lm_head), model.safetensors.index.json, config.json with the
// quantization_config. `progress` gets one line per shard written.
struct RandomCheckpointReport {
  int64_t quantized_params = 0, dense_params = 0;
  uint64_t bytes = 0;  // tensor bytes over all shards
  int shards = 0;
};
RandomCheckpointReport write_random_bnb_checkpoint(const std::string& dir, const ModelConfig& config, uint64_t seed,
                                                   const std::function<void(const std::string&)>& progress = {});

}  // namespace nq
