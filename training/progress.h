// Training feedback: a one-line progress bar and a metrics JSONL file.
//
// The bar shows step/total, loss, lr, tokens/s and ETA (./eval's: batch/total,
// the loss so far, tokens/s and ETA). On a terminal it
// redraws one line in place with '\r'; when stdout is a file or a pipe (logs,
// CI) it prints a plain line every `every` steps and on the last step instead.
// The metrics file gets one JSON object per optimizer step:
//   {"step": 12, "loss": 1.93, "lr": 0.0002, "grad_norm": 0.84, "tokens_per_s": 5321.4, "mem_bytes": 123456789,
//    "tokens": 4096, "step_time_s": 0.77}
// (fp16 runs add "loss_scale": 65536.0 and, on a step skipped for an overflow, "skipped": true)
// and one per eval, as HF Trainer's log_history keeps them apart:
//   {"step": 15, "eval_loss": 0.318, "eval_tokens": 965}
#pragma once
#include <cstdint>
#include <fstream>
#include <ostream>
#include <string>

namespace nq {

struct StepMetrics {
  int64_t step = 0;           // 1-based optimizer step just finished
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double tokens_per_s = 0.0;  // non-padding tokens processed per second, this step
  int64_t mem_bytes = 0;      // peak device memory so far
  int64_t tokens = 0;         // non-padding tokens of this step (all its micro-batches)
  double step_time_s = 0.0;   // wall time of this step
  // fp16 runs (optim/loss_scaler.h): the loss scale of this step's backward (0: no
  // scaler, bf16/f32) and whether the step was skipped for an overflow.
  double loss_scale = 0.0;
  bool skipped = false;
};

// "1h02m", "3m05s", "42s".
std::string format_duration(double seconds);

// What the bar counts: optimizer steps (with their lr) or eval batches.
enum class BarKind { Training, Eval };

class ProgressBar {
 public:
  // out: where to draw (std::cout); tty: whether `out` is a terminal
  // (isatty(fileno(stdout)) for std::cout). For BarKind::Eval, m.step is the
  // batch just evaluated, m.loss the loss so far, m.lr unused.
  ProgressBar(std::ostream& out, int64_t total_steps, bool tty, int64_t every = 10, BarKind kind = BarKind::Training);
  // elapsed_s: wall time since training started (for the ETA).
  void update(const StepMetrics& m, double elapsed_s);
  void finish();  // ends the in-place line on a terminal

  // The text of the line for step m (no '\r' or newline), e.g.
  // "step   12/100 [##----------------]  12% | loss 1.9300 | lr 2.00e-04 | 5.3k tok/s | ETA 1m20s"
  // (fp16: "| scale 65536" after the lr, "| skipped (overflow)" on a skipped step)
  // "eval batch   3/10 [######--------------]  30% | loss 1.9300 | 5.3k tok/s | ETA 14s"
  std::string line(const StepMetrics& m, double elapsed_s) const;

 private:
  std::ostream& out_;
  int64_t total_, every_;
  bool tty_;
  BarKind kind_;
  bool drawn_ = false;
};

class MetricsWriter {
 public:
  // A new run (keep_through_step < 0) truncates the file. A resumed run keeps the lines
  // of steps 1..keep_through_step (the checkpoint's) and drops the later ones, logged
  // after that checkpoint by a run that was then killed, and a torn last line; the
  // resumed steps are appended, so each step is in the file once. Throws if it cannot be
  // opened.
  explicit MetricsWriter(const std::string& path, int64_t keep_through_step = -1);
  void write(const StepMetrics& m);                 // one line, flushed (survives a crash)
  void write_eval(int64_t step, double loss, int64_t targets);  // an eval line (targets: counted tokens)
 private:
  std::string path_;
  std::ofstream f_;
};

}  // namespace nq
