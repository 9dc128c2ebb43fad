// The settings of one fine-tuning run (./train), from command-line flags and/or
// a JSON file (--config FILE.json) with the same keys; and ./eval's, a subset
// of the same table.
//
// Every setting is declared once, in a table (train_flags in train_config.cpp,
// on the mechanism every program uses: training/flags.h): the flag
// "--warmup-steps" and the JSON key "warmup_steps" are the same option, so
// --help, the flag parser, the JSON reader and the checkpoint's copy of the
// config cannot drift apart. Precedence: defaults < --config file < flags.
// A --config file may also be written with the seed's Python names
// (translate_seed_config below; docs/seed.md).
// The defaults follow the seed's TRL SFTConfig + PEFT LoraConfig (lr 2e-4,
// cosine, 1 epoch, clip 1.0, paged_adamw; the LoRA ones, r 16, alpha 32,
// dropout 0.05, all-linear, are lora/lora_linear.h's kDefaultLora*, and the
// GPU pool's those of AdamWOptions).
#pragma once
#include <cstdint>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "lora/lora_linear.h"
#include "model/decoder.h"
#include "model/load_model.h"
#include "optim/adamw.h"
#include "training/batch.h"
#include "training/encode.h"
#include "training/flags.h"

namespace nq {

struct TrainConfig {
  // ---- inputs and outputs
  std::string model;       // HF model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file
  std::string data;        // training JSONL (training/data.h formats)
  std::string eval_data;   // held-out JSONL; or ...
  double eval_split = 0;   // ... a fraction (< 1) or a count (>= 1) of --data held out for eval
  std::string out = "out"; // adapter, checkpoints
  std::string metrics;     // metrics JSONL ("" = <out>/metrics.jsonl)
  std::string resume;      // a checkpoint directory to continue from
  std::string report_to = "none";  // none | tensorboard: also OUT/runs/<time>/events.out.tfevents.* (training/report.h)
  // ---- starting adapter: a PEFT adapter whose r, alpha, rsLoRA, dropout and
  // targets the run takes (adopt_adapter_config) and whose A, B are the initial weights
  std::string adapter;
  // ---- LoRA
  int64_t r = kDefaultLoraRank;
  double alpha = kDefaultLoraAlpha;
  double dropout = kDefaultLoraDropout;
  std::vector<std::string> targets{kDefaultLoraTargets};
  bool rslora = false;
  // ---- optimisation
  double lr = 2e-4;
  std::string schedule = "cosine";  // constant | linear | cosine
  int64_t warmup_steps = 0;         // wins over warmup_ratio when > 0
  double warmup_ratio = 0;
  int64_t epochs = 1;
  int64_t max_steps = 0;            // > 0: stop after this many optimizer steps (overrides epochs)
  int64_t batch_size = 1;
  int64_t grad_accum = 1;
  int64_t max_length = 1024;
  bool packing = false;
  bool shuffle = true;              // false (--no-shuffle): every epoch in file order (docs/data.md)
  bool train_on_prompt = false;         // loss on every token, not just answers / completions (training/encode.h)
  std::string loss_on = "answers";      // answers | all (= train_on_prompt) | trl: which tokens are trained (docs/data.md)
  bool prompt_completion_chat = false;  // prompt-completion / alpaca rendered as a user/assistant chat
  std::string optim = "paged_adamw";  // paged_adamw | adamw: where AdamW keeps m and v on a GPU
                                    // (host memory paged through a GPU pool | GPU memory); on the CPU both are AdamW
  int64_t optim_pages = AdamWOptions{}.n_pages;                // paged_adamw on cuda: pages in the GPU pool ...
  int64_t optim_page_mb = AdamWOptions{}.page_bytes >> 20;     // ... of this many MiB each (m and v of page_mb * 2^17 elements)
  double weight_decay = 0;
  double max_grad_norm = 1.0;       // 0: no clipping
  uint64_t seed = 42;
  // ---- run control
  int64_t log_every = 10;           // progress lines when stdout is not a terminal
  int64_t eval_every = 0;           // 0: eval only at the end
  int64_t save_every = 0;           // 0: checkpoint only at the end
  bool no_grad_checkpoint = false;
  // Long context (training/memory_plan.h): auto = on only when the GPU plan does not fit otherwise.
  std::string offload_activations = "auto";  // auto | on | off: saved layer inputs in host memory
  std::string mlp_chunk_rows = "auto";       // auto | off | N: the MLP over chunks of N rows
  int64_t ce_chunk = DecoderOptions{}.ce_chunk_rows;  // rows of [rows, vocab] logits at once in the loss
  std::string device = kDefaultDevice;  // auto | cpu | cuda (training/flags.h's --device)
  std::string dtype = "auto";       // compute dtype on cuda: auto | bfloat16 | float16 (model/device.h)
  std::string rope_scaling;         // "yarn:4", "yarn:4:32768", "linear:2": switched on in the model's config; "": as it is
  std::string on_bad_line = "error";  // error | skip
  bool no_quant = false;            // dense f32 base (debugging)
  int64_t threads = 0;              // 0: all cores (OpenMP default)
  bool no_progress = false;
  // ---- output folder and verbosity (HF Trainer's overwrite_output_dir, save_total_limit)
  bool overwrite = false;           // a new run may replace another run's checkpoints in --out
  int64_t save_total_limit = 0;     // keep only the K newest checkpoints (0: keep all)
  bool verbose = false;             // the memory plan as a table, before step 1 and after it
  bool detect_anomaly = false;      // check every op's output and gradient for NaN/Inf (autograd/var.h)

