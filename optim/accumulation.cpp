// Gradient-accumulation loss scaling (see accumulation.h for the math).
#include "optim/accumulation.h"

#include "runtime/error.h"

namespace nq {

AccumulationNorm parse_accumulation_norm(const std::string& name) {
  if (name == "tokens") return AccumulationNorm::Tokens;
  if (name == "micro_batches") return AccumulationNorm::MicroBatches;
  throw Error(str("unknown accumulation normalisation '", name, "' (expected tokens or micro_batches)"));
}

double micro_batch_loss_scale(AccumulationNorm norm, int64_t micro_tokens, int64_t window_tokens,
                              int64_t micro_batches) {
  NQ_CHECK(micro_batches >= 1, "gradient accumulation: micro_batches must be >= 1, got ", micro_batches);
  if (norm == AccumulationNorm::MicroBatches) return 1.0 / double(micro_batches);
  NQ_CHECK(micro_tokens >= 0 && micro_tokens <= window_tokens,
           "gradient accumulation: micro-batch has ", micro_tokens, " counted tokens of ", window_tokens, " in the step");
  // A window without a single trained token contributes nothing (and must not divide by 0).
  return window_tokens == 0 ? 0.0 : double(micro_tokens) / double(window_tokens);
}

}  // namespace nq
