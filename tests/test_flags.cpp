// training/flags.h: the one flag mechanism of every program. A table declares
// each setting once; parsing, the one-line errors, --help with the defaults and
// the JSON keys come from it. And the settings with one default each (the LoRA
// ones, the GPU pool, the device).
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/adapters.h"
#include "training/memory_plan.h"
#include "optim/adamw.h"
#include "tests/temp_dir.h"
#include "training/flags.h"
#include "training/train_config.h"

using namespace nq;

namespace {

// One variable of every kind, with defaults that differ from the values the tests parse.
struct Settings {
  std::string name = "base";
  std::string mode = "fast";
  std::vector<std::string> list{"a", "b"};
  int64_t count = 3;
  uint64_t seed = 42;
  double rate = 2e-4;
  float scale = 0.5f;
  bool verbose = false;
  std::string empty;
  std::vector<std::string> files;
};

FlagTable table_of(Settings& s) {
  FlagTable t("usage: ./x [options]\n");
  t.add("name", &s.name, "a name", "NAME");
  t.add_choice("mode", &s.mode, {"fast", "slow", "exact"}, "how");
  t.add("list", &s.list, "a comma list");
  t.add("count", &s.count, "how many");
  t.add("seed", &s.seed, "a seed");
  t.add("rate", &s.rate, "a rate");
  t.add("scale", &s.scale, "a scale\nsecond line");
  t.add("verbose", &s.verbose, "say more");
  t.add("empty", &s.empty, "no default shown");
  return t;
}

// Parses `args` (after argv[0]) into a fresh table over `s`; the return of parse().
bool parse_into(FlagTable& t, std::vector<std::string> args, std::string* help_printed = nullptr) {
  std::vector<char*> argv{const_cast<char*>("x")};
  for (std::string& a : args) argv.push_back(a.data());
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> out(std::tmpfile(), std::fclose);  // closed when parse throws too
  REQUIRE(out != nullptr);
  const bool parsed = t.parse(int(argv.size()), argv.data(), out.get());
  if (help_printed) {
    std::rewind(out.get());
    help_printed->clear();
    for (int c; (c = std::fgetc(out.get())) != EOF;) *help_printed += char(c);
  }
  return parsed;
}

std::string parse_error(std::vector<std::string> args) {
  Settings s;
  FlagTable t = table_of(s);
  return thrown_message([&] { parse_into(t, std::move(args)); });
}

}  // namespace

TEST_CASE("flags: every kind parses from its flag; what is not given keeps its default") {
  Settings s;
  FlagTable t = table_of(s);
  REQUIRE(parse_into(t, {"--name", "n1", "--mode", "exact", "--list", "q_proj,,v_proj", "--count", "-7", "--seed",
                         "18446744073709551615", "--rate", "1e-3", "--scale", "0.25", "--verbose"}));
  CHECK(s.name == "n1");
  CHECK(s.mode == "exact");
  CHECK(s.list == std::vector<std::string>{"q_proj", "v_proj"});  // empty items dropped
  CHECK(s.count == -7);
  CHECK(s.seed == 18446744073709551615ull);
  CHECK(s.rate == 1e-3);
  CHECK(s.scale == 0.25f);
  CHECK(s.verbose);
  CHECK(t.given("scale"));
  CHECK_FALSE(t.given("empty"));

  Settings d;
  FlagTable u = table_of(d);
  REQUIRE(parse_into(u, {"--count", "1", "--count", "2"}));  // a later flag wins
  CHECK(d.count == 2);
  const Settings fresh;
  CHECK(d.name == fresh.name);
  CHECK(d.mode == fresh.mode);
  CHECK(d.list == fresh.list);
  CHECK(d.seed == fresh.seed);
  CHECK(d.rate == fresh.rate);
  CHECK(d.scale == fresh.scale);
  CHECK_FALSE(d.verbose);
  CHECK_FALSE(u.given("name"));
}

TEST_CASE("flags: --help is generated from the table, with the defaults as declared") {
  Settings s;
  FlagTable t = table_of(s);
  s.count = 99;  // after declaring: the help still shows the declared default
  const std::string help = t.help();
  CHECK(help.find("usage: ./x [options]\n") == 0);
  CHECK(help.find("  --name NAME                 a name (default base)\n") != std::string::npos);
  CHECK(help.find("  --mode S                    how (default fast)\n") != std::string::npos);
  CHECK(help.find("  --list S                    a comma list (default a,b)\n") != std::string::npos);
  CHECK(help.find("  --count N                   how many (default 3)\n") != std::string::npos);
  CHECK(help.find("  --seed N                    a seed (default 42)\n") != std::string::npos);
  CHECK(help.find("  --rate N                    a rate (default 0.0002)\n") != std::string::npos);
  // continuation lines indented under the first; the default after the last
  CHECK(help.find("  --scale N                   a scale\n                              second line (default 0.5)\n") !=
        std::string::npos);
  CHECK(help.find("  --verbose                   say more\n") != std::string::npos);  // no value, no default
  CHECK(help.find("  --empty S                   no default shown\n") != std::string::npos);
  CHECK(help.find("  --help                      this text\n") != std::string::npos);
  // every declared flag is in it, once
  for (const Flag& f : t.flags()) {
    CAPTURE(f.name);
    const size_t at = help.find("  --" + f.name + " ");
    CHECK(at != std::string::npos);
  }
  // --help (or -h) anywhere: parse() prints exactly this and parses nothing
  for (const char* h : {"--help", "-h"}) {
    Settings p;
    FlagTable pt = table_of(p);
    std::string printed;
    CHECK_FALSE(parse_into(pt, {"--count", "5", h, "--bogus"}, &printed));
    CHECK(printed == pt.help());
    CHECK(p.count == 3);
  }
}

