// TrainConfig: one table of options (training/flags.h's mechanism) serves the
// flags, the JSON keys, --help and the checkpoint copy (see train_config.h).
#include "training/train_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "model/config.h"
#include "model/device.h"
#include "formats/json.h"
#include "formats/peft_adapter.h"
#include "optim/schedule.h"
#include "runtime/error.h"
#include "training/data.h"
#include "training/flags.h"
#include "training/memory_plan.h"

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
      "Writes the PEFT adapter to --out. A --config file may also use the keys of TRL's SFTConfig,\n"
      "PEFT's LoraConfig and BitsAndBytesConfig as the seed's script writes them (docs/seed.md).\n\n");
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
  // ---- starting adapter and data order
  t.add("adapter", &cfg.adapter,
        "start from this PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors): its\n"
        "r, lora_alpha, use_rslora, lora_dropout and target_modules; a fresh optimizer",
        "DIR");
  t.add("shuffle", &cfg.shuffle, "reshuffle the training samples every epoch, seeded (the default)");
  t.add_negation("no-shuffle", &cfg.shuffle, "every epoch in file order (docs/data.md: which samples form a step)");
  // ----
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
  t.add("train-on-prompt", &cfg.train_on_prompt,
        "loss on every token, not only the answers / completions (= --loss-on all;\n"
        "with --loss-on trl: TRL's completion_only_loss=False)");
  t.add_choice("loss-on", &cfg.loss_on, {"answers", "all", "trl"},
               "answers (assistant answers / completions and their stop token) | all (every token)\n"
               "| trl (TRL 1.16 SFTTrainer's defaults exactly: docs/data.md)");
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
  t.add_choice("offload-activations", &cfg.offload_activations, {"auto", "on", "off"},
               "on | off | auto: each layer's saved input waits in (pinned) host memory until\n"
               "its backward, copied on a side stream; auto: on when the GPU memory plan needs it");
  t.add("mlp-chunk-rows", &cfg.mlp_chunk_rows,
        "run the MLP over chunks of N rows, each recomputed alone in backward (one more\n"
        "MLP forward; its [N, F] temporaries for one chunk): auto (the plan's chunk when the\n"
        "GPU plan needs it) | off | N",
        "auto|off|N");
  t.add("ce-chunk", &cfg.ce_chunk,
        "rows of logits that exist at once in the loss ([N, vocab] f32 and its gradient: at\n"
        "vocab 151936, 1024 rows are 890 MiB on the GPU); fewer rows, less memory, more launches");
  add_device_flag(t, &cfg.device);
  add_dtype_flag(t, &cfg.dtype);
  add_rope_scaling_flag(t, &cfg.rope_scaling);
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
    {"loss-on", ""},
    {"prompt-completion-chat", ""},
    {"on-bad-line", ""},
    {"device", ""},
    {"dtype", ""},
    {"rope-scaling", ""},
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
  // One spelling per dtype (bf16 = bfloat16), so checkpoints and resume compare meanings.
  DType d;
  if (parse_float_dtype(copy.dtype, &d)) copy.dtype = d == DType::BF16 ? "bfloat16" : d == DType::F16 ? "float16" : "float32";
  return train_flags(copy).to_json();
}

int64_t parse_mlp_chunk_rows(const std::string& text) {
  if (text == "off") return 0;
  if (text == "auto") return kPlanMlpChunk;
  const bool rows = !text.empty() && text.size() <= 12 && text.find_first_not_of("0123456789") == std::string::npos;
  NQ_CHECK(rows && std::stoll(text) >= 1, "--mlp-chunk-rows must be auto, off or a number of rows >= 1, got '", text,
           "'");
  return std::stoll(text);
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
  NQ_CHECK(loss_on == "answers" || loss_on == "all" || loss_on == "trl",
           "--loss-on must be answers, all or trl, got '", loss_on, "'");
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
  if (!rope_scaling.empty()) parse_rope_scaling_spec(rope_scaling, 1);  // the syntax, before the model loads
  parse_mlp_chunk_rows(mlp_chunk_rows);  // throws on a bad value
  NQ_CHECK(ce_chunk >= 1, "--ce-chunk must be >= 1 rows, got ", ce_chunk);
  NQ_CHECK(offload_activations != "on" || !no_grad_checkpoint,
           "--offload-activations on offloads the checkpointed layer inputs: it needs gradient checkpointing "
           "(leave out --no-grad-checkpoint)");
  NQ_CHECK(optim_page_mb >= 1 && optim_page_mb <= 1024, "--optim-page-mb must be in [1, 1024], got ", optim_page_mb);
  select_device(device, "--device");  // cuda in a CPU build or without a GPU: the error says which
  try {
    parse_bad_line_policy(on_bad_line);
  } catch (const Error& e) {
    throw Error(str("--on-bad-line: ", e.what()));
  }
}

