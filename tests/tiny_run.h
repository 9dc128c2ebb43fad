// A tiny training run for the trainer and eval tests: a random Qwen3 (D 32,
// 2 layers, GQA 4/2, vocab 1003) written into a temp folder with the small
// test BPE tokenizer (tests/fixtures/tokenizer/gpt2, which has the ChatML
// tokens; EOS <|im_end|>), 16 short chats, and a TrainConfig that trains on them.
#pragma once
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "runtime/philox.h"
#include "formats/safetensors.h"
#include "tests/temp_dir.h"
#include "training/train_config.h"

namespace nq::test {

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  REQUIRE(f.good());
}

// A tiny random Qwen3 (D 32, 2 layers, GQA 4/2) with the test tokenizer, in `dir`.
inline void write_tiny_model(const std::string& dir) {
  const std::string tok_dir = "tests/fixtures/tokenizer/gpt2/";
  std::filesystem::copy_file(tok_dir + "tokenizer.json", dir + "/tokenizer.json");
  write_file(dir + "/tokenizer_config.json", R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})");
  const int64_t V = 1003, D = 32, F = 48, L = 2, Hq = 4, Hkv = 2, Dh = 16;
  write_file(dir + "/config.json", nlohmann::json{{"model_type", "qwen3"}, {"hidden_size", D},
                                                  {"intermediate_size", F}, {"num_hidden_layers", L},
                                                  {"num_attention_heads", Hq}, {"num_key_value_heads", Hkv},
                                                  {"head_dim", Dh}, {"vocab_size", V}, {"tie_word_embeddings", true},
                                                  {"rope_theta", 10000.0}, {"rms_norm_eps", 1e-6},
                                                  {"max_position_embeddings", 256}, {"hidden_act", "silu"},
                                                  {"torch_dtype", "float32"}}
                                       .dump());
  uint64_t stream = 0;
  auto random = [&](Shape shape, float scale) {  // U(-scale, scale), Philox seed 99
    Tensor t = Tensor::empty(shape);
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = scale * (2.0f * philox_uniform(99, stream, uint64_t(i)) - 1.0f);
    stream += uint64_t(t.numel());
    return t;
  };
  std::vector<std::pair<std::string, Tensor>> w;
  w.emplace_back("model.embed_tokens.weight", random({V, D}, 0.5f));
  w.emplace_back("model.norm.weight", Tensor::full({D}, 1.0f));
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = str("model.layers.", l, ".");
    w.emplace_back(p + "input_layernorm.weight", Tensor::full({D}, 1.0f));
    w.emplace_back(p + "post_attention_layernorm.weight", Tensor::full({D}, 1.0f));
    w.emplace_back(p + "self_attn.q_norm.weight", Tensor::full({Dh}, 1.0f));
    w.emplace_back(p + "self_attn.k_norm.weight", Tensor::full({Dh}, 1.0f));
    w.emplace_back(p + "self_attn.q_proj.weight", random({Hq * Dh, D}, 0.2f));
    w.emplace_back(p + "self_attn.k_proj.weight", random({Hkv * Dh, D}, 0.2f));
    w.emplace_back(p + "self_attn.v_proj.weight", random({Hkv * Dh, D}, 0.2f));
    w.emplace_back(p + "self_attn.o_proj.weight", random({D, Hq * Dh}, 0.2f));
    w.emplace_back(p + "mlp.gate_proj.weight", random({F, D}, 0.2f));
    w.emplace_back(p + "mlp.up_proj.weight", random({F, D}, 0.2f));
    w.emplace_back(p + "mlp.down_proj.weight", random({D, F}, 0.2f));
  }
  save_safetensors(dir + "/model.safetensors", w);
}

// 16 short chats, one per line; sample i's answer has i words.
inline std::string chat_jsonl(int n = 16) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    std::string answer = "Answer:";
    for (int k = 0; k <= i; ++k) answer += str(" word", k);
    s += nlohmann::json{{"messages", {{{"role", "user"}, {"content", str("Question number ", i, "?")}},
                                      {{"role", "assistant"}, {"content", answer}}}}}
             .dump() +
         "\n";
  }
  return s;
}

// The error a program's flag parser (parse_train_args, parse_eval_args) gives for
// `args` after argv[0] = `program`, or "(no error)".
template <typename Config, typename Parse>
std::string flag_error(const char* program, std::vector<std::string> args, Parse parse) {
  std::vector<char*> argv{const_cast<char*>(program)};
  for (std::string& a : args) argv.push_back(a.data());
  Config cfg;
  return thrown_message([&] { parse(int(argv.size()), argv.data(), &cfg); });
}

// A temp folder with the tiny model and data, and a config that trains on them.
struct TinyRun {
  TempDir tmp;
  TrainConfig cfg;
  TinyRun() {
    std::filesystem::create_directory(tmp / "model");
    write_tiny_model(tmp / "model");
    write_file(tmp / "train.jsonl", chat_jsonl());
    cfg.model = tmp / "model";
    cfg.data = tmp / "train.jsonl";
    cfg.out = tmp / "out";
    cfg.r = 4;
    cfg.alpha = 8;
    cfg.dropout = 0.1;  // exercises the RNG replay on resume
    cfg.lr = 2e-3;
    cfg.warmup_steps = 1;
    cfg.max_steps = 6;
    cfg.batch_size = 2;
    cfg.grad_accum = 2;
    cfg.max_length = 48;
    cfg.seed = 7;
    cfg.no_progress = true;
    cfg.device = "cpu";  // the reference run; the GPU tests below set cuda
  }
};

}  // namespace nq::test
