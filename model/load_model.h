// One entry point for every program (./generate, ./eval, ./train): a model from
// either a Hugging Face directory (config.json, *.safetensors, tokenizer.json,
// tokenizer_config.json) or a llama.cpp .gguf file (model/gguf_model.h).
// Both end in the same things: config, HF-named f32 weights, tokenizer, chat format.
#pragma once
#include <optional>
#include <string>

#include "model/chat_format.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace nq {

struct LoadedModel {
  std::string source;                  // the path given
  ModelConfig config;
  TensorMap weights;                   // f32 [out, in] by HF name (check_weights passed)
  std::optional<Tokenizer> tokenizer;  // absent for a HF directory without tokenizer.json
  // From the chat template (else the config's default); an unrecognised template
  // does not stop the model from loading, only chat_format() throws then.
  std::optional<ChatFormat> chat;
  std::string chat_error;              // why `chat` is absent
  const ChatFormat& chat_format() const;
};

// `path` ending in ".gguf" (a file) or a HF model directory.
LoadedModel load_model(const std::string& path);

bool is_gguf_path(const std::string& path);

}  // namespace nq
