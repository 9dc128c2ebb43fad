// transformers + bitsandbytes 4-bit checkpoints, read into the decoder (./train,
// ./merge) and written by ./quantize, from a dense model or, with --random, from a
// config alone; and the plumbing of a Hugging Face model directory that ./quantize
// and ./merge share (config.json edits, tokenizer files carried over).
//
// A 4-bit checkpoint is an ordinary HF directory whose config.json carries
//   "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true,
//                           "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
//                           "bnb_4bit_compute_dtype": "float32", ...}
// and whose safetensors hold, for every projection weight W [out, in] (q/k/v/o/
// gate/up/down), the serialized Linear4bit state (quant/nf4.h, nf4_to_state_dict):
//   <module>.weight                                 u8  [ceil(out*in/2), 1]  packed nibbles
//   <module>.weight.absmax                          u8  [n_blocks] (f32 without double quant)
//   <module>.weight.quant_map                       f32 [16]   the NF4 code
//   <module>.weight.nested_absmax, .nested_quant_map           (double quant only)
//   <module>.weight.quant_state.bitsandbytes__nf4   u8  [len]  JSON: blocksize, dtype, shape, offset
// Every other tensor (embeddings, norms, an untied lm_head) is dense in the model's dtype.
// Which projections are 4-bit is read per tensor (a quant_state entry), so modules
// transformers kept dense (llm_int8_skip_modules) load densely.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "model/decoder.h"

namespace nq {

// The 4-bit settings of a quantization_config (the only kind nanoqlora reads).
struct Bnb4bitConfig {
  bool double_quant = true;               // bnb_4bit_use_double_quant
  std::string compute_dtype = "float32";  // bnb_4bit_compute_dtype (our CPU path computes in f32 anyway)

  // config.json's "quantization_config" as transformers writes it (JSON text, one object).
  std::string to_json() const;
};

// The quantization_config of the config.json at `path`: none -> nullopt; bitsandbytes
// NF4 4-bit -> its settings; anything else (fp4, 8-bit, another quant_method) is an
// error naming the file and the field.
std::optional<Bnb4bitConfig> read_bnb_4bit_config(const std::string& config_path);

// The weights of a HF model directory, dense or bitsandbytes 4-bit: the projections
// a 4-bit checkpoint stores as NF4 go to `nf4` as they are (no dense copy ever
// exists), every other tensor to `dense` as f32. Errors name the file and the tensor.
struct HfWeights {
  TensorMap dense;
  Nf4Weights nf4;  // empty for a dense checkpoint
};
HfWeights load_hf_weights(const std::string& dir, const ModelConfig& config);

// The decoder of a HF model directory (load_hf_weights), NF4 projections in place.
Decoder load_hf_decoder(const std::string& dir, DecoderOptions options = {});

// NF4 (quant/nf4.h) of every projection weight in `weights`, which are removed from
// the map (the dense copies are freed one by one). `dtype` is the torch dtype name
// recorded in each quant_state ("float32", "bfloat16", ...).
Nf4Weights quantize_projections(TensorMap& weights, const ModelConfig& config, int64_t blocksize, bool double_quant,
                                const std::string& dtype);

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

// ---------------------------------------------------------------- HF directory plumbing

// The text of `path` (a JSON file); an error naming it when unreadable.
std::string read_text_file(const std::string& path);

// The DType of a torch dtype name: "float32" | "bfloat16" | "float16"; else an error naming `what`.
DType dtype_of_torch_name(const std::string& name, const std::string& what);
const char* torch_name_of_dtype(DType dtype);  // the inverse

// Copies the tokenizer and generation files of `src` (tokenizer.json,
// tokenizer_config.json, special_tokens_map.json, vocab.json, merges.txt,
// added_tokens.json, chat_template.jinja, generation_config.json) that exist into
// `dst`; returns the names copied.
std::vector<std::string> copy_tokenizer_files(const std::string& src, const std::string& dst);

// An error when `dst` is the directory `src` (writing there would destroy the input).
void check_not_same_dir(const std::string& src, const std::string& dst);

// Creates `dir` (and its parents) when missing; an error when it cannot.
void make_dir(const std::string& dir);

// Writes `text` to `path` atomically (PATH.tmp, then rename).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace nq
