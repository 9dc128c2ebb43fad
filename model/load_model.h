// One entry point for every program (./generate, ./eval, ./train): a model from
// either a Hugging Face directory (config.json, *.safetensors, tokenizer.json,
// tokenizer_config.json; dense or a bitsandbytes 4-bit checkpoint) or a llama.cpp
// .gguf file (model/gguf_model.h). All end in the same things: config, HF-named
// f32 weights (+ the NF4 projections of a 4-bit checkpoint), tokenizer, chat format.
#pragma once
#include <optional>
#include <string>

#include "model/chat_format.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace nq {

struct LoadedModel {
  std::string source;                  // the path given
  ModelConfig config;
  TensorMap weights;                   // f32 by HF name (check_weights passed with `nf4`)
  Nf4Weights nf4;                      // the NF4 projections: a 4-bit checkpoint's as stored, or quantized while
                                       // loading (WeightLoad); else empty
  std::optional<Tokenizer> tokenizer;  // absent for a HF directory without tokenizer.json
  // From the chat template (else the config's default); an unrecognised template
  // does not stop the model from loading, only chat_format() throws then.
  std::optional<ChatFormat> chat;
  std::string chat_error;              // why `chat` is absent
  const ChatFormat& chat_format() const;
};

// `path` ending in ".gguf" (a file) or a HF model directory. `load` says whether the
// projections arrive f32 in `weights` or (a QLoRA base) NF4 in `nf4`, quantized one
// by one as they are read (model/weights.h: the host never holds the model in f32).
LoadedModel load_model(const std::string& path, const WeightLoad& load = {});

bool is_gguf_path(const std::string& path);

// The tokenizer of what load_model takes, without the weights: a .gguf's vocabulary,
// a model folder's tokenizer.json (with tokenizer_config.json's special tokens), or a
// tokenizer.json file itself (./tokenize).
Tokenizer load_tokenizer(const std::string& path);

// The decoder of `m` with its weights moved in (m.weights and m.nf4 are emptied).
// nf4_base: every projection NF4 (QLoRA): a 4-bit checkpoint's as stored, so an 8B
// model never exists in f32 on the host; the others quantized here (blocksize 64,
// double quant). !nf4_base: a dense f32 base; a 4-bit checkpoint is then an error.
Decoder build_decoder(LoadedModel& m, DecoderOptions options, bool nf4_base);

}  // namespace nq
