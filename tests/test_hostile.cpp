// Hostile files: one regression test per class of finding of the fuzz targets
// (tests/fuzz/) and of reading the parsers, each with its minimal input, and the
// failure paths of saving (a full disk at any byte, a stop just before the publishing
// rename) and of resuming from a corrupt checkpoint. Every rejection must be one
// nq::Error line naming the file (and the key or tensor where there is one).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/atomic_file.h"
#include "formats/gguf.h"
#include "formats/json.h"
#include "formats/peft_adapter.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "model/gguf_model.h"
#include "model/tokenizer.h"
#include "optim/adamw.h"
#include "tests/gguf_builder.h"
#include "tests/temp_dir.h"
#include "tests/tiny_run.h"
#include "training/checkpoint.h"
#include "training/trainer.h"

using namespace nq;
using nq::test::TinyRun;
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A config.json of a tiny Qwen3 with `extra` members added (later keys win in nlohmann).
std::string config_with(const std::string& extra) {
  std::string base = R"({"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96,
      "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100)";
  return base + extra + "}";
}
std::string config_error(const std::string& text) {
  return thrown_message([&] { ModelConfig::from_json(text, "cfg.json"); });
}

// The smallest byte-level tokenizer.json: the 256 byte tokens, no merges.
nlohmann::json byte_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = printable ? b : next++;
    std::string s = cp < 0x80 ? std::string(1, char(cp)) : std::string{char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
    vocab[s] = b;
  }
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}}}};
}
std::string tokenizer_error(const TempDir& dir, const nlohmann::json& tok, const std::string& config = "") {
  write_bytes(dir / "tokenizer.json", tok.dump());
  if (!config.empty()) write_bytes(dir / "tokenizer_config.json", config);
  return thrown_message([&] { Tokenizer::from_file(dir / "tokenizer.json"); });
}

// A safetensors file of one F32 tensor whose header claims `shape` over 16 data bytes.
std::string safetensors_claiming(const std::string& shape) {
  std::string header = R"({"w": {"dtype": "F32", "shape": )" + shape + R"(, "data_offsets": [0, 16]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char(uint64_t(header.size()) >> (8 * i));
  return bytes + header + std::string(16, '\0');
}
std::string safetensors_error(const TempDir& dir, const std::string& bytes) {
  write_bytes(dir / "w.safetensors", bytes);
  return thrown_message([&] { SafetensorsFile::open(dir / "w.safetensors"); });
}

// A GGUF holding the minimal llama metadata plus `edit`'s, and no tensors.
std::string gguf_config_error(const TempDir& dir, const std::function<void(GGUFBuilder&)>& edit) {
  GGUFBuilder b;
  b.add_string("general.architecture", "llama");
  edit(b);
  write_bytes(dir / "m.gguf", b.build());
  return thrown_message([&] { gguf_config(GGUFFile::open(dir / "m.gguf")); });
}