// ---- --adapter: the run takes the adapter's LoRA settings ------------------
void TrainConfig::adopt_adapter_config() {
  if (adapter.empty()) return;
  const std::string path = adapter + "/adapter_config.json";
  NQ_CHECK(std::ifstream(path).good(), "--adapter ", adapter, ": no readable adapter_config.json (not a PEFT adapter folder)");
  const AdapterConfig file = AdapterConfig::from_json_file(path);  // errors name the file and field
  // An option given explicitly must agree with the file (alpha and dropout at the
  // file's f32 precision); the file's values are the run's.
  auto agree = [&](const char* option, const char* file_key, bool same, const std::string& mine,
                   const std::string& theirs) {
    NQ_CHECK(!given.count(option) || same, "--", option, " ", mine, " disagrees with ", path, "'s ", file_key, " ",
             theirs, " (--adapter takes the LoRA settings from the file; leave --", option, " out)");
  };
  auto joined = [](const std::vector<std::string>& v) {
    std::string s;
    for (const std::string& e : v) s += (s.empty() ? "" : ",") + e;
    return s;
  };
  auto boolean = [](bool b) { return std::string(b ? "true" : "false"); };
  agree("r", "r", r == file.lora.r, str(r), str(file.lora.r));
  agree("alpha", "lora_alpha", float(alpha) == file.lora.alpha, str(alpha), str(file.lora.alpha));
  agree("dropout", "lora_dropout", float(dropout) == file.lora.dropout, str(dropout), str(file.lora.dropout));
  agree("rslora", "use_rslora", rslora == file.lora.use_rslora, boolean(rslora), boolean(file.lora.use_rslora));
  const std::set<std::string> mine(targets.begin(), targets.end()),
      theirs(file.target_modules.begin(), file.target_modules.end());
  agree("targets", "target_modules", mine == theirs, joined(targets), joined(file.target_modules));
  r = file.lora.r;
  alpha = file.lora.alpha;
  dropout = file.lora.dropout;
  rslora = file.lora.use_rslora;
  targets = file.target_modules;
}

std::string TrainConfig::trajectory_difference(const TrainConfig& other) const {
  // The device and the optimizer's memory layout do not count either: a checkpoint
  // written on the GPU resumes on the CPU, and paged / unpaged AdamW update alike.
  static const std::set<std::string> irrelevant = {"out",        "metrics",     "resume",        "eval_data",
                                                    "log_every",  "eval_every",  "save_every",    "threads",
                                                    "no_progress", "device",     "optim",         "optim_pages",
                                                    "optim_page_mb", "max_steps",  "epochs",      "overwrite",
                                                    "save_total_limit", "verbose", "report_to",   "detect_anomaly",
                                                    "offload_activations", "mlp_chunk_rows", "ce_chunk"};
  json a = json::parse(to_json()), b = json::parse(other.to_json());
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!irrelevant.count(it.key()) && b[it.key()] != it.value()) return it.key();
  return "";
}


