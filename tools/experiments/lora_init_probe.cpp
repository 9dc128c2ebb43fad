// lora_init_probe: the LoRA initialisation experiment of `make experiments`
// (docs/experiments.md). Built by `make experiments` only, not a user program.
//
//   build/<cfg>/lora_init_probe --init peft|reverse|both_random|gaussian [./train's flags]
//
// Builds the model and adapters exactly as ./train does for the same flags
// (same seed, so the same A as ./train draws), then re-initialises every
// adapter (r x in A, out x r B) as --init says:
//   peft         A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a = sqrt(5)), B = 0: ./train's own
//   reverse      A = 0, B ~ U(-1/sqrt(r), 1/sqrt(r))   (kaiming_uniform over B's fan-in r)
//   both_random  A as peft, B as reverse: PEFT's init_lora_weights=False (both nn.Linear's default)
//   gaussian     A ~ N(0, 1/r^2) (PEFT's init_lora_weights="gaussian": std 1/r), B = 0
// (the re-drawn values come from their own Philox streams, seeded by --seed;
// the process RNG is left where ./train has it, so dropout and shuffling are ./train's)
// and measures, on the first training batch, in eval mode (no dropout):
//   - whether the logits equal the base model's (all of A, B zeroed): max |logit - base logit|
//   - the gradient of the loss with respect to every A and B: their global norms,
//     and how many modules get a non-zero dA or dB in the first backward
// It prints one JSON line with these and writes OUT/checkpoint-0, a checkpoint
// at step 0 (fresh AdamW moments), so that `./train [the same flags] --resume
// OUT/checkpoint-0` trains from this initialisation with the trainer itself.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/var.h"
#include "model/adapters.h"
#include "model/linear.h"
#include "model/load_model.h"
#include "optim/adamw.h"
#include "runtime/philox.h"
#include "runtime/rng.h"
#include "tools/cli.h"
#include "training/batch.h"
#include "training/checkpoint.h"
#include "training/data.h"
#include "training/encode.h"
#include "training/train_config.h"

