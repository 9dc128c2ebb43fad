// RunReport: the metrics file, TensorBoard events and the run picture (see report.h).
#include "training/report.h"

#include <unistd.h>

#include <ctime>
#include <filesystem>

#include "formats/tensorboard_events.h"
#include "runtime/error.h"
#include "training/checkpoint.h"
#include "training/curves_svg.h"

namespace nq {

std::string tensorboard_run_dir(const std::string& out) {
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%b%d_%H-%M-%S", &local);  // transformers' "%b%d_%H-%M-%S"
  return str(out, "/runs/", stamp, "_", host);
}

std::string run_title(const TrainConfig& cfg) {
  std::string targets;
  for (const std::string& t : cfg.targets) targets += (targets.empty() ? "" : ",") + t;
  return str(cfg.out, ": ", std::filesystem::path(cfg.model).filename().string(), ", LoRA r ", cfg.r, " alpha ",
             cfg.alpha, cfg.rslora ? " (rsLoRA)" : "", " on ", targets, ", lr ", cfg.lr, " ", cfg.schedule);
}

RunReport::RunReport(const TrainConfig& cfg, int64_t keep_through_step)
    : out_(cfg.out),
      metrics_path_(cfg.metrics.empty() ? cfg.out + "/metrics.jsonl" : cfg.metrics),
      title_(run_title(cfg)),
      metrics_(metrics_path_, keep_through_step) {
  if (cfg.report_to == "tensorboard") {
    const std::string dir = tensorboard_run_dir(cfg.out);
    ensure_writable_dir(dir, "--report-to tensorboard:");
    tensorboard_ = std::make_unique<EventFileWriter>(dir);
    tensorboard_->text(0, "args", cfg.to_json());
  }
}

RunReport::~RunReport() = default;

void RunReport::step(const StepMetrics& m, const MemStats& mem) {
  metrics_.write(m);
  if (!tensorboard_) return;
  EventFileWriter& tb = *tensorboard_;
  tb.scalar(m.step, "train/loss", m.loss);
  tb.scalar(m.step, "train/learning_rate", m.lr);
  tb.scalar(m.step, "train/grad_norm", m.grad_norm);
  if (m.loss_scale > 0) tb.scalar(m.step, "train/loss_scale", m.loss_scale);
  tb.scalar(m.step, "train/tokens_per_second", m.tokens_per_s);
  constexpr double kMiB = 1024.0 * 1024.0;
  tb.scalar(m.step, "memory/peak_mib", double(mem.peak_total) / kMiB);
  for (size_t c = 0; c < size_t(MemCategory::Count); ++c)
    tb.scalar(m.step, str("memory/peak_", mem_category_name(MemCategory(c)), "_mib"), double(mem.peak[c]) / kMiB);
}

void RunReport::eval(int64_t step, double loss, int64_t targets) {
  metrics_.write_eval(step, loss, targets);
  if (tensorboard_) tensorboard_->scalar(step, "eval/loss", loss);
}

std::string RunReport::write_curves() const {
  const std::string path = out_ + "/curves.svg";
  write_curves_svg(metrics_path_, path, title_);
  return path;
}

std::string RunReport::tensorboard_file() const { return tensorboard_ ? tensorboard_->path() : ""; }

}  // namespace nq