// ---- --config files with the seed's names ----------------------------------
// The seed trains with transformers' TrainingArguments / TRL's SFTConfig, PEFT's
// LoraConfig and transformers' BitsAndBytesConfig. A --config file may use their
// keys as the seed writes them (flat, or grouped under "SFTConfig", "LoraConfig",
// "BitsAndBytesConfig"); each becomes the ./train option it means. A key that
// only concerns the Python stack's bookkeeping is named in a warning and
// dropped; a value that would change the maths in a way ./train does not
// implement is an error. docs/seed.md lists them all.
namespace {

enum class SeedKeyKind { Option, Check, Ignore };

// What a seed key becomes: `option` set to the converted value, or a check
// that the value means what ./train does anyway, or a warning.
struct SeedKey {
  const char* name;
  SeedKeyKind kind;
  const char* option;  // Option: the ./train JSON key; Ignore: why it does not apply
};

const SeedKey kSeedKeys[] = {
    // SFTConfig / TrainingArguments
    {"output_dir", SeedKeyKind::Option, "out"},
    {"per_device_train_batch_size", SeedKeyKind::Option, "batch_size"},
    {"gradient_accumulation_steps", SeedKeyKind::Option, "grad_accum"},
    {"learning_rate", SeedKeyKind::Option, "lr"},
    {"lr_scheduler_type", SeedKeyKind::Option, "schedule"},
    {"num_train_epochs", SeedKeyKind::Option, "epochs"},
    {"max_steps", SeedKeyKind::Option, "max_steps"},
    {"warmup_steps", SeedKeyKind::Option, "warmup_steps"},
    {"warmup_ratio", SeedKeyKind::Option, "warmup_ratio"},
    {"weight_decay", SeedKeyKind::Option, "weight_decay"},
    {"max_grad_norm", SeedKeyKind::Option, "max_grad_norm"},
    {"logging_steps", SeedKeyKind::Option, "log_every"},
    {"save_steps", SeedKeyKind::Option, "save_every"},
    {"eval_steps", SeedKeyKind::Option, "eval_every"},
    {"seed", SeedKeyKind::Option, "seed"},
    {"max_length", SeedKeyKind::Option, "max_length"},
    {"max_seq_length", SeedKeyKind::Option, "max_length"},  // TRL before 0.20
    {"packing", SeedKeyKind::Option, "packing"},
    {"optim", SeedKeyKind::Option, "optim"},
    {"gradient_checkpointing", SeedKeyKind::Option, "no_grad_checkpoint"},
    {"resume_from_checkpoint", SeedKeyKind::Option, "resume"},
    {"use_cpu", SeedKeyKind::Option, "device"},
    {"assistant_only_loss", SeedKeyKind::Option, "loss_on"},
    {"completion_only_loss", SeedKeyKind::Option, "train_on_prompt"},
    {"adam_beta1", SeedKeyKind::Check, nullptr},
    {"adam_beta2", SeedKeyKind::Check, nullptr},
    {"adam_epsilon", SeedKeyKind::Check, nullptr},
    {"fp16", SeedKeyKind::Option, "dtype"},  // true: float16, false: nothing asked (the default)
    {"bf16", SeedKeyKind::Option, "dtype"},  // true: bfloat16
    {"tf32", SeedKeyKind::Check, nullptr},
    {"group_by_length", SeedKeyKind::Check, nullptr},
    {"dataset_text_field", SeedKeyKind::Check, nullptr},
    {"save_strategy", SeedKeyKind::Check, nullptr},
    {"eval_strategy", SeedKeyKind::Check, nullptr},
    {"padding_free", SeedKeyKind::Check, nullptr},
    {"neftune_noise_alpha", SeedKeyKind::Check, nullptr},
    {"label_smoothing_factor", SeedKeyKind::Check, nullptr},
    {"report_to", SeedKeyKind::Option, "report_to"},
    {"logging_dir", SeedKeyKind::Ignore, "metrics go to OUT/metrics.jsonl (--metrics)"},
    {"logging_strategy", SeedKeyKind::Ignore, "progress lines every --log-every steps"},
    {"logging_first_step", SeedKeyKind::Ignore, "every step is in OUT/metrics.jsonl"},
    {"run_name", SeedKeyKind::Ignore, "no experiment tracker"},
    {"disable_tqdm", SeedKeyKind::Ignore, "--no-progress"},
    {"save_total_limit", SeedKeyKind::Option, "save_total_limit"},
    {"save_safetensors", SeedKeyKind::Ignore, "always safetensors"},
    {"overwrite_output_dir", SeedKeyKind::Option, "overwrite"},
    {"push_to_hub", SeedKeyKind::Ignore, "no hub access"},
    {"hub_model_id", SeedKeyKind::Ignore, "no hub access"},
    {"hub_strategy", SeedKeyKind::Ignore, "no hub access"},
    {"hub_token", SeedKeyKind::Ignore, "no hub access"},
    {"ddp_find_unused_parameters", SeedKeyKind::Ignore, "one device"},
    {"ddp_backend", SeedKeyKind::Ignore, "one device"},
    {"ddp_timeout", SeedKeyKind::Ignore, "one device"},
    {"local_rank", SeedKeyKind::Ignore, "one device"},
    {"dataloader_num_workers", SeedKeyKind::Ignore, "the data is tokenized once, in memory"},
    {"dataloader_pin_memory", SeedKeyKind::Ignore, "the data is tokenized once, in memory"},
    {"dataset_num_proc", SeedKeyKind::Ignore, "the data is tokenized once, in memory"},
    {"remove_unused_columns", SeedKeyKind::Ignore, "the JSONL keys decide the format"},
    {"do_train", SeedKeyKind::Ignore, "./train trains"},
    {"do_eval", SeedKeyKind::Ignore, "eval runs when there is eval data"},
    {"per_device_eval_batch_size", SeedKeyKind::Ignore, "the eval loss does not depend on it"},
    {"gradient_checkpointing_kwargs", SeedKeyKind::Ignore, "one checkpointing scheme"},
    {"torch_compile", SeedKeyKind::Ignore, "no torch"},
    {"model_init_kwargs", SeedKeyKind::Ignore, "no torch"},
    {"load_best_model_at_end", SeedKeyKind::Ignore, "the last adapter is written"},
    {"metric_for_best_model", SeedKeyKind::Ignore, "the last adapter is written"},
    // LoraConfig
    {"r", SeedKeyKind::Option, "r"},
    {"lora_alpha", SeedKeyKind::Option, "alpha"},
    {"lora_dropout", SeedKeyKind::Option, "dropout"},
    {"target_modules", SeedKeyKind::Option, "targets"},
    {"use_rslora", SeedKeyKind::Option, "rslora"},
    {"bias", SeedKeyKind::Check, nullptr},
    {"task_type", SeedKeyKind::Check, nullptr},
    {"use_dora", SeedKeyKind::Check, nullptr},
    {"init_lora_weights", SeedKeyKind::Check, nullptr},
    {"modules_to_save", SeedKeyKind::Check, nullptr},
    {"layers_to_transform", SeedKeyKind::Check, nullptr},
    {"rank_pattern", SeedKeyKind::Check, nullptr},
    {"alpha_pattern", SeedKeyKind::Check, nullptr},
    {"fan_in_fan_out", SeedKeyKind::Check, nullptr},
    {"lora_bias", SeedKeyKind::Check, nullptr},
    {"inference_mode", SeedKeyKind::Ignore, "./train trains the adapter"},
    // BitsAndBytesConfig
    {"load_in_4bit", SeedKeyKind::Check, nullptr},
    {"load_in_8bit", SeedKeyKind::Check, nullptr},
    {"bnb_4bit_quant_type", SeedKeyKind::Check, nullptr},
    {"bnb_4bit_use_double_quant", SeedKeyKind::Check, nullptr},
    {"bnb_4bit_compute_dtype", SeedKeyKind::Check, nullptr},
    {"bnb_4bit_quant_storage", SeedKeyKind::Ignore, "NF4 codes are stored two per byte"},
    {"llm_int8_skip_modules", SeedKeyKind::Check, nullptr},
};

// Families of TrainingArguments keys about distributed runs, data workers, the hub
// and compilers: none concerns a single-process run.
const SeedKey kSeedPrefixes[] = {
    {"ddp_", SeedKeyKind::Ignore, "one device"},
    {"fsdp", SeedKeyKind::Ignore, "one device"},
    {"deepspeed", SeedKeyKind::Ignore, "one device"},
    {"dataloader_", SeedKeyKind::Ignore, "the data is tokenized once, in memory"},
    {"hub_", SeedKeyKind::Ignore, "no hub access"},
    {"torch_compile", SeedKeyKind::Ignore, "no torch"},
};

const SeedKey* find_seed_key(const std::string& name) {
  for (const SeedKey& k : kSeedKeys)
    if (name == k.name) return &k;
  for (const SeedKey& k : kSeedPrefixes)
    if (name.rfind(k.name, 0) == 0) return &k;
  return nullptr;
}

std::string dump_value(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// The ./train value of an Option key (most pass through as they are).
json seed_option_value(const std::string& source, const std::string& key, const json& v) {
  const std::string where = str(source, ": \"", key, "\"");
  if (key == "lr_scheduler_type") {
    const std::string s = v.is_string() ? v.get<std::string>() : "";
    if (s == "linear" || s == "cosine" || s == "constant") return s;
    NQ_CHECK(s != "constant_with_warmup", where, ": constant_with_warmup is ./train's \"constant\" with --warmup-steps; "
             "write \"constant\"");
    throw Error(str(where, ": schedule ", dump_value(v), " is not supported (linear, cosine or constant)"));
  }
  if (key == "num_train_epochs") {
    NQ_CHECK(v.is_number() && v.get<double>() >= 1 && v.get<double>() == std::floor(v.get<double>()), where,
             ": ./train runs whole epochs (an integer >= 1), got ", v.dump(), "; use max_steps for part of one");
    return int64_t(v.get<double>());
  }
  if (key == "max_steps") {
    NQ_CHECK(v.is_number_integer(), where, ": expected an integer, got ", v.dump());
    return std::max<int64_t>(v.get<int64_t>(), 0);  // transformers' -1 = from the epochs = ./train's 0
  }
  if (key == "optim") {
    const std::string s = v.is_string() ? v.get<std::string>() : "";
    if (s == "paged_adamw_32bit" || s == "paged_adamw") return "paged_adamw";
    if (s == "adamw_torch" || s == "adamw_torch_fused" || s == "adamw_hf" || s == "adamw") return "adamw";
    throw Error(str(where, ": optimizer ", dump_value(v),
                    " is not supported (32-bit AdamW: paged_adamw_32bit, adamw_torch; 8-bit states and other "
                    "optimizers change the update)"));
  }
  if (key == "gradient_checkpointing") {
    NQ_CHECK(v.is_boolean(), where, ": expected true or false, got ", v.dump());
    return !v.get<bool>();
  }
  if (key == "fp16" || key == "bf16") {  // TrainingArguments' mixed precision = --dtype
    NQ_CHECK(v.is_boolean(), where, ": expected true or false, got ", v.dump());
    return v.get<bool>() ? json(key == "fp16" ? "float16" : "bfloat16") : json();  // null: not asked
  }
  if (key == "use_cpu") {
    NQ_CHECK(v.is_boolean(), where, ": expected true or false, got ", v.dump());
    return v.get<bool>() ? "cpu" : kDefaultDevice;
  }
  if (key == "report_to") {
    // transformers: a name or a list of names; ./train writes TensorBoard files or nothing more
    // (metrics.jsonl always). Trackers it does not have ("wandb", ...) are left out.
    std::vector<json> names = v.is_array() ? std::vector<json>(v.begin(), v.end()) : std::vector<json>{v};
    for (const json& n : names)
      if (n == "tensorboard" || n == "all") return "tensorboard";
    return "none";
  }
  if (key == "save_total_limit") {
    NQ_CHECK(v.is_null() || v.is_number_integer(), where, ": expected an integer or null, got ", v.dump());
    return v.is_null() ? 0 : std::max<int64_t>(v.get<int64_t>(), 0);
  }
  if (key == "assistant_only_loss") {
    // False (TRL's default): whole conversations are trained, TRL's way = --loss-on trl.
    // True: ./train's answers; TRL differs (docs/data.md: it swaps in its own Qwen3
    // template and trains the "\n" after <|im_end|>), said once here.
    NQ_CHECK(v.is_boolean(), where, ": expected true or false, got ", v.dump());
    return v.get<bool>() ? "answers" : "trl";
  }
  if (key == "completion_only_loss") {
    // null (TRL's default) / true: the completion only; false: every token.
    NQ_CHECK(v.is_boolean() || v.is_null(), where, ": expected true, false or null, got ", v.dump());
    return v.is_boolean() && !v.get<bool>();
  }
  if (key == "save_steps" || key == "eval_steps" || key == "logging_steps") {
    // transformers also takes a float < 1 as a fraction of the run; ./train counts steps
    NQ_CHECK(v.is_number_integer(), where, ": expected a whole number of steps, got ", v.dump());
  }
  return v;
}

// A Check key: fine when its value is what ./train does; a note when it only
// concerns precision (which follows --device); an error when it would change the maths.
void check_seed_value(const std::string& source, const std::string& key, const json& v,
                      std::vector<std::string>* warnings) {
  const std::string where = str(source, ": \"", key, "\"");
  auto is = [&](const json& want) { return v == want; };
  auto unsupported = [&](const std::string& why) {
    throw Error(str(where, ": ", dump_value(v), " is not supported: ", why));
  };
  if (key == "adam_beta1" || key == "adam_beta2" || key == "adam_epsilon") {
    const double want = key == "adam_beta1" ? 0.9 : key == "adam_beta2" ? 0.999 : 1e-8;
    if (!(v.is_number() && v.get<double>() == want)) unsupported(str("./train's AdamW uses ", key, " = ", want));
  } else if (key == "tf32" || key == "bnb_4bit_compute_dtype") {
    if (is(false) || is("float32")) return;  // asks for nothing ./train does not do
    warnings->push_back(str(where, " = ", dump_value(v), ": the precision follows --dtype (fp32 on the cpu; bf16 "
                            "or f16 activations with fp32 accumulation, fp32 LoRA masters and optimizer on cuda)"));
  } else if (key == "group_by_length") {
    if (!is(false)) unsupported("./train keeps the order of docs/data.md (--shuffle / --no-shuffle)");
  } else if (key == "dataset_text_field") {
    if (!is("text")) unsupported("./train reads the \"text\" key of language-modeling data");
  } else if (key == "save_strategy" || key == "eval_strategy") {
    if (!is("steps") && !is("no")) unsupported("./train saves and evaluates every N steps (save_steps, eval_steps)");
  } else if (key == "padding_free") {
    if (!is(false)) unsupported("rows are padded, or packed with --packing");
  } else if (key == "neftune_noise_alpha" || key == "label_smoothing_factor") {
    if (!v.is_null() && !(v.is_number() && v.get<double>() == 0)) unsupported("it changes the loss");
  } else if (key == "bias") {
    if (!is("none")) unsupported("only the LoRA A and B are trained (bias \"none\")");
  } else if (key == "task_type") {
    if (!is("CAUSAL_LM")) unsupported("./train fine-tunes causal language models (CAUSAL_LM)");
  } else if (key == "use_dora" || key == "fan_in_fan_out" || key == "lora_bias") {
    if (!is(false)) unsupported("plain LoRA only");
  } else if (key == "init_lora_weights") {
    if (!is(true)) unsupported("PEFT's default init only (A Kaiming-uniform, B zero)");
  } else if (key == "modules_to_save" || key == "layers_to_transform" || key == "llm_int8_skip_modules") {
    if (!v.is_null() && !(v.is_array() && v.empty())) unsupported("LoRA on the targets of every layer only");
  } else if (key == "rank_pattern" || key == "alpha_pattern") {
    if (!v.is_null() && !(v.is_object() && v.empty())) unsupported("one r and alpha for every module");
  } else if (key == "load_in_4bit") {
    if (!is(true)) unsupported("the base is quantized to 4-bit NF4 (--no-quant: a dense f32 base, for debugging)");
  } else if (key == "load_in_8bit") {
    if (!is(false)) unsupported("the base is 4-bit NF4");
  } else if (key == "bnb_4bit_quant_type") {
    if (!is("nf4")) unsupported("NF4 only");
  } else if (key == "bnb_4bit_use_double_quant") {
    if (!is(true)) unsupported("NF4 with double quantization only (the absmax quantized to 8 bits)");
  }
}

}  // namespace

std::string translate_seed_config(const std::string& json_text, const std::string& source,
                                  std::vector<std::string>* warnings) {
  const json j = parse_json(json_text, source);
  NQ_CHECK(j.is_object(), source, ": a config must be a JSON object of option keys");
  // Flat, or grouped by the seed's classes.
  json flat = json::object();
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "SFTConfig" || it.key() == "TrainingArguments" || it.key() == "LoraConfig" ||
        it.key() == "BitsAndBytesConfig") {
      NQ_CHECK(it.value().is_object(), source, ": \"", it.key(), "\" must be an object of its keys");
      for (auto kv = it.value().begin(); kv != it.value().end(); ++kv) {
        NQ_CHECK(!flat.contains(kv.key()), source, ": key \"", kv.key(), "\" is given twice");
        flat[kv.key()] = kv.value();
      }
    } else {
      NQ_CHECK(!flat.contains(it.key()), source, ": key \"", it.key(), "\" is given twice");
      flat[it.key()] = it.value();
    }
  }
  json out = json::object();
  std::map<std::string, std::string> set_by;  // ./train key -> the key that set it
  for (auto it = flat.begin(); it != flat.end(); ++it) {
    const std::string& key = it.key();
    const SeedKey* seed = find_seed_key(key);
    std::string option;
    json value = it.value();
    if (seed && seed->kind == SeedKeyKind::Ignore) {
      warnings->push_back(str(source, ": \"", key, "\" has no meaning in ./train (", seed->option, "); ignored"));
      continue;
    }
    if (seed && seed->kind == SeedKeyKind::Check) {
      check_seed_value(source, key, value, warnings);
      continue;
    }
    if (seed) {
      option = seed->option;
      value = seed_option_value(source, key, value);
      if (key == "assistant_only_loss" && value == "answers")
        warnings->push_back(str(source, ": \"assistant_only_loss\" = true is ./train's --loss-on answers, which "
                                "differs from TRL's (docs/data.md: TRL also trains the \\n after <|im_end|> and, for "
                                "Qwen3, renders with its own training template)"));
    } else {
      option = key;  // ./train's own key (or an unknown one: the table's error names it)
      if (key == "optim") value = seed_option_value(source, key, value);
    }
    if ((option == "resume" || option == "dtype") && value.is_null()) continue;
    NQ_CHECK(!set_by.count(option) || set_by[option] == key, source, ": \"", key, "\" and \"", set_by[option],
             "\" both set ", option);
    set_by[option] = key;
    out[option] = value;
  }
  return out.dump();
}

