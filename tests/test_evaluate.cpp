// training/evaluate.h: the one eval loss of ./train and ./eval.
//
// - Every dataset format against transformers: tests/fixtures/model/qwen3_tied
//   holds one small file per format and the token-weighted loss transformers
//   computes on it (tools/ref/make_model_fixtures.py: EOS after text and
//   completions, Qwen3's chat template, the Alpaca prompt); ./eval's function
//   runs the whole path (load_model, load_dataset, batches) on the dense model.
// - ./eval's number IS the trainer's: train() with --eval-data writes an
//   adapter and logs its final eval loss; evaluate() with the same options and
//   that adapter returns the same double (==, padded and packed).
// - The loss does not depend on --batch-size or --packing (token-weighted),
//   against batch size 1 (one sample per forward) as the reference.
// - Bad input: every error is one line naming the flag, file or line.
// - GPU (skipped without one; runs on the emulated GPU): cuda vs cpu within
//   the bf16 tolerance of docs/gpu_training.md (2e-2 relative).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/gpu_test.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "training/evaluate.h"
#include "training/trainer.h"

using namespace nq;
using namespace nq::test;

namespace {

const std::string kFixture = "tests/fixtures/model/qwen3_tied/";

double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

EvalReport eval_quiet(const EvalConfig& cfg) {
  std::ostringstream log;
  return evaluate(cfg, log);
}

std::string eval_error(const EvalConfig& cfg) { return thrown_message([&] { eval_quiet(cfg); }); }

std::string parse_error(std::vector<std::string> args) {
  return flag_error<EvalConfig>("eval", std::move(args), parse_eval_args);
}

// ./eval's settings for the tiny run's model and `data`, as its flags would give them.
EvalConfig tiny_eval(const TinyRun& t, const std::string& data) {
  EvalConfig e;
  e.run.model = t.cfg.model;
  e.run.data = data;
  e.run.max_length = t.cfg.max_length;
  e.run.device = "cpu";
  e.run.no_progress = true;
  return e;
}

}  // namespace

TEST_CASE("eval: each dataset format matches transformers (fixtures/model/qwen3_tied)") {
  std::ifstream in(kFixture + "eval_reference.json");
  const nlohmann::json want = nlohmann::json::parse(in);
  REQUIRE(want.size() == 4);
  for (auto it = want.begin(); it != want.end(); ++it) {
    const std::string format = it.key();
    CAPTURE(format);
    std::string file = format;
    for (char& c : file) if (c == '-') c = '_';
    EvalConfig cfg;
    cfg.run.model = kFixture;
    cfg.run.data = kFixture + "eval_" + file + ".jsonl";
    cfg.run.no_quant = true;  // the fixture's fp32 weights, as transformers ran them
    cfg.run.device = "cpu";
    cfg.run.no_progress = true;
    const EvalReport r = eval_quiet(cfg);
    CHECK(data_format_name(r.format) == format);
    CHECK(r.result.targets == it.value()["tokens"].get<int64_t>());
    CHECK(r.samples == it.value()["samples"].get<int64_t>());
    CHECK(r.lines == it.value()["lines"].get<int64_t>());
    CHECK(rel_diff(r.result.loss, it.value()["loss"].get<double>()) <= 1e-5);
    // The stdout line carries the same numbers.
    const nlohmann::json line = nlohmann::json::parse(eval_report_json(r));
    CHECK(line["loss"].get<double>() == r.result.loss);
    CHECK(line["tokens"] == r.result.targets);
    CHECK(line["samples"] == r.samples);
    CHECK(line["lines"] == r.lines);
    CHECK(line["format"] == format);
  }
}

TEST_CASE("eval: ./eval's loss is the trainer's eval loss on the same file, options and adapter") {
  for (bool packing : {false, true}) {
    const bool train_on_prompt = packing;  // two runs cover both options
    CAPTURE(packing);
    TinyRun t;
    write_file(t.tmp / "eval.jsonl", chat_jsonl(7));
    t.cfg.eval_data = t.tmp / "eval.jsonl";
    t.cfg.max_steps = 2;
    t.cfg.packing = packing;
    t.cfg.train_on_prompt = train_on_prompt;
    std::ostringstream log;
    const TrainResult trained = train(t.cfg, log);
    REQUIRE(trained.evals.size() == 1);  // at the end

    EvalConfig e;
    e.run = t.cfg;  // the run's options: ./eval spells them as ./train does
    e.run.data = t.cfg.eval_data;
    e.adapter = t.cfg.out;
    const EvalReport r = eval_quiet(e);
    CHECK(r.result.loss == trained.evals.back().second);  // exact: one code path
    CHECK(log.str().find(str("over ", r.result.targets, " tokens")) != std::string::npos);
    CHECK(r.samples == 7);

    // Without the adapter the number differs: the adapter was loaded and used.
    e.adapter.clear();
    CHECK(eval_quiet(e).result.loss != r.result.loss);
  }
}

