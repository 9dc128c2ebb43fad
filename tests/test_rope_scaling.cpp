// RoPE scaling (YaRN, linear) against transformers 5 (tests/fixtures/rope_scaling, written
// by tools/ref/make_rope_scaling_fixtures.py): the tables of every fixture case, a tiny
// Qwen3 with YaRN at four times its original window in both config spellings, the
// config's reading, writing back and errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "kernels/cpu/rope.h"
#include "kernels/rope_table.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/gguf_export.h"
#include "model/load_model.h"
#include "model/merge.h"
#include "tests/fixture_compare.h"
#include "tests/temp_dir.h"
#include "training/batch.h"
#include "training/train_config.h"

using namespace nq;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = "tests/fixtures/rope_scaling/";

// A Qwen3 config.json of head_dim Dh around a RoPE part (`rope` is JSON members with a leading comma).
std::string qwen3_config(int64_t head_dim, int64_t max_positions, const std::string& rope) {
  return str(R"({"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,)",
             R"( "num_attention_heads": 2, "vocab_size": 10, "head_dim": )", head_dim,
             R"(, "max_position_embeddings": )", max_positions, rope, "}");
}
ModelConfig parse(const std::string& rope, int64_t max_positions = 4096) {
  return ModelConfig::from_json(qwen3_config(32, max_positions, rope), "cfg.json");
}

// How many representable f32 values lie between a and b (both finite, same sign).
int64_t ulps(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return std::llabs(int64_t(ia) - int64_t(ib));
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::fabs(double(x[i]) - y[i]));
  return d;
}

DecoderBatch batch_of(const Tensor& ids) {
  DecoderBatch b;
  b.ids = ids;
  return b;
}

}  // namespace

// Bit for bit wherever our powf (glibc's, correctly rounded) gives torch's theta^(2i/Dh)
// (its vectorized powf is Sleef's, within 1 ulp); within 1 ulp where it does not.
TEST_CASE("rope scaling: every table of the fixture is transformers' (inv_freq bit for bit, attention scaling exact)") {
  const nlohmann::json cases = test::read_json(kFixtures + "tables.json");
  REQUIRE(cases.size() >= 8);
  int64_t entries = 0, exact = 0, pow_differs = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    CAPTURE(name);
    const int64_t Dh = c["head_dim"];
    ModelConfig config = ModelConfig::from_json(
        qwen3_config(Dh, c["max_position_embeddings"], ", \"rope_parameters\": " + c["rope_parameters"].dump()),
        name);
    CHECK(config.rope_scaling.type == c["rope_parameters"]["rope_type"]);
    RopeTable t = rope_table(config.rope_theta, config.head_dim, config.rope_scaling);
    const std::vector<float> want = c["inv_freq"].get<std::vector<float>>();
    const std::vector<float> torch_pow = c["pos_freqs"].get<std::vector<float>>();
    REQUIRE(t.inv_freq.size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      CAPTURE(i);
      const bool same_pow = cpu::rope_pow(config.rope_theta, int64_t(i), Dh) == torch_pow[i];
      if (same_pow) CHECK(t.inv_freq[i] == want[i]);
      else CHECK(ulps(t.inv_freq[i], want[i]) <= 1);
      exact += t.inv_freq[i] == want[i];
      pow_differs += !same_pow;
      ++entries;
    }
    CHECK(t.attention_scaling == float(c["attention_scaling"].get<double>()));
  }
  MESSAGE("rope tables vs transformers: ", exact, " of ", entries, " inv_freq bit-identical; ", pow_differs,
          " where torch's powf is 1 ulp from glibc's");
  CHECK(pow_differs <= 3);  // theta 1e6, Dh 128, i = 37 in three cases
}

