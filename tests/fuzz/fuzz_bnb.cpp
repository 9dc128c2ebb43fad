// Fuzz target: a transformers + bitsandbytes 4-bit checkpoint folder, config.json +
// model.safetensors (two parts of the input), through ModelConfig::from_file and
// load_hf_weights (its quantization_config, each 4-bit weight's quant_state JSON and
// packed tensors, the dense rest).
#include "model/bnb_checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_input(data, size, 2);
  const std::string config_path = fuzz::write_file("config.json", parts[0]);
  fuzz::write_file("model.safetensors", parts[1]);
  fuzz::expect_only_nq_errors([&] {
    const ModelConfig config = ModelConfig::from_file(config_path);
    HfWeights w = load_hf_weights(fuzz::scratch_dir(), config);
    for (const auto& [name, q] : w.nf4) fuzz::require(q->packed.numel() == (q->numel() + 1) / 2, "packed NF4 size");
  });
  return 0;
}