TEST_CASE("eval: the loss does not depend on the batch size or packing (token-weighted mean)") {
  TinyRun t;
  EvalConfig e = tiny_eval(t, t.cfg.data);  // 16 chats of different lengths
  e.run.batch_size = 1;                     // the reference: one sample per forward
  const EvalReport one = eval_quiet(e);
  CHECK(one.samples == 16);
  CHECK(one.result.targets > 16);
  for (int64_t batch : {3, 8, 16}) {
    for (bool packing : {false, true}) {
      CAPTURE(batch);
      CAPTURE(packing);
      e.run.batch_size = batch;
      e.run.packing = packing;
      const EvalReport r = eval_quiet(e);
      CHECK(r.result.targets == one.result.targets);
      CHECK(rel_diff(r.result.loss, one.result.loss) <= 1e-6);
    }
  }
  // A per-batch mean of means would weigh a short sample's tokens more: with
  // batch 8 the two halves have different target counts, so it would differ.
}

TEST_CASE("eval: the data options are ./train's (truncation, train-on-prompt, bad lines)") {
  TinyRun t;
  EvalConfig e = tiny_eval(t, t.cfg.data);
  e.run.max_length = 256;  // every chat fits
  const EvalReport base = eval_quiet(e);
  CHECK(base.truncated == 0);

  // --train-on-prompt scores the prompt tokens too.
  e.run.train_on_prompt = true;
  const EvalReport all = eval_quiet(e);
  CHECK(all.result.targets > base.result.targets);
  e.run.train_on_prompt = false;

  // --max-length truncates samples, counted, as load_dataset does for ./train.
  e.run.max_length = 48;  // the longer answers are cut
  const EvalReport cut = eval_quiet(e);
  CHECK(cut.truncated > 0);
  CHECK(cut.samples == 16);
  CHECK(cut.result.targets < base.result.targets);

  // --on-bad-line: error names FILE:LINE; skip counts the line.
  write_file(t.tmp / "bad.jsonl", chat_jsonl(3) + "{\"messages\": [\n");
  e.run.data = t.tmp / "bad.jsonl";
  CHECK(eval_error(e) == t.tmp / "bad.jsonl:4: invalid JSON");
  e.run.on_bad_line = "skip";
  std::ostringstream log;
  const EvalReport skipped = evaluate(e, log);
  CHECK(skipped.skipped_lines == 1);
  CHECK(skipped.samples == 3);
  CHECK(skipped.lines == 4);
  CHECK(log.str().find("first skipped: " + t.tmp.path + "/bad.jsonl:4: invalid JSON") != std::string::npos);

  // A line of another format in a text file names the line and the file's format.
  write_file(t.tmp / "mixed.jsonl", "{\"text\": \"hello\"}\n" + chat_jsonl(1));
  e.run.data = t.tmp / "mixed.jsonl";
  e.run.on_bad_line = "error";
  CHECK(eval_error(e) == t.tmp / "mixed.jsonl:2: missing field \"text\" (the file is text)");
}

