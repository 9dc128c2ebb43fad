// ./train: QLoRA fine-tuning from the command line (flags and/or a JSON config;
// ./train --help lists them). The work is in training/trainer.h; this file parses
// the options (training/resume.h: `--resume OUT/checkpoint-N` alone continues a
// run) and turns Ctrl-C into "finish this step, save a checkpoint and the adapter
// so far, exit 130" (128 + SIGINT, the shell's status for an interrupted program, so
// a script can tell it from a finished run).
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "tools/cli.h"
#include "training/resume.h"
#include "training/trainer.h"

namespace {

constexpr int kInterruptedStatus = 128 + SIGINT;

void on_sigint(int) {
  nq::request_stop();
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once
}

int run(int argc, char** argv) {
  nq::TrainConfig cfg;
  std::vector<std::string> notes;
  if (!nq::parse_train_command_line(argc, argv, &cfg, &notes)) return 0;  // --help
  std::signal(SIGINT, on_sigint);
  if (!cfg.resume.empty()) {
    std::cout << "continuing the run of " << cfg.resume << " (its train_config.json)\n";
    for (const std::string& n : notes) std::cout << "  changed: " << n << "\n";
  }
  nq::TrainResult r = nq::train(cfg, std::cout);
  if (!r.interrupted) return 0;
  std::cout << "interrupted: saved " << r.last_checkpoint << " and the adapter so far in " << r.adapter_dir
            << "/; continue with ./train --resume " << cfg.out << "\n";
  return kInterruptedStatus;
}

}  // namespace

int main(int argc, char** argv) {
  nq::cli::let_idle_threads_sleep(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
