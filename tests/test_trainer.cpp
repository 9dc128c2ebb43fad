// training/: the trainer against the seed's Python stack, and its run control.
//
// Parity: tests/fixtures/qlora (tools/ref/make_qlora_fixtures.py) holds 20
// optimizer steps of transformers + bitsandbytes (NF4, double quant) + PEFT
// (all-linear) + torch AdamW + cosine warmup on a tiny random Qwen3: every
// step's loss, grad norm and lr, the initial adapter and the final one. We start
// from the same base and adapter, feed the same batches through train_step and
// compare everything.
//
// Run control (resume, checkpoints, options, bad input) runs the whole train()
// on a tiny random Qwen3 written into a temp folder with the small test BPE
// tokenizer (tests/tiny_run.h).
//
// On a GPU (skipped without one): train() with --device cuda against the same
// run on the CPU, per-step losses within the bf16 tolerance of
// docs/gpu_training.md (2e-2 relative; gradient norms 5e-2, implied by the
// per-tensor gradient bound); paged and unpaged GPU AdamW bit-identical;
// checkpoints moving between the devices.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <sstream>

#include "model/adapters.h"
#include "model/decoder.h"
#include "model/device.h"
#include "optim/schedule.h"
#include "runtime/device_copy.h"
#include "runtime/philox.h"
#include "formats/safetensors.h"
#include "tests/fixture_compare.h"
#include "tests/gpu_test.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "model/tokenizer.h"
#include "optim/adamw.h"
#include "training/checkpoint.h"
#include "training/encode.h"
#include "training/trainer.h"

using namespace nq;
namespace fs = std::filesystem;
using namespace nq::test;

namespace {

const std::string kQlora = "tests/fixtures/qlora/";

TrainResult run(const TrainConfig& cfg, const TrainerHooks& hooks = {}) {
  std::ostringstream log;
  return train(cfg, log, hooks);
}

std::string train_error(const TrainConfig& cfg) { return thrown_message([&] { run(cfg); }); }

std::string parse_error(std::vector<std::string> args) {
  return flag_error<TrainConfig>("train", std::move(args), parse_train_args);
}

}  // namespace

TEST_CASE("trainer: 20 QLoRA steps match transformers + bitsandbytes + PEFT + torch AdamW (fixtures/qlora)") {
  const nlohmann::json trace = read_json(kQlora + "trace.json");
  const nlohmann::json& hp = trace["hyperparameters"];
  Decoder model = Decoder::load(kQlora + "model");
  for (Linear* l : model.linears()) l->quantize_nf4();
  AdapterConfig adapter = load_peft_adapter(kQlora + "adapter_init", model);
  CHECK(adapter.lora.r == hp["r"].get<int64_t>());
  AdamW optimizer(adapter_parameters(model), AdamWConfig{hp["betas"][0], hp["betas"][1], hp["eps"], hp["weight_decay"]});
  CHECK(optimizer.params().size() == 2 * 7 * 2);  // A and B of 7 projections x 2 layers

  LrSchedule schedule;
  schedule.kind = ScheduleKind::Cosine;
  schedule.base_lr = hp["lr"];
  schedule.warmup_steps = hp["warmup_steps"];
  schedule.total_steps = hp["steps"];

  SafetensorsFile batches = SafetensorsFile::open(kQlora + "batches.safetensors");
  const Tensor ids = batches.get("input_ids"), labels = batches.get("labels");  // [steps*accum, B, T]
  const int64_t accum = hp["grad_accum"], B = hp["batch"], T = hp["seq"];
  for (const nlohmann::json& want : trace["steps"]) {
    const int64_t step = want["step"];
    std::vector<DecoderBatch> micro;
    for (int64_t m = (step - 1) * accum; m < step * accum; ++m) {
      micro.push_back(hf_decoder_batch(ids.slice(m, m + 1).view({B, T}), labels.slice(m, m + 1)));
    }
    const double lr = schedule.lr(step - 1);
    CHECK(rel_diff(lr, want["lr"]) <= 1e-12);
    StepResult r = train_step(model, optimizer, micro, lr, hp["max_grad_norm"], step);
    INFO("step ", step, ": loss ", r.loss, " vs ", want["loss"].get<double>(), ", grad_norm ", r.grad_norm, " vs ",
         want["grad_norm"].get<double>());
    CHECK(r.targets == want["tokens"].get<int64_t>());
    CHECK(rel_diff(r.loss, want["loss"]) < 1e-4);
    CHECK(rel_diff(r.grad_norm, want["grad_norm"]) < 1e-3);
  }

  SafetensorsFile final_adapter = SafetensorsFile::open(kQlora + "adapter_final/adapter_model.safetensors");
  int compared = 0;
  for (Linear* l : model.linears()) {
    for (auto [suffix, var] : {std::pair<const char*, Var>{".lora_A.weight", l->lora().A}, {".lora_B.weight", l->lora().B}}) {
      const std::string key = "base_model.model." + l->name() + suffix;
      INFO(key);
      CHECK(rel_l2(var.value(), final_adapter.get(key)) < 1e-3);
      ++compared;
    }
  }
  CHECK(compared == int(final_adapter.names().size()));
}

