// Evaluation: the token-weighted mean next-token cross-entropy of a model over
// a dataset. One function computes it for the trainer (--eval-data,
// --eval-split: the "eval loss") and for ./eval, so ./eval on the file the
// trainer evaluated, with the same options and the adapter it wrote, prints
// the trainer's number. docs/training.md ("Evaluation") has the math.
//
//   loss = Σ_samples Σ_{t : trained[t+1]} -log p(ids[t+1] | ids[0..t])  /  #targets
//
// The samples are load_dataset's (training/encode.h: any of the four formats,
// the same EOS, chat template and truncation as training). Batches come from
// the trainer's DataLoader in file order: padded rows, or packed rows with
// --packing. Padding and the last token of each sample have no target, so the
// sum and the count are those of the samples alone: each batch's mean CE
// (what forward_loss returns) is weighted by its target count, and the result
// does not depend on the batch size (up to float rounding).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "model/decoder.h"
#include "model/tokenizer.h"
#include "training/batch.h"
#include "training/encode.h"
#include "training/train_config.h"

namespace nq {

struct EvalLoss {
  double loss = 0;      // token-weighted mean CE (NaN when there is no target)
  int64_t targets = 0;  // counted targets
};

// After each batch: where the pass is and the loss so far.
struct EvalProgress {
  int64_t batch = 0, batches = 0;  // batches done, batches in the pass
  int64_t tokens = 0;              // non-padding input tokens read so far
  EvalLoss so_far;
};

// One pass over `subset` of `samples` in file order (options.shuffle is
// ignored), on the model's device, without gradients and in eval mode (no LoRA
// dropout: TrainingMode(false), autograd/var.h, as model.eval() in PyTorch)
// whatever mode the caller is in; consumes no random numbers.
EvalLoss evaluate_samples(Decoder& model, const std::vector<Sample>& samples, const std::vector<int64_t>& subset,
                          const LoaderOptions& options,
                          const std::function<void(const EvalProgress&)>& on_batch = nullptr);

// The behaviour metric (./eval --generate N): the model answers the first N
// samples greedily and a task score says how many answers are right. Each
// sample's prompt is its tokens before its last trained span (for a chat: the
// conversation up to the last assistant turn, rendered with the generation
// prompt exactly as training renders it), the reference is that span's text
// without its closing stop token; of both, only the text after a "</think>"
// counts (Qwen3's chat renders an empty reasoning block before each answer).
// An answer is right when
//   --match REGEX given: the answer matches it (std::regex ECMAScript, whole answer),
//                        e.g. the pirate persona: '^Arr!.*Fair winds, matey!$'
//   otherwise:           it equals the reference (exact match, outer whitespace trimmed),
//                        e.g. the format dataset's "#### 42".
// score = right / N. Decoding is greedy, in eval mode (no LoRA dropout), with a
// KV cache (model/generate.h), on the CPU as ./generate decodes.
struct GenerateScoreOptions {
  int64_t prompts = 0;          // N; 0: no generation
  std::string match;            // "" = exact match with the reference
  int64_t max_new_tokens = 64;  // per answer
};
struct GeneratedAnswer {
  int64_t line = 0;  // the sample's line in --data (messages)
  std::string reference, answer;
  bool right = false;
};
struct GenerateScore {
  std::string metric;  // "exact" or "match /REGEX/"
  int64_t prompts = 0, right = 0;
  double score = 0;    // right / prompts
  std::vector<GeneratedAnswer> answers;
};
// Scores the first options.prompts of `samples` (all of them when fewer);
// stop_ids end an answer (eos, <|im_end|>). Throws nq::Error for a bad --match
// or a sample without a trained token.
GenerateScore generate_score(const Decoder& model, const Tokenizer& tok, const std::vector<Sample>& samples,
                             const GenerateScoreOptions& options, const std::vector<int32_t>& stop_ids);

// ./eval's whole job, as train() is ./train's: load the model (NF4 base unless
// --no-quant), the adapter, move to --device, load_dataset(--data) with the
// options ./train would use, evaluate_samples over all of it. `log` gets the
// device, model and data lines and, unless --no-progress, a progress bar
// (drawn in place when `log` is std::cerr on a terminal).
struct EvalReport {
  EvalLoss result;
  DataFormat format = DataFormat::Messages;
  int64_t lines = 0;              // non-blank lines of the file
  int64_t samples = 0;            // samples evaluated
  int64_t truncated = 0;          // of them, cut to --max-length
  int64_t dropped_untrained = 0;  // lines with no target token (e.g. a chat without an answer)
  int64_t skipped_lines = 0;      // bad lines under --on-bad-line skip
  int64_t tokens = 0;             // input tokens read
  double seconds = 0;             // wall time of the pass (model loading excluded)
  std::optional<GenerateScore> generated;  // with --generate N
};
// With gen.prompts > 0 also the behaviour metric (generate_score) over the
// first N samples of --data; `log` gets each answer.
EvalReport evaluate(const EvalConfig& cfg, std::ostream& log, const GenerateScoreOptions& gen = {});

// {"loss", "tokens" (counted targets), "samples", "lines", "format"}: ./eval's stdout line;
// with --generate also "generate": {"metric", "prompts", "right", "score"}.
std::string eval_report_json(const EvalReport& r);

}  // namespace nq