bool one_line(const std::string& s) { return s != "(no error)" && s.find('\n') == std::string::npos; }
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("hostile: JSON type confusion is one line naming the file, the key and the type") {
  TempDir dir;
  // config.json: a float or a string where an integer is expected.
  CHECK(config_error(config_with(R"(, "hidden_size": 64.5)")) ==
        "cfg.json: \"hidden_size\" must be an integer, got a float (64.5)");
  CHECK(config_error(config_with(R"(, "num_hidden_layers": 2.0)")) ==
        "cfg.json: \"num_hidden_layers\" must be an integer, got a float (2.0)");
  CHECK(config_error(config_with(R"(, "rope_parameters": {"rope_theta": "big"})")) ==
        "cfg.json: \"rope_parameters.rope_theta\" must be a number, got a string (\"big\")");
  CHECK(config_error(config_with(R"(, "tie_word_embeddings": 1)")) ==
        "cfg.json: \"tie_word_embeddings\" must be true or false, got an integer (1)");
  CHECK(config_error("[1, 2]") == "cfg.json: must be an object, got an array");

  // adapter_config.json: r as a float.
  write_bytes(dir / "adapter_config.json", R"({"r": 8.5, "lora_alpha": 16, "target_modules": ["q_proj"]})");
  CHECK(thrown_message([&] { AdapterConfig::from_json_file(dir / "adapter_config.json"); }) ==
        dir / "adapter_config.json" + ": \"r\" must be an integer, got a float (8.5)");

  // trainer_state.json: the step as a float far beyond int64 (UBSan float-cast-overflow before).
  write_bytes(dir / "trainer_state.json", R"({"step": 1e30, "rng_seed": 1, "rng_offset": 0, "data_epoch": 0,
      "data_index": 0, "tokens_seen": 0})");
  AdamW opt({Var(Tensor::zeros({2, 2}), true, "a")}, AdamWConfig{});
  const std::string state_error = thrown_message([&] { load_checkpoint_state(dir.path, opt); });
  CHECK(state_error == dir / "trainer_state.json" + ": \"step\" = 1e+30 is outside [0, 9223372036854775807]");
  // ... and the fp16 loss scaler's keys: a scale beyond f32 (UB to convert), a dtype, skipped > step.
  auto state_with = [&](const std::string& extra) {
    write_bytes(dir / "trainer_state.json", R"({"step": 3, "rng_seed": 1, "rng_offset": 0, "data_epoch": 0,
        "data_index": 0, "tokens_seen": 0, )" + extra + "}");
    return thrown_message([&] { load_checkpoint_state(dir.path, opt); });
  };
  CHECK(state_with(R"("loss_scale": 1e300)") ==
        dir / "trainer_state.json" + ": \"loss_scale\" must be a positive f32 value, got 1e+300");
  CHECK(state_with(R"("loss_scale": -2)") ==
        dir / "trainer_state.json" + ": \"loss_scale\" must be a positive f32 value, got -2");
  CHECK(state_with(R"("compute_dtype": "f8")") ==
        dir / "trainer_state.json" + ": \"compute_dtype\" must be f32, bf16 or f16, got \"f8\"");
  CHECK(state_with(R"("skipped_steps": 4)") == dir / "trainer_state.json" + ": \"skipped_steps\" = 4 is outside [0, 3]");
  CHECK(state_with(R"("loss_scale_growth_tracker": 1.5)") ==
        dir / "trainer_state.json" + ": \"loss_scale_growth_tracker\" must be an integer, got a float (1.5)");

  // tokenizer.json: a token id as a float; tokenizer_config.json: a wrong type.
  nlohmann::json tok = byte_tokenizer();
  tok["model"]["vocab"]["a"] = 1.5;
  CHECK(tokenizer_error(dir, tok) == dir / "tokenizer.json" + ": \"model.vocab.a\" must be an integer, got a float (1.5)");
  const std::string cfg_error = tokenizer_error(dir, byte_tokenizer(), R"({"eos_token": {"content": 5}})");
  CHECK(cfg_error == dir / "tokenizer_config.json" + ": \"eos_token.content\" must be a string, got an integer (5)");
  CHECK(tokenizer_error(dir, byte_tokenizer(), "[\"eos\"]") ==
        dir / "tokenizer_config.json" + ": must be an object, got an array");
  tok = byte_tokenizer();
  tok["pre_tokenizer"] = {{"type", "Split"}, {"pattern", 7}, {"behavior", "Isolated"}};
  CHECK(tokenizer_error(dir, tok) == dir / "tokenizer.json" + ": \"pre_tokenizer.pattern\" must be an object, got an integer (7)");
}

