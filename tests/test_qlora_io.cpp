// QLoRA file interop against the files transformers + bitsandbytes + PEFT wrote
// (tests/fixtures/qlora, tools/ref/make_qlora_fixtures.py):
//   - a bitsandbytes 4-bit checkpoint loads with NF4 weights bit-identical to our
//     own quantization of the dense model, and the same logits;
//   - ./quantize's writer reproduces transformers' 4-bit checkpoint byte for byte;
//   - PEFT adapters load bit-identically, ours round-trip and use PEFT's names;
//   - merged checkpoints (W + s B A) give the logits of base + adapter;
//   - every malformed input is a clear error.
// The last test case also writes build/peft_check/ for tools/ref/check_adapter.py.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "model/adapters.h"
#include "model/merge.h"
#include "model/bnb_checkpoint.h"
#include "model/decoder.h"
#include "runtime/philox.h"
#include "runtime/rng.h"
#include "formats/safetensors.h"
#include "temp_dir.h"

using namespace nq;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kDir = "tests/fixtures/qlora/";
const std::string kDense = kDir + "model", kBnb = kDir + "model-bnb-4bit";

// The first fixture micro-batch: ids [2, 16].
DecoderBatch fixture_batch() {
  SafetensorsFile f = SafetensorsFile::open(kDir + "batches.safetensors");
  Tensor ids = f.get("input_ids");  // [steps * accum, B, T]
  DecoderBatch b;
  b.ids = ids.slice(0, 1).view({ids.size(1), ids.size(2)}).clone();
  return b;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// max |a - b| / max |b| over all elements (f32 tensors of one shape).
double max_rel_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num = std::max(num, std::fabs(double(x[i]) - y[i]));
    den = std::max(den, std::fabs(double(y[i])));
  }
  return num / den;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE_MESSAGE(f.good(), path);
  return json::parse(f);
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

// Copies the checkpoint `src` into `dst` with config.json replaced by `config`.
void copy_with_config(const std::string& src, const std::string& dst, const json& config) {
  fs::create_directories(dst);
  fs::copy_file(src + "/model.safetensors", dst + "/model.safetensors");
  write_file(dst + "/config.json", config.dump());
}

// B filled with values ~U(-0.05, 0.05) (Philox), so the adapter changes the model.
void randomize_b(Decoder& model, uint64_t seed) {
  uint64_t offset = 0;
  for (Linear* l : model.linears()) {
    if (!l->has_lora()) continue;
    Tensor b = l->lora().B.value();
    for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = 0.1f * (philox_uniform(seed, offset, i) - 0.5f);
    offset += (uint64_t(b.numel()) + 3) / 4;
  }
}

void save_tensors(const std::string& path, const std::map<std::string, Tensor>& m) {
  std::vector<std::pair<std::string, Tensor>> v(m.begin(), m.end());
  save_safetensors(path, v, {{"format", "pt"}});
}

}  // namespace

// ---------------------------------------------------------------- bitsandbytes checkpoints

TEST_CASE("bnb checkpoint: NF4 states bit-identical to our quantization of the dense model, same logits") {
  Decoder bnb = load_hf_decoder(kBnb);
  Decoder ours = load_hf_decoder(kDense);  // no quantization_config: the dense path
  for (Linear* l : ours.linears()) {
    CHECK_FALSE(l->is_nf4());
    l->quantize_nf4(64);
  }
  std::vector<Linear*> a = bnb.linears(), b = ours.linears();
  REQUIRE(a.size() == 14);
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i]->name());
    REQUIRE(a[i]->is_nf4());
    const Nf4Tensor &x = *a[i]->nf4(), &y = *b[i]->nf4();
    CHECK(x.blocksize == 64);
    CHECK(x.double_quant);
    CHECK(x.dtype == "float32");
    CHECK(same_bytes(x.packed, y.packed));
    CHECK(same_bytes(x.absmax, y.absmax));
    CHECK(same_bytes(x.nested_absmax, y.nested_absmax));
    CHECK(same_bytes(x.nested_code, y.nested_code));
    CHECK(x.offset == y.offset);
  }
  const DecoderBatch batch = fixture_batch();
  const Tensor la = bnb.logits(batch), lb = ours.logits(batch);
  CHECK(same_bytes(la, lb));  // identical weights, identical computation
  // and 4-bit is not a no-op: the dense model's logits differ
  Decoder dense = load_hf_decoder(kDense);
  const double quant_err = max_rel_error(la, dense.logits(batch));
  CHECK(quant_err > 1e-4);
  CHECK(quant_err < 0.2);
}

