// TrainConfig: one table of options serves the flags, the JSON keys, --help
// and the checkpoint copy (see train_config.h).
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

namespace nq {

using json = nlohmann::json;

namespace {

enum class Kind { Str, Int, UInt, Float, Bool, List };

struct Option {
  const char* name;  // flag without "--"; the JSON key is the same with '_' for '-'
  Kind kind;
  void* (*field)(TrainConfig&);
  const char* help;
};

#define NQ_FIELD(member) [](TrainConfig& c) -> void* { return &c.member; }

const std::vector<Option>& options() {
  static const std::vector<Option> table = {
      {"model", Kind::Str, NQ_FIELD(model), "HF model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file [required]"},
      {"data", Kind::Str, NQ_FIELD(data), "training JSONL: messages | prompt-completion | alpaca | text [required]"},
      {"eval-data", Kind::Str, NQ_FIELD(eval_data), "held-out JSONL for the eval loss"},
      {"eval-split", Kind::Float, NQ_FIELD(eval_split), "hold out this fraction (< 1) or count (>= 1) of --data instead"},
      {"out", Kind::Str, NQ_FIELD(out), "output folder: PEFT adapter, checkpoint-STEP/, metrics.jsonl"},
      {"metrics", Kind::Str, NQ_FIELD(metrics), "metrics JSONL, one line per optimizer step (default OUT/metrics.jsonl)"},
      {"resume", Kind::Str, NQ_FIELD(resume), "continue from a checkpoint folder (OUT/checkpoint-STEP)"},
      {"r", Kind::Int, NQ_FIELD(r), "LoRA rank"},
      {"alpha", Kind::Float, NQ_FIELD(alpha), "LoRA alpha (scaling alpha / r)"},
      {"dropout", Kind::Float, NQ_FIELD(dropout), "LoRA dropout on the adapter input"},
      {"targets", Kind::List, NQ_FIELD(targets), "all-linear, or a comma list of module names (q_proj,v_proj)"},
      {"rslora", Kind::Bool, NQ_FIELD(rslora), "rank-stabilised scaling alpha / sqrt(r)"},
      {"lr", Kind::Float, NQ_FIELD(lr), "peak learning rate"},
      {"schedule", Kind::Str, NQ_FIELD(schedule), "constant | linear | cosine (after warmup)"},
      {"warmup-steps", Kind::Int, NQ_FIELD(warmup_steps), "linear warmup steps (wins over --warmup-ratio)"},
      {"warmup-ratio", Kind::Float, NQ_FIELD(warmup_ratio), "warmup as a fraction of the total steps"},
      {"epochs", Kind::Int, NQ_FIELD(epochs), "passes over the training data"},
      {"max-steps", Kind::Int, NQ_FIELD(max_steps), "optimizer steps to run (0: from --epochs)"},
      {"batch-size", Kind::Int, NQ_FIELD(batch_size), "rows per micro-batch"},
      {"grad-accum", Kind::Int, NQ_FIELD(grad_accum), "micro-batches per optimizer step"},
      {"max-length", Kind::Int, NQ_FIELD(max_length), "tokens per sample (longer ones are truncated) / packed row"},
      {"packing", Kind::Bool, NQ_FIELD(packing), "pack several samples per row (attention stays within a sample)"},
      {"train-on-prompt", Kind::Bool, NQ_FIELD(train_on_prompt), "loss on every token, not only the answers / completions"},
      {"prompt-completion-chat", Kind::Bool, NQ_FIELD(prompt_completion_chat),
       "render prompt-completion and alpaca pairs as a user/assistant chat"},
      {"optim", Kind::Str, NQ_FIELD(optim), "paged_adamw (m, v in host memory, paged through a GPU pool) | adamw (in GPU memory)"},
      {"optim-pages", Kind::Int, NQ_FIELD(optim_pages), "paged_adamw on cuda: pages in the GPU pool (2 to 256)"},
      {"optim-page-mb", Kind::Int, NQ_FIELD(optim_page_mb), "paged_adamw on cuda: MiB per page (1 to 1024)"},
      {"weight-decay", Kind::Float, NQ_FIELD(weight_decay), "AdamW decoupled weight decay"},
      {"max-grad-norm", Kind::Float, NQ_FIELD(max_grad_norm), "clip the global gradient norm (0: off)"},
      {"seed", Kind::UInt, NQ_FIELD(seed), "seed of the LoRA init, dropout and shuffling"},
      {"log-every", Kind::Int, NQ_FIELD(log_every), "print a progress line every N steps (when not a terminal)"},
      {"eval-every", Kind::Int, NQ_FIELD(eval_every), "eval loss every N steps (0: only at the end)"},
      {"save-every", Kind::Int, NQ_FIELD(save_every), "checkpoint every N steps (0: only at the end)"},
      {"no-grad-checkpoint", Kind::Bool, NQ_FIELD(no_grad_checkpoint), "keep every layer's activations (faster, more memory)"},
      {"device", Kind::Str, NQ_FIELD(device), "auto | cpu | cuda (auto: cuda when built with CUDA and a GPU is visible)"},
      {"on-bad-line", Kind::Str, NQ_FIELD(on_bad_line), "error | skip a malformed JSONL line"},
      {"no-quant", Kind::Bool, NQ_FIELD(no_quant), "keep the base weights dense f32 (debugging; not QLoRA)"},
      {"threads", Kind::Int, NQ_FIELD(threads), "CPU threads (0: all cores)"},
      {"no-progress", Kind::Bool, NQ_FIELD(no_progress), "no progress bar (metrics file and summary only)"},
  };
  return table;
}

#undef NQ_FIELD

std::string json_key(const char* name) {
  std::string k = name;
  for (char& ch : k) if (ch == '-') ch = '_';
  return k;
}

const Option* find_flag(const std::string& flag) {
  for (const Option& o : options())
    if (flag == std::string("--") + o.name) return &o;
  return nullptr;
}

const Option* find_key(const std::string& key) {
  for (const Option& o : options())
    if (key == json_key(o.name)) return &o;
  return nullptr;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Sets an option from flag text; `what` ("--lr") names it in errors.
void set_from_text(TrainConfig& cfg, const Option& o, const std::string& what, const std::string& text) {
  void* f = o.field(cfg);
  char* end = nullptr;
  switch (o.kind) {
    case Kind::Str: *static_cast<std::string*>(f) = text; break;
    case Kind::List: *static_cast<std::vector<std::string>*>(f) = split_list(text); break;
    case Kind::Int: {
      long long v = std::strtoll(text.c_str(), &end, 10);
      NQ_CHECK(!text.empty() && *end == '\0', what, ": expected an integer, got '", text, "'");
      *static_cast<int64_t*>(f) = v;
      break;
    }
    case Kind::UInt: {
      unsigned long long v = std::strtoull(text.c_str(), &end, 10);
      NQ_CHECK(!text.empty() && text[0] != '-' && *end == '\0', what, ": expected a non-negative integer, got '", text, "'");
      *static_cast<uint64_t*>(f) = v;
      break;
    }
    case Kind::Float: {
      double v = std::strtod(text.c_str(), &end);
      NQ_CHECK(!text.empty() && *end == '\0', what, ": expected a number, got '", text, "'");
      *static_cast<double*>(f) = v;
      break;
    }
    case Kind::Bool: *static_cast<bool*>(f) = true; break;
  }
}

void set_from_json(TrainConfig& cfg, const Option& o, const std::string& what, const json& v) {
  void* f = o.field(cfg);
  auto expect = [&](bool ok, const char* type) { NQ_CHECK(ok, what, ": expected ", type, ", got ", v.dump()); };
  switch (o.kind) {
    case Kind::Str: expect(v.is_string(), "a string"); *static_cast<std::string*>(f) = v.get<std::string>(); break;
    case Kind::List:
      if (v.is_string()) {
        *static_cast<std::vector<std::string>*>(f) = split_list(v.get<std::string>());
      } else {
        expect(v.is_array(), "a string or a list of strings");
        std::vector<std::string> items;
        for (const json& e : v) { expect(e.is_string(), "a list of strings"); items.push_back(e.get<std::string>()); }
        *static_cast<std::vector<std::string>*>(f) = items;
      }
      break;
    case Kind::Int: expect(v.is_number_integer(), "an integer"); *static_cast<int64_t*>(f) = v.get<int64_t>(); break;
    case Kind::UInt: expect(v.is_number_unsigned(), "a non-negative integer"); *static_cast<uint64_t*>(f) = v.get<uint64_t>(); break;
    case Kind::Float: expect(v.is_number(), "a number"); *static_cast<double*>(f) = v.get<double>(); break;
    case Kind::Bool: expect(v.is_boolean(), "true or false"); *static_cast<bool*>(f) = v.get<bool>(); break;
  }
}

json field_json(TrainConfig& cfg, const Option& o) {
  void* f = o.field(cfg);
  switch (o.kind) {
    case Kind::Str: return *static_cast<std::string*>(f);
    case Kind::List: return *static_cast<std::vector<std::string>*>(f);
    case Kind::Int: return *static_cast<int64_t*>(f);
    case Kind::UInt: return *static_cast<uint64_t*>(f);
    case Kind::Float: return *static_cast<double*>(f);
    case Kind::Bool: return *static_cast<bool*>(f);
  }
  return nullptr;
}

std::string default_text(const Option& o, TrainConfig defaults) {
  json v = field_json(defaults, o);
  if (o.kind == Kind::Bool) return "";
  if (o.kind == Kind::List) {
    std::string s;
    for (const json& e : v) s += (s.empty() ? "" : ",") + e.get<std::string>();
    return s;
  }
  if (v.is_string()) return v.get<std::string>().empty() ? "" : v.get<std::string>();
  if (o.kind == Kind::Float) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v.get<double>());
    return buf;
  }
  return v.dump();
}

// Applies the flag argv[i] (option o) and its value, advancing i past the value.
void apply_flag(TrainConfig& cfg, const Option& o, int argc, char** argv, int& i) {
  const std::string flag = argv[i];
  if (o.kind == Kind::Bool) return set_from_text(cfg, o, flag, "");
  NQ_CHECK(i + 1 < argc, flag, " needs a value (see --help)");
  set_from_text(cfg, o, flag, argv[++i]);
}

// One --help line: "  --flag N   help (default d)".
std::string help_line(const Option& o, const char* help, const TrainConfig& defaults) {
  std::string flag = std::string("--") + o.name;
  if (o.kind != Kind::Bool) flag += o.kind == Kind::Str || o.kind == Kind::List ? " S" : " N";
  char line[256];
  std::snprintf(line, sizeof line, "  %-26s  %s", flag.c_str(), help);
  std::string d = default_text(o, defaults);
  return line + (d.empty() ? "" : " (default " + d + ")") + "\n";
}

// ./eval's options: these of the table, with eval's help text where it differs.
struct EvalOption {
  const char* name;
  const char* help;  // nullptr: the table's
};
const std::vector<EvalOption>& eval_options() {
  static const std::vector<EvalOption> list = {
      {"model", nullptr},
      {"data", "JSONL to evaluate: messages | prompt-completion | alpaca | text [required]"},
      {"max-length", "tokens per sample (longer ones are truncated, as ./train does)"},
      {"batch-size", "rows per forward pass (the loss does not depend on it)"},
      {"packing", "pack several samples per row (as ./train --packing; the same loss)"},
      {"train-on-prompt", nullptr},
      {"prompt-completion-chat", nullptr},
      {"on-bad-line", nullptr},
      {"device", nullptr},
      {"no-quant", nullptr},
      {"no-progress", "no progress bar on stderr"},
  };
  return list;
}

const EvalOption* find_eval_option(const std::string& name) {
  for (const EvalOption& e : eval_options())
    if (name == e.name) return &e;
  return nullptr;
}

}  // namespace

