// FlagTable: one declaration per setting serves the parser, --help and the JSON
// keys (see flags.h).
#include "training/flags.h"
#include "formats/json.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/error.h"

namespace nq {

using json = nlohmann::json;

namespace {

std::string key_of(const std::string& name) {
  std::string k = name;
  for (char& ch : k)
    if (ch == '-') ch = '_';
  return k;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// "a or b", "a, b or c"
std::string choice_list(const std::vector<std::string>& choices) {
  std::string s;
  for (size_t i = 0; i < choices.size(); ++i)
    s += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  return s;
}

bool is_choice(const Flag& f, const std::string& v) {
  for (const std::string& c : f.choices)
    if (c == v) return true;
  return false;
}

std::string format_double(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// The variable's value as --help shows it ("" = nothing shown: bools, empty strings).
std::string value_text(const Flag& f) {
  switch (f.kind) {
    case FlagKind::Str:
    case FlagKind::Choice: return *static_cast<const std::string*>(f.field);
    case FlagKind::List: {
      std::string s;
      for (const std::string& e : *static_cast<const std::vector<std::string>*>(f.field)) s += (s.empty() ? "" : ",") + e;
      return s;
    }
    case FlagKind::Int: return std::to_string(*static_cast<const int64_t*>(f.field));
    case FlagKind::UInt: return std::to_string(*static_cast<const uint64_t*>(f.field));
    case FlagKind::Float: return format_double(*static_cast<const double*>(f.field));
    case FlagKind::Float32: return format_double(double(*static_cast<const float*>(f.field)));
    case FlagKind::Bool:
    case FlagKind::BoolOff: return "";
  }
  return "";
}

json value_json(const Flag& f) {
  switch (f.kind) {
    case FlagKind::Str:
    case FlagKind::Choice: return *static_cast<const std::string*>(f.field);
    case FlagKind::List: return *static_cast<const std::vector<std::string>*>(f.field);
    case FlagKind::Int: return *static_cast<const int64_t*>(f.field);
    case FlagKind::UInt: return *static_cast<const uint64_t*>(f.field);
    case FlagKind::Float: return *static_cast<const double*>(f.field);
    case FlagKind::Float32: return double(*static_cast<const float*>(f.field));
    case FlagKind::Bool:
    case FlagKind::BoolOff: return *static_cast<const bool*>(f.field);
  }
  return nullptr;
}

void set_from_json(const Flag& f, const std::string& what, const json& v) {
  auto expect = [&](bool ok, const std::string& type) { NQ_CHECK(ok, what, ": expected ", type, ", got ", v.dump()); };
  switch (f.kind) {
    case FlagKind::Str: expect(v.is_string(), "a string"); *static_cast<std::string*>(f.field) = v.get<std::string>(); break;
    case FlagKind::Choice:
      expect(v.is_string() && is_choice(f, v.get<std::string>()), choice_list(f.choices));
      *static_cast<std::string*>(f.field) = v.get<std::string>();
      break;
    case FlagKind::List:
      if (v.is_string()) {
        *static_cast<std::vector<std::string>*>(f.field) = split_list(v.get<std::string>());
      } else {
        expect(v.is_array(), "a string or a list of strings");
        std::vector<std::string> items;
        for (const json& e : v) {
          expect(e.is_string(), "a list of strings");
          items.push_back(e.get<std::string>());
        }
        *static_cast<std::vector<std::string>*>(f.field) = items;
      }
      break;
    case FlagKind::Int:  // an unsigned above INT64_MAX would wrap
      expect(v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)),
             "an integer");
      *static_cast<int64_t*>(f.field) = v.get<int64_t>();
      break;
    case FlagKind::UInt:
      expect(v.is_number_unsigned(), "a non-negative integer");
      *static_cast<uint64_t*>(f.field) = v.get<uint64_t>();
      break;
    case FlagKind::Float: expect(v.is_number(), "a number"); *static_cast<double*>(f.field) = v.get<double>(); break;
    case FlagKind::Float32: expect(v.is_number(), "a number"); *static_cast<float*>(f.field) = v.get<float>(); break;
    case FlagKind::Bool:
    case FlagKind::BoolOff: expect(v.is_boolean(), "true or false"); *static_cast<bool*>(f.field) = v.get<bool>(); break;
  }
}

// "  --flag N                    help (default d)", help lines after the first indented under it.
std::string help_line(const std::string& flag_text, const std::string& help, const std::string& default_text) {
  // a help ending in '\n' puts the default on a line of its own
  const bool own_line = !help.empty() && help.back() == '\n';
  std::string text = help + (default_text.empty() ? "" : (own_line ? "" : " ") + ("(default " + default_text + ")"));
  if (!text.empty() && text.back() == '\n') text.pop_back();
  char head[256];
  std::snprintf(head, sizeof head, "  %-26s  ", flag_text.c_str());
  std::string out = head;
  for (char ch : text) out += ch == '\n' ? std::string("\n") + std::string(30, ' ') : std::string(1, ch);
  return out + "\n";
}

// Levenshtein distance: insertions, deletions and substitutions of one character.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

}  // namespace

// A flag name as typed, compared: lower case, '-' for '_', no leading dashes.
std::string normalized_name(const std::string& typed) {
  std::string u;
  for (char ch : typed) u += ch == '_' ? '-' : char(std::tolower(static_cast<unsigned char>(ch)));
  while (!u.empty() && u[0] == '-') u.erase(0, 1);
  return u;
}

std::string nearest_name(const std::string& unknown, const std::vector<std::string>& names) {
  const std::string u = normalized_name(unknown);
  if (u.empty()) return "";
  auto known = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
  if (known(u)) return u;  // only the spelling differs: --batch_size, --LR
  // Another program's prefix on one of ours: --lora-r, --lora-alpha, --per-device-train-batch-size.
  for (size_t dash = u.find('-'); dash != std::string::npos; dash = u.find('-', dash + 1))
    if (known(u.substr(dash + 1))) return u.substr(dash + 1);
  // A typo: the closest name within a third of the length (--max-step, --epoch; not --bogus).
  std::string best;
  size_t best_distance = u.size() / 3 + 1;
  for (const std::string& name : names) {
    const size_t d = edit_distance(u, name);
    if (d < best_distance) best = name, best_distance = d;
  }
  return best;
}

void FlagTable::also_known_as(const std::string& other_name, const std::string& flag) {
  NQ_CHECK(find(flag) != nullptr, "flag table: also_known_as(", other_name, ", --", flag, "): no such flag");
  other_names_.emplace_back(normalized_name(other_name), flag);
}

// Another tool's exact name first (--learning-rate: --lr), then ours by nearest_name,
// then the other names by it (a typo of one).
std::string FlagTable::suggestion(const std::string& unknown, bool keyed_only) const {
  const std::string u = normalized_name(unknown);
  std::vector<std::string> others;
  for (const auto& [other, flag] : other_names_) {
    if (keyed_only && find(flag)->json_key.empty()) continue;
    if (other == u) return flag;
    others.push_back(other);
  }
  std::vector<std::string> names;
  for (const Flag& f : flags_)
    if (!keyed_only || !f.json_key.empty()) names.push_back(f.name);
  if (!keyed_only) {
    if (config_file_) names.push_back("config");
    names.push_back("help");
  }
  if (const std::string near = nearest_name(unknown, names); !near.empty()) return near;
  const std::string other = nearest_name(unknown, others);
  for (const auto& [o, flag] : other_names_)
    if (!other.empty() && o == other) return flag;
  return "";
}

std::string FlagTable::unknown_flag_hint(const std::string& name) const {
  const std::string near = suggestion(name, /*keyed_only=*/false);
  return near.empty() ? "" : "did you mean --" + near + "? ";
}

int64_t parse_int_flag(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  NQ_CHECK(!text.empty() && *end == '\0' && errno == 0, flag, ": expected an integer, got '", text, "'");
  return v;
}

uint64_t parse_uint_flag(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  NQ_CHECK(!text.empty() && text[0] != '-' && *end == '\0' && errno == 0, flag,
           ": expected a non-negative integer, got '", text, "'");
  return v;
}

double parse_float_flag(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  NQ_CHECK(!text.empty() && *end == '\0', flag, ": expected a number, got '", text, "'");
  return v;
}

FlagTable::FlagTable(std::string usage, std::string help_command)
    : usage_(std::move(usage)), help_command_(std::move(help_command)) {}

Flag& FlagTable::declare(Flag flag) {
  NQ_CHECK(find(flag.name) == nullptr, "flag table: --", flag.name, " is declared twice");
  if (json_keys_) flag.json_key = key_of(flag.name);
  flag.default_text = value_text(flag);
  flags_.push_back(std::move(flag));
  return flags_.back();
}

Flag& FlagTable::add(const std::string& name, std::string* field, const std::string& help, const std::string& metavar) {
  return declare({name, FlagKind::Str, field, help, metavar, "", "", {}});
}
Flag& FlagTable::add(const std::string& name, std::vector<std::string>* field, const std::string& help,
                     const std::string& metavar) {
  return declare({name, FlagKind::List, field, help, metavar, "", "", {}});
}
Flag& FlagTable::add(const std::string& name, int64_t* field, const std::string& help, const std::string& metavar) {
  return declare({name, FlagKind::Int, field, help, metavar, "", "", {}});
}
Flag& FlagTable::add(const std::string& name, uint64_t* field, const std::string& help, const std::string& metavar) {
  return declare({name, FlagKind::UInt, field, help, metavar, "", "", {}});
}
Flag& FlagTable::add(const std::string& name, double* field, const std::string& help, const std::string& metavar) {
  return declare({name, FlagKind::Float, field, help, metavar, "", "", {}});
}
Flag& FlagTable::add(const std::string& name, float* field, const std::string& help, const std::string& metavar) {
  return declare({name, FlagKind::Float32, field, help, metavar, "", "", {}});
}
Flag& FlagTable::add(const std::string& name, bool* field, const std::string& help) {
  return declare({name, FlagKind::Bool, field, help, "", "", "", {}});
}
Flag& FlagTable::add_negation(const std::string& name, bool* field, const std::string& help) {
  Flag& f = declare({name, FlagKind::BoolOff, field, help, "", "", "", {}});
  f.json_key.clear();  // the Bool flag of the same variable is its JSON key
  return f;
}
Flag& FlagTable::add_choice(const std::string& name, std::string* field, std::vector<std::string> choices,
                            const std::string& help, const std::string& metavar) {
  Flag f{name, FlagKind::Choice, field, help, metavar, "", "", std::move(choices)};
  NQ_CHECK(is_choice(f, *field), "flag table: --", name, "'s default '", *field, "' is not one of ", choice_list(f.choices));
  return declare(std::move(f));
}

Flag& FlagTable::add_copy(const Flag& flag, const std::string& help) {
  NQ_CHECK(find(flag.name) == nullptr, "flag table: --", flag.name, " is declared twice");
  Flag f = flag;  // the default is the other table's (the variable may have moved on since)
  if (!help.empty()) f.help = help;
  f.json_key = json_keys_ ? key_of(f.name) : "";
  flags_.push_back(std::move(f));
  return flags_.back();
}

void FlagTable::positionals(const std::string& name, std::vector<std::string>* out, const std::string& help) {
  positionals_ = out;
  positional_name_ = name;
  positional_help_ = help;
}

void FlagTable::json_keys_from_names() {
  json_keys_ = true;
  for (Flag& f : flags_) f.json_key = key_of(f.name);
}

void FlagTable::enable_config_file() {
  NQ_CHECK(find("config") == nullptr, "flag table: --config is declared as a setting");
  config_file_ = true;
}

const Flag* FlagTable::find(const std::string& name) const {
  for (const Flag& f : flags_)
    if (f.name == name) return &f;
  return nullptr;
}

void FlagTable::set_from_text(const Flag& f, const std::string& text) {
  const std::string flag = "--" + f.name;
  switch (f.kind) {
    case FlagKind::Str: *static_cast<std::string*>(f.field) = text; break;
    case FlagKind::Choice:
      NQ_CHECK(is_choice(f, text), flag, " must be ", choice_list(f.choices), ", got '", text, "'");
      *static_cast<std::string*>(f.field) = text;
      break;
    case FlagKind::List: *static_cast<std::vector<std::string>*>(f.field) = split_list(text); break;
    case FlagKind::Int: *static_cast<int64_t*>(f.field) = parse_int_flag(flag, text); break;
    case FlagKind::UInt: *static_cast<uint64_t*>(f.field) = parse_uint_flag(flag, text); break;
    case FlagKind::Float: *static_cast<double*>(f.field) = parse_float_flag(flag, text); break;
    case FlagKind::Float32: *static_cast<float*>(f.field) = float(parse_float_flag(flag, text)); break;
    case FlagKind::Bool: *static_cast<bool*>(f.field) = true; break;
    case FlagKind::BoolOff: *static_cast<bool*>(f.field) = false; break;
  }
}

bool FlagTable::parse(int argc, char** argv, std::FILE* help_out) {
  const std::string see = " (see " + help_command_ + ")";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(help().c_str(), help_out);
      return false;
    }
  }
  // Pass 1: --config (the file goes under the flags, wherever it appears).
  if (config_file_) {
    for (int i = 1; i < argc; ++i) {
      if (std::string(argv[i]) != "--config") continue;
      NQ_CHECK(i + 1 < argc, "--config needs a value", see);
      const std::string path = argv[++i];
      std::ifstream file(path);
      NQ_CHECK(file.good(), "--config ", path, ": cannot read the file");
      std::stringstream text;
      text << file.rdbuf();
      apply_json(text.str(), path);
    }
  }
  // Pass 2: every flag, in order (a later one wins).
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (config_file_ && a == "--config") {
      ++i;
      continue;
    }
    if (a.size() < 2 || a[0] != '-') {
      NQ_CHECK(positionals_ != nullptr, "unexpected argument '", a, "'", see);
      positionals_->push_back(a);
      continue;
    }
    const bool long_flag = a.compare(0, 2, "--") == 0;
    const Flag* f = long_flag ? find(a.substr(2)) : nullptr;
    NQ_CHECK(f != nullptr, "unknown flag '", a, "'",
             long_flag && !unknown_flag_hint(a.substr(2)).empty()
                 ? " (" + unknown_flag_hint(a.substr(2)) + "see " + help_command_ + ")"
                 : see);
    if (f->kind == FlagKind::Bool || f->kind == FlagKind::BoolOff) {
      set_from_text(*f, "");
    } else {
      NQ_CHECK(i + 1 < argc, a, " needs a value", see);
      set_from_text(*f, argv[++i]);
    }
    given_.insert(f->name);
  }
  return true;
}

