// Chat templates: a conversation -> the exact text the model saw in training, its
// token ids, and the loss mask for completion-only fine-tuning. Two templates are
// built in (no Jinja interpreter): Qwen3's official one in non-thinking mode, and
// plain ChatML. The mask rule is explained in docs/tokenizer.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace nq {

struct ChatMessage { std::string role, content; };              // role: system | user | assistant
struct RenderedChat {
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant_mask;  // 1 on tokens of assistant content that completion-only loss trains on:
                                        // the answer and its closing <|im_end|> (not the role header)
  std::string text;                     // the rendered string
};
enum class ChatTemplateKind { Qwen3, ChatML };

// Qwen3: renders what transformers' apply_chat_template renders with Qwen3's
// tokenizer_config.json template and enable_thinking=False: the assistant turns after
// the last user message carry "<think>\n\n</think>\n\n" (or the reasoning found in
// "<think>...</think>" inside the content); earlier ones carry the answer only.
// add_generation_prompt appends "<|im_start|>assistant\n<think>\n\n</think>\n\n".
// ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message (no default system
// message); add_generation_prompt appends "<|im_start|>assistant\n".
// Mask: 1 from just after "<|im_start|>assistant\n" through that turn's <|im_end|>;
// the "\n" after <|im_end|> is 0.
RenderedChat render_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                         ChatTemplateKind kind, bool add_generation_prompt);

}  // namespace nq