TEST_CASE("rope scaling: a Qwen3 with YaRN matches transformers at 4x its original window, in both spellings") {
  const std::string dir = kFixtures + "qwen3_yarn";
  Decoder model = Decoder::load(dir);
  const RopeScaling& s = model.config().rope_scaling;
  CHECK(s.type == "yarn");
  CHECK(s.factor == 4.0);
  CHECK(s.original_max_position_embeddings == 16);
  SafetensorsFile ref = SafetensorsFile::open(dir + "/reference.safetensors");
  Tensor ids = ref.get("input_ids");
  REQUIRE(ids.size(1) == 64);
  Tensor logits = model.logits(batch_of(ids));
  const double diff = max_abs_diff(logits, ref.get("logits"));
  CHECK(diff <= 1e-4);
  DecoderBatch labelled = hf_decoder_batch(ids, ids);
  const float loss = model.forward_loss(labelled).value().to_vector()[0], want = ref.get("loss").to_vector()[0];
  CHECK(test::rel_diff(loss, want) <= 1e-5);
  MESSAGE("YaRN Qwen3 (64 tokens, original window 16) vs transformers: max abs logit diff ", diff,
          ", loss rel diff ", test::rel_diff(loss, want));

  // The hub's spelling (top-level rope_theta, rope_scaling {"type": "yarn"}) is the same model.
  TempDir hub;
  fs::copy_file(dir + "/model.safetensors", hub / "model.safetensors");
  fs::copy_file(dir + "/hub_config.json", hub / "config.json");
  Decoder hub_model = Decoder::load(hub.path);
  CHECK(hub_model.config().rope_scaling == s);
  CHECK(hub_model.config().rope_theta == model.config().rope_theta);
  CHECK(max_abs_diff(hub_model.logits(batch_of(ids)), logits) == 0);

  // Without the scaling the same weights are another model past the window.
  ModelConfig plain = model.config();
  plain.rope_scaling = RopeScaling();
  fs::remove(hub / "config.json");
  std::ofstream(hub / "config.json") << plain.to_hf_json();
  CHECK(max_abs_diff(Decoder::load(hub.path).logits(batch_of(ids)), ref.get("logits")) > 1e-2);
}

TEST_CASE("rope scaling: config.json spellings, defaults and writing back") {
  ModelConfig none = parse("");
  CHECK_FALSE(none.rope_scaling.scaled());
  CHECK(none.rope_theta == 10000.0f);

  // The hub's spelling: rope_theta beside rope_scaling, "type" for the type; the window
  // defaults to max_position_embeddings.
  ModelConfig hub = parse(R"(, "rope_theta": 1000000, "rope_scaling": {"type": "yarn", "factor": 4.0})", 131072);
  CHECK(hub.rope_theta == 1e6f);
  CHECK(hub.rope_scaling.type == "yarn");
  CHECK(hub.rope_scaling.original_max_position_embeddings == 131072);
  CHECK_FALSE(hub.rope_scaling.beta_fast);
  ModelConfig card = parse(R"(, "rope_theta": 1000000, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 32768})");
  CHECK(card.rope_scaling.original_max_position_embeddings == 32768);
  CHECK(card.summary().find("rope scaling yarn (factor 4, original window 32768)") != std::string::npos);

  // transformers 5's spelling, every yarn key; to_hf_json writes back what was read.
  ModelConfig full = parse(R"(, "rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8,
      "original_max_position_embeddings": 512, "beta_fast": 16, "beta_slow": 2, "mscale": 1, "mscale_all_dim": 0.5,
      "attention_factor": 1.25, "truncate": false})");
  CHECK(full.rope_theta == 5e5f);
  CHECK(*full.rope_scaling.beta_fast == 16);
  CHECK(*full.rope_scaling.attention_factor == 1.25);
  CHECK(*full.rope_scaling.truncate == false);
  CHECK(rope_table(full.rope_theta, full.head_dim, full.rope_scaling).attention_scaling == 1.25f);
  for (const ModelConfig& c : {none, hub, card, full}) {
    ModelConfig back = ModelConfig::from_json(c.to_hf_json(), "back.json");
    CHECK(back.rope_scaling == c.rope_scaling);
    CHECK(back.rope_theta == c.rope_theta);
  }
  const nlohmann::json written = nlohmann::json::parse(card.to_hf_json());
  CHECK(written["rope_parameters"] == nlohmann::json::parse(R"({"rope_type": "yarn", "rope_theta": 1000000.0,
      "factor": 4.0, "original_max_position_embeddings": 32768})"));
  CHECK_FALSE(written.contains("rope_scaling"));

  // linear; truncate null is transformers' falsy None, not the default
  ModelConfig linear = parse(R"(, "rope_scaling": {"rope_type": "linear", "factor": 2})");
  CHECK(linear.rope_scaling.factor == 2.0);
  RopeTable lt = rope_table(linear.rope_theta, 32, linear.rope_scaling), dt = rope_table(linear.rope_theta, 32);
  CHECK(lt.inv_freq[3] == dt.inv_freq[3] / 2.0f);
  CHECK(*parse(R"(, "rope_scaling": {"type": "yarn", "factor": 2, "truncate": null})").rope_scaling.truncate == false);
}