std::string FlagTable::help() const {
  std::string s = usage_;
  if (positionals_) s += help_line(positional_name_, positional_help_, "");
  if (config_file_)
    s += help_line("--config FILE.json",
                   "options as a JSON object (keys: the flags below, _ for -);\n"
                   "flags given on the command line override it",
                   "");
  for (const Flag& f : flags_)
    s += help_line("--" + f.name + (f.kind == FlagKind::Bool || f.kind == FlagKind::BoolOff ? "" : " " + f.metavar),
                   f.help, f.default_text);
  s += help_line("--help", "this text", "");
  return s + epilog_;
}

void FlagTable::apply_json(const std::string& json_text, const std::string& source) {
  const json j = parse_json(json_text, source);
  NQ_CHECK(j.is_object(), source, ": a config must be a JSON object of option keys");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Flag* f = nullptr;
    for (const Flag& g : flags_)
      if (!g.json_key.empty() && g.json_key == it.key()) f = &g;
    if (f == nullptr) {
      const std::string near = key_of(suggestion(it.key(), /*keyed_only=*/true));  // keys are key_of(name)
      throw Error(str(source, ": unknown key \"", it.key(), "\" (", near.empty() ? "" : "did you mean \"" + near + "\"? ",
                      "keys are the flags of --help with _ for -)"));
    }
    set_from_json(*f, str(source, ": \"", it.key(), "\""), it.value());
    given_.insert(f->name);
  }
}

