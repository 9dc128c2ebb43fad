// Qwen3-8B-scale runs without a download:
//   - ./quantize --random (write_random_bnb_checkpoint): a random-init 4-bit checkpoint
//     that transformers loads (tools/ref/make_random_checkpoint_fixtures.py wrote what
//     bitsandbytes dequantizes and what transformers computes from it:
//     tests/fixtures/random_checkpoint), equal to quantize_nf4 of random_weights()
//     rounded to the config's dtype, written with about one tensor in memory;
//   - ./train from a 4-bit checkpoint as stored trains exactly like from its dense original;
//   - the config-only memory plan equals the plan of the built model.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/adapters.h"
#include "model/bnb_checkpoint.h"
#include "model/device.h"
#include "model/load_model.h"
#include "training/memory_plan.h"
#include "runtime/half.h"
#include "formats/safetensors.h"
#include "tests/gpu_test.h"
#include "tests/temp_dir.h"
#include "training/trainer.h"

using namespace nq;
namespace fs = std::filesystem;

namespace {

const std::string kFixture = "tests/fixtures/random_checkpoint/";
const uint64_t kFixtureSeed = 7;  // make_random_checkpoint_fixtures.py's --seed

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

bool same_nf4(const Nf4Tensor& x, const Nf4Tensor& y) {
  return x.out == y.out && x.in == y.in && x.blocksize == y.blocksize && x.double_quant == y.double_quant &&
         x.dtype == y.dtype && same_bytes(x.packed, y.packed) && same_bytes(x.absmax, y.absmax) &&
         same_bytes(x.nested_absmax, y.nested_absmax) && same_bytes(x.nested_code, y.nested_code) &&
         x.offset == y.offset;
}

// f32 values rounded to bf16 and back (what a bf16 model holds).
Tensor bf16_rounded(const Tensor& t) { return t.to_dtype(DType::BF16).to_dtype(DType::F32); }

std::string file_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Qwen3 shapes, tiny; bf16 like the presets.
ModelConfig tiny_config(int64_t vocab, int64_t layers) {
  ModelConfig c = ModelConfig::preset("qwen3-0.6b");
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = vocab;
  c.tie_word_embeddings = false;
  c.bos_token_id = -1;
  c.eos_token_ids = {};
  return c;
}

}  // namespace

// ---------------------------------------------------------------- the checkpoint

TEST_CASE("random checkpoint: transformers' config in, bitsandbytes dequantizes our NF4 bit for bit, same loss") {
  TempDir tmp;
  const ModelConfig config = ModelConfig::from_file(kFixture + "config.json");
  const RandomCheckpointReport r = write_random_bnb_checkpoint(tmp / "m", config, kFixtureSeed);
  CHECK(r.shards == config.num_layers + 2);
  int64_t projections = 0;
  for (const ParamSpec& s : parameter_specs(config)) projections += is_projection_weight(s.name) ? s.shape.numel() : 0;
  CHECK(r.quantized_params == projections);
  CHECK(r.quantized_params + r.dense_params == config.num_parameters());

  // our config.json reads back as the same model, 4-bit NF4 with double quant
  const ModelConfig back = ModelConfig::from_file(tmp / "m/config.json");
  CHECK(back.summary() == config.summary());
  CHECK(back.torch_dtype == "bfloat16");
  CHECK(back.initializer_range == config.initializer_range);
  const std::optional<Bnb4bitConfig> quant = read_bnb_4bit_config(tmp / "m/config.json");
  REQUIRE(quant.has_value());
  CHECK(quant->double_quant);

  Decoder model = load_hf_decoder(tmp / "m");
  for (Linear* l : model.linears()) CHECK(l->is_nf4());
  SafetensorsFile bnb = SafetensorsFile::open(kFixture + "bnb.safetensors");
  int compared = 0;
  for (Linear* l : model.linears()) {
    const std::string name = l->name() + ".weight";
    if (!bnb.has(name)) continue;
    CAPTURE(name);
    CHECK(same_bytes(dequantize_nf4(*l->nf4()), bnb.get(name)));
    ++compared;
  }
  CHECK(compared == 2);

  const Tensor ids = bnb.get("input_ids").clone();
  DecoderBatch batch = hf_decoder_batch(ids, ids);  // labels = ids, as transformers was given
  const double ours = model.forward_loss(batch).value().to_vector()[0];
  const double theirs = bnb.get("loss").to_vector()[0];
  MESSAGE("loss: ours ", ours, ", transformers ", theirs);
  CHECK(std::isfinite(ours));
  CHECK(std::fabs(ours - theirs) <= 1e-5 * std::fabs(theirs));
}