TEST_CASE("rope scaling: unsupported or malformed values are one-line errors") {
  auto error = [](const std::string& rope) {
    try {
      parse(rope);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})") ==
        "cfg.json: \"rope_scaling.rope_type\" \"llama3\" is not supported (default, linear, yarn)");
  CHECK(error(R"(, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0})") ==
        "cfg.json: \"rope_parameters.rope_type\" \"dynamic\" is not supported (default, linear, yarn)");
  CHECK(error(R"(, "rope_scaling": {"type": 3})") == "cfg.json: \"rope_scaling.type\" must be a string, got an integer (3)");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn"})") == "cfg.json: \"rope_scaling\" missing field \"factor\"");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": "4"})") ==
        "cfg.json: \"rope_scaling.factor\" must be a number, got a string (\"4\")");
  CHECK(error(R"(, "rope_scaling": {"type": "linear", "factor": 0.5})") ==
        "cfg.json: \"rope_scaling.factor\" = 0.5 is outside [1, 1024]");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 0})") ==
        "cfg.json: \"rope_scaling.original_max_position_embeddings\" = 0 is outside [1, 4294967296]");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 8.5})") ==
        "cfg.json: \"rope_scaling.original_max_position_embeddings\" must be an integer, got a float (8.5)");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": 4, "beta_fast": 0})") ==
        "cfg.json: \"rope_scaling\": beta_fast = 0 must be > 0");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": 4, "beta_fast": 1, "beta_slow": 2})") ==
        "cfg.json: \"rope_scaling\": beta_fast (1) must be >= beta_slow (2)");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": 4, "mscale": -1})") ==
        "cfg.json: \"rope_scaling.mscale\" = -1 is outside [0, 1024]");
  CHECK(error(R"(, "rope_scaling": {"type": "yarn", "factor": 4, "truncate": 1})") ==
        "cfg.json: \"rope_scaling.truncate\" must be true or false, got an integer (1)");
  CHECK(error(R"(, "rope_scaling": [1])") == "cfg.json: \"rope_scaling\" must be an object, got an array");
  CHECK(error(R"(, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5})") ==
        "cfg.json: \"rope_parameters.partial_rotary_factor\" is 0.5; partial RoPE is not implemented");
  CHECK(error(R"(, "rope_parameters": {"rope_type": "default"}, "rope_scaling": {"type": "linear", "factor": 2})") ==
        "cfg.json: both rope_parameters and rope_scaling are set; give one (transformers 5 writes rope_parameters)");
}

