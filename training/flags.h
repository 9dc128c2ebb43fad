// Command-line flags of every program, from one table per program.
//
// A program declares each setting once: its flag name, the variable it sets
// (whose kind and current value, the default, come with it), a help text and,
// for settings that also live in JSON files, a JSON key. From that table come
// the parser, the one-line errors naming the flag, the generated --help with
// the defaults, and the JSON reader / writer of the same settings (./train's
// --config file and the checkpoint's copy of its config).
//
//   TrainConfig cfg;                       // defaults: the struct's initializers
//   FlagTable t("usage: ./x --model DIR [options]\n");
//   t.add("model", &cfg.model, "HF model folder [required]", "DIR");
//   t.add("max-length", &cfg.max_length, "tokens per sample");
//   add_device_flag(t, &cfg.device);
//   if (!t.parse(argc, argv)) return 0;    // --help printed
//
// Errors (nq::Error, one line; the programs print "error: ..." and exit 1):
//   unknown flag '--bogus' (see --help)
//   unknown flag '--lora-r' (did you mean --r? see --help)   (nearest_name below)
//   --epochs needs a value (see --help)
//   --lr: expected a number, got 'fast'       (also "an integer", "a non-negative integer")
//   --device must be auto, cpu or cuda, got 'gpu'
//   unexpected argument 'x' (see --help)      (a program without positional arguments)
// Ranges and combinations (--lr > 0, --model required) are each program's own
// checks after parse(), with messages naming the flag too.
//
// Where it lives: training/ is the lowest layer with a program's settings in it
// (TrainConfig, whose table ./train and ./eval parse and whose JSON copy goes into
// checkpoints), and a lower layer never includes tools/; the programs in tools/
// include it from above. It depends on nothing but runtime/error.h and
// formats/json.h (the --config file's parse).
#pragma once
#include <cstdint>
#include <cstdio>
#include <deque>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace nq {

enum class FlagKind {
  Str,      // std::string
  Choice,   // std::string, one of Flag::choices
  List,     // std::vector<std::string>, comma-separated ("q_proj,v_proj")
  Int,      // int64_t
  UInt,     // uint64_t
  Float,    // double
  Float32,  // float
  Bool,     // bool: the flag alone sets it true (no value)
  BoolOff,  // bool: the flag alone sets it false (--no-shuffle beside --shuffle); never a JSON key
};

struct Flag {
  std::string name;      // without "--": "warmup-steps"
  FlagKind kind;
  void* field;           // the variable it sets (of the kind's type)
  std::string help;      // may hold '\n': continuation lines are indented under the first
  std::string metavar;   // "N", "S", "DIR": what --help shows after the flag
  std::string default_text;  // the variable's value when declared ("" = none shown)
  std::string json_key;  // "" = not a JSON setting
  std::vector<std::string> choices;  // FlagKind::Choice
};

class FlagTable {
 public:
  // usage: the --help text before the flag lines (ends with '\n');
  // help_command: what errors point to, "--help" ("(see --help)") or "./inspect plan --help".
  explicit FlagTable(std::string usage, std::string help_command = "--help");

  // Declares --name setting *field; the default shown is *field now. The returned
  // Flag stays valid as more are added (its default_text / metavar may be edited).
  Flag& add(const std::string& name, std::string* field, const std::string& help, const std::string& metavar = "S");
  Flag& add(const std::string& name, std::vector<std::string>* field, const std::string& help,
            const std::string& metavar = "S");
  Flag& add(const std::string& name, int64_t* field, const std::string& help, const std::string& metavar = "N");
  Flag& add(const std::string& name, uint64_t* field, const std::string& help, const std::string& metavar = "N");
  Flag& add(const std::string& name, double* field, const std::string& help, const std::string& metavar = "N");
  Flag& add(const std::string& name, float* field, const std::string& help, const std::string& metavar = "N");
  Flag& add(const std::string& name, bool* field, const std::string& help);
  Flag& add_choice(const std::string& name, std::string* field, std::vector<std::string> choices,
                   const std::string& help, const std::string& metavar = "S");
  // --name sets *field false: the negation of a Bool flag declared with the same variable.
  Flag& add_negation(const std::string& name, bool* field, const std::string& help);
  // Another table's flag (same variable and default), with `help` instead of its own when not empty.
  Flag& add_copy(const Flag& flag, const std::string& help = "");

