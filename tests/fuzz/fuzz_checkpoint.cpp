// Fuzz target: a trainer checkpoint folder's trainer_state.json, train_config.json and
// optimizer.safetensors (three parts of the input) through read_checkpoint_config and
// load_checkpoint_state into an AdamW over two parameters named "a" [4, 8] and "b" [8, 4].
#include "optim/adamw.h"
#include "tests/fuzz/fuzz_util.h"
#include "training/checkpoint.h"

using namespace nq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_input(data, size, 3);
  fuzz::write_file("trainer_state.json", parts[0]);
  fuzz::write_file("train_config.json", parts[1]);
  fuzz::write_file("optimizer.safetensors", parts[2]);
  fuzz::expect_only_nq_errors([&] {
    TrainConfig cfg = read_checkpoint_config(fuzz::scratch_dir());
    fuzz::expect_only_nq_errors([&] { cfg.validate(); });
  });
  fuzz::expect_only_nq_errors([&] {
    AdamW opt({Var(Tensor::zeros({4, 8}), true, "a"), Var(Tensor::zeros({8, 4}), true, "b")}, AdamWConfig{});
    TrainerState s = load_checkpoint_state(fuzz::scratch_dir(), opt);
    fuzz::require(s.step >= 1 && s.data.epoch >= 0 && s.data.index >= 0, "a loaded state is in range");
  });
  return 0;
}