TEST_CASE("hostile: integer overflow of a file's numbers is refused, never computed") {
  TempDir dir;
  // A shape whose element count overflows int64, and one whose bytes do.
  std::string e = safetensors_error(dir, safetensors_claiming("[4294967296, 4294967296]"));
  CHECK(has(e, "tensor 'w' of shape [4294967296,4294967296]: the shape's element count overflows int64"));
  e = safetensors_error(dir, safetensors_claiming("[2305843009213693952, 2]"));
  CHECK(has(e, "elements of 4 bytes overflow int64"));
  CHECK(one_line(e));
  // GGUF: the same shape in a tensor info.
  GGUFBuilder b;
  b.add_tensor("t", {uint64_t(1) << 32, uint64_t(1) << 32}, uint32_t(GGMLType::F32), std::string(32, '\0'));
  write_bytes(dir / "t.gguf", b.build());
  e = thrown_message([&] { GGUFFile::open(dir / "t.gguf"); });
  CHECK(e == dir / "t.gguf" + ": tensor 't': the shape's element count overflows int64");
  // A zero dimension does not hide the others' overflow (found by fuzz_gguf: the count was 0,
  // then the tensor's Shape multiplied from the outermost dimension and overflowed).
  GGUFBuilder z;
  z.add_tensor("t", {0, uint64_t(1) << 40, uint64_t(1) << 48}, uint32_t(GGMLType::F32), std::string(32, '\0'));
  write_bytes(dir / "z.gguf", z.build());
  e = thrown_message([&] { GGUFFile::open(dir / "z.gguf"); });
  CHECK(e == dir / "z.gguf" + ": tensor 't': the shape's element count overflows int64");
  e = safetensors_error(dir, safetensors_claiming("[1099511627776, 281474976710656, 0]"));
  CHECK(has(e, "the shape's element count overflows int64"));
  // A token id of 2^31 (int32 overflow) and a JSON number beyond int64.
  nlohmann::json tok = byte_tokenizer();
  tok["model"]["vocab"]["ab"] = 2147483648ll;
  CHECK(tokenizer_error(dir, tok) ==
        dir / "tokenizer.json" + ": \"model.vocab.ab\" = 2147483648 is outside [0, 4194303]");
  CHECK(config_error(config_with(R"(, "vocab_size": 99999999999999999999)")) ==
        "cfg.json: \"vocab_size\" = 1e+20 is outside [1, 4194304]");
  // A parameter count that would overflow (hidden 2^62): refused at the field.
  CHECK(config_error(config_with(R"(, "hidden_size": 4611686018427387904)")) ==
        "cfg.json: \"hidden_size\" = 4611686018427387904 is outside [1, 131072]");
  CHECK(config_error(config_with(R"(, "eos_token_id": [1, 4294967297])")) ==
        "cfg.json: \"eos_token_id[1]\" = 4294967297 is outside [0, 99]");
}