TEST_CASE("bnb checkpoint: other quantization configs and broken 4-bit tensors are clear errors") {
  TempDir tmp;
  const json base = read_json(kBnb + "/config.json");
  struct Case {
    const char* field;
    json value;
    std::string message;
  };
  const std::string cfg = tmp / "m/config.json";
  const std::vector<Case> cases = {
      {"bnb_4bit_quant_type", "fp4", cfg + ": quantization_config.bnb_4bit_quant_type \"fp4\" is not supported (only nf4)"},
      {"load_in_8bit", true,
       cfg + ": quantization_config.load_in_8bit is true; 8-bit (LLM.int8) checkpoints are not supported (only NF4 4-bit)"},
      {"load_in_4bit", false, cfg + ": quantization_config.load_in_4bit is not true; only NF4 4-bit is supported"},
      {"quant_method", "gptq", cfg + ": quantization_config.quant_method \"gptq\" is not supported (only bitsandbytes NF4 4-bit)"},
      {"bnb_4bit_quant_storage", "bfloat16",
       cfg + ": quantization_config.bnb_4bit_quant_storage \"bfloat16\" is not supported (only uint8)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.field);
    fs::remove_all(tmp / "m");
    json j = base;
    j["quantization_config"][c.field] = c.value;
    copy_with_config(kBnb, tmp / "m", j);
    CHECK_THROWS_WITH_AS(load_hf_decoder(tmp / "m"), c.message.c_str(), Error);
  }
  // a 4-bit weight without its absmax
  fs::remove_all(tmp / "m");
  fs::create_directories(tmp / "m");
  SafetensorsFile file = SafetensorsFile::open(kBnb + "/model.safetensors");
  std::map<std::string, Tensor> tensors;
  for (const std::string& n : file.names()) tensors[n] = file.get(n);
  std::map<std::string, Tensor> broken = tensors;
  broken.erase("model.layers.1.mlp.up_proj.weight.absmax");
  save_tensors(tmp / "m/model.safetensors", broken);
  write_file(cfg, base.dump());
  CHECK_THROWS_WITH_AS(load_hf_decoder(tmp / "m"),
                       (tmp / "m/model.safetensors: nf4 state dict: missing tensor "
                                "'model.layers.1.mlp.up_proj.weight.absmax'").c_str(),
                       Error);
  // a 4-bit weight whose quant_state names another shape
  broken = tensors;
  broken["model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"] =
      tensors.at("model.layers.0.self_attn.k_proj.weight.quant_state.bitsandbytes__nf4");
  save_tensors(tmp / "m/model.safetensors", broken);
  CHECK_THROWS_WITH_AS(load_hf_decoder(tmp / "m"),
                       (tmp / "m/model.safetensors: nf4 state dict: tensor 'model.layers.0.self_attn.q_proj.weight' "
                                "is u8[4096, 1] cpu, expected 2048 bytes for shape [64, 64]").c_str(),
                       Error);
  // a stray tensor
  broken = tensors;
  broken["model.layers.0.mlp.up_proj.weight.SCB"] = tensors.at("model.norm.weight");
  save_tensors(tmp / "m/model.safetensors", broken);
  CHECK_THROWS_WITH_AS(load_hf_decoder(tmp / "m"),
                       (tmp / "m: unexpected tensor model.layers.0.mlp.up_proj.weight.SCB in " + tmp /
                        "m/model.safetensors (not a parameter of this qwen3 config)").c_str(),
                       Error);
}

TEST_CASE("decoder with NF4 projections: each must be a projection of its shape") {
  const ModelConfig config = ModelConfig::from_file(kDense + "/config.json");
  HfWeights loaded = load_dense_weights(kDense, config, WeightLoad::qlora(true));
  const TensorMap& weights = loaded.dense;
  const Nf4Weights& nf4 = loaded.nf4;
  REQUIRE(nf4.size() == 14);
  CHECK(weights.count("model.layers.0.mlp.up_proj.weight") == 0);  // no dense copy was kept
  CHECK_NOTHROW(Decoder(config, weights, {}, nf4));

  Nf4Weights bad = nf4;
  bad["model.layers.0.self_attn.q_proj.weight"] = nf4.at("model.layers.0.self_attn.k_proj.weight");
  CHECK_THROWS_WITH_AS(Decoder(config, weights, {}, bad),
                       "decoder: NF4 tensor model.layers.0.self_attn.q_proj.weight has shape [64, 64], expected [128, 64]",
                       Error);
  bad = nf4;
  bad["model.layers.2.mlp.up_proj.weight"] = nf4.at("model.layers.0.mlp.up_proj.weight");
  CHECK_THROWS_WITH_AS(Decoder(config, weights, {}, bad),
                       "decoder: NF4 tensor model.layers.2.mlp.up_proj.weight is not a parameter of this qwen3 config",
                       Error);
  bad = nf4;
  bad["model.norm.weight"] = nf4.at("model.layers.0.mlp.up_proj.weight");
  CHECK_THROWS_WITH_AS(Decoder(config, weights, {}, bad),
                       "decoder: model.norm.weight cannot be NF4 (only projection weights)", Error);
  bad = nf4;
  bad.erase("model.layers.1.mlp.down_proj.weight");  // neither NF4 nor dense
  CHECK_THROWS_WITH_AS(Decoder(config, weights, {}, bad),
                       "decoder: missing tensor model.layers.1.mlp.down_proj.weight (expected [64, 128])", Error);
}

TEST_CASE("quantize: the written checkpoint equals transformers' 4-bit save, byte for byte") {
  TempDir tmp;
  const QuantizeReport report = quantize_checkpoint(kDense, tmp / "q");
  // our tensors == transformers + bitsandbytes' tensors, names and bytes
  SafetensorsFile ours = SafetensorsFile::open(tmp / "q/model.safetensors");
  SafetensorsFile theirs = SafetensorsFile::open(kBnb + "/model.safetensors");
  CHECK(ours.names() == theirs.names());
  for (const std::string& name : theirs.names()) {
    CAPTURE(name);
    REQUIRE(ours.has(name));
    CHECK(ours.entry(name).shape == theirs.entry(name).shape);
    CHECK(same_bytes(ours.get(name), theirs.get(name)));
  }
  // config.json: the source's fields plus transformers' quantization_config
  json qc = read_json(tmp / "q/config.json"), ref = read_json(kBnb + "/config.json");
  CHECK(qc.at("quantization_config") == ref.at("quantization_config"));
  json src = read_json(kDense + "/config.json");
  for (auto& [key, value] : src.items()) CHECK_MESSAGE(qc.at(key) == value, key);
  CHECK(fs::exists(tmp / "q/generation_config.json"));
  // the report: 4 bits + one u8 absmax per 64 + f32 nested absmax per 256 blocks (+ offset)
  const ModelConfig c = ModelConfig::from_file(kDense + "/config.json");
  const int64_t per_layer = 2 * 64 * 128 + 2 * 64 * 64 + 3 * 64 * 128;  // q,o [128,64]/[64,128]; k,v [64,64]; mlp
  CHECK(report.quantized_params == c.num_layers * per_layer);
  CHECK(report.dense_params == c.vocab_size * 64 + c.num_layers * (2 * 64 + 2 * 32) + 64);
  CHECK(report.bits_per_quantized_param() > 4.12);
  CHECK(report.bits_per_quantized_param() < 4.2);
  CHECK(report.bytes_after == fs::file_size(tmp / "q/model.safetensors"));
  CHECK(report.bytes_before == fs::file_size(kDense + "/model.safetensors"));
  // and it loads back as a 4-bit decoder
  CHECK(load_hf_decoder(tmp / "q").linears()[0]->is_nf4());
  // writing over the input is refused
  CHECK_THROWS_WITH_AS(quantize_checkpoint(kDense, kDense + "/"),
                       (kDense + "/: the output directory is the input model " + kDense + "; give another --out").c_str(),
                       Error);
  // an already quantized source is refused
  CHECK_THROWS_WITH_AS(quantize_checkpoint(kBnb, tmp / "qq"),
                       (kBnb + "/config.json: the model is already quantized (quantization_config is set); "
                               "quantize its dense original").c_str(),
                       Error);
}

TEST_CASE("quantize: blocksize and plain (no double quant) settings reach the file") {
  TempDir tmp;
  quantize_checkpoint(kDense, tmp / "q", 128, false);
  const json qc = read_json(tmp / "q/config.json").at("quantization_config");
  CHECK(qc.at("bnb_4bit_use_double_quant") == false);
  SafetensorsFile f = SafetensorsFile::open(tmp / "q/model.safetensors");
  CHECK_FALSE(f.has("model.layers.0.mlp.up_proj.weight.nested_absmax"));
  CHECK(f.entry("model.layers.0.mlp.up_proj.weight.absmax").dtype == DType::F32);
  CHECK(f.entry("model.layers.0.mlp.up_proj.weight.absmax").shape == Shape({64 * 128 / 128}));
  Decoder d = load_hf_decoder(tmp / "q");
  CHECK(d.linears()[0]->nf4()->blocksize == 128);
  CHECK_FALSE(d.linears()[0]->nf4()->double_quant);
}

// ---------------------------------------------------------------- PEFT adapters

TEST_CASE("adapter: PEFT-saved adapters load with values bit-identical to the file") {
  for (const char* name : {"adapter_init", "adapter_final"}) {
    const std::string dir = kDir + name;
    CAPTURE(dir);
    Decoder model = load_hf_decoder(kBnb);
    const AdapterConfig cfg = load_peft_adapter(dir, model);
    CHECK(cfg.lora.r == 16);
    CHECK(cfg.lora.alpha == 32.0f);
    CHECK(cfg.lora.dropout == 0.0f);
    CHECK(cfg.target_modules.size() == 14);
    SafetensorsFile file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
    size_t checked = 0;
    for (Linear* l : model.linears()) {
      CAPTURE(l->name());
      REQUIRE(l->has_lora());
      CHECK(l->lora().scaling == 2.0f);
      CHECK(same_bytes(l->lora().A.value(), file.get("base_model.model." + l->name() + ".lora_A.weight")));
      CHECK(same_bytes(l->lora().B.value(), file.get("base_model.model." + l->name() + ".lora_B.weight")));
      checked += 2;
    }
    CHECK(checked == file.names().size());
  }
}

TEST_CASE("adapter: save -> load is bit-identical, with PEFT's key names and config fields") {
  TempDir tmp;
  Decoder model = load_hf_decoder(kBnb);
  load_peft_adapter(kDir + "adapter_final", model);
  AdapterConfig cfg;
  cfg.lora.r = 16;
  cfg.lora.alpha = 32.0f;
  cfg.lora.dropout = 0.0f;  // PEFT's file's
  cfg.base_model_name_or_path = "model";
  save_peft_adapter(tmp / "a", model, cfg);
  // same names, shapes and bytes as PEFT's own file
  SafetensorsFile ours = SafetensorsFile::open(tmp / "a/adapter_model.safetensors");
  SafetensorsFile peft = SafetensorsFile::open(kDir + "adapter_final/adapter_model.safetensors");
  CHECK(ours.names() == peft.names());
  for (const std::string& n : peft.names()) CHECK_MESSAGE(same_bytes(ours.get(n), peft.get(n)), n);
  // config: every field we write is one PEFT writes, with the same value where they overlap
  const json mine = read_json(tmp / "a/adapter_config.json");
  const json theirs = read_json(kDir + "adapter_final/adapter_config.json");
  for (auto& [key, value] : mine.items()) {
    CAPTURE(key);
    REQUIRE(theirs.contains(key));
    if (key == "target_modules") {
      std::vector<std::string> a = value, b = theirs.at(key);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      CHECK(a == b);  // the adapted modules' full names, as PEFT writes them after injection
    } else {
      CHECK(value == theirs.at(key));
    }
  }
  // and it loads back into a fresh model bit-identically
  Decoder again = load_hf_decoder(kBnb);
  load_peft_adapter(tmp / "a", again);
  std::vector<Linear*> x = model.linears(), y = again.linears();
  for (size_t i = 0; i < x.size(); ++i) {
    CHECK(same_bytes(x[i]->lora().A.value(), y[i]->lora().A.value()));
    CHECK(same_bytes(x[i]->lora().B.value(), y[i]->lora().B.value()));
  }
}

TEST_CASE("adapter: targets by list, all-linear, and a target that matches nothing") {
  Decoder model = load_hf_decoder(kDense);
  CHECK(select_targets(model, {"all-linear"}).size() == 14);
  std::vector<Linear*> qv = select_targets(model, {"q_proj", "v_proj"});
  REQUIRE(qv.size() == 4);
  CHECK(qv[0]->name() == "model.layers.0.self_attn.q_proj");
  CHECK(qv[1]->name() == "model.layers.0.self_attn.v_proj");
  std::vector<Linear*> one = select_targets(model, {"model.layers.1.mlp.down_proj"});
  REQUIRE(one.size() == 1);
  CHECK(one[0]->name() == "model.layers.1.mlp.down_proj");
  // a suffix must be a whole name component: "proj" is not one
  CHECK_THROWS_AS(select_targets(model, {"proj"}), Error);
}

TEST_CASE("adapter: a target matching nothing lists the module names") {
  Decoder model = load_hf_decoder(kDense);
  CHECK_THROWS_WITH_AS(select_targets(model, {"q_proj", "qkv_proj"}),
                       "lora: target module \"qkv_proj\" matches no module; the model has: down_proj, gate_proj, "
                       "k_proj, o_proj, q_proj, up_proj, v_proj (or full names like model.layers.0.self_attn.q_proj, "
                       "or all-linear)",
                       Error);
  CHECK_THROWS_WITH_AS(select_targets(model, {}), "lora: no target modules given", Error);
  AdapterConfig zero_rank;
  zero_rank.lora.r = 0;
  CHECK_THROWS_WITH_AS(attach_adapters(model, zero_rank), "lora: rank r must be positive, got 0", Error);
}

TEST_CASE("adapter: wrong shape, missing / unknown tensors and bad adapter_config.json are clear errors") {
  TempDir tmp;
  const std::string src = kDir + "adapter_final";
  SafetensorsFile file = SafetensorsFile::open(src + "/adapter_model.safetensors");
  std::map<std::string, Tensor> tensors;
  for (const std::string& n : file.names()) tensors[n] = file.get(n);
  const json config = read_json(src + "/adapter_config.json");
  const std::string st = tmp / "a/adapter_model.safetensors", cj = tmp / "a/adapter_config.json";
  auto write_adapter = [&](const std::map<std::string, Tensor>& t, const json& c) {
    fs::remove_all(tmp / "a");
    fs::create_directories(tmp / "a");
    save_tensors(st, t);
    write_file(cj, c.dump());
  };
  auto load = [&] {
    Decoder model = load_hf_decoder(kDense);
    load_peft_adapter(tmp / "a", model);
  };
  const std::string A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";

  std::map<std::string, Tensor> t = tensors;
  t[A0] = tensors.at(A0).slice(0, 8);
  write_adapter(t, config);
  CHECK_THROWS_WITH_AS(load(), (tmp / "a/adapter_model.safetensors: tensor " + A0 +
                                " has shape [8, 64], expected [16, 64]").c_str(), Error);
  t = tensors;
  t.erase(A0);
  write_adapter(t, config);
  CHECK_THROWS_WITH_AS(load(), (tmp / "a/adapter_model.safetensors: missing tensor " + A0).c_str(), Error);
  t = tensors;
  t["base_model.model.model.layers.7.mlp.up_proj.lora_A.weight"] = tensors.at(A0);
  write_adapter(t, config);
  CHECK_THROWS_WITH_AS(load(), (tmp / "a/adapter_model.safetensors: tensor base_model.model.model.layers.7.mlp.up_proj"
                                      ".lora_A.weight is for module model.layers.7.mlp.up_proj, which this model does "
                                      "not have").c_str(), Error);
  t = tensors;
  t["base_model.model.lm_head.weight"] = tensors.at(A0);  // modules_to_save
  write_adapter(t, config);
  CHECK_THROWS_WITH_AS(load(), (tmp / "a/adapter_model.safetensors: tensor base_model.model.lm_head.weight is not a "
                                      "lora_A / lora_B weight (only plain LoRA on linear layers is supported)").c_str(),
                       Error);

  struct Case {
    std::function<void(json&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](json& c) { c["r"] = 0; }, ": r must be positive, got 0"},
      {[](json& c) { c["r"] = -4; }, ": r must be positive, got -4"},
      {[](json& c) { c.erase("r"); }, ": missing field \"r\""},
      {[](json& c) { c.erase("lora_alpha"); }, ": missing field \"lora_alpha\""},
      {[](json& c) { c["peft_type"] = "IA3"; }, ": peft_type \"IA3\" is not supported (only LORA)"},
      {[](json& c) { c["peft_type"] = 3; }, ": \"peft_type\" must be a string, got an integer (3)"},
      {[](json& c) { c["use_dora"] = true; }, ": use_dora is not supported"},
      {[](json& c) { c["r"] = "sixteen"; }, ": \"r\" must be an integer, got a string (\"sixteen\")"},
      {[](json& c) { c["rank_pattern"] = {{"q_proj", 4}}; }, ": rank_pattern key \"q_proj\" is not supported"},
  };
  for (const Case& c : cases) {
    json bad = config;
    c.edit(bad);
    CAPTURE(bad.dump());
    write_adapter(tensors, bad);
    CHECK_THROWS_WITH_AS(load(), doctest::Contains((cj + c.message).c_str()), Error);
  }
  write_adapter(tensors, config);
  write_file(cj, "{\"r\": 16,");
  CHECK_THROWS_WITH_AS(load(), doctest::Contains((cj + ": invalid JSON: ").c_str()), Error);
  // null optional fields (PEFT writes them) are fine
  json nulls = config;
  nulls["base_model_name_or_path"] = nullptr;
  nulls["use_rslora"] = nullptr;
  write_adapter(tensors, nulls);
  CHECK_NOTHROW(load());
}

