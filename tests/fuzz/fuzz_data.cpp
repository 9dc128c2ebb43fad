// Fuzz target: a JSONL training file (any of the four formats, detected from its first
// line) through parse_jsonl and encode_example with the real Qwen3 tokenizer. The
// first byte picks the bad-line policy and the encoding options, the rest is the file.
#include <cstdlib>
#include <sstream>

#include "tests/fuzz/fuzz_util.h"
#include "training/encode.h"

using namespace nq;

static const Tokenizer& qwen3() { return fuzz::qwen3_tokenizer("fuzz_data"); }

// The tokenizer loads before the first input (a 7 MB JSON: seconds under ASan), not
// inside it, so the per-input timeout measures the encoding alone.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)qwen3();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  std::istringstream in(std::string(reinterpret_cast<const char*>(data) + 1, size - 1));
  fuzz::expect_only_nq_errors([&] {
    ParsedData parsed = parse_jsonl(in, "fuzz.jsonl", mode & 1 ? BadLinePolicy::Skip : BadLinePolicy::Error);
    EncodeOptions opt;
    opt.max_length = 64;
    opt.train_on_prompt = mode & 2;
    opt.prompt_completion_chat = mode & 4;
    opt.chat = ChatFormat{mode & 8 ? ChatTemplateKind::ChatML : ChatTemplateKind::Qwen3, mode & 16 ? "Be brief." : ""};
    for (const Example& ex : parsed.examples) {
      fuzz::expect_only_nq_errors([&] {
        Sample s = encode_example(qwen3(), ex, parsed.format, opt);
        fuzz::require(s.trained.size() == s.ids.size(), "one trained flag per token");
      });
    }
  });
  return 0;
}