TEST_CASE("hostile: sizes a file claims are checked against limits and the file before anything is sized") {
  TempDir dir;
  // 10^9 layers: refused before parameter_specs or any allocation sees it.
  CHECK(config_error(config_with(R"(, "num_hidden_layers": 1000000000)")) ==
        "cfg.json: \"num_hidden_layers\" = 1000000000 is outside [1, 1024]");
  // The same claim in a GGUF (block_count).
  const std::string e = gguf_config_error(dir, [](GGUFBuilder& b) {
    for (const char* k : {"llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count"})
      b.add<uint32_t>(k, GGUFValueType::U32, 8);
    b.add<float>("llama.attention.layer_norm_rms_epsilon", GGUFValueType::F32, 1e-5f);
    b.add<uint32_t>("llama.vocab_size", GGUFValueType::U32, 16);
    b.add<uint32_t>("llama.block_count", GGUFValueType::U32, 1000000000);
  });
  CHECK(e == dir / "m.gguf" + ": \"num_hidden_layers\" = 1000000000 is outside [1, 1024] (metadata key 'llama.block_count')");
  // A NaN epsilon would have reached the config as JSON null, i.e. the default.
  CHECK(has(gguf_config_error(dir, [](GGUFBuilder& b) {
              b.add<float>("llama.attention.layer_norm_rms_epsilon", GGUFValueType::F32, NAN);
              for (const char* k : {"llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                                    "llama.attention.head_count"})
                b.add<uint32_t>(k, GGUFValueType::U32, 8);
            }),
            "llama.attention.layer_norm_rms_epsilon' is nan, not a finite number"));

  // A LoRA rank of 10^9, and a rank the tensors of the file do not have.
  write_bytes(dir / "adapter_config.json", R"({"r": 1000000000, "lora_alpha": 16, "target_modules": "q_proj"})");
  CHECK(thrown_message([&] { AdapterConfig::from_json_file(dir / "adapter_config.json"); }) ==
        dir / "adapter_config.json" + ": r = 1000000000 is above the largest supported rank 65536");
  write_bytes(dir / "adapter_config.json", R"({"r": 64, "lora_alpha": 16, "target_modules": "q_proj"})");
  save_safetensors(dir / "adapter_model.safetensors",
                   {{"base_model.model.q_proj.lora_A.weight", Tensor::zeros({8, 16})},
                    {"base_model.model.q_proj.lora_B.weight", Tensor::zeros({16, 8})}});
  const AdapterConfig cfg = AdapterConfig::from_json_file(dir / "adapter_config.json");
  CHECK(thrown_message([&] { read_peft_weights(dir.path, cfg, {{"q_proj", PeftModuleShape{16, 16}}}); }) ==
        dir / "adapter_model.safetensors: tensor base_model.model.q_proj.lora_A.weight has shape [8, 16], "
              "expected [64, 16]");
}

TEST_CASE("hostile: nesting deeper than kMaxJsonDepth is refused before anything recurses") {
  TempDir dir;
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  CHECK(thrown_message([&] { parse_json(deep, "x.json"); }) == "x.json: invalid JSON: nested deeper than 64 levels at byte 64");
  // Brackets inside strings are text, and 64 levels are fine.
  CHECK_NOTHROW(parse_json(R"({"a": "[[[[{{{{\"[[[["})", "x.json"));
  CHECK_NOTHROW(parse_json(std::string(64, '[') + std::string(64, ']'), "x.json"));

  // A checkpoint's train_config.json (was: a stack overflow in the copy).
  write_bytes(dir / "train_config.json", "{\"lr\": " + deep + "}");
  CHECK(thrown_message([&] { read_checkpoint_config(dir.path); }) ==
        dir / "train_config.json" + ": invalid JSON: nested deeper than 64 levels at byte 70");
  // A safetensors header's shape (was: a stack overflow in the error message's dump).
  CHECK(has(safetensors_error(dir, safetensors_claiming(deep)), ": header: invalid JSON: nested deeper than 64"));
  // A tokenizer normalizer nested in Sequences (was: unbounded parse_normalizer recursion).
  std::string nested = R"({"type": "NFC"})";
  for (int i = 0; i < 70; ++i) nested = R"({"type": "Sequence", "normalizers": [)" + nested + "]}";
  nlohmann::json tok = byte_tokenizer();
  std::string text = tok.dump();
  text.insert(1, "\"normalizer\": " + nested + ", ");
  write_bytes(dir / "tokenizer.json", text);
  CHECK(has(thrown_message([&] { Tokenizer::from_file(dir / "tokenizer.json"); }), "nested deeper than 64"));
}

TEST_CASE("hostile: an empty control token in a GGUF vocabulary is refused, not an endless encode") {
  // Encoding "a\0b" used to loop forever: the empty token "matched" at the NUL byte without advancing.
  std::vector<std::string> tokens = {"", "a", "b"};
  const std::string e = thrown_message([&] { Tokenizer::from_vocab(tokens, {}, {3, 1, 1}, "gpt2"); });
  CHECK(e == "GGUF vocabulary: added or control token 0 is empty");
  // Through the GGUF loader the error names the file.
  TempDir dir;
  GGUFBuilder b;
  b.add_string("tokenizer.ggml.model", "gpt2");
  b.add_string_array("tokenizer.ggml.tokens", tokens);
  b.add_i32_array("tokenizer.ggml.token_type", {3, 1, 1});
  write_bytes(dir / "v.gguf", b.build());
  CHECK(thrown_message([&] { gguf_tokenizer(GGUFFile::open(dir / "v.gguf")); }) ==
        dir / "v.gguf" + ": GGUF vocabulary: added or control token 0 is empty");
}

TEST_CASE("hostile: a Split pre-tokenizer with a String pattern loads and splits as HF tokenizers") {
  // tools/ref/make_split_string_fixtures.py: literals "." and "a*" (as regexes: any
  // character, and a run of a's), ids from tokenizers' own encode.
  const std::string dir = "tests/fixtures/tokenizer/split_string/";
  const Tokenizer tok = Tokenizer::from_file(dir + "tokenizer.json");
  const nlohmann::json expected = nlohmann::json::parse(read_file(dir + "expected.json"));
  REQUIRE(expected.size() >= 5);
  for (const auto& e : expected) {
    INFO(e["text"].get<std::string>());
    CHECK(tok.encode(e["text"].get<std::string>()) == e["ids"].get<std::vector<int32_t>>());
  }
}

// ---------------------------------------------------------------- saving and resuming

namespace {

TrainResult run_quietly(const TrainConfig& cfg) {
  std::ostringstream log;
  return train(cfg, log);
}

// Every file under `dir` (relative name -> bytes).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  return files;
}

}  // namespace

TEST_CASE("hostile: a save that fails at any byte (disk full) keeps the last checkpoint and adapter; the run resumes") {
  TinyRun t;
  t.cfg.max_steps = 4;
  t.cfg.save_every = 2;
  const TrainResult whole = run_quietly(t.cfg);  // checkpoint-2, checkpoint-4 and the adapter in OUT
  const std::string out = t.cfg.out;
  fs::remove_all(out + "/checkpoint-4");
  const auto checkpoint2 = snapshot(out + "/checkpoint-2");
  const std::string adapter = read_file(out + "/adapter_model.safetensors");
  const std::string adapter_config = read_file(out + "/adapter_config.json");
  int64_t checkpoint_bytes = 0;
  for (const auto& [name, bytes] : checkpoint2) checkpoint_bytes += int64_t(bytes.size());
  REQUIRE(checkpoint_bytes > 10000);

  TrainConfig resume = t.cfg;
  resume.resume = out + "/checkpoint-2";
  // The disk fills at byte N of the resumed run's saves: in checkpoint-4's adapter, its
  // optimizer state, its JSON files (checkpoint-4 is checkpoint-2's size plus the
  // --resume path), and, after a complete checkpoint-4, in the final adapter.
  for (int64_t n : {int64_t(0), int64_t(100), checkpoint_bytes / 2, checkpoint_bytes - 10, checkpoint_bytes + 1000}) {
    CAPTURE(n);
    set_write_fault_after(n);
    const std::string e = thrown_message([&] { run_quietly(resume); });
    set_write_fault_after(-1);
    CHECK(has(e, ".tmp: write failed: No space left on device"));
    CHECK(one_line(e));
    CHECK(snapshot(out + "/checkpoint-2") == checkpoint2);
    CHECK(read_file(out + "/adapter_model.safetensors") == adapter);
    CHECK(read_file(out + "/adapter_config.json") == adapter_config);
    CHECK_FALSE(fs::exists(out + "/.checkpoint-4.tmp"));
    if (n < checkpoint_bytes) {
      CHECK_FALSE(fs::exists(out + "/checkpoint-4"));
    } else {  // the final adapter's write failed; checkpoint-4 is complete
      CHECK(has(e, out + "/adapter_model.safetensors.tmp"));
      CHECK(fs::exists(out + "/checkpoint-4/train_config.json"));
      fs::remove_all(out + "/checkpoint-4");
    }
    for (const auto& f : fs::recursive_directory_iterator(out))
      CHECK_MESSAGE(f.path().extension() != ".tmp", f.path().string());
  }
  // Still resumable from checkpoint-2, to the same steps as the run that never failed.
  const TrainResult resumed = run_quietly(resume);
  REQUIRE(resumed.steps.size() == 2);
  CHECK(resumed.steps[0].loss == whole.steps[2].loss);
  CHECK(resumed.steps[1].loss == whole.steps[3].loss);
  CHECK(fs::exists(out + "/checkpoint-4/optimizer.safetensors"));
}

TEST_CASE("hostile: a stop just before a checkpoint folder is published leaves the one of the same step intact") {
  TinyRun t;
  t.cfg.max_steps = 2;
  t.cfg.save_every = 1;
  run_quietly(t.cfg);
  const auto before = snapshot(t.cfg.out + "/checkpoint-2");
  // Resumed from checkpoint-1, the run saves checkpoint-2 again: stop it just before the rename.
  TrainConfig again = t.cfg;
  again.resume = t.cfg.out + "/checkpoint-1";
  set_checkpoint_fault_hook([](const std::string& stage) {
    if (stage == "publish") throw Error("stopped before publishing");
  });
  const std::string e = thrown_message([&] { run_quietly(again); });
  set_checkpoint_fault_hook(nullptr);
  CHECK(e == "stopped before publishing");
  CHECK(snapshot(t.cfg.out + "/checkpoint-2") == before);
  CHECK_FALSE(fs::exists(t.cfg.out + "/.checkpoint-2.tmp"));
  // Saving over it (the atomic swap) works and leaves no old copy behind.
  run_quietly(again);
  CHECK(fs::exists(t.cfg.out + "/checkpoint-2/optimizer.safetensors"));
  CHECK_FALSE(fs::exists(t.cfg.out + "/.checkpoint-2.tmp"));
  CHECK_FALSE(fs::exists(t.cfg.out + "/checkpoint-2.old"));
}

TEST_CASE("hostile: a corrupt checkpoint is refused at --resume with one line naming the file") {
  TinyRun t;
  t.cfg.max_steps = 4;
  t.cfg.save_every = 2;
  run_quietly(t.cfg);
  const std::string ckpt = t.cfg.out + "/checkpoint-2";
  TrainConfig resume = t.cfg;
  resume.resume = ckpt;
  struct Corruption {
    std::string file;
    std::function<std::string(const std::string&)> edit;
    std::string expected;  // part of the message (besides the file's name)
  };
  const std::vector<Corruption> cases = {
      {"optimizer.safetensors", [](const std::string& s) { return s.substr(0, s.size() / 2); }, "truncated?"},
      {"optimizer.safetensors", [](const std::string& s) { return s.substr(0, 5); }, "shorter than the 8-byte header"},
      {"adapter_model.safetensors", [](const std::string& s) { return s.substr(0, s.size() - 1); }, "truncated?"},
      {"trainer_state.json", [](const std::string& s) { return s.substr(0, s.size() / 2); }, "invalid JSON"},
      {"trainer_state.json", [](const std::string&) { return R"({"step": 2, "rng_seed": 7})"; }, "missing field"},
      {"train_config.json", [](const std::string& s) { return s.substr(0, s.size() / 2); }, "invalid JSON"},
      {"train_config.json",
       [](const std::string& s) {
         nlohmann::json j = nlohmann::json::parse(s);
         j["r"] = 8.5;
         return j.dump();
       },
       "expected an integer"},
      {"train_config.json",
       [](const std::string& s) {
         nlohmann::json j = nlohmann::json::parse(s);
         j["lr"] = 0.5;
         return j.dump();
       },
       "option \"lr\" differs from the checkpoint's train_config.json"},
  };
  for (const Corruption& c : cases) {
    const std::string path = ckpt + "/" + c.file;
    const std::string original = read_file(path);
    write_bytes(path, c.edit(original));
    const std::string e = thrown_message([&] { run_quietly(resume); });
    write_bytes(path, original);
    INFO(c.file, ": ", e);
    CHECK(one_line(e));
    CHECK(has(e, c.file));
    CHECK(has(e, c.expected));
  }
  CHECK(run_quietly(resume).steps.size() == 2);  // the restored checkpoint resumes
}

namespace {

// Rewrites the safetensors file `path` with element 0 of `tensor` set to `value`.
void poison(const std::string& path, const std::string& tensor, float value) {
  std::vector<std::pair<std::string, Tensor>> all;
  {
    SafetensorsFile f = SafetensorsFile::open(path);
    REQUIRE(f.has(tensor));
    for (const std::string& name : f.names()) {
      Tensor t = f.get(name).clone();
      if (name == tensor) t.data<float>()[0] = value;
      all.emplace_back(name, t);
    }
  }
  save_safetensors(path, all);
}

}  // namespace

TEST_CASE("hostile: --detect-anomaly stops at the op where NaN/Inf appears, naming its layer; the last checkpoint stays") {
  TinyRun t;
  t.cfg.max_steps = 4;
  t.cfg.save_every = 2;
  run_quietly(t.cfg);
  const std::string out = t.cfg.out;
  fs::remove_all(out + "/checkpoint-4");
  const auto checkpoint2 = snapshot(out + "/checkpoint-2");
  const std::string adapter = read_file(out + "/adapter_model.safetensors");
  TrainConfig resume = t.cfg;
  resume.resume = out + "/checkpoint-2";

  // A base weight with Inf (layer 1's second norm): without the flag the loss says
  // something went wrong; with it, the first op whose output is not finite, and where.
  const std::string model = t.tmp / "model/model.safetensors";
  poison(model, "model.layers.1.post_attention_layernorm.weight", INFINITY);
  const std::string plain = thrown_message([&] { run_quietly(resume); });
  CHECK(has(plain, "step 3: loss is "));
  resume.detect_anomaly = true;
  std::string e = thrown_message([&] { run_quietly(resume); });
  CHECK(has(e, "step 3 (micro-batch 1 of 2): anomaly: the output of op "));
  CHECK(has(e, "non-finite values"));
  CHECK(has(e, "model.layers.1.post_attention_layernorm.weight"));
  CHECK(one_line(e));
  // The stop changed nothing on disk: checkpoint-2 is the last good one, resumable.
  CHECK(snapshot(out + "/checkpoint-2") == checkpoint2);
  CHECK(read_file(out + "/adapter_model.safetensors") == adapter);
  CHECK_FALSE(fs::exists(out + "/checkpoint-4"));
  poison(model, "model.layers.1.post_attention_layernorm.weight", 1.0f);  // the original value (norms are 1)

  // A LoRA weight with NaN in the adapter a run starts from: named too.
  const std::string lora = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  poison(out + "/checkpoint-2/adapter_model.safetensors", lora, NAN);
  e = thrown_message([&] { run_quietly(resume); });
  CHECK(has(e, "step 3 (micro-batch 1 of 2): anomaly: "));
  CHECK(has(e, "model.layers.0.self_attn.q_proj.lora_A.weight"));
}
