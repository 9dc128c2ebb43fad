// Chat templates rendered in C++ (what transformers renders from Jinja), tokenized in
// one piece so ids equal HF's encode(rendered text), and the assistant loss mask
// taken from token offsets: a token is trained on when its bytes overlap an
// assistant answer region (transformers' return_assistant_tokens_mask does the same
// with {% generation %} spans). See docs/tokenizer.md.
#include "model/chat_template.h"

#include "runtime/error.h"

namespace nq {
namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
std::string lstrip_newlines(const std::string& s) { return s.substr(std::min(s.find_first_not_of('\n'), s.size())); }
std::string rstrip_newlines(const std::string& s) { return s.substr(0, s.find_last_not_of('\n') + 1); }

// Builds the rendered text twice: as written (RenderedChat::text) and with every
// message content normalized, which is what the tokenizer sees. Template literals
// ("<|im_start|>", "\n") are ASCII, so normalizing the pieces equals normalizing the
// whole, and the mask regions can be recorded as byte ranges of the normalized text.
struct ChatBuilder {
  const Tokenizer& tok;
  std::string text, normalized;
  std::vector<std::pair<size_t, size_t>> trained;  // [begin, end) in `normalized`
  size_t region_begin = 0;

  void literal(const std::string& s) { text += s, normalized += s; }
  void content(const std::string& s) { text += s, normalized += tok.normalize(s); }
  void begin_trained() { region_begin = normalized.size(); }
  void end_trained() { trained.emplace_back(region_begin, normalized.size()); }
};

void render_qwen3(ChatBuilder& b, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  if (messages[0].role == "system") b.literal("<|im_start|>system\n"), b.content(messages[0].content), b.literal("<|im_end|>\n");
  // The last real user query (a user message that is only a <tool_response> does not count).
  size_t last_query = messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;) {
    const std::string& c = messages[i].content;
    if (messages[i].role == "user" && !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i > 0)) {
      b.literal("<|im_start|>" + m.role + "\n"), b.content(m.content), b.literal("<|im_end|>\n");
    } else if (m.role == "assistant") {
      // "<think>reasoning</think>answer" in the content is split as the template does.
      std::string answer = m.content, reasoning;
      size_t close = m.content.find("</think>");
      if (close != std::string::npos) {
        answer = lstrip_newlines(m.content.substr(m.content.rfind("</think>") + 8));
        std::string before = rstrip_newlines(m.content.substr(0, close));
        size_t open = before.rfind("<think>");
        reasoning = lstrip_newlines(open == std::string::npos ? before : before.substr(open + 7));
      }
      b.literal("<|im_start|>assistant\n");
      b.begin_trained();
      if (i > last_query && (i + 1 == messages.size() || !reasoning.empty())) {
        b.literal("<think>\n"), b.content(lstrip_newlines(rstrip_newlines(reasoning))), b.literal("\n</think>\n\n");
        b.content(lstrip_newlines(answer));
      } else {
        b.content(answer);
      }
      b.literal("<|im_end|>");
      b.end_trained();
      b.literal("\n");
    }
  }
  if (add_generation_prompt) b.literal("<|im_start|>assistant\n<think>\n\n</think>\n\n");  // enable_thinking=False
}

void render_chatml(ChatBuilder& b, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  for (const ChatMessage& m : messages) {
    b.literal("<|im_start|>" + m.role + "\n");
    if (m.role == "assistant") b.begin_trained();
    b.content(m.content);
    b.literal("<|im_end|>");
    if (m.role == "assistant") b.end_trained();
    b.literal("\n");
  }
  if (add_generation_prompt) b.literal("<|im_start|>assistant\n");
}

}  // namespace

RenderedChat render_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, ChatTemplateKind kind,
                         bool add_generation_prompt) {
  NQ_CHECK(!messages.empty(), "render_chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i)
    NQ_CHECK(messages[i].role == "system" || messages[i].role == "user" || messages[i].role == "assistant",
             "render_chat: message ", i, " has role '", messages[i].role, "' (expected system, user or assistant)");
  NQ_CHECK(tok.token_id("<|im_start|>") >= 0 && tok.token_id("<|im_end|>") >= 0,
           "render_chat: the tokenizer has no <|im_start|>/<|im_end|> tokens (not a ChatML-style vocabulary)");
  ChatBuilder b{tok, {}, {}, {}};
  if (kind == ChatTemplateKind::Qwen3) render_qwen3(b, messages, add_generation_prompt);
  else render_chatml(b, messages, add_generation_prompt);

  RenderedChat out;
  out.text = std::move(b.text);
  std::vector<size_t> begin;  // byte offset of each token in b.normalized
  out.ids = tok.encode_with_offsets(b.normalized, begin);
  out.assistant_mask.assign(out.ids.size(), 0);
  // Tokens and regions both run left to right, so one sweep finds each token's first
  // region not ending before it (linear, however many messages a data line holds).
  size_t r = 0;
  for (size_t t = 0; t < out.ids.size(); ++t) {
    size_t end = t + 1 < begin.size() ? begin[t + 1] : b.normalized.size();  // [begin[t], end) overlaps a region?
    while (r < b.trained.size() && b.trained[r].second <= begin[t]) ++r;
    for (size_t k = r; k < b.trained.size() && b.trained[k].first < end; ++k)
      if (begin[t] < b.trained[k].second && end > b.trained[k].first) out.assistant_mask[t] = 1;
  }
  return out;
}

}  // namespace nq