TEST_CASE("trainer: a non-finite loss stops with an error naming the step, parameters untouched") {
  Decoder model = Decoder::load(kQlora + "model");
  load_peft_adapter(kQlora + "adapter_init", model);
  AdamW optimizer(adapter_parameters(model), AdamWConfig{});
  Tensor a = model.linears()[0]->lora().A.value();
  a.data<float>()[0] = NAN;
  const Tensor b_before = model.linears()[0]->lora().B.value().clone();
  SafetensorsFile batches = SafetensorsFile::open(kQlora + "batches.safetensors");
  DecoderBatch b = hf_decoder_batch(batches.get("input_ids").slice(0, 1).view({2, 16}), batches.get("labels").slice(0, 1));
  CHECK_THROWS_WITH_AS(train_step(model, optimizer, {b}, 1e-3, 1.0, 17), doctest::Contains("step 17: loss is nan"),
                       Error);
  CHECK(rel_l2(model.linears()[0]->lora().B.value(), b_before) == 0.0);
}

TEST_CASE("trainer: resuming from a checkpoint reproduces the uninterrupted run bit for bit") {
  TinyRun straight;
  straight.cfg.eval_split = 3;
  straight.cfg.eval_every = 2;
  TrainResult a = run(straight.cfg);
  REQUIRE(a.steps.size() == 6);
  CHECK(a.evals.size() == 3);  // steps 2, 4 and the end
  CHECK(fs::exists(straight.cfg.out + "/adapter_model.safetensors"));
  CHECK(fs::exists(straight.cfg.out + "/checkpoint-6/optimizer.safetensors"));
  // "all-linear" is saved expanded to the module names, as peft does (its loader
  // accepts the shorthand only as a bare string).
  const nlohmann::json saved = read_json(straight.cfg.out + "/adapter_config.json");
  CHECK(saved["target_modules"].size() == 14);
  CHECK(saved["target_modules"][0] == "model.layers.0.self_attn.q_proj");
  // The loss moves: the run trains something.
  CHECK(a.steps.back().loss < a.steps.front().loss);

  TinyRun split;  // same data and settings, stopped after step 3 (as Ctrl-C does) and resumed
  split.cfg.eval_split = 3;
  split.cfg.eval_every = 2;
  TrainResult first = run(split.cfg, {[](const StepMetrics& m) { if (m.step == 3) request_stop(); }});
  CHECK(first.interrupted);
  REQUIRE(first.steps.size() == 3);
  CHECK(first.last_checkpoint == split.cfg.out + "/checkpoint-3");
  CHECK(fs::exists(split.cfg.out + "/adapter_model.safetensors"));  // the adapter so far, as Ctrl-C leaves it
  TrainConfig again = split.cfg;
  again.resume = first.last_checkpoint;
  TrainResult second = run(again);
  REQUIRE(second.steps.size() == 3);
  CHECK(second.steps.front().step == 4);

  std::vector<StepMetrics> joined = first.steps;
  joined.insert(joined.end(), second.steps.begin(), second.steps.end());
  for (size_t i = 0; i < 6; ++i) {
    INFO("step ", i + 1);
    CHECK(joined[i].loss == a.steps[i].loss);  // exact
    CHECK(joined[i].grad_norm == a.steps[i].grad_norm);
    CHECK(joined[i].lr == a.steps[i].lr);
    CHECK(joined[i].tokens == a.steps[i].tokens);
  }
  REQUIRE(second.evals.size() == 2);  // step 4 and the end
  CHECK(second.evals.back().second == a.evals.back().second);
  SafetensorsFile fa = SafetensorsFile::open(straight.cfg.out + "/adapter_model.safetensors");
  SafetensorsFile fb = SafetensorsFile::open(split.cfg.out + "/adapter_model.safetensors");
  for (const std::string& key : fa.names()) {
    INFO(key);
    CHECK(rel_l2(fb.get(key), fa.get(key)) == 0.0);
  }
  // The metrics file of the resumed run continues the first one; each eval line follows its step's.
  std::ifstream metrics(split.cfg.out + "/metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    lines.push_back(str(j.contains("eval_loss") ? "eval " : "", j["step"].get<int>()));
  }
  CHECK(lines == std::vector<std::string>{"1", "2", "eval 2", "3", "4", "eval 4", "5", "6", "eval 6"});

  SUBCASE("resuming with a different setting is refused, naming it") {
    again.lr = 1e-3;
    CHECK(train_error(again).find("option \"lr\" differs") != std::string::npos);
  }
}