TEST_CASE("random checkpoint: quantize_nf4 of random_weights() rounded to bf16; deterministic per seed") {
  TempDir tmp;
  const ModelConfig config = tiny_config(256, 2);
  write_random_bnb_checkpoint(tmp / "a", config, 5);
  const HfWeights got = load_hf_weights(tmp / "a", config);
  TensorMap expected = random_weights(config, 5, config.initializer_range);
  REQUIRE(got.nf4.size() == size_t(7 * config.num_layers));
  for (const ParamSpec& spec : parameter_specs(config)) {
    CAPTURE(spec.name);
    const Tensor want = bf16_rounded(expected.at(spec.name));
    if (is_projection_weight(spec.name)) {
      Nf4Tensor q = quantize_nf4(want.data<float>(), want.size(0), want.size(1), 64, true, spec.name);
      q.dtype = "bfloat16";
      CHECK(same_nf4(*got.nf4.at(spec.name), q));
    } else {
      CHECK(same_bytes(got.dense.at(spec.name), want));
    }
  }
  // transformers' init: normal(0, initializer_range), norms 1
  const std::vector<float> e = got.dense.at("model.embed_tokens.weight").to_vector();
  double sum = 0, sq = 0;
  for (float x : e) sum += x, sq += double(x) * x;
  const double mean = sum / double(e.size()), sd = std::sqrt(sq / double(e.size()) - mean * mean);
  CHECK(std::fabs(mean) < 5e-4);
  CHECK(std::fabs(sd - 0.02) < 5e-4);
  for (float x : got.dense.at("model.norm.weight").to_vector()) CHECK(x == 1.0f);

  // same seed, same files; another seed, other weights
  write_random_bnb_checkpoint(tmp / "b", config, 5);
  write_random_bnb_checkpoint(tmp / "c", config, 6);
  for (const std::string name : {"model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors",
                                 "model.safetensors.index.json", "config.json"}) {
    CAPTURE(name);
    CHECK(file_text(tmp / "a/" + name) == file_text(tmp / "b/" + name));
  }
  CHECK(file_text(tmp / "a/model-00001-of-00004.safetensors") != file_text(tmp / "c/model-00001-of-00004.safetensors"));
}

TEST_CASE("random checkpoint: written with about one tensor in host memory") {
  // 8 layers with a wide MLP and tied embeddings: no tensor is more than a quarter of the model.
  ModelConfig config = tiny_config(4096, 8);
  config.intermediate_size = 512;
  config.tie_word_embeddings = true;
  size_t largest = 0, total = 0, layer_nf4 = 0;
  for (const ParamSpec& s : parameter_specs(config)) {
    largest = std::max(largest, size_t(s.shape.numel()) * 4);
    total += size_t(s.shape.numel()) * 4;
    if (s.name.rfind("model.layers.0.", 0) == 0 && is_projection_weight(s.name))
      layer_nf4 += nf4_bytes(s.shape[0], s.shape[1], 64, true) + 1024;  // + the state dict's small tensors
  }
  REQUIRE(total > 4 * largest);
  TempDir tmp;
  Allocator& cpu = allocator_for(Device::CPU);
  const size_t before = cpu.stats().current_total;
  cpu.reset_peak();
  write_random_bnb_checkpoint(tmp / "m", config, 1);
  const size_t peak = cpu.stats().peak_total - before;
  MESSAGE("peak ", format_bytes(peak), " while writing; largest tensor (f32) ", format_bytes(largest),
          ", one layer's NF4 ", format_bytes(layer_nf4), ", the whole model in f32 ", format_bytes(total));
  // the tensor being drawn and its bf16 copy, or a layer's NF4 tensors waiting for their shard
  CHECK(peak <= largest + largest / 2 + layer_nf4);
  CHECK(peak < total / 2);
}

TEST_CASE("random checkpoint: a config dtype we cannot store is a clear error") {
  TempDir tmp;
  ModelConfig config = tiny_config(256, 1);
  config.torch_dtype = "int8";
  CHECK_THROWS_WITH_AS(write_random_bnb_checkpoint(tmp / "m", config, 1),
                       "config torch_dtype: dtype \"int8\" is not supported (float32, bfloat16, float16)", Error);
}

TEST_CASE("config.json round trip: from_json(to_hf_json()) is the same config for every preset") {
  for (const std::string& name : ModelConfig::preset_names()) {
    CAPTURE(name);
    const ModelConfig c = ModelConfig::preset(name);
    const ModelConfig back = ModelConfig::from_json(c.to_hf_json(), name);
    CHECK(back.summary() == c.summary());
    CHECK(back.max_position_embeddings == c.max_position_embeddings);
    CHECK(back.torch_dtype == c.torch_dtype);
    CHECK(back.rms_norm_eps == c.rms_norm_eps);
    CHECK(back.initializer_range == c.initializer_range);
    CHECK(back.bos_token_id == c.bos_token_id);
    CHECK(back.eos_token_ids == c.eos_token_ids);
  }
}