void TrainConfig::apply_json(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(str(source, ": invalid JSON: ", e.what()));
  }
  NQ_CHECK(j.is_object(), source, ": a config must be a JSON object of option keys");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Option* o = find_key(it.key());
    NQ_CHECK(o != nullptr, source, ": unknown key \"", it.key(), "\" (keys are the flags of --help with _ for -)");
    set_from_json(*this, *o, str(source, ": \"", it.key(), "\""), it.value());
  }
}

std::string TrainConfig::to_json() const {
  TrainConfig copy = *this;
  json j = json::object();
  for (const Option& o : options()) j[json_key(o.name)] = field_json(copy, o);
  return j.dump(1) + "\n";
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
                                                    "optim_page_mb"};
  json a = json::parse(to_json()), b = json::parse(other.to_json());
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!irrelevant.count(it.key()) && b[it.key()] != it.value()) return it.key();
  return "";
}

bool parse_train_args(int argc, char** argv, TrainConfig* cfg) {
  *cfg = TrainConfig();
  // Pass 1: --help and --config (the file goes under the flags, wherever it appears).
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(train_help().c_str(), stdout);
      return false;
    }
    if (a == "--config") {
      NQ_CHECK(i + 1 < argc, "--config needs a value (see --help)");
      const std::string path = argv[++i];
      std::ifstream f(path);
      NQ_CHECK(f.good(), "--config ", path, ": cannot read the file");
      std::stringstream ss;
      ss << f.rdbuf();
      cfg->apply_json(ss.str(), path);
    }
  }
  // Pass 2: every other flag.
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config") { ++i; continue; }
    const Option* o = find_flag(a);
    NQ_CHECK(o != nullptr, "unknown flag '", a, "' (see --help)");
    apply_flag(*cfg, *o, argc, argv, i);
  }
  cfg->validate();
  return true;
}