  // Arguments that are not flags go to *out, in order (without this they are an error).
  void positionals(const std::string& name, std::vector<std::string>* out, const std::string& help);
  // Every flag declared so far (and later) gets a JSON key: its name with '_' for '-'.
  void json_keys_from_names();
  // --config FILE.json: a JSON object of keys, applied before (so under) the flags, wherever it appears.
  void enable_config_file();
  // Another tool's name for one of these flags (HF TrainingArguments' learning_rate for
  // --lr): an unknown flag or JSON key spelled so gets "did you mean --lr?". Not a flag.
  void also_known_as(const std::string& other_name, const std::string& flag);
  // Text after the flag lines in --help (notes, examples; ends with '\n').
  void set_epilog(std::string text) { epilog_ = std::move(text); }

  // Parses argv[1..argc): false when --help / -h was given (the help is then printed
  // to `help_out` and nothing else is parsed); throws nq::Error (one line) for a bad argument.
  bool parse(int argc, char** argv, std::FILE* help_out = stdout);
  // Whether a flag was given (on the command line or, with --config, in the file).
  bool given(const std::string& name) const { return given_.count(name) > 0; }

  std::string help() const;
  const Flag* find(const std::string& name) const;  // by name without "--"; nullptr if none
  const std::deque<Flag>& flags() const { return flags_; }

  // The JSON settings (keyed flags): applies an object's keys (`source` names the
  // file in errors; an unknown key is an error), and the current values as an object.
  void apply_json(const std::string& json_text, const std::string& source);
  std::string to_json() const;  // pretty-printed, keys sorted, ends with '\n'

 private:
  Flag& declare(Flag flag);
  std::string unknown_flag_hint(const std::string& name) const;  // "did you mean --r? " or ""
  std::string suggestion(const std::string& unknown, bool keyed_only) const;  // a flag name or ""
  void set_from_text(const Flag& flag, const std::string& text);

  std::string usage_, help_command_, epilog_;
  std::deque<Flag> flags_;  // a deque: add() returns references that later adds keep valid
  std::vector<std::string>* positionals_ = nullptr;
  std::string positional_name_, positional_help_;
  bool json_keys_ = false, config_file_ = false;
  std::set<std::string> given_;
  std::vector<std::pair<std::string, std::string>> other_names_;  // (other tool's name with '-', our flag)
};

// The text parsers behind the numeric kinds, for values found inside a flag's
// value (./generate --prompt-ids "1 2 3"): errors name `flag`.
int64_t parse_int_flag(const std::string& flag, const std::string& text);
uint64_t parse_uint_flag(const std::string& flag, const std::string& text);
double parse_float_flag(const std::string& flag, const std::string& text);

// The known name an unknown one most likely meant, "" when none is close: the same
// name spelled with '_' or capitals (batch_size), a known name after another tool's
// prefix (lora-r -> r, per-device-train-batch-size -> batch-size), else the nearest by
// edit distance if at most a third of the length (max-step -> max-steps; bogus -> "").
// `unknown` and `names` without the leading "--".
std::string nearest_name(const std::string& unknown, const std::vector<std::string>& names);

// The one --device flag of every program that computes: auto | cpu | cuda, with
// one help text. The variable's default is kDefaultDevice; the program turns the
// name into a Device with select_device (model/device.h).
inline constexpr const char* kDefaultDevice = "auto";
Flag& add_device_flag(FlagTable& table, std::string* device);

// --dtype auto | bfloat16 | float16 | float32 (and bf16 | f16 | f32): the compute dtype of
// a GPU run, resolved by select_compute_dtype (model/device.h).
Flag& add_dtype_flag(FlagTable& table, std::string* dtype);

// --rope-scaling yarn:F[:W] | linear:F, the one help text of every program that loads a
// model; the value is parsed and applied by ModelConfig::apply_rope_scaling_flag
// (model/config.h). "" (the default): the model's config as it is.
Flag& add_rope_scaling_flag(FlagTable& table, std::string* spec);

}  // namespace nq
