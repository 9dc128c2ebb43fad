// Where the trainer's metrics go: OUT/metrics.jsonl always (training/progress.h's
// MetricsWriter: one line per step and per eval) and, with --report-to
// tensorboard (HF Trainer's report_to), TensorBoard event files
// (formats/tensorboard_events.h) in OUT/runs/<Mon DD_HH-MM-SS>_<host>/, the
// folder HF Trainer's default logging_dir names, so `tensorboard --logdir OUT/runs`
// shows every run of OUT side by side. At the end, OUT/curves.svg
// (training/curves_svg.h) from the metrics file.
//
// TensorBoard scalars, HF Trainer's tag names where it has one:
//   train/loss, train/learning_rate, train/grad_norm (before clipping),
//   train/tokens_per_second, eval/loss,
//   memory/peak_mib and memory/peak_<category>_mib (the device allocator's peaks
//   since training started: weights, activations, lora, optimizer, workspace);
// and the run's configuration (its --config JSON) as the text "args", at step 0.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/allocator.h"
#include "training/progress.h"
#include "training/train_config.h"

namespace nq {

class EventFileWriter;

class RunReport {
 public:
  // Opens the metrics file (a new run: keep_through_step < 0; a resumed one: the
  // checkpoint's step, training/progress.h's MetricsWriter) and, with --report-to
  // tensorboard, a new event file. Throws nq::Error naming the file it cannot create.
  RunReport(const TrainConfig& cfg, int64_t keep_through_step);
  ~RunReport();

  void step(const StepMetrics& m, const MemStats& mem);
  void eval(int64_t step, double loss, int64_t targets);
  // Writes OUT/curves.svg from the metrics file; returns its path.
  std::string write_curves() const;

  const std::string& metrics_path() const { return metrics_path_; }
  std::string tensorboard_file() const;  // "" without --report-to tensorboard

 private:
  std::string out_, metrics_path_, title_;
  MetricsWriter metrics_;
  std::unique_ptr<EventFileWriter> tensorboard_;
};

// The picture's title: "OUT: model, LoRA r 16 alpha 32 on all-linear, lr 0.0002 cosine".
std::string run_title(const TrainConfig& cfg);

// OUT/runs/<Mon DD_HH-MM-SS>_<hostname>: HF Trainer's default logging_dir for a run started now.
std::string tensorboard_run_dir(const std::string& out);

}  // namespace nq