TEST_CASE("flags: one-line errors name the flag, for each kind of mistake") {
  CHECK(parse_error({"--bogus"}) == "unknown flag '--bogus' (see --help)");
  CHECK(parse_error({"-x"}) == "unknown flag '-x' (see --help)");
  CHECK(parse_error({"--count"}) == "--count needs a value (see --help)");
  CHECK(parse_error({"--count", "1.5"}) == "--count: expected an integer, got '1.5'");
  CHECK(parse_error({"--count", ""}) == "--count: expected an integer, got ''");
  CHECK(parse_error({"--count", "99999999999999999999"}) == "--count: expected an integer, got '99999999999999999999'");
  CHECK(parse_error({"--seed", "-1"}) == "--seed: expected a non-negative integer, got '-1'");
  CHECK(parse_error({"--rate", "fast"}) == "--rate: expected a number, got 'fast'");
  CHECK(parse_error({"--scale", "1x"}) == "--scale: expected a number, got '1x'");
  CHECK(parse_error({"--mode", "medium"}) == "--mode must be fast, slow or exact, got 'medium'");
  CHECK(parse_error({"stray"}) == "unexpected argument 'stray' (see --help)");
  for (const std::string& e : {parse_error({"--bogus"}), parse_error({"--rate", "x"})})
    CHECK(e.find('\n') == std::string::npos);
  // a subcommand's table points to its own help
  int64_t n = 0;
  FlagTable sub("usage\n", "./x sub --help");
  sub.add("n", &n, "n");
  CHECK(thrown_message([&] { parse_into(sub, {"--m"}); }) == "unknown flag '--m' (see ./x sub --help)");
  CHECK(thrown_message([&] { parse_into(sub, {"--n"}); }) == "--n needs a value (see ./x sub --help)");
  // declaration mistakes are caught too
  CHECK(thrown_message([&] { sub.add("n", &n, "again"); }) == "flag table: --n is declared twice");
  std::string odd = "medium";
  CHECK(thrown_message([&] { sub.add_choice("mode", &odd, {"fast", "slow"}, "how"); }) ==
        "flag table: --mode's default 'medium' is not one of fast or slow");
}

TEST_CASE("flags: positional arguments, values that look like flags, and the numeric parsers") {
  Settings s;
  FlagTable t = table_of(s);
  t.positionals("FILE", &s.files, "input files");
  REQUIRE(parse_into(t, {"a.gguf", "--count", "-3", "--name", "--verbose", "b.gguf", "-"}));
  CHECK(s.files == std::vector<std::string>{"a.gguf", "b.gguf", "-"});
  CHECK(s.count == -3);
  CHECK(s.name == "--verbose");  // a value is taken as it is
  CHECK_FALSE(s.verbose);
  CHECK(t.help().find("  FILE                        input files\n") != std::string::npos);
  CHECK(parse_int_flag("--ids", "12") == 12);
  CHECK(thrown_message([] { parse_int_flag("--ids", "1 2"); }) == "--ids: expected an integer, got '1 2'");
  CHECK(parse_uint_flag("--s", "7") == 7u);
  CHECK(parse_float_flag("--f", "-2.5") == -2.5);
}