// ---------------------------------------------------------------- merging

TEST_CASE("merge: W' = W + s B A, and the merged checkpoint gives the logits of base + adapter") {
  TempDir tmp;
  const DecoderBatch batch = fixture_batch();
  for (const std::string& base : {kDense, kBnb}) {
    CAPTURE(base);
    Decoder model = load_hf_decoder(base);
    load_peft_adapter(kDir + "adapter_final", model);
    const Tensor want = model.logits(batch);

    // one module against a naive double-precision W + s B A
    Linear* l = model.linears()[3];
    const TensorMap merged = merged_weights(model);
    {
      const Tensor w = l->dense_weight(), A = l->lora().A.value(), B = l->lora().B.value();
      const Tensor& m = merged.at(l->name() + ".weight");
      const int64_t out = w.size(0), in = w.size(1), r = A.size(0);
      double worst = 0;
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double ref = w.data<float>()[o * in + i];
          for (int64_t k = 0; k < r; ++k) ref += 2.0 * B.data<float>()[o * r + k] * A.data<float>()[k * in + i];
          worst = std::max(worst, std::fabs(ref - m.data<float>()[o * in + i]));
        }
      CHECK(worst < 1e-6);
    }

    // fp32: only the summation order differs
    save_merged_model(tmp / "f32", model, base, DType::F32);
    const json cfg = read_json(tmp / "f32/config.json");
    CHECK_FALSE(cfg.contains("quantization_config"));
    CHECK(cfg.at("dtype") == "float32");
    Decoder merged_f32 = load_hf_decoder(tmp / "f32");
    CHECK_FALSE(merged_f32.linears()[0]->is_nf4());
    CHECK_FALSE(merged_f32.linears()[0]->has_lora());
    const double err32 = max_rel_error(merged_f32.logits(batch), want);
    MESSAGE("merged f32 vs base + adapter: max rel error " << err32);
    CHECK(err32 < 1e-5);

    // bf16: every weight rounded to 8 significant bits (relative error <= 2^-9)
    save_merged_model(tmp / "bf16", model, base, DType::BF16);
    CHECK(SafetensorsFile::open(tmp / "bf16/model.safetensors").entry("model.norm.weight").dtype == DType::BF16);
    CHECK(read_json(tmp / "bf16/config.json").at("dtype") == "bfloat16");
    const double err16 = max_rel_error(load_hf_decoder(tmp / "bf16").logits(batch), want);
    MESSAGE("merged bf16 vs base + adapter: max rel error " << err16);
    CHECK(err16 < 1e-2);  // measured 2.8e-3
    CHECK_THROWS_WITH_AS(save_merged_model(base, model, base, DType::BF16),
                         (base + ": the output directory is the input model " + base + "; give another --out").c_str(),
                         Error);
    // f16: 11 significant bits (relative error <= 2^-11 per weight), for GPUs without bf16
    save_merged_model(tmp / "f16", model, base, DType::F16);
    CHECK(SafetensorsFile::open(tmp / "f16/model.safetensors").entry("model.norm.weight").dtype == DType::F16);
    CHECK(read_json(tmp / "f16/config.json").at("dtype") == "float16");
    const double err_f16 = max_rel_error(load_hf_decoder(tmp / "f16").logits(batch), want);
    MESSAGE("merged f16 vs base + adapter: max rel error " << err_f16);
    CHECK(err_f16 < err16);  // 3 more bits than bf16
    fs::remove_all(tmp / "f32");
    fs::remove_all(tmp / "bf16");
    fs::remove_all(tmp / "f16");
  }
}

