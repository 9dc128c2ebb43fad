// What a new user meets first, on the tiny run of tests/tiny_run.h: resuming as HF
// Trainer does (--resume OUT/checkpoint-N alone, OUT, last; a maths-changing flag
// beside it refused, a harmless one applied and reported; metrics.jsonl with each step
// once), one run per output folder (--overwrite, --save-total-limit), stopping (the
// checkpoint and the adapter so far; ./train exits 130), data checked before the model
// loads (the UTF-8 message names the byte), the nearest flag for an unknown one, and
// the log a person reads (the start line, the one-line memory plan, the summary).
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/safetensors.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "training/checkpoint.h"
#include "training/data.h"
#include "training/flags.h"
#include "training/resume.h"
#include "training/trainer.h"

using namespace nq;
using namespace nq::test;
namespace fs = std::filesystem;

namespace {

TrainResult run_logged(const TrainConfig& cfg, std::string* log_text = nullptr, const TrainerHooks& hooks = {}) {
  std::ostringstream log;
  TrainResult r = train(cfg, log, hooks);
  if (log_text) *log_text = log.str();
  return r;
}

// parse_train_command_line on `args` (after argv[0]).
TrainConfig command_line(std::vector<std::string> args, std::vector<std::string>* notes = nullptr) {
  std::vector<char*> argv{const_cast<char*>("train")};
  for (std::string& a : args) argv.push_back(a.data());
  TrainConfig cfg;
  std::vector<std::string> ignored;
  REQUIRE(parse_train_command_line(int(argv.size()), argv.data(), &cfg, notes ? notes : &ignored));
  return cfg;
}

std::string command_line_error(std::vector<std::string> args) {
  std::vector<char*> argv{const_cast<char*>("train")};
  for (std::string& a : args) argv.push_back(a.data());
  TrainConfig cfg;
  std::vector<std::string> notes;
  return thrown_message([&] { parse_train_command_line(int(argv.size()), argv.data(), &cfg, &notes); });
}

std::vector<int64_t> metrics_steps(const std::string& path) {
  std::ifstream f(path);
  std::vector<int64_t> steps;
  for (std::string line; std::getline(f, line);) steps.push_back(nlohmann::json::parse(line)["step"].get<int64_t>());
  return steps;
}

std::vector<std::string> checkpoint_names(const std::string& out) {
  std::vector<std::string> names;
  for (const CheckpointDir& c : list_checkpoints(out)) names.push_back(fs::path(c.path).filename().string());
  return names;
}

std::vector<int64_t> range(int64_t first, int64_t last) {
  std::vector<int64_t> v;
  for (int64_t i = first; i <= last; ++i) v.push_back(i);
  return v;
}

}  // namespace

