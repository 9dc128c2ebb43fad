// ./eval: the mean next-token cross-entropy of a model over a JSONL dataset,
// the number every fine-tuning run wants before and after training. It reads
// what ./train reads (the four formats of training/data.h, tokenized by
// training/encode.h) with ./train's spelling of the shared options, and the
// number is computed by the trainer's own eval (training/evaluate.h): on the
// file ./train evaluated, with the same options and its adapter, it prints the
// trainer's eval loss. The model is a HF directory or a .gguf file, its
// projections NF4 by default (the base QLoRA trains on), on the GPU when there
// is one (--device).
#include <cstdio>
#include <iostream>

#include "tools/cli.h"
#include "training/evaluate.h"

namespace {

int run(int argc, char** argv) {
  nq::EvalConfig cfg;
  if (!nq::parse_eval_args(argc, argv, &cfg)) return 0;  // --help
  const nq::EvalReport r = nq::evaluate(cfg, std::cerr);
  std::printf("%s\n", nq::eval_report_json(r).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  nq::cli::let_idle_threads_sleep(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