TEST_CASE("trainer: a checkpoint that fails half-way leaves the previous one intact and loadable") {
  TinyRun t;
  t.cfg.max_steps = 4;
  t.cfg.save_every = 2;
  int optimizer_saves = 0;
  set_checkpoint_fault_hook([&](const std::string& file) {
    if (file == "optimizer" && ++optimizer_saves == 2) throw Error("injected failure while saving");
  });
  std::vector<StepMetrics> seen;
  std::string err;
  try {
    run(t.cfg, {[&](const StepMetrics& m) { seen.push_back(m); }});
  } catch (const Error& e) {
    err = e.what();
  }
  set_checkpoint_fault_hook(nullptr);
  CHECK(err == "injected failure while saving");
  REQUIRE(seen.size() == 4);
  CHECK(fs::exists(t.cfg.out + "/checkpoint-2/adapter_model.safetensors"));
  CHECK_FALSE(fs::exists(t.cfg.out + "/checkpoint-4"));
  CHECK_FALSE(fs::exists(t.cfg.out + "/.checkpoint-4.tmp"));

  TrainConfig resume = t.cfg;
  resume.resume = t.cfg.out + "/checkpoint-2";
  TrainResult r = run(resume);
  REQUIRE(r.steps.size() == 2);
  CHECK(r.steps[0].loss == seen[2].loss);
  CHECK(r.steps[1].loss == seen[3].loss);
  CHECK(fs::exists(t.cfg.out + "/checkpoint-4/trainer_state.json"));
  CHECK(read_json(t.cfg.out + "/checkpoint-4/trainer_state.json")["step"] == 4);
}

