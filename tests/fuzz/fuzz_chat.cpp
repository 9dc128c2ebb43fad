// Fuzz target: chat templates. The input as Jinja text through ChatFormat::from_template
// (template recognition), and as a conversation rendered with the real Qwen3 tokenizer
// by both built-in templates: messages are cut at NUL bytes, each one's first byte
// choosing its role (system, user, assistant, or an invalid one).
#include <cstdlib>

#include "model/chat_format.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

static const Tokenizer& qwen3() { return fuzz::qwen3_tokenizer("fuzz_chat"); }

// The tokenizer loads before the first input (a 7 MB JSON: seconds under ASan), not
// inside it, so the per-input timeout measures the encoding alone.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)qwen3();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_only_nq_errors([&] { (void)ChatFormat::from_template(text, "fuzz.jinja"); });

  std::vector<ChatMessage> messages;
  static const char* kRoles[] = {"system", "user", "assistant", "tool"};
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\0', begin);
    if (end == std::string::npos) end = text.size();
    if (end > begin) messages.push_back({kRoles[uint8_t(text[begin]) % 4], text.substr(begin + 1, end - begin - 1)});
    begin = end + 1;
  }
  for (ChatTemplateKind kind : {ChatTemplateKind::Qwen3, ChatTemplateKind::ChatML}) {
    for (bool prompt : {false, true}) {
      fuzz::expect_only_nq_errors([&] {
        RenderedChat r = render_chat(qwen3(), messages, kind, prompt);
        fuzz::require(r.assistant_mask.size() == r.ids.size(), "one mask value per token");
      });
    }
  }
  return 0;
}
