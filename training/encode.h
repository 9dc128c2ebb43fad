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
//
// trl_targets (./train --loss-on trl): the tokens and targets of TRL 1.16's
// SFTTrainer with its defaults (assistant_only_loss=False, completion_only_loss
// unset), as tests/fixtures/trl_masks (written by TRL) shows them:
//   messages           every token (TRL trains whole conversations by default).
//   prompt-completion  ids = encode(prompt + completion) ++ [EOS], jointly; the
//                      completion starts where encode(prompt) stops being a prefix
//                      of ids (TRL's common_prefix_length). With
//                      prompt_completion_chat: ids = the rendered user/assistant
//                      chat, prompt = the user turn rendered ++ "<|im_start|>assistant\n"
//                      (the generation prompt of both templates with thinking on, as
//                      TRL renders it: no empty think block), so the empty think block
//                      of a Qwen3 answer and the "\n" after its <|im_end|> are trained.
//   alpaca             as prompt-completion (TRL has no alpaca format: the same pair).
//   text               as above (every token, EOS appended).
// With train_on_prompt too: TRL's completion_only_loss=False (every token of the
// same ids).
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
  bool trl_targets = false;            // TRL 1.16 SFTTrainer's tokens and targets (above)
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