TEST_CASE("trainer: flags and the JSON config, with one-line errors naming the option") {
  CHECK(parse_error({"--model", "m"}) == "--data is required (see --help)");
  CHECK(parse_error({"--data", "d"}) == "--model is required (see --help)");
  CHECK(parse_error({"--model", "m", "--data", "d", "--bogus"}) == "unknown flag '--bogus' (see --help)");
  CHECK(parse_error({"--model", "m", "--data", "d", "--lr", "fast"}) == "--lr: expected a number, got 'fast'");
  CHECK(parse_error({"--model", "m", "--data", "d", "--r", "1.5"}) == "--r: expected an integer, got '1.5'");
  CHECK(parse_error({"--model", "m", "--data", "d", "--r", "0"}) == "--r must be > 0, got 0");
  CHECK(parse_error({"--model", "m", "--data", "d", "--lr", "0"}) == "--lr must be a finite number > 0, got 0");
  CHECK(parse_error({"--model", "m", "--data", "d", "--lr", "inf"}).find("--lr must be a finite number > 0") == 0);
  CHECK(parse_error({"--model", "m", "--data", "d", "--lr", "nan"}).find("--lr must be a finite number > 0") == 0);
  CHECK(parse_error({"--model", "m", "--data", "d", "--schedule", "step"}).find("--schedule: ") == 0);
  CHECK(parse_error({"--model", "m", "--data", "d", "--device", "gpu"}) ==
        "--device must be auto, cpu or cuda, got 'gpu'");
#ifdef NQ_CUDA
  if (!cuda_available())
    CHECK(parse_error({"--model", "m", "--data", "d", "--device", "cuda"}) ==
          "--device cuda: no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu)");
#else
  CHECK(parse_error({"--model", "m", "--data", "d", "--device", "cuda"}) ==
        "--device cuda: this build has no CUDA (nvcc was not found when it was compiled; rebuild with nvcc on the "
        "PATH, or use --device cpu)");
#endif
  CHECK(parse_error({"--model", "m", "--data", "d", "--optim", "sgd"}) ==
        "--optim must be adamw or paged_adamw, got 'sgd'");
  CHECK(parse_error({"--model", "m", "--data", "d", "--optim-pages", "1"}) ==
        "--optim-pages must be in [2, 256] (2 overlap a copy with an update), got 1");
  CHECK(parse_error({"--model", "m", "--data", "d", "--optim-pages", "many"}) ==
        "--optim-pages: expected an integer, got 'many'");
  CHECK(parse_error({"--model", "m", "--data", "d", "--optim-page-mb", "0"}) ==
        "--optim-page-mb must be in [1, 1024], got 0");
  CHECK(parse_error({"--model", "m", "--data", "d", "--optim-page-mb", "2048"}) ==
        "--optim-page-mb must be in [1, 1024], got 2048");
  CHECK(parse_error({"--model", "m", "--data", "d", "--optim-page-mb", "1.5"}) ==
        "--optim-page-mb: expected an integer, got '1.5'");
  // --help documents the device and the GPU optimizer's flags.
  const std::string help = train_help();
  CHECK(help.find("CPU only") == std::string::npos);
  CHECK(help.find("--device S") != std::string::npos);
  CHECK(help.find("--optim-pages N") != std::string::npos);
  CHECK(help.find("--optim-page-mb N") != std::string::npos);
  CHECK(help.find("(default paged_adamw)") != std::string::npos);
  CHECK(parse_error({"--model", "m", "--data", "d", "--epochs"}) == "--epochs needs a value (see --help)");
  CHECK(parse_error({"--model", "m", "--data", "d", "--eval-data", "e", "--eval-split", "0.1"}) ==
        "--eval-data and --eval-split exclude each other");

  TempDir tmp;
  write_file(tmp / "c.json", R"({"model": "m", "data": "d", "r": 8, "targets": ["q_proj", "v_proj"], "packing": true})");
  std::string config = tmp / "c.json";
  std::vector<std::string> args{"train", "--config", config, "--r", "32", "--optim", "adamw", "--optim-pages", "6"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  TrainConfig cfg;
  REQUIRE(parse_train_args(int(argv.size()), argv.data(), &cfg));
  CHECK(cfg.r == 32);  // the flag wins over the file
  CHECK(cfg.packing);
  CHECK(cfg.targets == std::vector<std::string>{"q_proj", "v_proj"});
  CHECK(cfg.lr == 2e-4);  // untouched default
  CHECK(cfg.optim == "adamw");
  CHECK(cfg.optim_pages == 6);
  CHECK(cfg.optim_page_mb == 8);
  CHECK_FALSE(cfg.train_on_prompt);
  CHECK_FALSE(cfg.prompt_completion_chat);
  // The config round-trips through its JSON (the checkpoint copy).
  TrainConfig back;
  back.apply_json(cfg.to_json(), "copy");
  CHECK(back.to_json() == cfg.to_json());
  CHECK(back.trajectory_difference(cfg).empty());
  // The data options ./eval shares are ./train's flags too, and change the trajectory.
  std::vector<std::string> data_args{"train", "--model", "m", "--data", "d", "--train-on-prompt", "--prompt-completion-chat"};
  std::vector<char*> data_argv;
  for (std::string& a : data_args) data_argv.push_back(a.data());
  TrainConfig data_cfg;
  REQUIRE(parse_train_args(int(data_argv.size()), data_argv.data(), &data_cfg));
  CHECK(data_cfg.train_on_prompt);
  CHECK(data_cfg.prompt_completion_chat);
  TrainConfig plain = data_cfg;
  plain.train_on_prompt = false;
  CHECK(data_cfg.trajectory_difference(plain) == "train_on_prompt");

  write_file(tmp / "bad.json", R"({"model": "m", "data": "d", "rank": 8})");
  CHECK(parse_error({"--config", tmp / "bad.json"}) ==
        tmp / "bad.json" + ": unknown key \"rank\" (keys are the flags of --help with _ for -)");
  write_file(tmp / "typed.json", R"({"model": "m", "data": "d", "r": "16"})");
  CHECK(parse_error({"--config", tmp / "typed.json"}) == tmp / "typed.json" + ": \"r\": expected an integer, got \"16\"");
  write_file(tmp / "broken.json", R"({"model": )");
  CHECK(parse_error({"--config", tmp / "broken.json"}).find(tmp / "broken.json" + ": invalid JSON") == 0);
  CHECK(parse_error({"--config", tmp / "missing.json"}) == "--config " + tmp / "missing.json" + ": cannot read the file");
}

TEST_CASE("trainer: --ce-chunk sets the loss's logits rows: the same steps to f32 rounding, a smaller plan") {
  // 3 steps with the default chunk and with 3 rows at a time: the loss is a sum over chunks of
  // per-row terms, so only the summation order differs; the plan's workspace (the chunk's
  // logits) shrinks with it.
  auto three_steps = [](TinyRun& t, int64_t rows) {
    t.cfg.max_steps = 3;
    t.cfg.ce_chunk = rows;
    t.cfg.verbose = true;
    std::ostringstream log;
    TrainResult r = train(t.cfg, log);
    return std::make_pair(r, log.str());
  };
  TinyRun whole, chunked;
  const auto [a, log_a] = three_steps(whole, 1024);
  const auto [b, log_b] = three_steps(chunked, 3);
  REQUIRE(a.steps.size() == 3);
  REQUIRE(b.steps.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    INFO("step ", i + 1);
    CHECK(std::fabs(b.steps[i].loss - a.steps[i].loss) <= 1e-5 * std::fabs(a.steps[i].loss));
    CHECK(std::fabs(b.steps[i].grad_norm - a.steps[i].grad_norm) <= 1e-4 * std::fabs(a.steps[i].grad_norm));
  }
  auto workspace = [](const std::string& log) {  // "  workspace 12.3 KiB" of the plan's table
    const size_t at = log.find("  workspace ");
    REQUIRE(at != std::string::npos);
    return log.substr(at, log.find('\n', at) - at);
  };
  CHECK(workspace(log_a) != workspace(log_b));
  MESSAGE("--ce-chunk 1024 vs 3: ", workspace(log_a), " vs ", workspace(log_b), "; final loss ", a.steps.back().loss,
          " vs ", b.steps.back().loss);
  chunked.cfg.ce_chunk = 0;
  CHECK(train_error(chunked.cfg).find("--ce-chunk must be >= 1 rows, got 0") == 0);
}

TEST_CASE("trainer: --offload-activations on trains the same steps bit for bit; --mlp-chunk-rows within rounding") {
  // 3 steps of the tiny run with the two flags as given; the start line must say what was asked.
  auto three_steps = [](TinyRun& t, const std::string& offload, const std::string& chunk, const std::string& said) {
    t.cfg.max_steps = 3;
    t.cfg.offload_activations = offload;
    t.cfg.mlp_chunk_rows = chunk;
    std::ostringstream log;
    TrainResult r = train(t.cfg, log);
    CHECK(log.str().find(said) != std::string::npos);
    return r;
  };
  TinyRun plain, offloaded, chunked;
  const TrainResult a = three_steps(plain, "off", "off", "gradient checkpointing on;");
  const TrainResult b = three_steps(offloaded, "on", "off", "layer inputs offloaded to host memory");
  const TrainResult c = three_steps(chunked, "off", "5", "MLP over chunks of 5 rows");
  REQUIRE(a.steps.size() == 3);
  REQUIRE(b.steps.size() == 3);
  REQUIRE(c.steps.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    INFO("step ", i + 1);
    CHECK(b.steps[i].loss == a.steps[i].loss);  // exact: the same tensors, parked and brought back
    CHECK(b.steps[i].grad_norm == a.steps[i].grad_norm);
    // Chunks draw their own LoRA dropout masks (autograd/var.h checkpoint_rows): close, not equal.
    CHECK(std::fabs(c.steps[i].loss - a.steps[i].loss) <= 2e-2 * std::fabs(a.steps[i].loss));
  }
  // Bad values: one line naming the flag.
  chunked.cfg.mlp_chunk_rows = "0";
  CHECK(train_error(chunked.cfg).find("--mlp-chunk-rows must be auto, off or a number of rows >= 1, got '0'") == 0);
  chunked.cfg.mlp_chunk_rows = "lots";
  CHECK(train_error(chunked.cfg).find("--mlp-chunk-rows must be") == 0);
  offloaded.cfg.no_grad_checkpoint = true;
  CHECK(train_error(offloaded.cfg).find("--offload-activations on offloads the checkpointed layer inputs") == 0);
}

TEST_CASE("trainer: bad runs fail early with a message naming the cause") {
  TinyRun t;
  SUBCASE("an output folder that cannot be written is reported before the model loads") {
    write_file(t.tmp / "file", "x");
    t.cfg.out = t.tmp / "file/out";
    t.cfg.model = t.tmp / "no-such-model";
    CHECK(train_error(t.cfg).find("--out " + t.tmp / "file/out" + ": cannot create the folder") == 0);
  }
  SUBCASE("a missing data file is reported before the model loads") {
    t.cfg.data = t.tmp / "none.jsonl";
    t.cfg.model = t.tmp / "no-such-model";
    CHECK(train_error(t.cfg) == "--data " + t.tmp / "none.jsonl" + ": cannot read the file");
  }
  SUBCASE("an empty dataset") {
    write_file(t.tmp / "empty.jsonl", "\n\n");
    t.cfg.data = t.tmp / "empty.jsonl";
    CHECK(train_error(t.cfg).find(t.tmp / "empty.jsonl") == 0);
  }
  SUBCASE("targets that match nothing list the module names") {
    t.cfg.targets = {"qkv_proj"};
    const std::string e = train_error(t.cfg);
    CHECK(e.find("\"qkv_proj\" matches no module") != std::string::npos);
    CHECK(e.find("down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj") != std::string::npos);
  }
  SUBCASE("a bad line under on-bad-line=error names file and line; skip counts it") {
    write_file(t.tmp / "bad.jsonl", chat_jsonl(4) + "{\"messages\": 3}\n");
    t.cfg.data = t.tmp / "bad.jsonl";
    CHECK(train_error(t.cfg).find(t.tmp / "bad.jsonl:5: ") == 0);
    t.cfg.on_bad_line = "skip";
    t.cfg.max_steps = 1;
    std::ostringstream log;
    train(t.cfg, log);
    CHECK(log.str().find("1 bad lines skipped") != std::string::npos);
  }
}

TEST_CASE("trainer: samples longer than --max-length are truncated and counted; the memory plan is printed") {
  TinyRun t;
  t.cfg.max_length = 64;  // the longer answers exceed it
  t.cfg.max_steps = 2;
  t.cfg.packing = true;
  t.cfg.verbose = true;  // the plan's tables
  std::ostringstream log;
  TrainResult r = train(t.cfg, log);
  CHECK(r.steps.size() == 2);
  const std::string s = log.str();
  INFO(s);
  CHECK(s.find("16 training samples") != std::string::npos);
  // The count the trainer reports = the samples longer than 64 tokens untruncated.
  Tokenizer tok = Tokenizer::from_file(t.cfg.model + "/tokenizer.json");
  EncodeOptions full;
  full.max_length = 1 << 20;
  int64_t longer = 0;
  for (const Sample& x : load_dataset(t.cfg.data, tok, full, BadLinePolicy::Error).samples) longer += x.ids.size() > 64;
  CHECK(longer > 0);
  CHECK(longer < 16);
  CHECK(s.find(str("; ", longer, " truncated to 64 tokens")) != std::string::npos);
  CHECK(s.find(str("device: cpu, ", omp_get_max_threads(), " threads")) != std::string::npos);
  CHECK(s.find("memory plan") != std::string::npos);
  CHECK(s.find("memory: plan vs measured peak") != std::string::npos);
  // Every metrics line has the documented fields.
  std::ifstream metrics(t.cfg.out + "/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) {  // an eval line (training/progress.h)
      CHECK(j["eval_tokens"].get<int64_t>() > 0);
      continue;
    }
    for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "step_time_s", "mem_bytes"})
      CHECK(j.contains(key));
    CHECK(j["tokens"].get<int64_t>() > 0);
  }
}

