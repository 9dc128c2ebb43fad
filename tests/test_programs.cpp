// The programs' command lines, run as a user runs them: each one's --help lists
// its flags (the names every script in tools/ and the README use), and a bad
// flag, a missing value, a bad number or a bad choice is one line on stderr and
// exit status 1 (training/flags.h). And the --device flag where it is new:
// ./inspect plan's default is auto, ./generate has it.
//
// The binaries are the ones `make` builds beside test_all's configuration: the
// repository root for build/cpu and build/cuda, build/emu itself for the emulated
// build (test_all depends on them in the Makefile).
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "model/device.h"
#include "tests/temp_dir.h"
#include "training/train_config.h"

using namespace nq;
namespace fs = std::filesystem;

namespace {

std::string program_path(const std::string& name) {
  const fs::path dir = fs::read_symlink("/proc/self/exe").parent_path();  // build/<config>
  const fs::path path = dir.filename() == "emu" ? dir / name : dir.parent_path().parent_path() / name;
  REQUIRE_MESSAGE(fs::exists(path), path.string(), " is missing: build the programs (make all)");
  return path.string();
}

std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct ProgramRun {
  int status = -1;
  std::string out, err;
};

// Runs ./<name> args... with stdin from /dev/null.
ProgramRun run_program(const std::string& name, const std::vector<std::string>& args) {
  TempDir tmp;
  std::string cmd = quoted(program_path(name));
  for (const std::string& a : args) cmd += " " + quoted(a);
  cmd += " < /dev/null > " + quoted(tmp / "out") + " 2> " + quoted(tmp / "err");
  const int raw = std::system(cmd.c_str());
  REQUIRE(WIFEXITED(raw));
  return {WEXITSTATUS(raw), read_text(tmp / "out"), read_text(tmp / "err")};
}

// The command line fails with exactly `message` as its one line on stderr.
void check_one_line_error(const std::string& name, const std::vector<std::string>& args, const std::string& message) {
  std::string shown = name;
  for (const std::string& a : args) shown += " " + a;
  CAPTURE(shown);
  const ProgramRun r = run_program(name, args);
  CHECK(r.status == 1);
  CHECK(r.out.empty());
  CHECK(r.err == "error: " + message + "\n");
}

struct ProgramFlags {
  std::string program;
  std::vector<std::string> command;  // a subcommand before the flags ("plan")
  std::vector<std::string> flags;    // every flag its --help must list
  std::string help_command;          // what its errors point to
};

std::vector<ProgramFlags> program_flags() {
  std::vector<std::string> train, eval;
  TrainConfig t;
  EvalConfig e;
  const FlagTable train_table = train_flags(t), eval_table = eval_flags(e);
  for (const Flag& f : train_table.flags()) train.push_back(f.name);
  for (const Flag& f : eval_table.flags()) eval.push_back(f.name);
  train.push_back("config");
  return {
      {"train", {}, train, "--help"},
      {"eval", {}, eval, "--help"},
      {"generate", {}, {"model", "preset", "prompt", "prompt-ids", "chat", "system", "adapter", "no-quant", "device", "dtype",
                        "max-new-tokens", "greedy", "temperature", "top-k", "top-p", "seed", "print-ids"}, "--help"},
      {"tokenize", {}, {"tokenizer", "jsonl", "decode", "stats"}, "--help"},
      {"quantize", {}, {"model", "out", "blocksize", "no-double-quant", "random", "seed", "layers", "tokenizer"}, "--help"},
      {"merge", {}, {"model", "adapter", "out", "dtype", "type", "adapter-gguf"}, "--help"},
      {"inspect", {}, {"tensors"}, "--help"},
      {"inspect", {"plan"}, {"preset", "model", "seq", "batch", "r", "targets", "device", "no-quant",
                             "no-grad-checkpoint", "ce-chunk", "fit-gb", "gpu", "dtype", "json"}, "./inspect plan --help"},
      {"demo", {}, {"steps", "lr", "seed", "checkpoint"}, "--help"},
      {"plot", {}, {"metrics", "output"}, "--help"},
      {"bench", {}, {"device", "dtype", "shapes", "iters", "csv", "n", "m", "k", "tokens", "hidden", "vocab", "heads",
                     "kv-heads", "head-dim"}, "--help"},
  };
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("programs: --help lists every flag; an unknown flag is one line and exit 1") {
  for (const ProgramFlags& p : program_flags()) {
    CAPTURE(p.program);
    CAPTURE(p.command.size());
    for (const char* help : {"--help", "-h"}) {
      const ProgramRun r = run_program(p.program, with(p.command, {help}));
      CHECK(r.status == 0);
      CHECK(r.err.empty());
      CHECK(r.out.find("usage: ./" + p.program) == 0);
      for (const std::string& f : p.flags) {
        CAPTURE(f);
        CHECK(r.out.find("\n  --" + f + " ") != std::string::npos);
      }
      CHECK(r.out.find("\n  --help ") != std::string::npos);
    }
    check_one_line_error(p.program, with(p.command, {"--bogus"}), "unknown flag '--bogus' (see " + p.help_command + ")");
  }
}

TEST_CASE("programs: a missing value, a bad number and a bad choice are one line naming the flag") {
  check_one_line_error("train", {"--model", "m", "--data", "d", "--lr"}, "--lr needs a value (see --help)");
  check_one_line_error("train", {"--model", "m", "--data", "d", "--r", "1.5"}, "--r: expected an integer, got '1.5'");
  check_one_line_error("eval", {"--adapter"}, "--adapter needs a value (see --help)");
  check_one_line_error("eval", {"--model", "m", "--data", "d", "--device", "gpu"},
                       "--device must be auto, cpu or cuda, got 'gpu'");
  check_one_line_error("generate", {"--model"}, "--model needs a value (see --help)");
  check_one_line_error("generate", {"--top-k", "x"}, "--top-k: expected an integer, got 'x'");
  check_one_line_error("generate", {"--temperature", "hot"}, "--temperature: expected a number, got 'hot'");
  check_one_line_error("generate", {"--seed", "-1"}, "--seed: expected a non-negative integer, got '-1'");
  check_one_line_error("generate", {"--device", "gpu"}, "--device must be auto, cpu or cuda, got 'gpu'");
  check_one_line_error("tokenize", {"--tokenizer"}, "--tokenizer needs a value (see --help)");
  check_one_line_error("tokenize", {"extra"}, "unexpected argument 'extra' (see --help)");
  check_one_line_error("quantize", {"--out"}, "--out needs a value (see --help)");
  check_one_line_error("quantize", {"--blocksize", "big"}, "--blocksize: expected an integer, got 'big'");
  check_one_line_error("merge", {"--dtype", "fp8"},
                       "--dtype must be bfloat16, float16, float32, bf16, f16 or f32, got 'fp8'");
  check_one_line_error("train", {"--dtype", "half"},
                       "--dtype must be auto, bfloat16, float16, float32, bf16, f16 or f32, got 'half'");
  check_one_line_error("merge", {"--type", "q5_k"}, "--type must be f32, f16, bf16, q8_0, q4_0 or q4_1, got 'q5_k'");
  check_one_line_error("inspect", {"plan", "--seq"}, "--seq needs a value (see ./inspect plan --help)");
  check_one_line_error("inspect", {"plan", "--fit-gb", "x"}, "--fit-gb: expected a number, got 'x'");
  check_one_line_error("inspect", {"plan", "--device", "gpu"}, "--device must be auto, cpu or cuda, got 'gpu'");
  check_one_line_error("inspect", {"a.gguf", "b.gguf"}, "one FILE only (got a.gguf and b.gguf)");
  check_one_line_error("inspect", {}, "give a FILE (see --help)");
  check_one_line_error("demo", {"--steps"}, "--steps needs a value (see --help)");
  check_one_line_error("demo", {"--lr", "x"}, "--lr: expected a number, got 'x'");
  check_one_line_error("bench", {"rmsnorm", "--tokens"}, "--tokens needs a value (see --help)");
  check_one_line_error("bench", {"rmsnorm", "--tokens", "x"}, "--tokens: expected an integer, got 'x'");
  check_one_line_error("bench", {"rmsnorm", "--tokens", "0"}, "--tokens: expected a positive integer, got 0");
  check_one_line_error("bench", {"rmsnorm", "--device", "gpu"}, "--device must be auto, cpu or cuda, got 'gpu'");
  check_one_line_error("bench", {"nope"}, "unknown op 'nope' (./bench list shows them)");
  check_one_line_error("bench", {"add", "mul"}, "one OP only (got add and mul)");
}

TEST_CASE("programs: ./inspect plan plans ./train's defaults on the device auto picks; cuda needs no GPU") {
  const TrainConfig train;
  const std::string auto_device = select_device("auto", "--device") == Device::CUDA ? "cuda" : "cpu";
  const ProgramRun bare = run_program("inspect", {"plan", "--preset", "qwen3-0.6b", "--json"});
  REQUIRE(bare.status == 0);
  const nlohmann::json plan = nlohmann::json::parse(bare.out);
  CHECK(plan["device"] == auto_device);
  CHECK(plan["seq"] == train.max_length);
  CHECK(plan["batch"] == train.batch_size);
  CHECK(plan["r"] == train.r);
  for (const char* device : {"cpu", "cuda"}) {
    CAPTURE(device);
    const ProgramRun r = run_program("inspect", {"plan", "--preset", "qwen3-0.6b", "--device", device, "--json"});
    REQUIRE(r.status == 0);
    CHECK(nlohmann::json::parse(r.out)["device"] == device);
  }
  // the explicit device the auto one resolved to plans the same bytes
  const ProgramRun same = run_program("inspect", {"plan", "--preset", "qwen3-0.6b", "--device", auto_device, "--json"});
  CHECK(same.out == bare.out);
}

TEST_CASE("programs: ./inspect plan --gpu CARD: Qwen3 0.6B-8B at 2048 and the longest context, from --fit-gb's search") {
  const ProgramRun t4 = run_program("inspect", {"plan", "--gpu", "t4"});
  REQUIRE(t4.status == 0);
  CHECK(t4.out.find("sm_75, f16 activations (no bf16; dynamic loss scaling)") != std::string::npos);
  int64_t previous = std::numeric_limits<int64_t>::max();
  for (const char* preset : {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"}) {
    CAPTURE(preset);
    const size_t at = t4.out.find(std::string("  ") + preset + " ");
    REQUIRE(at != std::string::npos);
    std::istringstream row(t4.out.substr(at));
    std::string name, size, unit, fits;
    int64_t longest = 0;
    row >> name >> size >> unit >> fits >> longest;
    CHECK(fits == "yes");
    CHECK(longest > 2048);
    CHECK(longest < previous);  // a larger model leaves less room for activations
    previous = longest;
    // The same search as --fit-gb over the card's memory less the 1.5 GiB reserve (15.0 - 1.5).
    const ProgramRun fit =
        run_program("inspect", {"plan", "--preset", preset, "--device", "cuda", "--fit-gb", "13.5", "--json"});
    REQUIRE(fit.status == 0);
    CHECK(nlohmann::json::parse(fit.out)["fit_seq"] == longest);
  }
  const ProgramRun h200 = run_program("inspect", {"plan", "--gpu", "h200", "--preset", "qwen3-8b"});
  REQUIRE(h200.status == 0);
  CHECK(h200.out.find("sm_90, bf16 activations;") != std::string::npos);
  CHECK(h200.out.find("qwen3-0.6b") == std::string::npos);  // only the model asked for
  check_one_line_error("inspect", {"plan", "--gpu", "k80"},
                       "--gpu must be one of t4, v100, a100-40, a100-80, rtx4090, h100, h200, got 'k80' (--fit-gb G "
                       "asks for any size)");
  check_one_line_error("inspect", {"plan", "--gpu", "t4", "--dtype", "bf16"},
                       "--dtype bf16: the Tesla T4 (Colab, Kaggle) has no bf16 (sm_75); it trains in float16");
  const ProgramRun f16 = run_program("inspect", {"plan", "--preset", "qwen3-0.6b", "--device", "cuda", "--dtype",
                                                 "float16", "--json"});
  REQUIRE(f16.status == 0);
  CHECK(nlohmann::json::parse(f16.out)["activations"] == "f16");
}

TEST_CASE("programs: ./generate --device: cpu decodes, cuda is refused in one line (decoding is CPU code)") {
  for (const char* device : {"cpu", "auto"}) {
    CAPTURE(device);
    const ProgramRun ok = run_program("generate", {"--model", "tests/fixtures/model/qwen3_tied", "--prompt-ids", "1 2 3",
                                                   "--max-new-tokens", "2", "--print-ids", "--device", device});
    CHECK(ok.status == 0);
    CHECK(ok.err.find("device: cpu") != std::string::npos);
  }
  const ProgramRun r = run_program("generate", {"--preset", "qwen3-0.6b", "--device", "cuda", "--prompt-ids", "1"});
  CHECK(r.status == 1);
  CHECK(r.err.find("error: --device cuda") == 0);
  CHECK(r.err.find('\n') == r.err.size() - 1);
}

TEST_CASE("programs: ./merge, ./tokenize and ./quantize take a GGUF; ./merge writes GGUF model and adapter files") {
  TempDir tmp;
  const std::string base = "tests/fixtures/model/qwen3_tied", adapter = "tests/fixtures/gguf_export/qwen3_adapter";
  // A GGUF of the base (no adapter), then everything from that GGUF.
  ProgramRun r = run_program("merge", {"--model", base, "--out", tmp / "base.gguf", "--type", "f32"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  r = run_program("merge", {"--model", tmp / "base.gguf", "--adapter", adapter, "--out", tmp / "m.gguf", "--type",
                            "q4_1", "--adapter-gguf", tmp / "a.gguf"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.out.find("wrote the adapter (14 projections, r 4, llama.cpp alpha 16)") != std::string::npos);
  CHECK(r.out.find("(q4_1: ") != std::string::npos);
  r = run_program("merge", {"--model", tmp / "base.gguf", "--adapter", adapter, "--out", tmp / "hf"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    CHECK_MESSAGE(fs::exists(tmp / "hf/" + f), f);
  r = run_program("quantize", {"--model", tmp / "base.gguf", "--out", tmp / "nf4"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(fs::exists(tmp / "nf4/tokenizer.json"));
  const std::string echo = "echo '{\"text\": \"Hello world\"}' | ";
  std::string ids[3];
  int k = 0;
  for (const std::string& t : {std::string(base), tmp / "base.gguf", tmp / "hf"}) {
    const std::string cmd = echo + quoted(program_path("tokenize")) + " --tokenizer " + quoted(t) + " > " +
                            quoted(tmp / "ids") + " 2>&1";
    CHECK(std::system(cmd.c_str()) == 0);
    ids[k++] = read_text(tmp / "ids");
  }
  CHECK(ids[0].find("{\"ids\": [") == 0);
  CHECK(ids[1] == ids[0]);
  CHECK(ids[2] == ids[0]);

  fs::create_directory(tmp / "dir.gguf");
  check_one_line_error("merge", {"--model", base, "--out", tmp / "dir.gguf"},
                       tmp / "dir.gguf" + ": is a folder; give the path of the .gguf file to write");
  check_one_line_error("merge", {"--model", base, "--out", tmp / "x", "--type", "q8_0"},
                       "--type is for a .gguf --out; a folder takes --dtype bfloat16|float16|float32");
  check_one_line_error("merge", {"--model", base, "--adapter-gguf", tmp / "a2.gguf"}, "--adapter-gguf needs --adapter DIR");
}
