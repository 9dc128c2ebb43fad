// Writes the fuzz targets' seed corpora (tests/fuzz/corpus/TARGET/*) with the project's
// own writers and tiny shapes, so every seed is a valid input a few KB long that the
// fuzzer mutates from: `make fuzz-seeds` (run from the repository root; it replaces the
// seeds it writes and leaves other files in the corpus folders alone).
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <array>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/bnb_4bit.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "optim/adamw.h"
#include "quant/nf4.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/gguf_builder.h"
#include "training/train_config.h"

using namespace nq;

namespace {

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  NQ_CHECK(f.good(), path, ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void seed(const std::string& target, const std::string& name, const std::vector<std::string>& files) {
  const std::string dir = "tests/fuzz/corpus/" + target;
  mkdir("tests/fuzz/corpus", 0755);
  mkdir(dir.c_str(), 0755);
  std::string bytes;
  for (size_t i = 0; i < files.size(); ++i) bytes += (i ? std::string(fuzz::kFileSeparator) : "") + files[i];
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
  std::cout << dir << "/" << name << ": " << bytes.size() << " bytes\n";
}

// save_safetensors to a scratch file, returned as bytes.
std::string safetensors_bytes(const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  const std::string path = fuzz::scratch_dir() + "/seed.safetensors";
  save_safetensors(path, tensors, metadata);
  return read(path);
}

Tensor ramp(Shape shape, float scale = 0.01f) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = scale * float((i * 7) % 13 - 6);
  return t;
}

ModelConfig tiny_config(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.hidden_size = 8, c.intermediate_size = 16, c.num_layers = 1, c.num_heads = 2, c.num_kv_heads = 1;
  c.head_dim = 4, c.vocab_size = 104, c.max_position_embeddings = 64, c.tie_word_embeddings = true;
  c.bos_token_id = 1, c.eos_token_ids = {2};
  return c;
}

// A tiny Llama GGUF with a byte-level vocabulary (3 control tokens, the printable ASCII
// bytes, a few merges) and a chat template, f32 tensors.
std::string tiny_gguf() {
  const ModelConfig c = tiny_config("llama");
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::vector<int32_t> types = {3, 3, 3};
  for (char ch = 33; ch < 127; ++ch) tokens.push_back(std::string(1, ch)), types.push_back(1);
  for (const char* t : {"Ġ", "Ċ", "Ġt", "he", "Ġthe"}) tokens.push_back(t), types.push_back(1);
  GGUFBuilder b;
  b.add_string("general.architecture", "llama");
  auto u32 = [&](const std::string& key, int64_t v) { b.add<uint32_t>(key, GGUFValueType::U32, uint32_t(v)); };
  u32("llama.block_count", c.num_layers);
  u32("llama.context_length", c.max_position_embeddings);
  u32("llama.embedding_length", c.hidden_size);
  u32("llama.feed_forward_length", c.intermediate_size);
  u32("llama.attention.head_count", c.num_heads);
  u32("llama.attention.head_count_kv", c.num_kv_heads);
  b.add<float>("llama.rope.freq_base", GGUFValueType::F32, 10000.0f);
  b.add<float>("llama.attention.layer_norm_rms_epsilon", GGUFValueType::F32, 1e-5f);
  u32("llama.vocab_size", int64_t(tokens.size()));
  b.add_string("tokenizer.ggml.model", "gpt2");
  b.add_string("tokenizer.ggml.pre", "smollm");
  b.add_string_array("tokenizer.ggml.tokens", tokens);
  b.add_string_array("tokenizer.ggml.merges", {"Ġ t", "h e", "Ġt he"});
  b.add_i32_array("tokenizer.ggml.token_type", types);
  u32("tokenizer.ggml.bos_token_id", 1);
  u32("tokenizer.ggml.eos_token_id", 2);
  b.add<uint8_t>("tokenizer.ggml.add_bos_token", GGUFValueType::BOOL, 0);
  b.add_string("tokenizer.chat_template",
               "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n'}}{% endfor %}");
  ModelConfig vc = c;
  vc.vocab_size = int64_t(tokens.size());
  for (const ParamSpec& s : parameter_specs(vc)) {
    std::string gguf = s.name;
    static const std::vector<std::pair<std::string, std::string>> renames = {
        {"model.embed_tokens.weight", "token_embd.weight"}, {"model.norm.weight", "output_norm.weight"},
        {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
        {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
        {"model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"},
        {"model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"},
        {"model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"},
        {"model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"},
        {"model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"},
        {"model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"},
        {"model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"}};
    for (const auto& [hf, g] : renames)
      if (hf == s.name) gguf = g;
    Tensor t = ramp(s.shape);
    std::vector<uint64_t> ne;
    for (int d = s.shape.ndim - 1; d >= 0; --d) ne.push_back(uint64_t(s.shape[d]));
    b.add_tensor(gguf, ne, uint32_t(GGMLType::F32), std::string(static_cast<const char*>(t.raw()), size_t(t.nbytes())));
  }
  return b.build();
}

// A tiny byte-level BPE tokenizer.json: NFC, a Split on a literal and the ByteLevel
// pre-tokenizer, the 256 byte tokens, two merges, two added tokens.
std::string tiny_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  std::array<uint32_t, 256> cp{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cp[b] = printable ? b : next++;
  }
  auto utf8 = [](uint32_t c) {
    std::string s;
    if (c < 0x80) s += char(c);
    else if (c < 0x800) s += char(0xC0 | (c >> 6)), s += char(0x80 | (c & 0x3F));
    else s += char(0xE0 | (c >> 12)), s += char(0x80 | ((c >> 6) & 0x3F)), s += char(0x80 | (c & 0x3F));
    return s;
  };
  for (uint32_t b = 0; b < 256; ++b) vocab[utf8(cp[b])] = b;
  vocab["he"] = 256;
  vocab[utf8(cp[' ']) + "t"] = 257;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 258}, {"content", "<|im_start|>"}, {"special", true}, {"normalized", false}},
        {{"id", 259}, {"content", "<|im_end|>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"String", "."}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"h e", utf8(cp[' ']) + " t"}}, {"ignore_merges", false}}}};
  return j.dump();
}

}  // namespace

int main() {
  try {
    // safetensors: a file of every dtype with metadata; a sharded index naming it.
    std::vector<std::pair<std::string, Tensor>> all = {{"a.f32", ramp({2, 3})}, {"b.bf16", ramp({4}).to_dtype(DType::BF16)},
                                                       {"c.f16", ramp({1, 2, 2}).to_dtype(DType::F16)},
                                                       {"d.i32", Tensor::from_ids({1, 2, 3}, {3})}, {"e.empty", ramp({0, 4})}};
    const std::string st = safetensors_bytes(all, {{"format", "pt"}});
    seed("fuzz_safetensors", "dtypes", {st});
    seed("fuzz_safetensors", "sharded", {st, R"({"metadata": {"total_size": 64}, "weight_map": {"a.f32": "model.safetensors"}})"});
    seed("fuzz_safetensors", "fixture_single", {read("tests/fixtures/safetensors/single.safetensors")});

    const std::string gguf = tiny_gguf();
    seed("fuzz_gguf", "tiny_llama", {gguf});
    seed("fuzz_gguf", "fixture_tiny", {read("tests/fixtures/gguf/tiny.gguf")});
    seed("fuzz_gguf_model", "tiny_llama", {gguf});
    // A qwen3moe file as gguf-py writes it: 3-D expert tensors (tools/ref/make_gguf_moe_fixtures.py).
    seed("fuzz_gguf_model", "tiny_qwen3moe_q8_0", {read("tests/fixtures/gguf_moe/tiny_q8_0.gguf")});

    for (const char* m : {"llama", "qwen3_tied", "qwen3_untied_bias"})
      seed("fuzz_config", m, {read(str("tests/fixtures/model/", m, "/config.json"))});
    seed("fuzz_config", "transformers5", {tiny_config("qwen3").to_hf_json()});
    seed("fuzz_config", "yarn_transformers5", {read("tests/fixtures/rope_scaling/qwen3_yarn/config.json")});
    seed("fuzz_config", "yarn_hub", {read("tests/fixtures/rope_scaling/qwen3_yarn/hub_config.json")});
    {  // Qwen3-MoE as transformers 5 saves it (num_local_experts, a dense layer), and our hub spelling
      const nlohmann::json moe = nlohmann::json::parse(read("tests/fixtures/moe/configs.json"));
      seed("fuzz_config", "moe_transformers5", {moe["dense_layer_1"]["config_json"].dump(1)});
      seed("fuzz_config", "moe_hub", {ModelConfig::from_json(moe["sparse_step_2"]["config_json"].dump(), "seed").to_hf_json()});
    }

    seed("fuzz_tokenizer", "tiny_split_string", {tiny_tokenizer_json(), R"({"eos_token": "<|im_end|>", "bos_token": null,
        "pad_token": {"content": "<|im_start|>"}, "chat_template": "x"})"});

    seed("fuzz_encode", "mixed", {"Hello, world! It's 2024-06-01.\n\n  def f(x):\n\treturn x**2  # ok\n"
                                  "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x98\x80 "
                                  "e\xCC\x81 caf\xC3\xA9 <|im_start|>user<|im_end|> <think>"});
    seed("fuzz_chat", "conversation", {std::string("\x00You are brief.", 15) + '\0' + "\x01Hi <b>there</b>" + '\0' +
                                       "\x02<think>\nhm\n</think>\n\nHello!" + '\0' + "\x01" "Bye"});
    seed("fuzz_chat", "smol_template", {"{% for message in messages %}{% if loop.first and messages[0]['role'] != "
                                        "'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named "
                                        "SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' "
                                        "+ message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"});

    const char* kFormats[] = {"messages", "prompt_completion", "alpaca", "text"};
    for (int i = 0; i < 4; ++i) {
      const std::string name = kFormats[i];
      const std::string file = str("tests/fixtures/model/qwen3_tied/eval_", name, ".jsonl");
      seed("fuzz_data", name, {std::string(1, char(i * 5)) + read(file)});
    }

    seed("fuzz_adapter", "fixture_dropout",
         {read("tests/fixtures/dropout_adapter/adapter/adapter_config.json"),
          read("tests/fixtures/dropout_adapter/adapter/adapter_model.safetensors")});
    // PEFT 0.21's fused-expert adapters on the tiny Qwen3-MoE (tools/ref/make_moe_fixtures.py).
    for (const char* name : {"renorm/adapter", "renorm/adapter_final", "plain/adapter"}) {
      const std::string dir = str("tests/fixtures/moe/", name);
      std::string seed_name = name;
      std::replace(seed_name.begin(), seed_name.end(), '/', '_');
      seed("fuzz_moe_adapter", seed_name,
           {read(dir + "/adapter_config.json"), read(dir + "/adapter_model.safetensors")});
    }

    // A 4-bit checkpoint of the tiny Qwen3: projections NF4 (double quant), the rest dense f32.
    {
      ModelConfig c = tiny_config("qwen3");
      c.head_dim = 4;
      std::vector<std::pair<std::string, Tensor>> tensors;
      for (const ParamSpec& s : parameter_specs(c)) {
        Tensor w = ramp(s.shape);
        if (!is_projection_weight(s.name)) { tensors.emplace_back(s.name, w); continue; }
        Nf4Tensor q = quantize_nf4(w.data<float>(), w.size(0), w.size(1), 64, true, s.name);
        for (auto& [name, t] : nf4_to_state_dict(q, s.name)) tensors.emplace_back(name, t);
      }
      nlohmann::json config = nlohmann::json::parse(c.to_hf_json());
      config["quantization_config"] = nlohmann::json::parse(Bnb4bitConfig{}.to_json());
      seed("fuzz_bnb", "tiny_qwen3_nf4", {config.dump(1), safetensors_bytes(tensors, {{"format", "pt"}})});
    }

    // A trainer checkpoint of the fuzz target's AdamW (parameters "a" [4, 8], "b" [8, 4]).
    {
      AdamW opt({Var(ramp({4, 8}), true, "a"), Var(ramp({8, 4}), true, "b")}, AdamWConfig{});
      std::vector<std::pair<std::string, Tensor>> state;
      for (auto& [k, t] : opt.state_dict()) state.emplace_back(k, t);
      TrainConfig cfg;
      cfg.model = "m.gguf", cfg.data = "d.jsonl";
      const nlohmann::json st = {{"step", 3}, {"rng_seed", 42}, {"rng_offset", 1024}, {"data_epoch", 0},
                                 {"data_index", 12}, {"tokens_seen", 4096}};
      seed("fuzz_checkpoint", "step3", {st.dump(1), cfg.to_json(), safetensors_bytes(state)});
      // An fp16 run's: the loss scaler's keys (training/checkpoint.h)
      nlohmann::json fp16 = st;
      fp16["compute_dtype"] = "f16", fp16["loss_scale"] = 32768.0, fp16["loss_scale_growth_tracker"] = 1,
      fp16["skipped_steps"] = 1;
      cfg.dtype = "float16";
      seed("fuzz_checkpoint", "step3_fp16", {fp16.dump(1), cfg.to_json(), safetensors_bytes(state)});
    }
  } catch (const Error& e) {
    std::cerr << "make_seeds: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
