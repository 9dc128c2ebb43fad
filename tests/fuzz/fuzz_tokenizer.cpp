// Fuzz target: tokenizer.json + tokenizer_config.json (two parts of the input) through
// Tokenizer::from_file; a tokenizer it accepts then encodes and decodes a few texts.
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_input(data, size, 2);
  const std::string path = fuzz::write_file("tokenizer.json", parts[0]);
  if (parts[1].empty()) fuzz::remove_file("tokenizer_config.json");
  else fuzz::write_file("tokenizer_config.json", parts[1]);
  fuzz::expect_only_nq_errors([&] {
    Tokenizer tok = Tokenizer::from_file(path);
    for (const std::string text : {std::string("Hello, world! 123 it's"), std::string("a\0b  \n\n c", 10),
                                   std::string("<|im_start|>\xC3\xA9t\xC3\xA9 \xE2\x80\x94<|im_end|>")}) {
      std::vector<size_t> begins;
      std::vector<int32_t> ids = tok.encode_with_offsets(text, begins);
      fuzz::require(begins.size() == ids.size(), "one offset per token");
      (void)tok.decode(ids);
    }
  });
  return 0;
}
