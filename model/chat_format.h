// Which chat template a model uses, recognised from its Jinja text (a GGUF's
// tokenizer.chat_template or tokenizer_config.json's "chat_template") without a
// Jinja interpreter: the two built-in renderers of model/chat_template.h (Qwen3,
// ChatML) plus the default system message some ChatML templates insert when a
// conversation has none, e.g. SmolLM2's
//   {% if loop.first and messages[0]['role'] != 'system' %}
//     {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n' }}
#pragma once
#include <string>
#include <vector>

#include "model/chat_template.h"
#include "model/config.h"

namespace nq {

struct ChatFormat {
  ChatTemplateKind kind = ChatTemplateKind::ChatML;
  std::string default_system;  // "" = none; else prepended to conversations without a system message

  // render_chat with the default system message applied.
  RenderedChat render(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                      bool add_generation_prompt) const;

  // Recognises `jinja`: Qwen3 (mentions <think> / enable_thinking) or ChatML
  // (<|im_start|>role\n...<|im_end|>). Anything else is refused, naming `source`.
  static ChatFormat from_template(const std::string& jinja, const std::string& source);
  // Without a template: Qwen3's for qwen3, plain ChatML otherwise.
  static ChatFormat for_config(const ModelConfig& config);
};

}  // namespace nq