// ---- GPU: train() with --device cuda (each prints `skipped: no CUDA device` without one) ----

#define GPU_TEST(name) NQ_GPU_TEST("gpu train: trainer " #name, name)

namespace {

void check_close_to(const std::vector<StepMetrics>& got, const std::vector<StepMetrics>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("step ", got[i].step, ": loss ", got[i].loss, " vs ", want[i].loss, ", grad_norm ", got[i].grad_norm, " vs ",
         want[i].grad_norm);
    CHECK(got[i].step == want[i].step);
    CHECK(got[i].tokens == want[i].tokens);  // the same batches
    CHECK(got[i].lr == want[i].lr);
    CHECK(rel_diff(got[i].loss, want[i].loss) <= 2e-2);
    CHECK(rel_diff(got[i].grad_norm, want[i].grad_norm) <= 5e-2);
  }
}

}  // namespace

GPU_TEST(cuda_matches_cpu_and_writes_a_loadable_adapter) {
  TinyRun cpu, gpu;
  cpu.cfg.max_steps = gpu.cfg.max_steps = 3;
  gpu.cfg.device = "cuda";
  const TrainResult a = run(cpu.cfg);
  std::ostringstream log;
  const TrainResult b = train(gpu.cfg, log);
  MESSAGE(log.str());
  CHECK(log.str().find("device: cuda (") != std::string::npos);
  CHECK(log.str().find("memory: peak ") != std::string::npos);  // the one-line plan vs measured
  check_close_to(b.steps, a.steps);
  CHECK(b.steps.back().mem_bytes > 0);  // the CUDA allocator's peak

  // The adapter, written from host copies, loads into a model on the GPU (after
  // to_device: the adapters are created there) and runs.
  SafetensorsFile file = SafetensorsFile::open(gpu.cfg.out + "/adapter_model.safetensors");
  CHECK(file.names().size() == 28);
  Decoder model = Decoder::load(gpu.cfg.model);
  for (Linear* l : model.linears()) l->quantize_nf4();
  to_device(model, Device::CUDA);
  load_peft_adapter(gpu.cfg.out, model);
  double b_norm = 0;
  for (Linear* l : model.linears()) {
    for (auto [suffix, var] : {std::pair<const char*, Var>{".lora_A.weight", l->lora().A}, {".lora_B.weight", l->lora().B}}) {
      INFO(l->name(), suffix);
      CHECK(var.value().device() == Device::CUDA);
      const std::vector<float> got = var.value().to_vector(), want = file.get("base_model.model." + l->name() + suffix).to_vector();
      CHECK(got == want);
      if (std::string(suffix) == ".lora_B.weight")
        for (float x : got) b_norm += double(x) * x;
    }
  }
  CHECK(b_norm > 0);  // B started at zero: the run trained it
  const Tensor ids = Tensor::from_ids({1, 2, 3, 4, 5, 6}, {1, 6});
  DecoderBatch batch = hf_decoder_batch(ids, ids, Device::CUDA);
  CHECK(std::isfinite(model.forward_loss(batch).value().to_vector()[0]));
}