std::string FlagTable::to_json() const {
  json j = json::object();
  for (const Flag& f : flags_)
    if (!f.json_key.empty()) j[f.json_key] = value_json(f);
  return j.dump(1) + "\n";
}

Flag& add_device_flag(FlagTable& table, std::string* device) {
  return table.add_choice("device", device, {"auto", "cpu", "cuda"},
                          "auto | cpu | cuda (auto: cuda when built with CUDA and a GPU is visible)");
}

Flag& add_dtype_flag(FlagTable& table, std::string* dtype) {
  return table.add_choice("dtype", dtype, {"auto", "bfloat16", "float16", "float32", "bf16", "f16", "f32"},
                          "compute dtype on cuda: auto (bf16 where the GPU has it, else f16 with dynamic\n"
                          "loss scaling), bfloat16 | float16 (or bf16 | f16); the cpu computes in float32",
                          "T");
}

Flag& add_rope_scaling_flag(FlagTable& table, std::string* spec) {
  return table.add("rope-scaling", spec,
                   "switch on RoPE scaling for a config without it: yarn:FACTOR[:ORIGINAL_WINDOW]\n"
                   "(window default: max_position_embeddings; Qwen3: yarn:4:32768) or linear:FACTOR",
                   "SPEC");
}

}  // namespace nq
