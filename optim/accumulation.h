// Gradient accumulation: one optimizer step from K micro-batches whose
// gradients add up in .grad (autograd accumulates into leaves). Each
// micro-batch's loss is scaled before backward so that the summed gradient is
// the gradient of the loss of the whole window of K micro-batches:
//
//   Tokens (the default; transformers Trainer when the model takes
//   num_items_in_batch, which Qwen3 does):
//       L = sum over all counted tokens of the window of CE / N_window
//       micro-batch i has mean loss l_i over n_i counted tokens
//       => scale_i = n_i / N_window           (sum_i scale_i l_i = L)
//   MicroBatches (Trainer with models that don't, and the classic recipe):
//       L = (1/K) sum_i l_i                   => scale_i = 1 / K
//
// The two agree when every micro-batch has the same number of counted tokens;
// Tokens weighs every trained token equally whatever the padding.
#pragma once
#include <cstdint>
#include <string>

namespace nq {

enum class AccumulationNorm { Tokens, MicroBatches };
AccumulationNorm parse_accumulation_norm(const std::string& name);  // "tokens" | "micro_batches"

// The factor a micro-batch's mean loss is multiplied by before backward.
// micro_tokens: counted (label != -100) tokens in this micro-batch;
// window_tokens: counted tokens in all `micro_batches` micro-batches of the step.
double micro_batch_loss_scale(AccumulationNorm norm, int64_t micro_tokens, int64_t window_tokens,
                              int64_t micro_batches);

}  // namespace nq
