// ./train: QLoRA fine-tuning from the command line (flags and/or a JSON config;
// ./train --help lists them). The work is in training/trainer.h; this file parses
// the options and turns Ctrl-C into "finish this step, checkpoint, exit".
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "tools/cli.h"
#include "training/trainer.h"

namespace {

void on_sigint(int) {
  nq::request_stop();
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once
}

// libgomp's default wait policy keeps OpenMP worker threads spinning after each
// parallel region; between them OpenBLAS runs its own threads, which then fight
// the spinners for the same cores (perf: ~30% of the time in libgomp). PASSIVE
// lets idle workers sleep: 1.5-2.7x more tokens/s measured on 2 cores
// (docs/training.md). libgomp reads the variable once, when it loads, so the
// program re-executes itself with it set (unless the user chose a policy).
void prefer_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

int run(int argc, char** argv) {
  nq::TrainConfig cfg;
  if (!nq::parse_train_args(argc, argv, &cfg)) return 0;  // --help
  std::signal(SIGINT, on_sigint);
  nq::TrainResult r = nq::train(cfg, std::cout);
  if (r.interrupted) std::cout << "interrupted: continue with --resume " << r.last_checkpoint << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_omp_wait(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
