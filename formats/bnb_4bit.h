// The transformers + bitsandbytes 4-bit checkpoint format: its quantization_config and
// the serialized NF4 weights in its safetensors (model/bnb_checkpoint.h reads such a
// checkpoint into a Decoder and writes one from a model).
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
#include <optional>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "quant/nf4.h"

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

// Writes dir/config.json = `config_json` (a model's config.json text) with `quant`'s
// quantization_config added.
void write_bnb_config_json(const std::string& dir, const std::string& config_json, const Bnb4bitConfig& quant);

// Whether `file` stores the weight `name` ("model.layers.0.self_attn.q_proj.weight") 4-bit
// (its quant_state entry is present).
bool has_nf4_tensor(const SafetensorsDir& file, const std::string& name);

// The names of the tensors a 4-bit weight `name` is stored as: `name` and its
// .absmax, .quant_map, .nested_absmax, .nested_quant_map, .quant_state.bitsandbytes__nf4.
std::vector<std::string> nf4_tensor_names(const std::string& name);

// The 4-bit weight `name` of `file` (nf4_from_state_dict of its tensors), in owned
// host memory (never aliasing the read-only mapping); errors name the file.
Nf4Tensor read_nf4_tensor(const SafetensorsDir& file, const std::string& name);

}  // namespace nq