// ---------------------------------------------------------------- the trainer

namespace {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  REQUIRE(f.good());
}

// The small test BPE tokenizer (ChatML tokens, 1003 ids) beside a model.
void add_tokenizer(const std::string& dir) {
  fs::copy_file("tests/fixtures/tokenizer/gpt2/tokenizer.json", dir + "/tokenizer.json");
  write_file(dir + "/tokenizer_config.json", R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})");
}

// The dense original of write_random_bnb_checkpoint(dir, config, seed): the same
// random_weights() stored in the config's dtype (bf16).
void write_dense_random(const std::string& dir, const ModelConfig& config, uint64_t seed) {
  fs::create_directories(dir);
  TensorMap w = random_weights(config, seed, config.initializer_range);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamSpec& spec : parameter_specs(config)) tensors.emplace_back(spec.name, w.at(spec.name).to_dtype(DType::BF16));
  save_safetensors(dir + "/model.safetensors", tensors);
  write_file(dir + "/config.json", config.to_hf_json());
}

}  // namespace

TEST_CASE("trainer: a 4-bit checkpoint as stored trains exactly like its dense original quantized") {
  TempDir tmp;
  const ModelConfig config = tiny_config(1003, 2);
  write_random_bnb_checkpoint(tmp / "bnb", config, 3);
  write_dense_random(tmp / "dense", config, 3);
  add_tokenizer(tmp / "bnb");
  add_tokenizer(tmp / "dense");

  // the NF4 bases: read from the file vs quantized from the dense weights, byte for byte
  LoadedModel a = load_model(tmp / "bnb"), b = load_model(tmp / "dense");
  CHECK(a.nf4.size() == size_t(7 * config.num_layers));
  CHECK(b.nf4.empty());
  Decoder from_4bit = build_decoder(a, {}, true), from_dense = build_decoder(b, {}, true);
  CHECK(a.weights.empty());
  CHECK(a.nf4.empty());  // moved into the decoder
  std::vector<Linear*> la = from_4bit.linears(), lb = from_dense.linears();
  REQUIRE(la.size() == lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    CAPTURE(la[i]->name());
    REQUIRE(la[i]->is_nf4());
    REQUIRE(lb[i]->is_nf4());
    Nf4Tensor q = *lb[i]->nf4();
    q.dtype = "bfloat16";  // quantize_nf4 of f32 tensors records "float32"; the bytes are what matters
    CHECK(same_nf4(*la[i]->nf4(), q));
  }

  std::string data;
  for (int i = 0; i < 12; ++i) data += nlohmann::json{{"text", str("Sample ", i, " says hello to the world ", i * 7)}}.dump() + "\n";
  write_file(tmp / "train.jsonl", data);
  auto run = [&](const std::string& model) {
    TrainConfig cfg;
    cfg.model = tmp / model;
    cfg.data = tmp / "train.jsonl";
    cfg.out = tmp / (model + "_out");
    cfg.r = 4;
    cfg.alpha = 8;
    cfg.lr = 1e-2;
    cfg.max_steps = 2;
    cfg.batch_size = 2;
    cfg.max_length = 32;
    cfg.seed = 11;
    cfg.no_progress = true;
    std::ostringstream log;
    return train(cfg, log).steps;
  };
  const std::vector<StepMetrics> s4 = run("bnb"), sd = run("dense");
  REQUIRE(s4.size() == 2);
  REQUIRE(sd.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    CHECK(std::isfinite(s4[i].loss));
    CHECK(s4[i].loss == sd[i].loss);
    CHECK(s4[i].grad_norm == sd[i].grad_norm);
  }
  CHECK(s4[1].loss != s4[0].loss);  // it trained

  // a 4-bit checkpoint cannot be a dense f32 base
  LoadedModel c = load_model(tmp / "bnb");
  CHECK_THROWS_WITH_AS(build_decoder(c, {}, false),
                       (tmp / "bnb" + ": a 4-bit (bitsandbytes NF4) checkpoint cannot be a dense f32 base; give its "
                                      "dense original or keep the NF4 base").c_str(),
                       Error);
}

// ---------------------------------------------------------------- the config-only plan