GPU_TEST(paged_and_unpaged_adamw_give_bit_identical_adapters) {
  TinyRun paged, unpaged;
  for (TinyRun* t : {&paged, &unpaged}) {
    t->cfg.max_steps = 3;
    t->cfg.device = "cuda";
  }
  paged.cfg.optim = "paged_adamw";
  paged.cfg.optim_pages = 2;
  paged.cfg.optim_page_mb = 1;
  unpaged.cfg.optim = "adamw";
  const TrainResult a = run(paged.cfg), b = run(unpaged.cfg);
  REQUIRE(a.steps.size() == 3);
  REQUIRE(b.steps.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(a.steps[i].loss == b.steps[i].loss);
    CHECK(a.steps[i].grad_norm == b.steps[i].grad_norm);
  }
  SafetensorsFile fa = SafetensorsFile::open(paged.cfg.out + "/adapter_model.safetensors");
  SafetensorsFile fb = SafetensorsFile::open(unpaged.cfg.out + "/adapter_model.safetensors");
  REQUIRE(fa.names() == fb.names());
  for (const std::string& key : fa.names()) {
    INFO(key);
    CHECK(fa.get(key).to_vector() == fb.get(key).to_vector());
  }
  // The optimizer states too: the checkpoint form is the same whichever memory held them.
  SafetensorsFile oa = SafetensorsFile::open(paged.cfg.out + "/checkpoint-3/optimizer.safetensors");
  SafetensorsFile ob = SafetensorsFile::open(unpaged.cfg.out + "/checkpoint-3/optimizer.safetensors");
  REQUIRE(oa.names() == ob.names());
  for (const std::string& key : oa.names()) {
    INFO(key);
    const Tensor x = oa.get(key), y = ob.get(key);
    REQUIRE(x.dtype() == y.dtype());
    if (x.dtype() == DType::F32) CHECK(x.to_vector() == y.to_vector());
    else CHECK(x.data<int64_t>()[0] == y.data<int64_t>()[0]);
  }
}

