// ./eval: the mean next-token cross-entropy of a model over a JSONL dataset,
// the number every fine-tuning run wants before and after training. It reads
// what ./train reads (the four formats of training/data.h, tokenized by
// training/encode.h) with ./train's spelling of the shared options, and the
// number is computed by the trainer's own eval (training/evaluate.h): on the
// file ./train evaluated, with the same options and its adapter, it prints the
// trainer's eval loss. The model is a HF directory or a .gguf file, its
// projections NF4 by default (the base QLoRA trains on), on the GPU when there
// is one (--device).
//
// --generate N adds the behaviour metric: the model answers the first N
// samples' prompts greedily and the task score (--match REGEX, or exact match
// with the reference answer) says what fraction is right (generate_score,
// training/evaluate.h).
#include <cstdio>
#include <iostream>

#include "tools/cli.h"
#include "training/evaluate.h"

namespace {

int run(int argc, char** argv) {
  nq::EvalConfig cfg;
  nq::GenerateScoreOptions gen;
  nq::FlagTable flags = nq::eval_flags(cfg);  // ./train's shared options (training/train_config.h) ...
  flags.add("generate", &gen.prompts,         // ... and the behaviour metric's
            "also answer the first N samples' prompts greedily and score the answers (0: off)", "N");
  flags.add("match", &gen.match,
            "with --generate: an answer is right when it matches this regex (default: equals the reference answer)",
            "REGEX");
  flags.add("max-new-tokens", &gen.max_new_tokens, "with --generate: tokens per answer at most");
  if (!flags.parse(argc, argv)) return 0;  // --help
  cfg.run.validate();
  const nq::EvalReport r = nq::evaluate(cfg, std::cerr, gen);
  std::printf("%s\n", nq::eval_report_json(r).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  nq::cli::let_idle_threads_sleep(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
