// TrainConfig: one table of options (training/flags.h's mechanism) serves the
// flags, the JSON keys, --help and the checkpoint copy (see train_config.h).
#include "training/train_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "model/device.h"
#include "optim/schedule.h"
#include "runtime/error.h"
#include "training/data.h"
#include "training/flags.h"

namespace nq {

using json = nlohmann::json;

// The table: every setting of TrainConfig once, as a flag of the generic
// mechanism (training/flags.h) bound to `cfg`, with JSON keys (the flag with _
// for -) for --config files and the checkpoint copy.
FlagTable train_flags(TrainConfig& cfg) {
  FlagTable t(
      "usage: ./train --model DIR --data FILE.jsonl [options]\n"
      "       ./train --resume OUT/checkpoint-STEP [options]     (continue a run)\n"
      "QLoRA fine-tuning: the base model is quantized to NF4 and frozen; LoRA adapters on the\n"
      "target projections are trained with AdamW, on the GPU when there is one (--device).\n"
      "Writes the PEFT adapter to --out.\n\n");
  t.json_keys_from_names();
  t.enable_config_file();
  t.add("model", &cfg.model, "HF model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file [required]");
  t.add("data", &cfg.data, "training JSONL: messages | prompt-completion | alpaca | text [required]");
  t.add("eval-data", &cfg.eval_data, "held-out JSONL for the eval loss");
  t.add("eval-split", &cfg.eval_split, "hold out this fraction (< 1) or count (>= 1) of --data instead");
  t.add("out", &cfg.out, "output folder: PEFT adapter, checkpoint-STEP/, metrics.jsonl");
  t.add("metrics", &cfg.metrics, "metrics JSONL, one line per optimizer step (default OUT/metrics.jsonl)");
  t.add("resume", &cfg.resume, "continue a run from OUT/checkpoint-STEP, OUT (its newest) or last (in --out);\n"
                               "alone it is enough: the checkpoint's train_config.json has every option", "DIR");
  t.add_choice("report-to", &cfg.report_to, {"none", "tensorboard"},
               "tensorboard: also TensorBoard event files in OUT/runs/<time>/ (metrics.jsonl is always written)");
  t.add("r", &cfg.r, "LoRA rank");
  t.add("alpha", &cfg.alpha, "LoRA alpha (scaling alpha / r)");
  t.add("dropout", &cfg.dropout, "LoRA dropout on the adapter input");
  t.add("targets", &cfg.targets, "all-linear, or a comma list of module names (q_proj,v_proj)");
  t.add("rslora", &cfg.rslora, "rank-stabilised scaling alpha / sqrt(r)");
  t.add("lr", &cfg.lr, "peak learning rate");
  t.add("schedule", &cfg.schedule, "constant | linear | cosine (after warmup)");
  t.add("warmup-steps", &cfg.warmup_steps, "linear warmup steps (wins over --warmup-ratio)");
  t.add("warmup-ratio", &cfg.warmup_ratio, "warmup as a fraction of the total steps");
  t.add("epochs", &cfg.epochs, "passes over the training data");
  t.add("max-steps", &cfg.max_steps, "optimizer steps to run (0: from --epochs)");
  t.add("batch-size", &cfg.batch_size, "rows per micro-batch");
  t.add("grad-accum", &cfg.grad_accum, "micro-batches per optimizer step");
  t.add("max-length", &cfg.max_length, "tokens per sample (longer ones are truncated) / packed row");
  t.add("packing", &cfg.packing, "pack several samples per row (attention stays within a sample)");
  t.add("train-on-prompt", &cfg.train_on_prompt, "loss on every token, not only the answers / completions");
  t.add("prompt-completion-chat", &cfg.prompt_completion_chat,
        "render prompt-completion and alpaca pairs as a user/assistant chat");
  t.add_choice("optim", &cfg.optim, {"adamw", "paged_adamw"},
               "paged_adamw (m, v in host memory, paged through a GPU pool) | adamw (in GPU memory)");
  t.add("optim-pages", &cfg.optim_pages, "paged_adamw on cuda: pages in the GPU pool (2 to 256)");
  t.add("optim-page-mb", &cfg.optim_page_mb, "paged_adamw on cuda: MiB per page (1 to 1024)");
  t.add("weight-decay", &cfg.weight_decay, "AdamW decoupled weight decay");
  t.add("max-grad-norm", &cfg.max_grad_norm, "clip the global gradient norm (0: off)");
  t.add("seed", &cfg.seed, "seed of the LoRA init, dropout and shuffling");
  t.add("log-every", &cfg.log_every, "print a progress line every N steps (when not a terminal)");
  t.add("eval-every", &cfg.eval_every, "eval loss every N steps (0: only at the end)");
  t.add("save-every", &cfg.save_every, "checkpoint every N steps (0: only at the end)");
  t.add("no-grad-checkpoint", &cfg.no_grad_checkpoint, "keep every layer's activations (faster, more memory)");
  add_device_flag(t, &cfg.device);
  t.add("on-bad-line", &cfg.on_bad_line, "error | skip a malformed JSONL line");
  t.add("no-quant", &cfg.no_quant, "keep the base weights dense f32 (debugging; not QLoRA)");
  t.add("threads", &cfg.threads, "CPU threads (0: all cores)");
  t.add("no-progress", &cfg.no_progress, "no progress bar (metrics file and summary only)");
  // The output folder holds one run (HF Trainer's overwrite_output_dir, save_total_limit).
  t.add("overwrite", &cfg.overwrite, "start a new run in an --out that holds another run's checkpoints (deletes them)");
  t.add("save-total-limit", &cfg.save_total_limit, "keep only the K newest checkpoints (0: keep all)", "K");
  t.add("verbose", &cfg.verbose, "print the memory plan as a table (else one line after step 1)");
  t.add("detect-anomaly", &cfg.detect_anomaly,
        "stop at the first op whose output or gradient holds NaN/Inf, naming it and its layer (slow; "
        "torch.autograd.detect_anomaly)");
  // HF TrainingArguments / TRL SFTConfig / PEFT LoraConfig names, for an unknown flag's "did you mean"
  // (lora_r, per_device_train_batch_size, num_train_epochs, use_rslora: nearest_name's prefix rule).
  for (auto [hf, ours] : {std::pair<const char*, const char*>{"learning_rate", "lr"},
                          {"gradient_accumulation_steps", "grad-accum"}, {"output_dir", "out"},
                          {"model_name_or_path", "model"}, {"dataset", "data"}, {"max_seq_length", "max-length"},
                          {"lr_scheduler_type", "schedule"}, {"save_steps", "save-every"},
                          {"logging_steps", "log-every"}, {"eval_steps", "eval-every"},
                          {"resume_from_checkpoint", "resume"}, {"overwrite_output_dir", "overwrite"},
                          {"target_modules", "targets"}, {"lora_rank", "r"}})
    t.also_known_as(hf, ours);
  return t;
}

namespace {

// ./eval's options: these of ./train's table, with eval's help text where it differs.
struct EvalOption {
  const char* name;
  const char* help;  // "": the table's
};
const EvalOption kEvalOptions[] = {
    {"model", ""},
    {"data", "JSONL to evaluate: messages | prompt-completion | alpaca | text [required]"},
    {"max-length", "tokens per sample (longer ones are truncated, as ./train does)"},
    {"batch-size", "rows per forward pass (the loss does not depend on it)"},
    {"packing", "pack several samples per row (as ./train --packing; the same loss)"},
    {"train-on-prompt", ""},
    {"prompt-completion-chat", ""},
    {"on-bad-line", ""},
    {"device", ""},
    {"no-quant", ""},
    {"no-progress", "no progress bar on stderr"},
};

}  // namespace

FlagTable eval_flags(EvalConfig& cfg) {
  FlagTable t(
      "usage: ./eval --model PATH --data FILE.jsonl [--adapter DIR] [options]\n"
      "The mean next-token cross-entropy of a model (NF4 base, optionally with a LoRA adapter)\n"
      "over a dataset, weighted by token: the number ./train reports as its eval loss for the\n"
      "same file and options. Prints {\"loss\", \"tokens\", \"samples\", \"lines\", \"format\"} on stdout.\n\n");
  t.add("adapter", &cfg.adapter, "a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)", "DIR");
  const FlagTable run = train_flags(cfg.run);  // bound to cfg.run: eval's defaults (batch 8) are shown
  for (const EvalOption& e : kEvalOptions) t.add_copy(*run.find(e.name), e.help);
  return t;
}

void TrainConfig::apply_json(const std::string& json_text, const std::string& source) {
  train_flags(*this).apply_json(json_text, source);
}

std::string TrainConfig::to_json() const {
  TrainConfig copy = *this;
  return train_flags(copy).to_json();
}

void TrainConfig::validate() const {
  NQ_CHECK(!model.empty(), "--model is required (see --help)");
  NQ_CHECK(!data.empty(), "--data is required (see --help)");
  NQ_CHECK(!out.empty(), "--out must not be empty");
  NQ_CHECK(r > 0, "--r must be > 0, got ", r);
  NQ_CHECK(std::isfinite(alpha) && alpha > 0, "--alpha must be a finite number > 0, got ", alpha);
  NQ_CHECK(dropout >= 0 && dropout < 1, "--dropout must be in [0, 1), got ", dropout);
  NQ_CHECK(!targets.empty(), "--targets must name at least one module (or all-linear)");
  NQ_CHECK(std::isfinite(lr) && lr > 0, "--lr must be a finite number > 0, got ", lr);
  try {
    parse_schedule_kind(schedule);
  } catch (const Error& e) {
    throw Error(str("--schedule: ", e.what()));
  }
  NQ_CHECK(warmup_steps >= 0, "--warmup-steps must be >= 0, got ", warmup_steps);
  NQ_CHECK(warmup_ratio >= 0 && warmup_ratio <= 1, "--warmup-ratio must be in [0, 1], got ", warmup_ratio);
  NQ_CHECK(epochs >= 1, "--epochs must be >= 1, got ", epochs);
  NQ_CHECK(max_steps >= 0, "--max-steps must be >= 0, got ", max_steps);
  NQ_CHECK(batch_size >= 1, "--batch-size must be >= 1, got ", batch_size);
  NQ_CHECK(grad_accum >= 1, "--grad-accum must be >= 1, got ", grad_accum);
  NQ_CHECK(max_length >= 2, "--max-length must be >= 2, got ", max_length);
  NQ_CHECK(optim == "adamw" || optim == "paged_adamw", "--optim must be adamw or paged_adamw, got '", optim, "'");
  NQ_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, "--weight-decay must be >= 0, got ", weight_decay);
  NQ_CHECK(std::isfinite(max_grad_norm) && max_grad_norm >= 0, "--max-grad-norm must be >= 0, got ", max_grad_norm);
  NQ_CHECK(log_every >= 1, "--log-every must be >= 1, got ", log_every);
  NQ_CHECK(eval_every >= 0, "--eval-every must be >= 0, got ", eval_every);
  NQ_CHECK(save_every >= 0, "--save-every must be >= 0, got ", save_every);
  NQ_CHECK(save_total_limit >= 0, "--save-total-limit must be >= 0, got ", save_total_limit);
  NQ_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  NQ_CHECK(eval_split >= 0 && std::isfinite(eval_split), "--eval-split must be >= 0, got ", eval_split);
  NQ_CHECK(eval_split < 1 || eval_split == std::floor(eval_split),
           "--eval-split must be a fraction below 1 or a whole count, got ", eval_split);
  NQ_CHECK(eval_data.empty() || eval_split == 0, "--eval-data and --eval-split exclude each other");
  NQ_CHECK(optim_pages >= 2 && optim_pages <= 256, "--optim-pages must be in [2, 256] (2 overlap a copy with ",
           "an update), got ", optim_pages);
  NQ_CHECK(optim_page_mb >= 1 && optim_page_mb <= 1024, "--optim-page-mb must be in [1, 1024], got ", optim_page_mb);
  select_device(device, "--device");  // cuda in a CPU build or without a GPU: the error says which
  try {
    parse_bad_line_policy(on_bad_line);
  } catch (const Error& e) {
    throw Error(str("--on-bad-line: ", e.what()));
  }
}