GPU_TEST(checkpoints_resume_across_devices) {
  TinyRun reference;  // 6 steps on the CPU, uninterrupted
  const TrainResult straight = run(reference.cfg);
  REQUIRE(straight.steps.size() == 6);
  const std::vector<StepMetrics> last_three(straight.steps.begin() + 3, straight.steps.end());
  for (const char* from : {"cuda", "cpu"}) {
    const std::string to = std::string(from) == "cuda" ? "cpu" : "cuda";
    CAPTURE(from);
    TinyRun t;
    t.cfg.device = from;
    const TrainResult first = run(t.cfg, {[](const StepMetrics& m) { if (m.step == 3) request_stop(); }});
    REQUIRE(first.interrupted);
    REQUIRE(first.last_checkpoint == t.cfg.out + "/checkpoint-3");
    TrainConfig again = t.cfg;
    again.device = to;
    again.resume = first.last_checkpoint;
    const TrainResult second = run(again);
    REQUIRE(second.steps.size() == 3);
    CHECK(second.steps.front().step == 4);
    // Continuing sensibly: the resumed steps track the CPU run's within the bf16 tolerance.
    check_close_to(second.steps, last_three);
    // The optimizer state came along: every parameter counts 6 steps (AdamW's bias corrections depend on it).
    SafetensorsFile opt = SafetensorsFile::open(t.cfg.out + "/checkpoint-6/optimizer.safetensors");
    int counted = 0;
    for (const std::string& key : opt.names())
      if (key.size() > 5 && key.compare(key.size() - 5, 5, ".step") == 0) {
        CHECK(opt.get(key).data<int64_t>()[0] == 6);
        ++counted;
      }
    CHECK(counted == 28);
  }
}


// ---- fp16 on the GPU: --dtype float16 with dynamic loss scaling (optim/loss_scaler.h) ----

namespace {

// The metrics lines of a run's steps (not its evals).
std::vector<nlohmann::json> step_lines(const std::string& metrics_path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(metrics_path);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) lines.push_back(j);
  }
  return lines;
}

}  // namespace

GPU_TEST(fp16_matches_cpu_and_logs_its_loss_scale) {
  TinyRun cpu, gpu;
  cpu.cfg.max_steps = gpu.cfg.max_steps = 3;
  gpu.cfg.device = "cuda";
  gpu.cfg.dtype = "float16";
  const TrainResult a = run(cpu.cfg);
  std::ostringstream log;
  const TrainResult b = train(gpu.cfg, log);
  // The same bounds as bf16's (f16 rounds 4x finer; the scaled backward keeps small gradients normal).
  check_close_to(b.steps, a.steps);
  CHECK(log.str().find("precision: f16 activations and tensor-core matmuls with f32 accumulation, dynamic loss "
                       "scaling from 65536") != std::string::npos);
  CHECK(log.str().find("loss scale   65536 at the last step; 0 steps skipped for an f16 overflow") != std::string::npos);
  for (const StepMetrics& m : b.steps) {
    CHECK(m.loss_scale == 65536.0);  // torch.amp.GradScaler's initial scale, no overflow in 3 steps
    CHECK_FALSE(m.skipped);
  }
  const std::vector<nlohmann::json> lines = step_lines(gpu.cfg.out + "/metrics.jsonl");
  REQUIRE(lines.size() == 3);
  for (const nlohmann::json& j : lines) CHECK(j.at("loss_scale").get<double>() == 65536.0);
  const nlohmann::json state = read_json(gpu.cfg.out + "/checkpoint-3/trainer_state.json");
  CHECK(state.at("compute_dtype") == "f16");
  CHECK(state.at("loss_scale").get<double>() == 65536.0);
  CHECK(state.at("loss_scale_growth_tracker") == 3);
  CHECK(state.at("skipped_steps") == 0);
  // A run without a scaler (here the CPU's f32) logs no scale.
  CHECK(step_lines(cpu.cfg.out + "/metrics.jsonl").front().count("loss_scale") == 0);
}