// ---------------------------------------------------------------- for tools/ref/check_adapter.py

TEST_CASE("peft interop: write our adapter, logits and merged model to build/peft_check/") {
  // tools/ref/check_adapter.py loads these with PEFT / transformers and compares logits.
  const std::string out = "build/peft_check";
  fs::remove_all(out);
  fs::create_directories(out);
  const DecoderBatch batch = fixture_batch();
  rng_seed(1234);  // A's init: the same files whichever tests ran before
  AdapterConfig cfg;
  cfg.lora.r = 4;
  cfg.lora.alpha = 8.0f;
  cfg.lora.dropout = 0.0f;
  cfg.target_modules = {"q_proj", "v_proj", "o_proj", "down_proj"};
  cfg.base_model_name_or_path = "model";
  Decoder dense = load_hf_decoder(kDense);
  attach_adapters(dense, cfg);
  randomize_b(dense, 77);
  save_peft_adapter(out + "/adapter", dense, cfg);
  save_merged_model(out + "/merged", dense, kDense, DType::F32);

  Decoder nf4 = load_hf_decoder(kBnb);
  load_peft_adapter(out + "/adapter", nf4);
  std::map<std::string, Tensor> logits = {{"input_ids", batch.ids},
                                          {"logits_dense_base", dense.logits(batch)},
                                          {"logits_bnb_base", nf4.logits(batch)}};
  save_tensors(out + "/logits.safetensors", logits);
  // the adapter changes the outputs, and the NF4 base differs from the dense one
  Decoder plain = load_hf_decoder(kDense);
  CHECK(max_rel_error(logits.at("logits_dense_base"), plain.logits(batch)) > 1e-3);
  CHECK(max_rel_error(logits.at("logits_bnb_base"), logits.at("logits_dense_base")) > 1e-4);
}