TEST_CASE("newcomer: an unknown flag or key suggests the nearest known one") {
  const std::vector<std::string> names{"r", "lr", "alpha", "batch-size", "max-steps", "epochs", "save-every"};
  CHECK(nearest_name("lora-r", names) == "r");                           // PEFT's LoraConfig name
  CHECK(nearest_name("lora_alpha", names) == "alpha");
  CHECK(nearest_name("per_device_train_batch_size", names) == "batch-size");  // HF TrainingArguments
  CHECK(nearest_name("batch_size", names) == "batch-size");
  CHECK(nearest_name("max-step", names) == "max-steps");
  CHECK(nearest_name("epoch", names) == "epochs");
  CHECK(nearest_name("LR", names) == "lr");
  CHECK(nearest_name("bogus", names) == "");  // nothing close: no guess
  CHECK(nearest_name("x", names) == "");

  int64_t r = 16;
  double lr = 2e-4;
  FlagTable t("usage\n");
  t.json_keys_from_names();
  t.add("r", &r, "rank");
  t.add("lr", &lr, "learning rate");
  std::vector<std::string> args{"x", "--lora-r", "8"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  CHECK(thrown_message([&] { t.parse(int(argv.size()), argv.data()); }) ==
        "unknown flag '--lora-r' (did you mean --r? see --help)");
  CHECK(thrown_message([&] { t.apply_json(R"({"lora_r": 8})", "c.json"); }) ==
        "c.json: unknown key \"lora_r\" (did you mean \"r\"? keys are the flags of --help with _ for -)");
  // Another tool's names, declared by the table (./train's: HF TrainingArguments').
  t.also_known_as("learning_rate", "lr");
  std::vector<std::string> hf{"x", "--learning_rate", "1e-3"};
  std::vector<char*> hf_argv;
  for (std::string& a : hf) hf_argv.push_back(a.data());
  CHECK(thrown_message([&] { t.parse(int(hf_argv.size()), hf_argv.data()); }) ==
        "unknown flag '--learning_rate' (did you mean --lr? see --help)");
  CHECK(thrown_message([&] { t.apply_json(R"({"learning_rte": 1})", "c.json"); }).find("did you mean \"lr\"?") !=
        std::string::npos);  // a typo of the other name
  TrainConfig cfg;
  const FlagTable train = train_flags(cfg);
  for (auto [typed, meant] : {std::pair<const char*, const char*>{"num_train_epochs", "epochs"},
                              {"per_device_train_batch_size", "batch-size"}, {"gradient_accumulation_steps", "grad-accum"},
                              {"output_dir", "out"}, {"save_steps", "save-every"}, {"use_rslora", "rslora"},
                              {"save-total-limt", "save-total-limit"}}) {
    CAPTURE(typed);
    std::vector<std::string> args{"train", std::string("--") + typed, "1"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    TrainConfig c;
    FlagTable table = train_flags(c);
    CHECK(thrown_message([&] { table.parse(int(argv.size()), argv.data()); }) ==
          str("unknown flag '--", typed, "' (did you mean --", meant, "? see --help)"));
  }
}

TEST_CASE("newcomer: invalid UTF-8 names the line and the byte offset") {
  CHECK(first_invalid_utf8("plain ascii") == std::string::npos);
  CHECK(first_invalid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8f\xb4") == std::string::npos);  // é € 🏴
  CHECK(first_invalid_utf8("ab\xff") == 2);
  CHECK(first_invalid_utf8("a\xc3") == 1);              // truncated sequence
  CHECK(first_invalid_utf8("a\xc0\x80") == 1);          // overlong NUL
  CHECK(first_invalid_utf8("\xed\xa0\x80") == 0);       // a surrogate
  CHECK(first_invalid_utf8("\xf4\x90\x80\x80") == 0);   // above U+10FFFF
  CHECK(first_invalid_utf8("\x80") == 0);               // continuation without a lead
  std::istringstream in("{\"text\": \"fine\"}\n{\"text\": \"caf\xe9\"}\n");  // Latin-1 é on line 2
  CHECK_THROWS_WITH_AS(parse_jsonl(in, "d.jsonl", BadLinePolicy::Error),
                       "d.jsonl:2: invalid UTF-8 at byte offset 13 of the line (byte 0xe9); save the file as UTF-8",
                       Error);
}

TEST_CASE("newcomer: the data is checked before the model loads") {
  TinyRun t;
  t.cfg.model = t.tmp / "no-such-model";  // loading it would fail: the data error must come first
  SUBCASE("a bad role") {
    write_file(t.tmp / "bad.jsonl", chat_jsonl(2) + R"({"messages": [{"role": "bot", "content": "hi"}]})" "\n");
    t.cfg.data = t.tmp / "bad.jsonl";
    CHECK(thrown_message([&] { run_logged(t.cfg); }).find(t.tmp / "bad.jsonl:3: messages[0].role is \"bot\"") == 0);
  }
  SUBCASE("invalid UTF-8 in --eval-data") {
    write_file(t.tmp / "eval.jsonl", "{\"text\": \"\xff\"}\n");
    t.cfg.eval_data = t.tmp / "eval.jsonl";
    CHECK(thrown_message([&] { run_logged(t.cfg); }).find(t.tmp / "eval.jsonl:1: invalid UTF-8 at byte offset 10") == 0);
  }
  SUBCASE("good data: then the model's error") {
    CHECK(thrown_message([&] { run_logged(t.cfg); }).find("no-such-model") != std::string::npos);
  }
}

TEST_CASE("newcomer: --resume OUT/checkpoint-N alone continues the run exactly; Ctrl-C leaves the adapter so far") {
  TinyRun straight;
  const TrainResult a = run_logged(straight.cfg);
  REQUIRE(a.steps.size() == 6);

  TinyRun t;
  std::string log;
  const TrainResult first = run_logged(t.cfg, &log, {[](const StepMetrics& m) { if (m.step == 3) request_stop(); }});
  REQUIRE(first.interrupted);
  CHECK(first.last_checkpoint == t.cfg.out + "/checkpoint-3");
  // As at the end of a run: the top-level PEFT adapter, equal to the checkpoint's.
  CHECK(first.adapter_dir == t.cfg.out);
  SafetensorsFile top = SafetensorsFile::open(t.cfg.out + "/adapter_model.safetensors");
  SafetensorsFile saved = SafetensorsFile::open(t.cfg.out + "/checkpoint-3/adapter_model.safetensors");
  REQUIRE(top.names() == saved.names());
  for (const std::string& key : top.names()) CHECK(top.get(key).to_vector() == saved.get(key).to_vector());
  CHECK(log.find("stopped at step 3 of 6 as asked: checkpoint " + t.cfg.out + "/checkpoint-3, adapter so far in " +
                 t.cfg.out + "/") != std::string::npos);

  // The checkpoint alone: model, data and every option come from its train_config.json.
  std::vector<std::string> notes;
  const TrainConfig resumed = command_line({"--resume", t.cfg.out + "/checkpoint-3"}, &notes);
  CHECK(notes.empty());
  CHECK(resumed.resume == t.cfg.out + "/checkpoint-3");
  CHECK(resumed.out == t.cfg.out);
  CHECK(resumed.model == t.cfg.model);
  CHECK(resumed.data == t.cfg.data);
  CHECK(resumed.trajectory_difference(t.cfg).empty());
  const TrainResult second = run_logged(resumed);
  REQUIRE(second.steps.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(second.steps[i].step == int64_t(i) + 4);
    CHECK(second.steps[i].loss == a.steps[i + 3].loss);  // bit for bit
  }
  SafetensorsFile fa = SafetensorsFile::open(straight.cfg.out + "/adapter_model.safetensors");
  SafetensorsFile fb = SafetensorsFile::open(t.cfg.out + "/adapter_model.safetensors");
  for (const std::string& key : fa.names()) CHECK(fb.get(key).to_vector() == fa.get(key).to_vector());
  CHECK(metrics_steps(t.cfg.out + "/metrics.jsonl") == range(1, 6));
}

TEST_CASE("newcomer: --resume OUT and last pick the newest complete checkpoint; metrics keep each step once") {
  TinyRun t;
  t.cfg.save_every = 2;
  // A crash (kill -9) after step 5 was logged: checkpoint-4 is the last one saved.
  CHECK(thrown_message([&] {
          run_logged(t.cfg, nullptr, {[](const StepMetrics& m) { if (m.step == 5) throw Error("killed"); }});
        }) == "killed");
  CHECK(metrics_steps(t.cfg.out + "/metrics.jsonl") == range(1, 5));
  std::ofstream(t.cfg.out + "/metrics.jsonl", std::ios::app) << "{\"step\": 6, \"lo";  // a torn last line
  fs::create_directory(t.cfg.out + "/checkpoint-5");  // incomplete: no trainer_state.json
  CHECK(checkpoint_names(t.cfg.out) == std::vector<std::string>{"checkpoint-2", "checkpoint-4"});
  CHECK(resolve_resume_checkpoint(t.cfg.out, "") == t.cfg.out + "/checkpoint-4");
  CHECK(resolve_resume_checkpoint("last", t.cfg.out) == t.cfg.out + "/checkpoint-4");
  CHECK(command_line({"--resume", "last", "--out", t.cfg.out}).resume == t.cfg.out + "/checkpoint-4");
  CHECK(thrown_message([&] { resolve_resume_checkpoint(t.tmp / "model", ""); }) ==
        "--resume " + t.tmp / "model" +
            ": holds no complete checkpoint (checkpoint-STEP with trainer_state.json and optimizer.safetensors)");
  CHECK(thrown_message([&] { resolve_resume_checkpoint("last", t.tmp / "none"); }) ==
        "--resume last: --out " + t.tmp / "none" + ": no such folder");

  const TrainResult r = run_logged(command_line({"--resume", t.cfg.out}));
  REQUIRE(r.steps.size() == 2);
  CHECK(r.steps.front().step == 5);
  CHECK(metrics_steps(t.cfg.out + "/metrics.jsonl") == range(1, 6));  // step 5 once, the torn line gone
}

TEST_CASE("newcomer: beside --resume, a flag that changes the maths is an error, a harmless one is applied") {
  TinyRun t;
  t.cfg.max_steps = 2;
  run_logged(t.cfg);
  const std::string ckpt = t.cfg.out + "/checkpoint-2";
  CHECK(command_line_error({"--resume", ckpt, "--lr", "0.5"}) ==
        "--lr 0.5 differs from the checkpoint's 0.002 (" + ckpt +
            "/train_config.json): it would change the run being resumed; drop the flag to continue it, or start a "
            "new run in another --out");
  CHECK(command_line_error({"--resume", ckpt, "--targets", "q_proj"}).find("--targets q_proj differs from the "
                                                                           "checkpoint's all-linear") == 0);
  // The same value as the checkpoint's is no change.
  CHECK(command_line({"--resume", ckpt, "--lr", "0.002"}).lr == 2e-3);
  std::vector<std::string> notes;
  const TrainConfig more = command_line({"--resume", ckpt, "--max-steps", "4", "--save-every", "1"}, &notes);
  CHECK(more.max_steps == 4);
  CHECK(more.save_every == 1);
  CHECK(notes == std::vector<std::string>{"--max-steps 4 (the checkpoint's run: 2)", "--save-every 1 (the checkpoint's run: 0)"});
  const TrainResult r = run_logged(more);
  REQUIRE(r.steps.size() == 2);  // extended to step 4
  CHECK(r.steps.back().step == 4);
}

TEST_CASE("newcomer: an output folder holds one run; --overwrite replaces it; --save-total-limit keeps the newest") {
  TinyRun t;
  t.cfg.max_steps = 4;
  t.cfg.save_every = 1;
  t.cfg.save_total_limit = 2;
  run_logged(t.cfg);
  CHECK(checkpoint_names(t.cfg.out) == std::vector<std::string>{"checkpoint-3", "checkpoint-4"});

  write_file(t.cfg.out + "/notes.txt", "mine");
  TrainConfig again = t.cfg;
  again.max_steps = 1;
  again.save_total_limit = 0;
  CHECK(thrown_message([&] { run_logged(again); }) ==
        "--out " + t.cfg.out + " already holds a run (2 checkpoints, checkpoint-3 to checkpoint-4): continue it with "
        "--resume " + t.cfg.out + ", replace it with --overwrite, or choose another --out");
  again.overwrite = true;
  run_logged(again);
  CHECK(checkpoint_names(t.cfg.out) == std::vector<std::string>{"checkpoint-1"});
  CHECK(metrics_steps(t.cfg.out + "/metrics.jsonl") == range(1, 1));
  CHECK(fs::exists(t.cfg.out + "/notes.txt"));  // not the run's: kept
}

TEST_CASE("newcomer: the log says what will happen, the memory plan in one line, and where everything went") {
  TinyRun t;
  t.cfg.max_steps = 2;
  t.cfg.eval_split = 2;
  t.cfg.max_length = 200;  // longer than every chat: the rows are padded to less
  std::string log;
  run_logged(t.cfg, &log);
  INFO(log);
  CHECK(log.find("2 optimizer steps, each 4 sequences (2 micro-batches of 2) of up to 200 tokens (one sample each, "
                 "padded); lr 0.002, cosine after 1 warmup step; --max-steps 2 is about 0.571 epochs of 14 samples\n") !=
        std::string::npos);
  CHECK(log.find("memory plan (predicted peak, f32 activations)") == std::string::npos);  // the table: --verbose only
  CHECK(log.find("memory: plan vs measured peak") == std::string::npos);
  const size_t mem = log.find("\nmemory: peak ");
  REQUIRE(mem != std::string::npos);
  const std::string mem_line = log.substr(mem + 1, log.find('\n', mem + 1) - mem - 1);
  CHECK(mem_line.find(" after step 1, ") != std::string::npos);
  CHECK(mem_line.find(" planned (x") != std::string::npos);
  // These chats are shorter than 48 tokens: the plan's full rows are explained, not shown bare.
  CHECK(mem_line.find("the plan is for full micro-batches of 2 x 200 tokens, step 1's largest was 2 x ") !=
        std::string::npos);
  for (const std::string& line : std::vector<std::string>{"\n  train loss   ", "\n  eval loss    ", "\n  adapter      " + t.cfg.out + "/",
                                  "\n  checkpoints  " + t.cfg.out + "/checkpoint-2",
                                  "\n  metrics      " + t.cfg.out + "/metrics.jsonl"})
    CHECK(log.find(line) != std::string::npos);

  // adapter_config.json points at the base by an absolute path transformers can load.
  const nlohmann::json adapter = nlohmann::json::parse(std::ifstream(t.cfg.out + "/adapter_config.json"));
  CHECK(adapter["base_model_name_or_path"] == fs::absolute(t.cfg.model).lexically_normal().string());

  TrainConfig verbose = t.cfg;
  verbose.verbose = true;
  verbose.overwrite = true;
  run_logged(verbose, &log);
  CHECK(log.find("memory plan (predicted peak, f32 activations)") != std::string::npos);
  CHECK(log.find("memory: plan vs measured peak") != std::string::npos);
}

namespace {

std::string train_binary() {
  const fs::path dir = fs::read_symlink("/proc/self/exe").parent_path();  // build/<config>
  const fs::path path = dir.filename() == "emu" ? dir / "train" : dir.parent_path().parent_path() / "train";
  REQUIRE_MESSAGE(fs::exists(path), path.string(), " is missing: build the programs (make all)");
  return path.string();
}

}  // namespace

TEST_CASE("newcomer: ./train exits 130 on Ctrl-C with a checkpoint and the adapter; a near-miss flag is named") {
  TinyRun t;
  // Ctrl-C once the first step is in the metrics file; the run stops after its current step
  // (3000 steps bound the test if the signal were lost: it then fails on the status, 0).
  const std::string cmd = "cd " + t.tmp.path + " && { " + train_binary() + " --model model --data train.jsonl --out out " +
                          "--r 4 --max-length 48 --max-steps 3000 --device cpu --no-progress > log 2>&1 & pid=$!; " +
                          "while kill -0 $pid 2>/dev/null && ! [ -s out/metrics.jsonl ]; do sleep 0.05; done; "
                          " kill -INT $pid; wait $pid; echo $? > status; }";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream status(t.tmp / "status");
  int code = -1;
  status >> code;
  std::stringstream log;
  log << std::ifstream(t.tmp / "log").rdbuf();
  INFO(log.str());
  CHECK(code == 130);
  CHECK(fs::exists(t.tmp / "out/adapter_model.safetensors"));
  CHECK(list_checkpoints(t.tmp / "out").size() == 1);
  CHECK(log.str().find("interrupted: saved out/checkpoint-") != std::string::npos);
  CHECK(log.str().find(" and the adapter so far in out/; continue with ./train --resume out\n") != std::string::npos);

  const std::string bad = train_binary() + " --model m --data d --lora-r 8 2> " + t.tmp / "err";
  CHECK(WEXITSTATUS(std::system(bad.c_str())) == 1);
  std::stringstream err;
  err << std::ifstream(t.tmp / "err").rdbuf();
  CHECK(err.str() == "error: unknown flag '--lora-r' (did you mean --r? see --help)\n");
}