GPU_TEST(fp16_resume_continues_the_loss_scaler_bit_identically) {
  TinyRun straight, split;
  for (TinyRun* t : {&straight, &split}) {
    t->cfg.device = "cuda";
    t->cfg.dtype = "float16";
    t->cfg.max_steps = 4;
  }
  const TrainResult whole = run(straight.cfg);
  const TrainResult first = run(split.cfg, {[](const StepMetrics& m) { if (m.step == 2) request_stop(); }});
  REQUIRE(first.interrupted);
  TrainConfig again = split.cfg;
  again.resume = first.last_checkpoint;
  const TrainResult second = run(again);
  REQUIRE(second.steps.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(second.steps[i].loss == whole.steps[i + 2].loss);  // the emulated GPU sums in a fixed order
    CHECK(second.steps[i].loss_scale == whole.steps[i + 2].loss_scale);
  }
  const nlohmann::json s1 = read_json(straight.cfg.out + "/checkpoint-4/trainer_state.json");
  const nlohmann::json s2 = read_json(split.cfg.out + "/checkpoint-4/trainer_state.json");
  CHECK(s2.at("loss_scale_growth_tracker") == 4);  // counted on from the checkpoint's 2, not from 0
  CHECK(s1.at("loss_scale") == s2.at("loss_scale"));
  SafetensorsFile fa = SafetensorsFile::open(straight.cfg.out + "/adapter_model.safetensors");
  SafetensorsFile fb = SafetensorsFile::open(split.cfg.out + "/adapter_model.safetensors");
  for (const std::string& key : fa.names()) {
    INFO(key);
    CHECK(fa.get(key).to_vector() == fb.get(key).to_vector());
  }
}

GPU_TEST(fp16_overflow_skips_the_update_and_halves_the_scale) {
  // A scale so large that the f16 backward overflows: train_step must leave every LoRA
  // weight as it was, clear the gradients, report the step skipped and halve the scale.
  Decoder model = Decoder::load(kQlora + "model");
  for (Linear* l : model.linears()) l->quantize_nf4();
  AdapterConfig acfg;
  acfg.lora.r = 4;
  acfg.lora.dropout = 0.0f;
  std::vector<Var> params = attach_adapters(model, acfg);
  for (Var& p : params)  // B non-zero so that every gradient path carries values
    if (p.name().find("lora_B") != std::string::npos) {
      Tensor b = p.value();  // shares the parameter's storage
      b.fill(0.01f);
    }
  to_device(model, Device::CUDA, DType::F16);
  CHECK(model_compute_dtype(model) == DType::F16);
  AdamWOptions on_gpu;
  on_gpu.placement = AdamWPlacement::Device;
  AdamW opt(params, AdamWConfig{}, on_gpu);
  const Tensor ids = Tensor::from_ids({1, 2, 3, 4, 5, 6, 7, 8}, {1, 8});
  const DecoderBatch batch = hf_decoder_batch(ids, ids, Device::CUDA);
  std::vector<std::vector<float>> before;
  for (const Var& p : params) before.push_back(p.value().to_vector());

  LossScalerConfig huge;
  huge.init_scale = 0x1p100f;  // a power of two, finite in f32; any f16 gradient it multiplies overflows
  LossScaler scaler(huge);
  const StepResult skipped = train_step(model, opt, {batch}, 1e-3, 1.0, 1, &scaler);
  CHECK(skipped.skipped);
  CHECK(skipped.loss_scale == 0x1p100f);
  CHECK_FALSE(std::isfinite(skipped.grad_norm));
  CHECK(scaler.scale() == 0x1p99f);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].name());
    CHECK(params[i].value().to_vector() == before[i]);  // no update
    CHECK_FALSE(params[i].grad().defined());             // gradients cleared
  }
  // With the default scale the same step updates the weights.
  LossScaler fine{LossScalerConfig{}};
  const StepResult taken = train_step(model, opt, {batch}, 1e-3, 1.0, 2, &fine);
  CHECK_FALSE(taken.skipped);
  CHECK(std::isfinite(taken.grad_norm));
  CHECK(fine.scale() == 65536.0f);
  CHECK(params[1].value().to_vector() != before[1]);
}

TEST_CASE("trainer config: --dtype has one meaning per spelling (f16 = float16) in checkpoints and resume") {
  TrainConfig a, b;
  a.dtype = "f16";
  b.dtype = "float16";
  CHECK(a.trajectory_difference(b).empty());
  CHECK(nlohmann::json::parse(a.to_json())["dtype"] == "float16");
  b.dtype = "bfloat16";
  CHECK(a.trajectory_difference(b) == "dtype");
  b.dtype = "auto";
  CHECK(a.trajectory_difference(b) == "dtype");  // auto is bf16 or f16 by the GPU: not the same run
}