bool parse_train_table(FlagTable& table, int argc, char** argv) {
  // --config FILE: read here, the seed's names translated, applied under the flags
  // (as the table's own --config reader would); the other arguments go to parse().
  std::vector<char*> rest{argv[0]};
  bool help = false;
  for (int i = 1; i < argc; ++i) help |= std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h";
  for (int i = 1; i < argc; ++i) {
    if (help || std::string(argv[i]) != "--config") {
      rest.push_back(argv[i]);
      continue;
    }
    NQ_CHECK(i + 1 < argc, "--config needs a value (see --help)");
    const std::string path = argv[++i];
    std::ifstream file(path);
    NQ_CHECK(file.good(), "--config ", path, ": cannot read the file");
    std::stringstream text;
    text << file.rdbuf();
    std::vector<std::string> notes;
    table.apply_json(translate_seed_config(text.str(), path, &notes), path);
    for (const std::string& n : notes) std::cerr << "warning: " << n << "\n";
  }
  return table.parse(int(rest.size()), rest.data());  // false: --help
}

void finish_train_args(const FlagTable& table, TrainConfig* cfg) {
  for (const Flag& f : table.flags())
    if (table.given(f.name)) cfg->given.insert(f.name);
  if (cfg->given.count("no-shuffle")) cfg->given.insert("shuffle");
  cfg->adopt_adapter_config();
  cfg->validate();
}

bool parse_train_args(int argc, char** argv, TrainConfig* cfg) {
  *cfg = TrainConfig();
  FlagTable table = train_flags(*cfg);
  if (!parse_train_table(table, argc, argv)) return false;  // --help
  finish_train_args(table, cfg);
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
  enc.train_on_prompt = cfg.train_on_prompt || cfg.loss_on == "all";
  enc.trl_targets = cfg.loss_on == "trl";
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
  o.shuffle = cfg.shuffle;
  o.seed = cfg.seed;
  o.pad_id = tok.pad_id >= 0 ? tok.pad_id : std::max(tok.eos_id, 0);
  return o;
}

std::string train_help() {
  TrainConfig defaults;
  return train_flags(defaults).help();
}

}  // namespace nq
