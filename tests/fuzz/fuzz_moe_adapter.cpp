// Fuzz target: a PEFT adapter folder for a Qwen3-MoE, adapter_config.json +
// adapter_model.safetensors (two parts of the input), through load_peft_adapter onto the
// tiny model tests/fixtures/moe/renorm: the config's target_parameters and rank_pattern /
// alpha_pattern, the fused expert tensors split onto the experts' pairs (model/adapters.cpp),
// their off-diagonal blocks checked. Every pair it attaches must have the shapes of its expert.
#include <cstdlib>

#include "formats/safetensors.h"
#include "model/adapters.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/weights.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

// The fixture's config and weights, read once; each input gets a fresh decoder over them.
static const std::pair<ModelConfig, TensorMap>& base() {
  static const std::pair<ModelConfig, TensorMap> b = [] {
    try {
      const std::string dir = fuzz::repo_file("tests/fixtures/moe/renorm");
      const ModelConfig c = ModelConfig::from_file(dir + "/config.json");
      return std::pair<ModelConfig, TensorMap>{c, load_weights(dir, c)};
    } catch (const Error& e) {
      std::fprintf(stderr, "fuzz_moe_adapter: %s (run from the repository root)\n", e.what());
      std::abort();
    }
  }();
  return b;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_input(data, size, 2);
  fuzz::write_file("adapter_config.json", parts[0]);
  fuzz::write_file("adapter_model.safetensors", parts[1]);
  fuzz::expect_only_nq_errors([&] {
    Decoder model(base().first, base().second);
    load_peft_adapter(fuzz::scratch_dir(), model);
    for (Linear* l : model.linears()) {
      if (!l->has_lora()) continue;
      const Shape a = l->lora().A.shape(), b = l->lora().B.shape();
      fuzz::require(a.ndim == 2 && b.ndim == 2 && a[1] == l->in_features() && b[0] == l->out_features() &&
                        a[0] == b[1] && a[0] > 0,
                    "every attached pair is [r, in] / [out, r] for its projection");
    }
  });
  return 0;
}
