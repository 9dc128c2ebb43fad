// Chat template recognition (see chat_format.h).
#include "model/chat_format.h"

#include "runtime/error.h"

namespace nq {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Jinja string literals write a newline either as itself or as the escape "\n".
std::string unescape_newlines(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') out += '\n', ++i;
    else out += s[i];
  }
  return out;
}

// The text of a system turn written as one string literal in the template
// ("<|im_start|>system\nYou are ...<|im_end|>"), which only happens for a default
// system message; a turn built from the messages ("... + message['content'] + ...")
// contains quotes or braces and is not one.
std::string literal_system_message(const std::string& jinja) {
  const std::string open = "<|im_start|>system", close = "<|im_end|>";
  for (size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
    size_t begin = at + open.size();
    if (jinja.compare(begin, 1, "\n") == 0) begin += 1;
    else if (jinja.compare(begin, 2, "\\n") == 0) begin += 2;
    else continue;
    size_t end = jinja.find(close, begin);
    if (end == std::string::npos) continue;
    std::string body = jinja.substr(begin, end - begin);
    if (body.empty() || body.find_first_of("'\"{}+") != std::string::npos) continue;
    return unescape_newlines(body);
  }
  return "";
}

}  // namespace

RenderedChat ChatFormat::render(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) const {
  if (default_system.empty() || (!messages.empty() && messages[0].role == "system"))
    return render_chat(tok, messages, kind, add_generation_prompt);
  std::vector<ChatMessage> with_system = {{"system", default_system}};
  with_system.insert(with_system.end(), messages.begin(), messages.end());
  return render_chat(tok, with_system, kind, add_generation_prompt);
}

ChatFormat ChatFormat::from_template(const std::string& jinja, const std::string& source) {
  NQ_CHECK(contains(jinja, "<|im_start|>") && contains(jinja, "<|im_end|>"), source,
           ": chat template is not ChatML-style (no <|im_start|> / <|im_end|>); only ChatML and Qwen3 templates "
           "are built in");
  ChatFormat f;
  if (contains(jinja, "<think>") || contains(jinja, "enable_thinking")) {
    f.kind = ChatTemplateKind::Qwen3;
  } else {
    f.kind = ChatTemplateKind::ChatML;
    f.default_system = literal_system_message(jinja);
  }
  return f;
}

ChatFormat ChatFormat::for_config(const ModelConfig& config) {
  ChatFormat f;
  f.kind = config.model_type == "qwen3" || config.model_type == "qwen3_moe" ? ChatTemplateKind::Qwen3
                                                                            : ChatTemplateKind::ChatML;
  return f;
}

}  // namespace nq
