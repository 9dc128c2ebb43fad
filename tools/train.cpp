// ./train: QLoRA fine-tuning from the command line (flags and/or a JSON config;
// ./train --help lists them). The work is in training/trainer.h; this file parses
// the options and turns Ctrl-C into "finish this step, checkpoint, exit".
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
  nq::cli::let_idle_threads_sleep(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
