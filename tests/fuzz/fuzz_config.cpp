// Fuzz target: a Hugging Face config.json through ModelConfig::from_json. A config it
// accepts must survive its own round trip: from_json(to_hf_json()) writes the same text.
#include "model/config.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_only_nq_errors([&] {
    ModelConfig c = ModelConfig::from_json(std::string(reinterpret_cast<const char*>(data), size), "config.json");
    (void)c.summary();
    fuzz::require(c.num_parameters() > 0, "an accepted config has parameters");
    const std::string written = c.to_hf_json();
    fuzz::require(ModelConfig::from_json(written, "round trip").to_hf_json() == written,
                  "from_json(to_hf_json()) round-trips");
  });
  return 0;
}
