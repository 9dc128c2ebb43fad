// Training like the seed's stack: ./train --adapter (start from a PEFT adapter),
// --shuffle / --no-shuffle, and --config files written with the seed's
// SFTConfig / LoraConfig / BitsAndBytesConfig names.
//
// Trajectory: tests/fixtures/trajectory (tools/ref/make_trajectory_fixtures.py)
// holds 8 optimizer steps of transformers + bitsandbytes (NF4, double quant, fp32
// compute) + PEFT continuing from a given adapter (r 8, alpha 12, rsLoRA, five
// projections, B not zero) + torch AdamW (weight decay 0.01) + a linear schedule
// with warmup + gradient accumulation 3, on data.jsonl in file order. The test
// runs the same through the CLI's path (parse_train_args with the fixture's
// ./train arguments, then train()) and compares every step's targets, loss, grad
// norm and lr, and the final adapter.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/safetensors.h"
#include "tests/fixture_compare.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "model/load_model.h"
#include "training/batch.h"
#include "training/resume.h"
#include "training/encode.h"
#include "training/train_config.h"
#include "training/trainer.h"

using namespace nq;
using namespace nq::test;
namespace fs = std::filesystem;

namespace {

const std::string kTrajectory = "tests/fixtures/trajectory/";

// The fixture's ./train arguments with its relative paths under the fixture
// folder, then `extra`.
std::vector<std::string> trajectory_args(const std::vector<std::string>& extra) {
  const nlohmann::json trace = read_json(kTrajectory + "trace.json");
  std::vector<std::string> args;
  bool path_next = false;
  for (const nlohmann::json& a : trace["train_args"]) {
    const std::string s = a.get<std::string>();
    args.push_back(path_next ? kTrajectory + s : s);
    path_next = s == "--model" || s == "--data" || s == "--adapter";
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

bool parse(std::vector<std::string> args, TrainConfig* cfg) {
  std::vector<char*> argv{const_cast<char*>("train")};
  for (std::string& a : args) argv.push_back(a.data());
  return parse_train_args(int(argv.size()), argv.data(), cfg);
}

std::string parse_error(std::vector<std::string> args) {
  return flag_error<TrainConfig>("train", std::move(args), parse_train_args);
}

}  // namespace

TEST_CASE("seed config: ./train --adapter INIT --no-shuffle follows transformers + bnb + PEFT from that adapter") {
  const nlohmann::json trace = read_json(kTrajectory + "trace.json");
  TempDir tmp;
  TrainConfig cfg;
  REQUIRE(parse(trajectory_args({"--out", tmp / "out", "--no-progress"}), &cfg));
  // The LoRA settings come from the adapter's file, not from the flags' defaults.
  const nlohmann::json& hp = trace["hyperparameters"];
  CHECK(cfg.r == hp["r"].get<int64_t>());
  CHECK(cfg.alpha == hp["lora_alpha"].get<double>());
  CHECK(cfg.rslora == hp["use_rslora"].get<bool>());
  CHECK(cfg.dropout == 0.0);
  CHECK(!cfg.shuffle);

  // The counted targets of each step, from the data path train() takes (encode,
  // then the loader in file order), against the reference's.
  {
    std::ostringstream note;
    const LoadedModel loaded = load_model(cfg.model);
    const Dataset data = load_dataset(cfg.data, *loaded.tokenizer, encode_options(cfg, loaded, note), BadLinePolicy::Error);
    std::vector<int64_t> all(data.samples.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    DataLoader loader(data.samples, all, loader_options(cfg, *loaded.tokenizer));
    for (const nlohmann::json& want : trace["steps"]) {
      int64_t targets = 0;
      for (int64_t k = 0; k < cfg.grad_accum; ++k) targets += loader.next().n_targets;
      CHECK(targets == want["tokens"].get<int64_t>());
    }
  }
  std::ostringstream log;
  const TrainResult result = train(cfg, log);
  INFO(log.str());
  REQUIRE(result.steps.size() == trace["steps"].size());
  double worst_loss = 0, worst_norm = 0, worst_adapter = 0;
  for (size_t i = 0; i < result.steps.size(); ++i) {
    const StepMetrics& got = result.steps[i];
    const nlohmann::json& want = trace["steps"][i];
    INFO("step ", want["step"].get<int64_t>(), ": loss ", got.loss, " vs ", want["loss"].get<double>(),
         ", grad_norm ", got.grad_norm, " vs ", want["grad_norm"].get<double>());
    CHECK(got.step == want["step"].get<int64_t>());
    CHECK(rel_diff(got.lr + 1e-30, want["lr"].get<double>() + 1e-30) < 1e-12);
    CHECK(rel_diff(got.loss, want["loss"]) < 1e-4);
    CHECK(rel_diff(got.grad_norm, want["grad_norm"]) < 1e-3);
    worst_loss = std::max(worst_loss, rel_diff(got.loss, want["loss"]));
    worst_norm = std::max(worst_norm, rel_diff(got.grad_norm, want["grad_norm"]));
  }
  SafetensorsFile final_adapter = SafetensorsFile::open(kTrajectory + "adapter_final/adapter_model.safetensors");
  SafetensorsFile ours = SafetensorsFile::open(tmp / "out/adapter_model.safetensors");
  CHECK(ours.names().size() == final_adapter.names().size());
  for (const std::string& key : final_adapter.names()) {
    INFO(key);
    REQUIRE(ours.has(key));
    CHECK(rel_l2(ours.get(key), final_adapter.get(key)) < 1e-3);
    worst_adapter = std::max(worst_adapter, rel_l2(ours.get(key), final_adapter.get(key)));
  }
  MESSAGE("worst relative differences: loss ", worst_loss, ", grad norm ", worst_norm, ", adapter tensor ", worst_adapter);
  const nlohmann::json saved = read_json(tmp / "out/adapter_config.json");
  CHECK(saved["r"] == hp["r"]);
  CHECK(saved["lora_alpha"].get<double>() == hp["lora_alpha"].get<double>());
  CHECK(saved["use_rslora"] == true);
}

TEST_CASE("seed config: --adapter with a disagreeing flag is an error naming both values") {
  const std::string file = kTrajectory + "adapter_init/adapter_config.json";
  CHECK(parse_error(trajectory_args({"--r", "16"})) ==
        "--r 16 disagrees with " + file + "'s r 8 (--adapter takes the LoRA settings from the file; leave --r out)");
  CHECK(parse_error(trajectory_args({"--alpha", "32"})).rfind("--alpha 32 disagrees with " + file + "'s lora_alpha 12", 0) == 0);
  CHECK(parse_error(trajectory_args({"--dropout", "0.05"})).rfind("--dropout 0.05 disagrees with " + file + "'s lora_dropout 0", 0) == 0);
  CHECK(parse_error(trajectory_args({"--targets", "all-linear"}))
            .rfind("--targets all-linear disagrees with " + file + "'s target_modules down_proj,gate_proj,o_proj,q_proj,v_proj", 0) == 0);
  // The same values as the file's are fine, given or not.
  TrainConfig cfg;
  CHECK(parse(trajectory_args({"--r", "8", "--alpha", "12", "--rslora", "--targets", "q_proj,v_proj,o_proj,gate_proj,down_proj"}), &cfg));
  // A --config file's keys count as given too.
  TempDir tmp;
  write_file(tmp / "c.json", R"({"r": 4})");
  CHECK(parse_error(trajectory_args({"--config", tmp / "c.json"})).rfind("--r 4 disagrees with", 0) == 0);
  CHECK(parse_error({"--model", "m", "--data", "d", "--adapter", tmp / "none"}) ==
        "--adapter " + tmp / "none" + ": no readable adapter_config.json (not a PEFT adapter folder)");
}

TEST_CASE("seed config: --adapter on the wrong base is a one-line error naming the tensor") {
  TinyRun run;  // D 32: the fixture adapter's A [8, 64] does not fit
  run.cfg.adapter = kTrajectory + "adapter_init";
  run.cfg.max_steps = 1;
  std::ostringstream log;
  const std::string err = thrown_message([&] { train(run.cfg, log); });
  CHECK(err.find("adapter_model.safetensors: tensor base_model.model.model.layers.0.") != std::string::npos);
  CHECK(err.find("has shape") != std::string::npos);
  CHECK(err.find('\n') == std::string::npos);

  // A module the model does not have (layer 5 of a 2-layer model).
  SafetensorsFile init = SafetensorsFile::open(kTrajectory + "adapter_init/adapter_model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& key : init.names()) {
    std::string k = key;
    const size_t at = k.find("layers.1.");
    if (at != std::string::npos) k.replace(at, 9, "layers.5.");
    tensors.emplace_back(k, init.get(key).clone());
  }
  fs::create_directory(run.tmp / "moved");
  fs::copy_file(kTrajectory + "adapter_init/adapter_config.json", run.tmp / "moved/adapter_config.json");
  save_safetensors(run.tmp / "moved/adapter_model.safetensors", tensors);
  TrainConfig cfg;
  REQUIRE(parse(trajectory_args({"--out", run.tmp / "out2", "--no-progress", "--max-steps", "1"}), &cfg));
  cfg.adapter = run.tmp / "moved";
  const std::string missing = thrown_message([&] { train(cfg, log); });
  CHECK(missing.find("is for module model.layers.5.") != std::string::npos);
  CHECK(missing.find("which this model does not have") != std::string::npos);

  // The other way round: a module the adapter's target_modules select has no tensors.
  tensors.clear();
  for (const std::string& key : init.names())
    if (key.find("layers.1.self_attn.q_proj") == std::string::npos) tensors.emplace_back(key, init.get(key).clone());
  save_safetensors(run.tmp / "moved/adapter_model.safetensors", tensors);
  CHECK(thrown_message([&] { train(cfg, log); }) ==
        "--adapter " + run.tmp / "moved" + ": adapter_model.safetensors has no tensor "
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight, which its target_modules select (an "
        "adapter for another model?)");
}

TEST_CASE("seed config: --shuffle / --no-shuffle, the last one wins; JSON key shuffle") {
  TrainConfig cfg;
  REQUIRE(parse({"--model", "m", "--data", "d"}, &cfg));
  CHECK(cfg.shuffle);
  REQUIRE(parse({"--model", "m", "--data", "d", "--no-shuffle"}, &cfg));
  CHECK(!cfg.shuffle);
  REQUIRE(parse({"--model", "m", "--data", "d", "--no-shuffle", "--shuffle"}, &cfg));
  CHECK(cfg.shuffle);
  TempDir tmp;
  write_file(tmp / "c.json", R"({"shuffle": false})");
  REQUIRE(parse({"--model", "m", "--data", "d", "--config", tmp / "c.json"}, &cfg));
  CHECK(!cfg.shuffle);
  CHECK(nlohmann::json::parse(cfg.to_json())["shuffle"] == false);
  CHECK(nlohmann::json::parse(cfg.to_json()).count("no_shuffle") == 0);
  CHECK(train_help().find("--no-shuffle") != std::string::npos);
}

TEST_CASE("seed config: the data order of docs/data.md (micro-batch k of step s)") {
  // 10 samples, sample i made of token 100 + i (lengths 2..4). B 2: micro-batch k
  // of step s (accumulation K) is batch number m = (s-1)*K + k of the stream, i.e.
  // entries [2m', 2m'+2) of epoch e's order, which is the file order with
  // --no-shuffle and shuffled_indices(n, seed, e) otherwise (here 5 batches per epoch).
  std::vector<Sample> samples(10);
  for (int i = 0; i < 10; ++i) {
    samples[size_t(i)].ids.assign(size_t(2 + i % 3), 100 + i);
    samples[size_t(i)].trained.assign(samples[size_t(i)].ids.size(), 1);
    samples[size_t(i)].line = i + 1;
  }
  std::vector<int64_t> subset(10);
  for (int i = 0; i < 10; ++i) subset[size_t(i)] = i;
  for (bool shuffle : {false, true}) {
    INFO("shuffle ", shuffle);
    LoaderOptions o;
    o.batch_size = 2;
    o.max_length = 16;
    o.shuffle = shuffle;
    o.seed = 5;
    DataLoader loader(samples, subset, o);
    std::vector<int64_t> expected, got;  // the sample of each row, in order
    for (uint64_t e = 0; e < 2; ++e) {
      const std::vector<int64_t> perm = shuffled_indices(10, 5, e);
      for (int64_t i = 0; i < 10; ++i) expected.push_back(shuffle ? perm[size_t(i)] : i);
    }
    for (int b = 0; b < 10; ++b) {
      const Batch batch = loader.next();
      for (int64_t r = 0; r < batch.B; ++r) got.push_back(batch.input_ids.data<int32_t>()[r * batch.T] - 100);
    }
    CHECK(got == expected);
  }
}

TEST_CASE("seed config: docs/seed_config.json (the seed's three configs) runs with --config") {
  std::vector<std::string> warnings;
  std::ifstream f("docs/seed_config.json");
  std::stringstream text;
  text << f.rdbuf();
  const nlohmann::json got = nlohmann::json::parse(translate_seed_config(text.str(), "seed.json", &warnings));
  CHECK(got == nlohmann::json::parse(R"({"out": "runs/seed", "batch_size": 2, "grad_accum": 4, "lr": 0.0002,
      "schedule": "cosine", "log_every": 10, "epochs": 1, "save_every": 100, "optim": "paged_adamw",
      "max_length": 512, "packing": false, "r": 16, "alpha": 32, "dropout": 0.05, "targets": "all-linear",
      "dtype": "bfloat16"})"));  // bf16 true = --dtype bfloat16; fp16 false asks for nothing
  // bnb_4bit_compute_dtype float16: the precision follows --dtype
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("the precision follows --dtype") != std::string::npos);
  // The seed's two mixed-precision switches set one option: both true is a conflict.
  CHECK_THROWS_WITH(translate_seed_config(R"({"fp16": true, "bf16": true})", "s.json", &warnings),
                    doctest::Contains("both set dtype"));
  CHECK(nlohmann::json::parse(translate_seed_config(R"({"fp16": true, "bf16": false})", "s.json", &warnings)) ==
        nlohmann::json::parse(R"({"dtype": "float16"})"));
  CHECK_THROWS_WITH(translate_seed_config(R"({"fp16": "yes"})", "s.json", &warnings),
                    doctest::Contains("expected true or false"));

  TrainConfig cfg;
  REQUIRE(parse({"--config", "docs/seed_config.json", "--model", "m", "--data", "d", "--lr", "1e-4"}, &cfg));
  CHECK(cfg.out == "runs/seed");
  CHECK(cfg.batch_size == 2);
  CHECK(cfg.grad_accum == 4);
  CHECK(cfg.lr == 1e-4);  // the flag wins over the file
  CHECK(cfg.schedule == "cosine");
  CHECK(cfg.max_length == 512);
  CHECK(cfg.dtype == "bfloat16");
  CHECK(cfg.optim == "paged_adamw");
  CHECK(cfg.r == 16);
  CHECK(cfg.alpha == 32);
  CHECK(cfg.dropout == 0.05);
  CHECK(cfg.targets == std::vector<std::string>{"all-linear"});
  CHECK(cfg.given.count("r"));
}

TEST_CASE("seed config: seed keys map, warn, or refuse") {
  auto translate = [](const std::string& text, std::vector<std::string>* warnings = nullptr) {
    std::vector<std::string> w;
    return nlohmann::json::parse(translate_seed_config(text, "c.json", warnings ? warnings : &w));
  };
  auto error = [&](const std::string& text) { return thrown_message([&] { translate(text); }); };
  CHECK(translate(R"({"max_steps": -1, "num_train_epochs": 3.0, "gradient_checkpointing": false, "use_cpu": true,
                      "optim": "adamw_torch", "use_rslora": true, "target_modules": ["q_proj", "v_proj"],
                      "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "bias": "none"})") ==
        nlohmann::json::parse(R"({"max_steps": 0, "epochs": 3, "no_grad_checkpoint": true, "device": "cpu",
                                  "optim": "adamw", "rslora": true, "targets": ["q_proj", "v_proj"]})"));
  std::vector<std::string> warnings;
  CHECK(translate(R"({"run_name": "x", "ddp_find_unused_parameters": false, "lr": 0.001,
                      "dataloader_prefetch_factor": 2})", &warnings) == nlohmann::json::parse(R"({"lr": 0.001})"));
  REQUIRE(warnings.size() == 3);
  CHECK(warnings[0].rfind("c.json: \"dataloader_prefetch_factor\" has no meaning in ./train", 0) == 0);
  CHECK(warnings[1].rfind("c.json: \"ddp_find_unused_parameters\" has no meaning in ./train (one device)", 0) == 0);
  CHECK(warnings[2].rfind("c.json: \"run_name\" has no meaning in ./train", 0) == 0);
  // HF Trainer names that are ./train options too
  CHECK(translate(R"({"report_to": ["wandb", "tensorboard"], "save_total_limit": 2, "overwrite_output_dir": true})") ==
        nlohmann::json::parse(R"({"report_to": "tensorboard", "save_total_limit": 2, "overwrite": true})"));
  CHECK(translate(R"({"report_to": "wandb", "save_total_limit": null})") ==
        nlohmann::json::parse(R"({"report_to": "none", "save_total_limit": 0})"));
  // The loss-mask keys (docs/data.md): TRL's assistant_only_loss=False is --loss-on trl.
  warnings.clear();
  CHECK(translate(R"({"assistant_only_loss": false, "completion_only_loss": false})", &warnings) ==
        nlohmann::json::parse(R"({"loss_on": "trl", "train_on_prompt": true})"));
  CHECK(warnings.empty());
  CHECK(translate(R"({"assistant_only_loss": true, "completion_only_loss": null})", &warnings) ==
        nlohmann::json::parse(R"({"loss_on": "answers", "train_on_prompt": false})"));
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("differs from TRL's") != std::string::npos);
  // Values that change the maths and are not implemented.
  CHECK(error(R"({"bias": "all"})") ==
        "c.json: \"bias\": all is not supported: only the LoRA A and B are trained (bias \"none\")");
  CHECK(error(R"({"use_dora": true})") == "c.json: \"use_dora\": true is not supported: plain LoRA only");
  CHECK(error(R"({"bnb_4bit_quant_type": "fp4"})") == "c.json: \"bnb_4bit_quant_type\": fp4 is not supported: NF4 only");
  CHECK(error(R"({"bnb_4bit_use_double_quant": false})").find("is not supported: NF4 with double quantization") !=
        std::string::npos);
  CHECK(error(R"({"optim": "paged_adamw_8bit"})").rfind("c.json: \"optim\": optimizer paged_adamw_8bit is not supported", 0) == 0);
  CHECK(error(R"({"lr_scheduler_type": "polynomial"})").rfind("c.json: \"lr_scheduler_type\": schedule polynomial is not supported", 0) == 0);
  CHECK(error(R"({"num_train_epochs": 1.5})").find("whole epochs") != std::string::npos);
  CHECK(error(R"({"adam_beta2": 0.95})") == "c.json: \"adam_beta2\": 0.95 is not supported: ./train's AdamW uses adam_beta2 = 0.999");
  CHECK(error(R"({"init_lora_weights": "gaussian"})").find("PEFT's default init only") != std::string::npos);
  CHECK(error(R"({"modules_to_save": ["lm_head"]})").find("LoRA on the targets of every layer only") != std::string::npos);
  CHECK(error(R"({"r": 8, "LoraConfig": {"r": 16}})") == "c.json: key \"r\" is given twice");
  CHECK(error(R"({"max_length": 64, "max_seq_length": 128})").find("both set max_length") != std::string::npos);
  // A key that is neither ./train's nor the seed's: the table's error.
  TempDir tmp;
  write_file(tmp / "c.json", R"({"per_device_batch": 2})");
  CHECK(parse_error({"--config", tmp / "c.json", "--model", "m", "--data", "d"}) ==
        tmp / "c.json" + ": unknown key \"per_device_batch\" (keys are the flags of --help with _ for -)");
}

TEST_CASE("seed config: ./train's command line (parse_train_command_line) takes --adapter and the seed's names") {
  auto command_line = [](std::vector<std::string> args, TrainConfig* cfg) {
    std::vector<char*> argv{const_cast<char*>("train")};
    for (std::string& a : args) argv.push_back(a.data());
    std::vector<std::string> notes;
    return parse_train_command_line(int(argv.size()), argv.data(), cfg, &notes);
  };
  TrainConfig cfg;
  REQUIRE(command_line(trajectory_args({}), &cfg));
  CHECK(cfg.r == 8);
  CHECK(cfg.rslora);
  CHECK(!cfg.shuffle);
  CHECK(thrown_message([&] { command_line(trajectory_args({"--r", "16"}), &cfg); })
            .rfind("--r 16 disagrees with " + kTrajectory + "adapter_init/adapter_config.json's r 8", 0) == 0);
  REQUIRE(command_line({"--config", "docs/seed_config.json", "--model", "m", "--data", "d"}, &cfg));
  CHECK(cfg.grad_accum == 4);
  CHECK(cfg.optim == "paged_adamw");
}
