// Evaluation: the mean next-token cross-entropy of a model over a JSONL file
// (./eval). Each line is
//   {"text": "..."}       every token after the first is a target (Llama: BOS first)
//   {"messages": [...]}   rendered with the model's chat template (Qwen3 for qwen3,
//                         ChatML otherwise); only assistant answers and their
//                         <|im_end|> are targets (RenderedChat::assistant_mask)
// The result is token-weighted: sum of -log p(target) over all targets of all
// lines / number of targets, not a mean of per-line means.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/chat_format.h"
#include "model/decoder.h"
#include "model/tokenizer.h"

namespace nq {

struct LabeledIds {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  // HF convention: the token itself where it is a target, else -100
};
// One JSONL line; errors start with `where` ("FILE:LINE").
// `chat`: the model's chat format (model/load_model.h); null = ChatFormat::for_config(config).
LabeledIds encode_eval_line(const std::string& line, const std::string& where, const Tokenizer& tok,
                            const ModelConfig& config, const ChatFormat* chat = nullptr);

struct EvalResult {
  double loss = 0;      // mean -log p over the counted targets
  int64_t tokens = 0;   // counted targets
  int64_t lines = 0;    // lines that had at least one target
};
// Every non-blank line of `path`, truncated to max_length tokens, one at a time.
EvalResult evaluate_jsonl(const Decoder& model, const Tokenizer& tok, const std::string& path, int64_t max_length,
                          const ChatFormat* chat = nullptr);

}  // namespace nq