namespace {

// The plan of `dir`'s model built as ./train builds it, and the plan from its config alone.
void check_plans_agree(const std::string& dir, const QloraShape& q, const TrainShape& shape, Device device) {
  LoadedModel m = load_model(dir);
  DecoderOptions opt;
  opt.checkpointing = q.checkpointing;
  opt.ce_chunk_rows = shape.ce_chunk_rows;
  Decoder model = build_decoder(m, opt, q.nf4_base);
  AdapterConfig acfg;
  acfg.lora.r = q.r;
  acfg.lora.alpha = 16.0f;
  acfg.lora.dropout = 0.0f;
  acfg.target_modules = q.targets;
  attach_adapters(model, acfg);
  if (device == Device::CUDA) to_device(model, device);
  const MemoryPlan built = plan_memory(model, shape), from_config = plan_memory(model.config(), q, shape, device);
  CHECK(built.bytes == from_config.bytes);
  CHECK(built.saved_layer_inputs == from_config.saved_layer_inputs);
  CHECK(built.recomputed_layer == from_config.recomputed_layer);
  CHECK(built.layer_backward == from_config.layer_backward);
  CHECK(built.top == from_config.top);
  CHECK(built.lora_grads == from_config.lora_grads);
}

const char* const kPlanModels[] = {"tests/fixtures/qlora/model", "tests/fixtures/model/qwen3_tied",
                                   "tests/fixtures/model/qwen3_untied_bias", "tests/fixtures/model/llama"};

}  // namespace

TEST_CASE("memory plan from the config alone == the plan of the built model (fixture models, cpu)") {
  for (const char* dir : kPlanModels) {
    for (bool nf4 : {true, false}) {
      for (bool checkpointing : {true, false}) {
        for (const std::vector<std::string>& targets :
             {std::vector<std::string>{"all-linear"}, std::vector<std::string>{"q_proj", "v_proj", "down_proj"}}) {
          CAPTURE(dir);
          CAPTURE(nf4);
          CAPTURE(checkpointing);
          CAPTURE(targets.size());
          QloraShape q;
          q.r = nf4 ? 8 : 4;
          q.targets = targets;
          q.nf4_base = nf4;
          q.checkpointing = checkpointing;
          TrainShape shape;
          shape.batch = 3;
          shape.seq = 40;
          shape.ce_chunk_rows = 64;
          check_plans_agree(dir, q, shape, Device::CPU);
        }
      }
    }
  }
}

#define GPU_TEST(name) NQ_GPU_TEST("gpu train " #name, name)  // runs in tools/gpu_check.sh train (T1)

GPU_TEST(config_only_plan_equals_the_plan_of_the_model_on_the_gpu) {
  for (const char* dir : kPlanModels) {
    for (bool nf4 : {true, false}) {
      CAPTURE(dir);
      CAPTURE(nf4);
      QloraShape q;
      q.nf4_base = nf4;
      TrainShape shape;
      shape.batch = 2;
      shape.seq = 64;
      check_plans_agree(dir, q, shape, Device::CUDA);
    }
  }
}

TEST_CASE("longest_fitting_seq: the longest T whose plan fits; T + 1 does not") {
  const ModelConfig c = ModelConfig::preset("qwen3-8b");
  QloraShape q;
  TrainShape shape;
  for (double gib : {8.0, 24.0, 80.0}) {
    CAPTURE(gib);
    const size_t budget = size_t(gib * double(size_t(1) << 30));
    const int64_t t = longest_fitting_seq(c, q, shape, Device::CUDA, budget);
    REQUIRE(t > 0);
    TrainShape at = shape;
    at.seq = t;
    CHECK(plan_memory(c, q, at, Device::CUDA).total() <= budget);
    at.seq = t + 1;
    CHECK(plan_memory(c, q, at, Device::CUDA).total() > budget);
  }
  // the weights alone (5.7 GiB) do not fit in 4 GiB
  CHECK(longest_fitting_seq(c, q, shape, Device::CUDA, size_t(4) << 30) == 0);
}

TEST_CASE("memory plan from the config: bad adapter settings are clear errors") {
  const ModelConfig c = ModelConfig::preset("qwen3-0.6b");
  QloraShape q;
  q.targets = {"qkv_proj"};
  CHECK_THROWS_WITH_AS(plan_memory(c, q, TrainShape{}, Device::CUDA),
                       doctest::Contains("lora: target module \"qkv_proj\" matches no module; the model has: down_proj, "
                                         "gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
                       Error);
  q = QloraShape{};
  q.r = 0;
  CHECK_THROWS_WITH_AS(plan_memory(c, q, TrainShape{}, Device::CUDA),
                       "memory plan: the LoRA rank must be positive, got 0", Error);
  TrainShape bad;
  bad.batch = 0;
  CHECK_THROWS_WITH_AS(plan_memory(c, QloraShape{}, bad, Device::CUDA),
                       doctest::Contains("memory plan: batch, seq and ce_chunk_rows must be positive"), Error);
}
