// ./plot OUT: the picture of a run (training/curves_svg.h) from OUT/metrics.jsonl,
// written to OUT/curves.svg: train and eval loss, learning rate and gradient norm
// against the step. ./train writes the same picture when it ends; ./plot draws it
// at any time, also for a run still in progress (the line being written is left
// out), and for runs of older binaries.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <regex>
#include <string>
#include <vector>

#include "tools/cli.h"
#include "training/checkpoint.h"
#include "training/curves_svg.h"
#include "training/flags.h"
#include "training/report.h"

namespace {

namespace fs = std::filesystem;

// The title from the run's newest checkpoint config (OUT/checkpoint-STEP/), else the folder.
std::string title_for(const std::string& run_dir) {
  int64_t best = -1;
  std::string best_dir;
  std::error_code ec;
  const std::regex name("checkpoint-([0-9]{1,18})");
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    std::smatch m;
    const std::string base = e.path().filename().string();
    if (!std::regex_match(base, m, name) || !fs::exists(e.path() / "train_config.json")) continue;
    if (std::stoll(m[1]) > best) best = std::stoll(m[1]), best_dir = e.path().string();
  }
  if (best_dir.empty()) return run_dir;
  try {
    nq::TrainConfig cfg = nq::read_checkpoint_config(best_dir);
    cfg.out = run_dir;
    return nq::run_title(cfg);
  } catch (const nq::Error&) {
    return run_dir;  // a damaged checkpoint does not stop the picture
  }
}

int run(int argc, char** argv) {
  std::vector<std::string> dirs;
  std::string metrics, output;
  nq::FlagTable t(
      "usage: ./plot OUT [--output FILE.svg] [--metrics FILE.jsonl]\n"
      "Draws a run's train and eval loss, learning rate and gradient norm against the step as an SVG,\n"
      "from OUT/metrics.jsonl (also while ./train is still writing it), into OUT/curves.svg.\n\n");
  t.positionals("OUT", &dirs, "the run folder (./train --out)");
  t.add("metrics", &metrics, "the metrics file (default OUT/metrics.jsonl, as ./train --metrics)");
  t.add("output", &output, "where to write the SVG (default OUT/curves.svg)");
  if (!t.parse(argc, argv)) return 0;  // --help
  NQ_CHECK(dirs.size() == 1, "give exactly one run folder (see --help), got ", dirs.size());
  const std::string dir = dirs[0];
  NQ_CHECK(fs::is_directory(dir), dir, ": not a folder");
  if (metrics.empty()) metrics = dir + "/metrics.jsonl";
  if (output.empty()) output = dir + "/curves.svg";
  const int curves = nq::write_curves_svg(metrics, output, title_for(dir));
  std::printf("%s (%d curves)\n", output.c_str(), curves);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return nq::cli::run_main([&] { return run(argc, argv); });
}
