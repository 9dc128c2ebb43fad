// Fuzz target: a GGUF file as a model: metadata -> ModelConfig (gguf_config), tensors ->
// HF-named weights (gguf_weights), vocabulary -> Tokenizer (gguf_tokenizer), which then
// encodes and decodes text holding a NUL byte, special-token text and invalid UTF-8.
#include <string>

#include "formats/gguf.h"
#include "model/gguf_model.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_file("model.gguf", std::string(reinterpret_cast<const char*>(data), size));
  fuzz::expect_only_nq_errors([&] {
    GGUFFile f = GGUFFile::open(path);
    fuzz::expect_only_nq_errors([&] {
      ModelConfig c = gguf_config(f);
      (void)c.summary();
      (void)gguf_weights(f, c);
      (void)gguf_weights(f, c, WeightLoad::qlora(true));  // the QLoRA load: NF4 as read
    });
    Tokenizer tok = gguf_tokenizer(f);
    for (const std::string text : {std::string("Hello, world! 123"), std::string("a\0b", 3),
                                   std::string("<|im_start|>user\n\xC3\xA9t\xC3\xA9<|im_end|>"), std::string("\xFF")}) {
      fuzz::expect_only_nq_errors([&] {
        std::vector<int32_t> ids = tok.encode(text);
        (void)tok.decode(ids);
      });
    }
  });
  return 0;
}