  // The options given on the command line or in the --config file (flag names,
  // "r", "alpha", ...); parse_train_args fills it. Not a setting: not in to_json.
  std::set<std::string> given;

  // --adapter: reads DIR/adapter_config.json and takes its r, lora_alpha,
  // use_rslora, lora_dropout and target_modules. An option in `given` whose
  // value differs is an error naming both values. No-op without --adapter.
  void adopt_adapter_config();
  // Applies a JSON object's keys (`source` names the file in errors).
  void apply_json(const std::string& json_text, const std::string& source);
  // The whole config as a JSON object (checkpoints, --config files).
  std::string to_json() const;
  // Range and consistency checks; errors name the flag.
  void validate() const;
  // Whether this run and a checkpoint's config would produce different losses;
  // returns the first differing key ("" when they agree). Paths to outputs,
  // logging and run length do not count (a resumed run may be extended, as in HF
  // Trainer: the schedule then runs to the new end).
  std::string trajectory_difference(const TrainConfig& other) const;
};

// The table of ./train's flags bound to `cfg` (defaults shown: cfg's values now).
FlagTable train_flags(TrainConfig& cfg);

// --mlp-chunk-rows: "off" 0, "auto" kPlanMlpChunk (training/memory_plan.h: the plan's
// chunk), or a number of rows >= 1; anything else is a one-line error naming the flag.
int64_t parse_mlp_chunk_rows(const std::string& text);

// Parses argv (defaults < --config FILE < flags) and validates. Returns false
// when --help was given (the help text is then printed to stdout). The --config
// file's keys may be the seed's (translate_seed_config); its warnings go to
// stderr, one "warning: ..." line each.
bool parse_train_args(int argc, char** argv, TrainConfig* cfg);
// The parse itself, into a table of train_flags (its --config files with the seed's
// names translated, warnings to stderr): false when --help was given. ./train's
// --resume path (training/resume.h) parses with it too.
bool parse_train_table(FlagTable& table, int argc, char** argv);
// After parse_train_table, for a new run: records which options were given
// (TrainConfig::given), adopts --adapter's settings, validates.
void finish_train_args(const FlagTable& table, TrainConfig* cfg);

// A --config file's JSON with the keys of transformers' TrainingArguments / TRL's
// SFTConfig, PEFT's LoraConfig and BitsAndBytesConfig (flat, or grouped under
// those class names) -> the same settings as ./train's own keys (which pass
// through). Keys that only concern the Python stack go to `warnings`; values
// ./train does not implement (bias "all", use_dora, fp4, 8-bit optimizers, ...)
// are errors naming `source` and the key. docs/seed.md has the whole table.
std::string translate_seed_config(const std::string& json_text, const std::string& source,
                                  std::vector<std::string>* warnings);

// The --help text, listing every option with its default.
std::string train_help();

// ./eval's settings: the options of ./train that decide which tokens are scored
// and how (model, data, tokenization, batching, device), spelled, parsed and
// validated exactly as ./train's, plus the adapter to evaluate. The other
// fields of `run` keep their defaults.
struct EvalConfig {
  TrainConfig run;
  std::string adapter;  // a PEFT adapter folder; "" = the base model alone
  EvalConfig() { run.batch_size = 8; }  // eval has no gradients to hold: bigger batches
};

// Parses ./eval's argv and validates; false when --help was given (the help is
// then printed to stdout). A ./train flag that does not affect eval (--lr) is
// "unknown" here.
bool parse_eval_args(int argc, char** argv, EvalConfig* cfg);
FlagTable eval_flags(EvalConfig& cfg);  // ./eval's table bound to `cfg`: --adapter + train_flags' shared ones
std::string eval_help();

// What the options mean for the data path, shared by ./train and ./eval:
// tokenization (the model's chat format, or its model type's default when the
// template is not recognised: a note goes to `log`) ...
EncodeOptions encode_options(const TrainConfig& cfg, const LoadedModel& model, std::ostream& log);
// ... and batching (padding with the tokenizer's pad token, else EOS, else 0).
LoaderOptions loader_options(const TrainConfig& cfg, const Tokenizer& tok);

}  // namespace nq
