// The QLoRA trainer: ./train's whole job, from a TrainConfig to a PEFT adapter.
//
//   load the model -> quantize every linear to NF4 (frozen) -> attach LoRA to
//   the targets (or load them: --adapter DIR, the initial A and B with a fresh optimizer;
//   --resume, a checkpoint's with its optimizer) -> move the model to the device
//   (--device: cpu, or cuda with bf16 activations) -> tokenize the data -> for
//   each optimizer step:
//     K micro-batches moved to the device: loss_i (mean CE over its n_i
//       targets), backward of loss_i * n_i / N  (N = targets of all K): the
//       gradient of L = sum of all token CEs of the window / N, as transformers' Trainer
//     the global gradient norm -> AdamW on the adapter parameters (moments in
//     host memory, GPU memory or paged through a GPU pool) with lr(step) from the schedule and the
//     clipping factor -> metrics line, progress, eval (training/evaluate.h), checkpoint
//   -> final eval, checkpoint and the PEFT adapter in --out (written from host copies).
// Before the model loads: --out is claimed for a new run (one run per folder, unless
// --overwrite) or the checkpoint of --resume found (training/checkpoint.h), and the
// data files are parsed and checked. request_stop() ends the run after the current
// step with a checkpoint and the adapter so far.
// docs/training.md walks through it with the math.
#pragma once
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "model/decoder.h"
#include "optim/optimizer.h"
#include "optim/loss_scaler.h"
#include "training/batch.h"
#include "training/progress.h"
#include "training/train_config.h"

namespace nq {

struct StepResult {
  double loss = 0;       // sum of token CEs over the window / counted targets
  double grad_norm = 0;  // global L2 norm before clipping
  int64_t targets = 0;   // counted targets of the window
  float loss_scale = 1;  // the fp16 loss scale this step's backward ran with (1: none)
  bool skipped = false;  // fp16: a gradient overflowed, no update (the scaler backed off)
};

// One optimizer step over the micro-batches (on the model's device, each with
// its n_targets): in training mode (TrainingMode, autograd/var.h: LoRA dropout
// on), scaled backward of each, the gradient norm, the optimizer
// step with `lr` and the clipping factor for max_grad_norm (0: no clipping),
// zero the gradients. A non-finite loss throws before the parameters change,
// naming `step`; so does a non-finite gradient norm, unless `scaler` is enabled
// (fp16, optim/loss_scaler.h): the backward then runs on the loss times its scale,
// the norm is unscaled before clipping, and an overflow skips the update.
StepResult train_step(const Decoder& model, Optimizer& optimizer, const std::vector<DecoderBatch>& micro, double lr,
                      double max_grad_norm, int64_t step, LossScaler* scaler = nullptr);

struct TrainResult {
  std::vector<StepMetrics> steps;                // the steps this call ran
  std::vector<std::pair<int64_t, double>> evals; // (step, eval loss)
  int64_t final_step = 0;
  bool interrupted = false;                      // stopped by request_stop()
  std::string last_checkpoint;
  std::string adapter_dir;                       // the PEFT adapter (at the end, or so far when interrupted)
};

struct TrainerHooks {
  std::function<void(const StepMetrics&)> on_step;  // after each step's metrics are written
};

// Runs the whole job. `log` gets the plan, progress and summary lines.
TrainResult train(const TrainConfig& config, std::ostream& log, const TrainerHooks& hooks = {});

// Asks a running train() to stop after the current step, save a checkpoint and the
// adapter so far, and return with `interrupted` set (async-signal-safe: ./train calls
// it from its SIGINT handler).
void request_stop();

}  // namespace nq
