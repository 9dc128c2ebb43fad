// Tokenizing SFT examples (the rules are in encode.h).
#include "training/encode.h"

#include <algorithm>

#include "runtime/error.h"

namespace nq {

namespace {

// The tokenizer's EOS, which text and completions end with.
int32_t require_eos(const Tokenizer& tok, DataFormat format) {
  NQ_CHECK(tok.eos_id >= 0, "the tokenizer has no EOS token to end ", data_format_name(format), " samples with");
  return tok.eos_id;
}

// Appends EOS unless the text already ended with it (TRL's add_eos does the same).
void append_eos(std::vector<int32_t>& ids, const Tokenizer& tok, DataFormat format) {
  int32_t eos = require_eos(tok, format);
  if (ids.empty() || ids.back() != eos) ids.push_back(eos);
}

Sample chat_sample(const Tokenizer& tok, const std::vector<ChatMessage>& messages, const EncodeOptions& opt) {
  RenderedChat chat = opt.chat.render(tok, messages, /*add_generation_prompt=*/false);
  Sample s;
  s.ids = std::move(chat.ids);
  const bool every_token = opt.train_on_prompt || opt.trl_targets;  // TRL's default for chats: all of it
  s.trained = every_token ? std::vector<uint8_t>(s.ids.size(), 1) : std::move(chat.assistant_mask);
  return s;
}

// TRL's split of a prompt-completion sample: the completion starts where the
// prompt's own tokens stop being a prefix of the joint ones (common_prefix_length).
Sample split_at_common_prefix(std::vector<int32_t> ids, const std::vector<int32_t>& prompt, bool train_on_prompt) {
  size_t prefix = 0;
  while (prefix < prompt.size() && prefix < ids.size() && prompt[prefix] == ids[prefix]) ++prefix;
  Sample s;
  s.ids = std::move(ids);
  s.trained.assign(s.ids.size(), 1);
  if (!train_on_prompt) std::fill(s.trained.begin(), s.trained.begin() + std::ptrdiff_t(prefix), 0);
  return s;
}

// --loss-on trl's prompt-completion (encode.h): joint tokenization, TRL's split.
Sample trl_prompt_completion_sample(const Tokenizer& tok, DataFormat format, const std::string& prompt,
                                    const std::string& completion, const EncodeOptions& opt) {
  if (opt.prompt_completion_chat) {
    std::vector<int32_t> full = opt.chat.render(tok, {{"user", prompt}, {"assistant", completion}}, false).ids;
    std::vector<int32_t> head = opt.chat.render(tok, {{"user", prompt}}, false).ids;
    const std::vector<int32_t> generation = tok.encode("<|im_start|>assistant\n");
    head.insert(head.end(), generation.begin(), generation.end());
    return split_at_common_prefix(std::move(full), head, opt.train_on_prompt);
  }
  std::vector<int32_t> ids = tok.encode(prompt + completion);
  append_eos(ids, tok, format);
  return split_at_common_prefix(std::move(ids), tok.encode(prompt), opt.train_on_prompt);
}

// encode(prompt) ++ encode(completion) ++ [EOS]; trained on the completion and EOS.
Sample prompt_completion_sample(const Tokenizer& tok, DataFormat format, const std::string& prompt,
                                const std::string& completion, const EncodeOptions& opt) {
  if (opt.trl_targets) return trl_prompt_completion_sample(tok, format, prompt, completion, opt);
  if (opt.prompt_completion_chat)
    return chat_sample(tok, {{"user", prompt}, {"assistant", completion}}, opt);
  Sample s;
  s.ids = tok.encode(prompt);
  s.trained.assign(s.ids.size(), opt.train_on_prompt ? 1 : 0);
  std::vector<int32_t> answer = tok.encode(completion);
  append_eos(answer, tok, format);
  s.ids.insert(s.ids.end(), answer.begin(), answer.end());
  s.trained.resize(s.ids.size(), 1);
  return s;
}

}  // namespace

Sample encode_example(const Tokenizer& tok, const Example& ex, DataFormat format, const EncodeOptions& opt) {
  Sample s;
  switch (format) {
    case DataFormat::Messages:
      s = chat_sample(tok, ex.messages, opt);
      break;
    case DataFormat::PromptCompletion:
      s = prompt_completion_sample(tok, format, ex.prompt, ex.completion, opt);
      break;
    case DataFormat::Alpaca:
      s = prompt_completion_sample(tok, format, alpaca_prompt(ex.instruction, ex.input), ex.output, opt);
      break;
    case DataFormat::Text:
      s.ids = tok.encode(ex.text);
      append_eos(s.ids, tok, format);
      s.trained.assign(s.ids.size(), 1);
      break;
  }
  s.line = ex.line;
  return s;
}

Dataset load_dataset(const std::string& path, const Tokenizer& tok, const EncodeOptions& opt, BadLinePolicy policy) {
  NQ_CHECK(opt.max_length >= 2, "max_length must be >= 2, got ", opt.max_length);
  ParsedData parsed = parse_jsonl_file(path, policy);
  Dataset d;
  d.format = parsed.format;
  d.skipped_lines = parsed.skipped_lines;
  d.first_skip_message = parsed.first_skip_message;
  bool needs_eos = parsed.format == DataFormat::Text ||
                   (parsed.format != DataFormat::Messages && !opt.prompt_completion_chat);
  if (needs_eos) require_eos(tok, parsed.format);  // fail once, before any line, rather than on every line
  for (const Example& ex : parsed.examples) {
    Sample s;
    try {
      s = encode_example(tok, ex, parsed.format, opt);
    } catch (const Error& e) {  // e.g. invalid UTF-8 in a string: a bad line like any other
      std::string message = str(path, ":", ex.line, ": ", e.what());
      if (policy == BadLinePolicy::Error) throw Error(message);
      if (d.skipped_lines++ == 0) d.first_skip_message = message;
      continue;
    }
    if (int64_t(s.ids.size()) > opt.max_length) {  // truncate from the right
      s.ids.resize(size_t(opt.max_length));
      s.trained.resize(size_t(opt.max_length));
      ++d.truncated;
    }
    bool any_trained = false;
    for (size_t t = 1; t < s.trained.size(); ++t) any_trained |= s.trained[t] != 0;  // token 0 is never predicted
    if (!any_trained) { ++d.dropped_untrained; continue; }
    d.samples.push_back(std::move(s));
  }
  NQ_CHECK(!d.samples.empty(), path, ": no samples left to train on or evaluate (", parsed.examples.size(),
           " examples, ", d.dropped_untrained, " without a trained token after truncation to ", opt.max_length,
           " tokens, ", d.skipped_lines, " bad lines skipped)");
  return d;
}

}  // namespace nq