TEST_CASE("rope scaling: --rope-scaling switches it on; written into the merged config.json and GGUF, read back") {
  const std::string base = "tests/fixtures/model/qwen3_tied";
  LoadedModel hf = load_model(base);
  REQUIRE_FALSE(hf.config.rope_scaling.scaled());
  const Tensor ids = Tensor::from_ids({5, 9, 17, 3, 44, 2, 8}, Shape{1, 7});
  const Tensor plain = Decoder(hf.config, hf.weights).logits(batch_of(ids));
  hf.config.apply_rope_scaling_flag("yarn:4:32");
  const RopeScaling& s = hf.config.rope_scaling;
  CHECK(s.describe() == "yarn (factor 4, original window 32)");
  const Tensor scaled = Decoder(hf.config, hf.weights).logits(batch_of(ids));
  CHECK(max_abs_diff(scaled, plain) > 0);  // the attention scaling changes even the first positions

  // The flag again, the same: kept; another: refused, naming both.
  CHECK_NOTHROW(hf.config.apply_rope_scaling_flag("yarn:4:32"));
  CHECK_THROWS_WITH_AS(hf.config.apply_rope_scaling_flag("linear:2"),
                       "--rope-scaling linear:2 asks for linear (factor 2) but the model's config already has yarn "
                       "(factor 4, original window 32); leave the flag out to use it",
                       Error);
  ModelConfig window_default = ModelConfig::preset("qwen3-8b");
  window_default.apply_rope_scaling_flag("yarn:4");
  CHECK(window_default.rope_scaling.original_max_position_embeddings == 40960);  // max_position_embeddings

  TempDir dir;
  // GGUF: llama.cpp's keys (convert_hf_to_gguf's Qwen2Model writes these three), read back.
  write_merged_gguf(dir / "m.gguf", hf.config, hf.weights, gguf_source_metadata(base, hf.config), "f32");
  GGUFFile f = GGUFFile::open(dir / "m.gguf");
  CHECK(f.get_string("qwen3.rope.scaling.type") == "yarn");
  CHECK(f.get_f64("qwen3.rope.scaling.factor") == 4.0);
  CHECK(f.get_i64("qwen3.rope.scaling.original_context_length") == 32);
  LoadedModel g = load_model(dir / "m.gguf");
  CHECK(g.config.rope_scaling == s);
  CHECK(max_abs_diff(Decoder(g.config, g.weights).logits(batch_of(ids)), scaled) == 0);
  ModelConfig unmapped = hf.config;
  unmapped.rope_scaling.attention_factor = 1.5;
  CHECK_THROWS_WITH_AS(write_merged_gguf(dir / "u.gguf", unmapped, hf.weights, gguf_source_metadata(base, hf.config),
                                         "f32"),
                       "GGUF export: RoPE scaling yarn (factor 4, original window 32) sets truncate, mscale or "
                       "attention_factor, which llama.cpp's GGUF keys do not carry",
                       Error);
  // ./merge's folder: transformers 5's rope_parameters, no hub rope_scaling; the same logits back.
  Decoder model = build_decoder(hf, {}, false);  // takes hf's weights
  save_merged_model(dir / "hf", model, base, DType::F32);
  const nlohmann::json written = test::read_json(dir / "hf/config.json");
  CHECK(written["rope_parameters"]["rope_type"] == "yarn");
  CHECK(written["rope_parameters"]["original_max_position_embeddings"] == 32);
  CHECK_FALSE(written.contains("rope_scaling"));
  LoadedModel back = load_model(dir / "hf");
  CHECK(back.config.rope_scaling == s);
  CHECK(max_abs_diff(Decoder(back.config, back.weights).logits(batch_of(ids)), scaled) == 0);

}

TEST_CASE("rope scaling: --rope-scaling values and the train config's key") {
  CHECK(parse_rope_scaling_spec("linear:2.5", 100).factor == 2.5);
  CHECK(parse_rope_scaling_spec("yarn:4", 100).original_max_position_embeddings == 100);
  auto error = [](const std::string& spec) {
    try {
      parse_rope_scaling_spec(spec, 100);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error("yarn") == "--rope-scaling yarn: expected yarn:FACTOR, yarn:FACTOR:ORIGINAL_WINDOW or linear:FACTOR");
  CHECK(error("dynamic:2") ==
        "--rope-scaling dynamic:2: expected yarn:FACTOR, yarn:FACTOR:ORIGINAL_WINDOW or linear:FACTOR");
  CHECK(error("linear:2:8") ==
        "--rope-scaling linear:2:8: expected yarn:FACTOR, yarn:FACTOR:ORIGINAL_WINDOW or linear:FACTOR");
  CHECK(error("yarn:four") == "--rope-scaling yarn:four: the factor must be a number, got 'four'");
  CHECK(error("yarn:0.5") == "--rope-scaling yarn:0.5: the factor must be in [1, 1024]");
  CHECK(error("yarn:4:") == "--rope-scaling yarn:4:: the original window must be a number, got ''");
  CHECK(error("yarn:4:16.5") ==
        "--rope-scaling yarn:4:16.5: the original window must be a whole number of positions in [1, 4294967296]");

  // ./train's flag: JSON key rope_scaling (--config, the checkpoint's copy), checked before the model loads,
  // and a change of it is a change of the run's losses (no silent --resume across it).
  TrainConfig cfg;
  train_flags(cfg).apply_json(R"({"rope_scaling": "yarn:4:32768"})", "cfg.json");
  CHECK(cfg.rope_scaling == "yarn:4:32768");
  CHECK(nlohmann::json::parse(cfg.to_json())["rope_scaling"] == "yarn:4:32768");
  TrainConfig other = cfg;
  other.rope_scaling = "";
  CHECK(cfg.trajectory_difference(other) == "rope_scaling");
  cfg.model = "m";
  cfg.data = "d";
  CHECK_NOTHROW(cfg.validate());
  cfg.rope_scaling = "yarn:x";
  CHECK_THROWS_WITH_AS(cfg.validate(), "--rope-scaling yarn:x: the factor must be a number, got 'x'", Error);
  EvalConfig eval;
  CHECK(eval_flags(eval).find("rope-scaling") != nullptr);
}