bool parse_eval_args(int argc, char** argv, EvalConfig* cfg) {
  *cfg = EvalConfig();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(eval_help().c_str(), stdout);
      return false;
    }
    if (a == "--adapter") {
      NQ_CHECK(i + 1 < argc, a, " needs a value (see --help)");
      cfg->adapter = argv[++i];
      continue;
    }
    const Option* o = find_flag(a);
    NQ_CHECK(o != nullptr && find_eval_option(o->name) != nullptr, "unknown flag '", a, "' (see --help)");
    apply_flag(cfg->run, *o, argc, argv, i);
  }
  cfg->run.validate();  // the options eval does not read are at their (valid) defaults
  return true;
}

std::string eval_help() {
  std::string s =
      "usage: ./eval --model PATH --data FILE.jsonl [--adapter DIR] [options]\n"
      "The mean next-token cross-entropy of a model (NF4 base, optionally with a LoRA adapter)\n"
      "over a dataset, weighted by token: the number ./train reports as its eval loss for the\n"
      "same file and options. Prints {\"loss\", \"tokens\", \"samples\", \"lines\", \"format\"} on stdout.\n\n"
      "  --adapter DIR               a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)\n";
  const EvalConfig defaults;
  for (const EvalOption& e : eval_options()) {
    const Option* o = find_flag(std::string("--") + e.name);
    s += help_line(*o, e.help ? e.help : o->help, defaults.run);
  }
  s += "  --help                      this text\n";
  return s;
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
  std::string s =
      "usage: ./train --model DIR --data FILE.jsonl [options]\n"
      "QLoRA fine-tuning: the base model is quantized to NF4 and frozen; LoRA adapters on the\n"
      "target projections are trained with AdamW, on the GPU when there is one (--device).\n"
      "Writes the PEFT adapter to --out.\n\n"
      "  --config FILE.json          options as a JSON object (keys: the flags below, _ for -);\n"
      "                              flags given on the command line override it\n";
  for (const Option& o : options()) s += help_line(o, o.help, TrainConfig());
  s += "  --help                      this text\n";
  return s;
}

}  // namespace nq
