// Fuzz target: a PEFT adapter folder, adapter_config.json + adapter_model.safetensors (two
// parts of the input), through AdapterConfig::from_json_file and read_peft_weights for
// the projections of the test model tests/fixtures/model/qwen3_tied.
#include <cstdlib>

#include "formats/peft_adapter.h"
#include "model/config.h"
#include "model/weights.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

static const std::map<std::string, PeftModuleShape>& modules() {
  static const std::map<std::string, PeftModuleShape> m = [] {
    std::map<std::string, PeftModuleShape> out;
    try {
      const ModelConfig c = ModelConfig::from_file(fuzz::repo_file("tests/fixtures/model/qwen3_tied/config.json"));
      for (const ParamSpec& s : parameter_specs(c))
        if (is_projection_weight(s.name))  // "<module>.weight" [out, in]
          out[s.name.substr(0, s.name.size() - 7)] = PeftModuleShape{s.shape[1], s.shape[0]};
    } catch (const Error& e) {
      std::fprintf(stderr, "fuzz_adapter: %s (run from the repository root)\n", e.what());
      std::abort();
    }
    return out;
  }();
  return m;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_input(data, size, 2);
  const std::string config = fuzz::write_file("adapter_config.json", parts[0]);
  fuzz::write_file("adapter_model.safetensors", parts[1]);
  fuzz::expect_only_nq_errors([&] {
    AdapterConfig cfg = AdapterConfig::from_json_file(config);
    for (const auto& [module, w] : read_peft_weights(fuzz::scratch_dir(), cfg, modules())) {
      const PeftModuleShape& s = modules().at(module);
      fuzz::require(w.A.shape() == Shape({cfg.lora.r, s.in}) && w.B.shape() == Shape({s.out, cfg.lora.r}),
                    "adapter weights have the configured shapes");
    }
  });
  return 0;
}
