// Tokenizing SFT examples: Example (training/data.h) -> Sample (ids + trained mask),
// and load_dataset, the whole JSONL -> samples step the trainer calls.
//
// What each format becomes, and which tokens the loss trains on (trained = 1):
//   messages           the chat template (model/chat_format.h: with the model's
//                      default system message, if any); trained on the assistant answers and their closing <|im_end|> (the
//                      template's assistant_mask), or on everything with train_on_prompt.
//   prompt-completion  encode(prompt) ++ encode(completion) ++ [EOS], plain text
//                      as TRL does for non-conversational data; trained on the
//                      completion and EOS. With prompt_completion_chat the pair is
//                      rendered as a user/assistant chat instead (TRL's
//                      conversational prompt-completion).
//   alpaca             prompt-completion with prompt = alpaca_prompt(instruction,
//                      input) and completion = output.
//   text               encode(text) ++ [EOS] (TRL appends EOS to language-modeling
//                      text); trained on every token.
// EOS is appended only when the text does not already end with it (as TRL).
// Prompt and completion are encoded separately, so the prompt's tokens are
// exactly encode(prompt): TRL encodes prompt+completion jointly and warns when
// the two disagree (a BPE merge across the boundary); here they cannot.
// Samples longer than max_length are truncated from the right (the first
// max_length tokens are kept). A sample with no trained token left is dropped.
#pragma once
#include <cstdint>
#include <string>

#include "model/chat_format.h"
#include "training/data.h"

namespace nq {

struct EncodeOptions {
  int64_t max_length = 1024;
  bool train_on_prompt = false;        // loss on every token, not just answers / completions
  bool prompt_completion_chat = false; // prompt-completion / alpaca rendered as a user/assistant chat
  // The model's chat format: its template and the default system message it adds
  // to conversations without one (as apply_chat_template does, so as TRL trains).
  ChatFormat chat{ChatTemplateKind::Qwen3, ""};
};

// Tokenizes one example of `format` (not yet truncated).
Sample encode_example(const Tokenizer& tok, const Example& ex, DataFormat format, const EncodeOptions& opt);

struct Dataset {
  DataFormat format = DataFormat::Messages;
  std::vector<Sample> samples;
  int64_t skipped_lines = 0;       // bad lines under BadLinePolicy::Skip
  std::string first_skip_message;
  int64_t truncated = 0;           // samples cut to max_length
  int64_t dropped_untrained = 0;   // samples with no trained token (after truncation)
};

// parse_jsonl_file + encode_example + truncation + filtering. Throws when no
// sample is left, saying why.
Dataset load_dataset(const std::string& path, const Tokenizer& tok, const EncodeOptions& opt, BadLinePolicy policy);

}  // namespace nq