namespace {

using namespace nq;

// U(-bound, bound) into t from Philox stream (seed, stream).
void fill_uniform(Tensor& t, float bound, uint64_t seed, uint64_t stream) {
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = (2.0f * philox_uniform(seed, stream, uint64_t(i)) - 1.0f) * bound;
}

// N(0, std^2) by Box-Muller from two uniforms per element.
void fill_normal(Tensor& t, float std_dev, uint64_t seed, uint64_t stream) {
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double u1 = 1.0 - double(philox_uniform(seed, stream, uint64_t(2 * i)));  // (0, 1]
    const double u2 = double(philox_uniform(seed, stream, uint64_t(2 * i + 1)));
    p[i] = float(std_dev * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  }
}

void fill_zero(Tensor& t) {
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = 0.0f;
}

double sum_squares(const Tensor& t) {
  if (!t.defined()) return 0;
  const std::vector<float> v = t.to_vector();
  double s = 0;
  for (float x : v) s += double(x) * double(x);
  return s;
}

int run(int argc, char** argv) {
  TrainConfig cfg;
  std::string init = "peft";
  FlagTable flags = train_flags(cfg);
  flags.add_choice("init", &init, {"peft", "reverse", "both_random", "gaussian"},
                   "how A and B start (see the header of tools/experiments/lora_init_probe.cpp)");
  if (!flags.parse(argc, argv)) return 0;
  cfg.validate();
  NQ_CHECK(cfg.resume.empty(), "--resume: the probe starts a run; it writes the checkpoint to resume from");
  ensure_writable_dir(cfg.out, "--out");

  // ---- the model and adapters as ./train builds them (training/trainer.cpp), on the CPU
  rng_seed(cfg.seed);
  DecoderOptions dopt;
  dopt.checkpointing = !cfg.no_grad_checkpoint;
  LoadedModel loaded = load_model(cfg.model, WeightLoad::qlora(!cfg.no_quant));
  NQ_CHECK(loaded.tokenizer.has_value(), "--model ", cfg.model, ": no tokenizer");
  Decoder model = build_decoder(loaded, dopt, /*nf4_base=*/!cfg.no_quant);
  AdapterConfig adapter;
  adapter.lora = {cfg.r, float(cfg.alpha), float(cfg.dropout), cfg.rslora};
  adapter.target_modules = cfg.targets;
  adapter.base_model_name_or_path = cfg.model;
  attach_adapters(model, adapter);
  TrainerState state;
  state.rng = rng_state();  // ./train's RNG after the adapters: dropout and shuffling as in ./train

  // ---- re-initialise (each module its own Philox streams, from --seed)
  std::vector<LoraLinear*> modules;
  for (Linear* l : model.linears())
    if (l->has_lora()) modules.push_back(&l->lora());
  const uint64_t seed = cfg.seed ^ 0x6c6f7261696e6974ull;  // "lorainit": apart from ./train's stream
  for (size_t m = 0; m < modules.size(); ++m) {
    Tensor A = modules[m]->A.value(), B = modules[m]->B.value();  // shared storage with the Vars
    const float b_bound = 1.0f / std::sqrt(float(cfg.r));  // kaiming_uniform(a = sqrt(5)) over fan-in r
    if (init == "reverse") {
      fill_zero(A);
      fill_uniform(B, b_bound, seed, 2 * m + 1);
    } else if (init == "both_random") {
      fill_uniform(B, b_bound, seed, 2 * m + 1);  // A: ./train's kaiming draw
    } else if (init == "gaussian") {
      fill_normal(A, 1.0f / float(cfg.r), seed, 2 * m);
    }
  }

  // ---- the first training batch, as the trainer's loader gives it
  const Tokenizer& tok = *loaded.tokenizer;
  std::ostringstream quiet;
  Dataset data = load_dataset(cfg.data, tok, encode_options(cfg, loaded, quiet), parse_bad_line_policy(cfg.on_bad_line));
  std::vector<int64_t> all(data.samples.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
  NQ_CHECK(cfg.eval_split == 0, "--eval-split: the probe reads the first batch of all of --data; use --eval-data");
  DataLoader loader(data.samples, all, loader_options(cfg, tok));
  const RngState before = rng_state();
  const DecoderBatch batch = decoder_batch(loader.next(), Device::CPU);
  rng_state() = before;  // the shuffle's draws are ./train's to make again

  TrainingMode eval_mode(false);
  Tensor with_adapters;
  {
    NoGrad no_grad;
    with_adapters = model.logits(batch);
  }
  // the base: every bypass zeroed (then restored)
  std::vector<std::pair<Tensor, Tensor>> saved;
  for (LoraLinear* l : modules) {
    saved.emplace_back(l->A.value().clone(), l->B.value().clone());
    Tensor A = l->A.value(), B = l->B.value();
    fill_zero(A);
    fill_zero(B);
  }
  Tensor base;
  {
    NoGrad no_grad;
    base = model.logits(batch);
  }
  for (size_t m = 0; m < modules.size(); ++m) {
    Tensor A = modules[m]->A.value(), B = modules[m]->B.value();
    A.copy_from(saved[m].first);
    B.copy_from(saved[m].second);
  }
  const std::vector<float> lw = with_adapters.to_vector(), lb = base.to_vector();
  double max_diff = 0;
  for (size_t i = 0; i < lw.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(lw[i] - lb[i])));

  // ---- the first backward
  Var loss = model.forward_loss(batch);
  const double loss0 = loss.value().to_vector()[0];
  backward(loss);
  double dA2 = 0, dB2 = 0;
  int64_t nonzero_dA = 0, nonzero_dB = 0;
  for (LoraLinear* l : modules) {
    const double a = sum_squares(l->A.grad()), b = sum_squares(l->B.grad());
    dA2 += a;
    dB2 += b;
    nonzero_dA += a > 0;
    nonzero_dB += b > 0;
    l->A.zero_grad();
    l->B.zero_grad();
  }

  // ---- the step-0 checkpoint ./train --resume continues from
  std::vector<Var> params = adapter_parameters(model);
  AdamW optimizer(params, AdamWConfig{0.9, 0.999, 1e-8, cfg.weight_decay}, AdamWOptions{});
  state.data = DataLoader(data.samples, all, loader_options(cfg, tok)).position();
  const std::string dir = save_checkpoint(cfg.out, model, adapter, optimizer, state, cfg);

  const nlohmann::json j = {{"init", init},
                            {"modules", int64_t(modules.size())},
                            {"logits_max_abs_diff_vs_base", max_diff},
                            {"logits_equal_base", max_diff == 0},
                            {"loss_step0", loss0},
                            {"grad_norm_A", std::sqrt(dA2)},
                            {"grad_norm_B", std::sqrt(dB2)},
                            {"modules_nonzero_grad_A", nonzero_dA},
                            {"modules_nonzero_grad_B", nonzero_dB},
                            {"checkpoint", dir}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  nq::cli::let_idle_threads_sleep(argv);
  return nq::cli::run_main([&] { return run(argc, argv); });
}