TEST_CASE("eval: bad input fails with one line naming the cause") {
  TinyRun t;
  EvalConfig e = tiny_eval(t, t.tmp / "none.jsonl");
  SUBCASE("a missing data file, reported before the model loads") {
    e.run.model = t.tmp / "no-such-model";
    CHECK(eval_error(e) == "--data " + t.tmp / "none.jsonl: cannot read the file");
  }
  SUBCASE("no sample with a target token") {
    write_file(t.tmp / "q.jsonl", R"({"messages": [{"role": "user", "content": "only a question"}]})" "\n");
    e.run.data = t.tmp / "q.jsonl";
    CHECK(eval_error(e) == t.tmp / "q.jsonl: no samples left to train on or evaluate (1 examples, 1 without a "
                                    "trained token after truncation to 48 tokens, 0 bad lines skipped)");
  }
  SUBCASE("an adapter folder that does not exist") {
    e.run.data = t.cfg.data;
    e.adapter = t.tmp / "no-adapter";
    CHECK(eval_error(e).find(t.tmp / "no-adapter") == 0);
  }
  SUBCASE("flags") {
    CHECK(parse_error({"--model", "m"}) == "--data is required (see --help)");
    CHECK(parse_error({"--data", "d"}) == "--model is required (see --help)");
    CHECK(parse_error({"--model", "m", "--data", "d", "--lr", "1"}) == "unknown flag '--lr' (see --help)");
    CHECK(parse_error({"--model", "m", "--data", "d", "--bogus"}) == "unknown flag '--bogus' (see --help)");
    CHECK(parse_error({"--model", "m", "--data", "d", "--batch-size", "0"}) == "--batch-size must be >= 1, got 0");
    CHECK(parse_error({"--model", "m", "--data", "d", "--max-length", "x"}) ==
          "--max-length: expected an integer, got 'x'");
    CHECK(parse_error({"--model", "m", "--data", "d", "--max-length", "1"}) == "--max-length must be >= 2, got 1");
    CHECK(parse_error({"--model", "m", "--data", "d", "--adapter"}) == "--adapter needs a value (see --help)");
    CHECK(parse_error({"--model", "m", "--data", "d", "--device", "gpu"}) ==
          "--device must be auto, cpu or cuda, got 'gpu'");
    CHECK(parse_error({"--model", "m", "--data", "d", "--on-bad-line", "ignore"}) ==
          "--on-bad-line: unknown bad-line policy 'ignore' (expected error or skip)");
  }
  SUBCASE("the flags set what ./train's would; --help lists eval's options with their defaults") {
    std::vector<std::string> args{"eval",          "--model",     "m",          "--data",
                                  "d",             "--adapter",   "a",          "--max-length",
                                  "64",            "--packing",   "--train-on-prompt", "--prompt-completion-chat",
                                  "--on-bad-line", "skip",        "--no-quant", "--no-progress"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    EvalConfig cfg;
    REQUIRE(parse_eval_args(int(argv.size()), argv.data(), &cfg));
    CHECK(cfg.adapter == "a");
    CHECK(cfg.run.max_length == 64);
    CHECK(cfg.run.batch_size == 8);  // eval's default
    CHECK(cfg.run.packing);
    CHECK(cfg.run.train_on_prompt);
    CHECK(cfg.run.prompt_completion_chat);
    CHECK(cfg.run.on_bad_line == "skip");
    CHECK(cfg.run.no_quant);
    CHECK(cfg.run.no_progress);
    const std::string help = eval_help();
    CHECK(help.find("--batch-size N") != std::string::npos);
    CHECK(help.find("(default 8)") != std::string::npos);
    CHECK(help.find("--train-on-prompt") != std::string::npos);
    CHECK(help.find("--adapter DIR") != std::string::npos);
    CHECK(help.find("--lr") == std::string::npos);
  }
}

TEST_CASE("eval: the progress bar on the log counts batches") {
  TinyRun t;
  EvalConfig e = tiny_eval(t, t.cfg.data);
  e.run.no_progress = false;
  e.run.batch_size = 4;  // 16 samples: 4 batches
  std::ostringstream log;
  evaluate(e, log);
  const std::string s = log.str();
  CHECK(s.find("eval batch 1/4 [") != std::string::npos);
  CHECK(s.find("eval batch 4/4 [####################] 100% | loss ") != std::string::npos);
  CHECK(s.find("device: cpu") == 0);
  CHECK(s.find("(messages): 16 samples of 16 lines") != std::string::npos);
}

// ---- GPU: the same function on --device cuda (skipped without one) ----

#define GPU_TEST(name) NQ_GPU_TEST("gpu train: eval " #name, name)

GPU_TEST(on_cuda_matches_the_cpu) {
  TinyRun t;
  EvalConfig e = tiny_eval(t, t.cfg.data);
  e.run.batch_size = 4;
  const EvalReport cpu = eval_quiet(e);
  e.run.device = "cuda";
  std::ostringstream log;
  const EvalReport gpu = evaluate(e, log);
  CHECK(log.str().find("device: cuda (") == 0);
  CHECK(gpu.result.targets == cpu.result.targets);
  INFO("cuda ", gpu.result.loss, " vs cpu ", cpu.result.loss);
  CHECK(rel_diff(gpu.result.loss, cpu.result.loss) <= 2e-2);
  e.run.packing = true;  // packed rows on the GPU: the same loss within the tolerance
  CHECK(rel_diff(eval_quiet(e).result.loss, cpu.result.loss) <= 2e-2);
}