std::string TrainConfig::trajectory_difference(const TrainConfig& other) const {
  // The device and the optimizer's memory layout do not count either: a checkpoint
  // written on the GPU resumes on the CPU, and paged / unpaged AdamW update alike.
  static const std::set<std::string> irrelevant = {"out",        "metrics",     "resume",        "eval_data",
                                                    "log_every",  "eval_every",  "save_every",    "threads",
                                                    "no_progress", "device",     "optim",         "optim_pages",
                                                    "optim_page_mb", "max_steps",  "epochs",      "overwrite",
                                                    "save_total_limit", "verbose", "report_to",   "detect_anomaly"};
  json a = json::parse(to_json()), b = json::parse(other.to_json());
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!irrelevant.count(it.key()) && b[it.key()] != it.value()) return it.key();
  return "";
}

bool parse_train_args(int argc, char** argv, TrainConfig* cfg) {
  *cfg = TrainConfig();
  if (!train_flags(*cfg).parse(argc, argv)) return false;  // --help
  cfg->validate();
  return true;
}

bool parse_eval_args(int argc, char** argv, EvalConfig* cfg) {
  *cfg = EvalConfig();
  if (!eval_flags(*cfg).parse(argc, argv)) return false;  // --help
  cfg->run.validate();  // the options eval does not read are at their (valid) defaults
  return true;
}

std::string eval_help() {
  EvalConfig defaults;
  return eval_flags(defaults).help();
}

EncodeOptions encode_options(const TrainConfig& cfg, const LoadedModel& model, std::ostream& log) {
  EncodeOptions enc;
  enc.max_length = cfg.max_length;
  enc.train_on_prompt = cfg.train_on_prompt;
  enc.prompt_completion_chat = cfg.prompt_completion_chat;
  enc.chat = model.chat ? *model.chat : ChatFormat::for_config(model.config);
  if (!model.chat)
    log << "note: " << model.chat_error << "; chats use the " << model.config.model_type << " default template\n";
  return enc;
}

LoaderOptions loader_options(const TrainConfig& cfg, const Tokenizer& tok) {
  LoaderOptions o;
  o.batch_size = cfg.batch_size;
  o.max_length = cfg.max_length;
  o.packing = cfg.packing;
  o.seed = cfg.seed;
  o.pad_id = tok.pad_id >= 0 ? tok.pad_id : std::max(tok.eos_id, 0);
  return o;
}

std::string train_help() {
  TrainConfig defaults;
  return train_flags(defaults).help();
}

}  // namespace nq