TEST_CASE("flags: JSON keys, --config files under the flags, and the JSON copy") {
  Settings s;
  FlagTable t = table_of(s);
  t.json_keys_from_names();
  int64_t later = 1;
  t.add("later-flag", &later, "declared after json_keys_from_names");
  CHECK(t.find("later-flag")->json_key == "later_flag");
  t.enable_config_file();
  CHECK(t.help().find("  --config FILE.json          options as a JSON object") != std::string::npos);

  TempDir tmp;
  write_bytes(tmp / "c.json", R"({"count": 10, "rate": 0.5, "list": ["x"], "mode": "slow", "later_flag": 4,
                                  "verbose": true, "scale": 2})");
  REQUIRE(parse_into(t, {"--count", "11", "--config", tmp / "c.json"}));
  CHECK(s.count == 11);  // the flag wins over the file, wherever --config is
  CHECK(s.rate == 0.5);
  CHECK(s.list == std::vector<std::string>{"x"});
  CHECK(s.mode == "slow");
  CHECK(later == 4);
  CHECK(s.verbose);
  CHECK(s.scale == 2.0f);
  CHECK(t.given("rate"));  // given by the file

  // the copy: every keyed setting, and it reads back to the same values
  const nlohmann::json copy = nlohmann::json::parse(t.to_json());
  CHECK(copy.size() == t.flags().size());
  CHECK(copy["count"] == 11);
  CHECK(copy["mode"] == "slow");
  Settings back;
  FlagTable bt = table_of(back);
  bt.json_keys_from_names();
  int64_t back_later = 0;
  bt.add("later-flag", &back_later, "");
  bt.apply_json(t.to_json(), "copy");
  CHECK(bt.to_json() == t.to_json());

  // errors name the file and the key
  CHECK(thrown_message([&] { t.apply_json(R"({"cnt": 1})", "f.json"); }) ==
        "f.json: unknown key \"cnt\" (keys are the flags of --help with _ for -)");
  CHECK(thrown_message([&] { t.apply_json(R"({"count": "1"})", "f.json"); }) ==
        "f.json: \"count\": expected an integer, got \"1\"");
  CHECK(thrown_message([&] { t.apply_json(R"({"mode": "medium"})", "f.json"); }) ==
        "f.json: \"mode\": expected fast, slow or exact, got \"medium\"");
  CHECK(thrown_message([&] { t.apply_json("[1]", "f.json"); }) == "f.json: a config must be a JSON object of option keys");
  CHECK(thrown_message([&] { t.apply_json("{", "f.json"); }).find("f.json: invalid JSON") == 0);
  CHECK(thrown_message([&] { parse_into(t, {"--config"}); }) == "--config needs a value (see --help)");
  CHECK(thrown_message([&] { parse_into(t, {"--config", tmp / "none.json"}); }) ==
        "--config " + tmp / "none.json" + ": cannot read the file");
  // a table without keys has no JSON settings
  Settings plain;
  FlagTable pt = table_of(plain);
  CHECK(pt.to_json() == "{}\n");
  CHECK(thrown_message([&] { pt.apply_json(R"({"count": 1})", "f.json"); }).find("unknown key \"count\"") != std::string::npos);
}

TEST_CASE("flags: the one --device flag: auto | cpu | cuda, default auto, one help text") {
  std::string a = kDefaultDevice, b = kDefaultDevice;
  FlagTable t1("u\n"), t2("u\n");
  const Flag& f1 = add_device_flag(t1, &a);
  const Flag& f2 = add_device_flag(t2, &b);
  CHECK(f1.choices == std::vector<std::string>{"auto", "cpu", "cuda"});
  CHECK(f1.default_text == "auto");
  CHECK(f1.help == f2.help);
  CHECK(thrown_message([&] { parse_into(t1, {"--device", "gpu"}); }) == "--device must be auto, cpu or cuda, got 'gpu'");
  REQUIRE(parse_into(t1, {"--device", "cpu"}));
  CHECK(a == "cpu");
  // ./train's and ./eval's are this flag
  TrainConfig train;
  EvalConfig eval;
  CHECK(train.device == kDefaultDevice);
  CHECK(train_flags(train).find("device")->help == f1.help);
  CHECK(eval_flags(eval).find("device")->help == f1.help);
}

TEST_CASE("flags: one default per setting: the LoRA ones, the targets, the GPU optimizer pool") {
  const TrainConfig train;
  const LoraConfig lora;
  const AdapterConfig adapter;
  const QloraShape plan;
  // the seed's r 16, alpha 32, dropout 0.05, all-linear (lora/lora_linear.h)
  CHECK(train.r == 16);
  CHECK(train.alpha == 32);
  CHECK(train.dropout == 0.05);
  CHECK(lora.r == train.r);
  CHECK(lora.alpha == float(train.alpha));
  CHECK(lora.dropout == float(train.dropout));
  CHECK(adapter.lora.r == train.r);
  CHECK(plan.r == train.r);
  CHECK(train.targets == std::vector<std::string>{"all-linear"});
  CHECK(adapter.target_modules == train.targets);
  CHECK(plan.targets == train.targets);
  // ./train's pool flags are AdamWOptions' defaults
  const AdamWOptions pool;
  CHECK(train.optim_pages == pool.n_pages);
  CHECK((train.optim_page_mb << 20) == pool.page_bytes);
  // the loss chunk of the plan is the decoder's
  CHECK(TrainShape{}.ce_chunk_rows == DecoderOptions{}.ce_chunk_rows);
  // and --help shows them from the table
  const std::string help = train_help();
  CHECK(help.find("--r N                       LoRA rank (default 16)") != std::string::npos);
  CHECK(help.find("(default 0.05)") != std::string::npos);
  CHECK(help.find("(default all-linear)") != std::string::npos);
}
