// Progress bar and metrics JSONL (see progress.h).
#include "training/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace nq {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = int64_t(std::llround(seconds));
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  return buf;
}

ProgressBar::ProgressBar(std::ostream& out, int64_t total_steps, bool tty, int64_t every, BarKind kind)
    : out_(out), total_(std::max<int64_t>(1, total_steps)), every_(std::max<int64_t>(1, every)), tty_(tty), kind_(kind) {}

std::string ProgressBar::line(const StepMetrics& m, double elapsed_s) const {
  constexpr int kWidth = 20;
  double frac = std::min(1.0, double(m.step) / double(total_));
  int filled = int(frac * kWidth);
  std::string bar = std::string(size_t(filled), '#') + std::string(size_t(kWidth - filled), '-');
  // ETA from the average time per step so far.
  double eta = m.step > 0 ? elapsed_s / double(m.step) * double(total_ - m.step) : NAN;
  char tps[32];
  if (m.tokens_per_s >= 1000) std::snprintf(tps, sizeof tps, "%.1fk", m.tokens_per_s / 1000);
  else std::snprintf(tps, sizeof tps, "%.0f", m.tokens_per_s);
  int digits = int(std::to_string(total_).size());
  char lr[32] = "";
  if (kind_ == BarKind::Training) std::snprintf(lr, sizeof lr, " | lr %.2e", m.lr);
  char scale[64] = "";
  if (kind_ == BarKind::Training && m.loss_scale > 0)
    std::snprintf(scale, sizeof scale, " | scale %.0f%s", m.loss_scale, m.skipped ? " | skipped (overflow)" : "");
  char buf[320];
  std::snprintf(buf, sizeof buf, "%s %*lld/%lld [%s] %3d%% | loss %.4f%s%s | %s tok/s | ETA %s",
                kind_ == BarKind::Training ? "step" : "eval batch", digits, (long long)m.step, (long long)total_,
                bar.c_str(), int(frac * 100), m.loss, lr, scale, tps, format_duration(eta).c_str());
  return buf;
}

void ProgressBar::update(const StepMetrics& m, double elapsed_s) {
  if (tty_) {
    out_ << '\r' << line(m, elapsed_s) << "\033[K" << std::flush;  // ESC[K clears what a longer line left
    drawn_ = true;
  } else if (m.step % every_ == 0 || m.step == total_ || m.step == 1) {
    out_ << line(m, elapsed_s) << '\n' << std::flush;
  }
}

void ProgressBar::finish() {
  if (tty_ && drawn_) out_ << '\n' << std::flush;
  drawn_ = false;
}

namespace {

// The lines of `path` whose "step" is at most `last_step`, in order (malformed ones dropped).
std::string metrics_lines_through(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= last_step)
      kept += line + "\n";
  }
  return kept;
}

}  // namespace

MetricsWriter::MetricsWriter(const std::string& path, int64_t keep_through_step) : path_(path) {
  if (keep_through_step >= 0) {  // rewritten beside and renamed over: a crash here loses no kept line
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << metrics_lines_through(path, keep_through_step);
      out.flush();
      NQ_CHECK(out.good(), tmp, ": write failed (disk full?)");
    }
    NQ_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, path, ": cannot replace it with ", tmp);
  }
  f_.open(path, keep_through_step >= 0 ? std::ios::app : std::ios::trunc);
  NQ_CHECK(f_.good(), path, ": cannot create metrics file");
}

void MetricsWriter::write(const StepMetrics& m) {
  nlohmann::json j = {{"step", m.step},           {"loss", m.loss},
                      {"lr", m.lr},               {"grad_norm", m.grad_norm},
                      {"tokens_per_s", m.tokens_per_s}, {"mem_bytes", m.mem_bytes},
                      {"tokens", m.tokens},       {"step_time_s", m.step_time_s}};
  if (m.loss_scale > 0) j["loss_scale"] = m.loss_scale;
  if (m.skipped) j["skipped"] = true;
  // Non-finite numbers (a diverged loss) have no JSON spelling; nlohmann writes null.
  f_ << j.dump() << '\n' << std::flush;
  NQ_CHECK(f_.good(), path_, ": write failed (disk full?)");
}

void MetricsWriter::write_eval(int64_t step, double loss, int64_t targets) {
  const nlohmann::json j = {{"step", step}, {"eval_loss", loss}, {"eval_tokens", targets}};
  f_ << j.dump() << '\n' << std::flush;
  NQ_CHECK(f_.good(), path_, ": write failed (disk full?)");
}

}  // namespace nq
