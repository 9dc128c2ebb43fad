// model/gguf_model + model/load_model + model/chat_format.
//
// Always: the tiny Llama and Qwen3 (with biases, q/k norms, head_dim != D/heads)
// of tests/fixtures/model are written here as GGUFs the way convert_hf_to_gguf
// does it (llama's Q/K rows permuted, F32 / F16 / Q8_0 tensors, llama.cpp names
// and metadata, a small byte-level vocabulary). Loaded
// back, its config must equal the config.json's, its weights must equal the
// safetensors weights rounded through the same types (bit for bit: the block
// decoders are exact), and so must the decoder's logits. Then bad files.
//
// Qwen3-MoE: tests/fixtures/gguf_moe (tools/ref/make_gguf_moe_fixtures.py), a tiny qwen3moe
// GGUF written by gguf-py's GGUFWriter in F32 and Q8_0, loads to the HF config and to
// transformers' and llama.cpp's logits; inconsistent expert counts are errors.
//
// When .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf exists (`make model`):
// tokenizer ids, chat renderings, logits and 32 greedy tokens against what
// transformers computes from the same file (tests/fixtures/smollm2, written by
// tools/ref/make_smollm2_fixtures.py).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "model/decoder.h"
#include "model/generate.h"
#include "model/gguf_model.h"
#include "model/load_model.h"
#include "runtime/half.h"
#include "formats/safetensors.h"
#include "tests/gguf_builder.h"
#include "tests/nf4_compare.h"
#include "tests/temp_dir.h"

using namespace nq;

namespace {

const std::string kLlamaDir = "tests/fixtures/model/llama";

// ------------------------------------------------------------ test-side encoders

// convert_hf_to_gguf's permutation of Q/K rows: in each head of d rows,
// GGUF row 2i + j = HF row j * d/2 + i (the reader must undo this).
std::vector<float> permute_rows(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t heads) {
  std::vector<float> out(w.size());
  const int64_t d = rows / heads, half = d / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(&out[size_t((h * d + 2 * i + j) * cols)], &w[size_t((h * d + j * half + i) * cols)],
                    size_t(cols) * 4);
  return out;
}

// ggml's reference Q8_0 quantizer: blocks of 32, d = max|x| / 127 (stored as f16),
// q = round(x / d). `rounded` receives what a decoder must return: q * f16(d).
std::string quantize_q8_0(const std::vector<float>& x, std::vector<float>& rounded) {
  std::string bytes;
  rounded.resize(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    const uint16_t d16 = f32_to_f16(d);
    GGUFBuilder::put<uint16_t>(bytes, d16);
    for (size_t j = 0; j < 32; ++j) {
      const int8_t q = int8_t(std::lround(x[b + j] * id));
      GGUFBuilder::put<int8_t>(bytes, q);
      rounded[b + j] = float(q) * f16_to_f32(d16);
    }
  }
  return bytes;
}

std::string encode_f16(const std::vector<float>& x, std::vector<float>& rounded) {
  std::string bytes;
  rounded.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t h = f32_to_f16(x[i]);
    GGUFBuilder::put<uint16_t>(bytes, h);
    rounded[i] = f16_to_f32(h);
  }
  return bytes;
}

std::string encode_f32(const std::vector<float>& x, std::vector<float>& rounded) {
  rounded = x;
  return std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4);
}

// ------------------------------------------------------------ the tiny GGUF

// A small byte-level vocabulary: 3 control tokens, the printable ASCII bytes,
// space (Ġ) and newline (Ċ) in GPT-2's byte alphabet, and merges building "Ġthe".
struct TinyVocab {
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::vector<std::string> merges = {"Ġ t", "h e", "Ġt he"};
  std::vector<int32_t> types = {3, 3, 3};
  TinyVocab() {
    for (char c = 33; c < 127; ++c) tokens.push_back(std::string(1, c)), types.push_back(1);
    for (const char* t : {"Ġ", "Ċ", "Ġt", "he", "Ġthe"}) tokens.push_back(t), types.push_back(1);
  }
  int32_t id(const std::string& token) const {
    return int32_t(std::find(tokens.begin(), tokens.end(), token) - tokens.begin());
  }
};

const char* kSmolTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a tiny test model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}";

// What to change in the otherwise faithful file (bad-input tests).
struct Variant {
  std::string model_dir = kLlamaDir;  // the HF fixture to convert
  std::string architecture;           // "" = the config's model_type
  std::string skip_key, skip_tensor;
  std::vector<std::pair<std::string, std::string>> extra_strings;  // more string metadata
  int64_t rope_dims = 0;              // 0 = head_dim
  std::string tokenizer_model = "gpt2";
  bool rope_freqs_tensor = false;
};

struct TinyGGUF {
  std::string bytes;
  ModelConfig config;  // the config.json
  TensorMap expected;  // the HF weights rounded through each tensor's GGUF type
};

// A HF fixture model as convert_hf_to_gguf would write it. Types: norms and
// biases F32; q/k F16; v/o/gate/up and the embedding Q8_0 when rows split into
// blocks of 32 (else F16); down F16; lm_head F32. llama's Q/K rows are permuted.
TinyGGUF tiny_gguf(const Variant& v = {}) {
  TinyGGUF out;
  out.config = ModelConfig::from_file(v.model_dir + "/config.json");
  const ModelConfig& c = out.config;
  const TensorMap hf = load_weights(v.model_dir, c);
  GGUFBuilder b;
  auto u32 = [&](const std::string& key, int64_t x) {
    if (key != v.skip_key) b.add<uint32_t>(key, GGUFValueType::U32, uint32_t(x));
  };
  auto f32 = [&](const std::string& key, float x) {
    if (key != v.skip_key) b.add<float>(key, GGUFValueType::F32, x);
  };
  auto string = [&](const std::string& key, const std::string& x) {
    if (key != v.skip_key) b.add_string(key, x);
  };
  const std::string arch = v.architecture.empty() ? c.model_type : v.architecture, a = arch + ".";
  string("general.architecture", arch);
  u32(a + "block_count", c.num_layers);
  u32(a + "context_length", c.max_position_embeddings);
  u32(a + "embedding_length", c.hidden_size);
  u32(a + "feed_forward_length", c.intermediate_size);
  u32(a + "attention.head_count", c.num_heads);
  u32(a + "attention.head_count_kv", c.num_kv_heads);
  if (c.head_dim != c.hidden_size / c.num_heads) u32(a + "attention.key_length", c.head_dim);
  f32(a + "rope.freq_base", c.rope_theta);
  f32(a + "attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  u32(a + "rope.dimension_count", v.rope_dims ? v.rope_dims : c.head_dim);
  u32(a + "vocab_size", c.vocab_size);
  for (const auto& [key, value] : v.extra_strings) string(key, value);
  const TinyVocab vocab;
  string("tokenizer.ggml.model", v.tokenizer_model);
  string("tokenizer.ggml.pre", "smollm");
  b.add_string_array("tokenizer.ggml.tokens", vocab.tokens);
  b.add_string_array("tokenizer.ggml.merges", vocab.merges);
  b.add_i32_array("tokenizer.ggml.token_type", vocab.types);
  u32("tokenizer.ggml.bos_token_id", 1);
  u32("tokenizer.ggml.eos_token_id", 2);
  u32("tokenizer.ggml.padding_token_id", 0);
  b.add<uint8_t>("tokenizer.ggml.add_bos_token", GGUFValueType::BOOL, 0);
  string("tokenizer.chat_template", kSmolTemplate);

  const uint32_t F32 = uint32_t(GGMLType::F32), F16 = uint32_t(GGMLType::F16), Q8 = uint32_t(GGMLType::Q8_0);
  const bool permute = c.model_type == "llama";
  auto tensor = [&](const std::string& gguf, const std::string& name, uint32_t type, int64_t permute_heads) {
    const Tensor& t = hf.at(name);
    std::vector<float> x = t.to_vector(), rounded;
    const int64_t rows = t.shape()[0], cols = t.shape().ndim == 2 ? t.shape()[1] : 1;
    if (type == Q8 && cols % 32 != 0) type = F16;
    if (!permute) permute_heads = 0;
    std::vector<float> stored = permute_heads ? permute_rows(x, rows, cols, permute_heads) : x;
    std::string bytes = type == Q8    ? quantize_q8_0(stored, rounded)
                        : type == F16 ? encode_f16(stored, rounded)
                                      : encode_f32(stored, rounded);
    // The rounding of the permuted rows, back in HF order (rounding is per element or
    // per block of a row, so it commutes with moving whole rows).
    std::vector<float> hf_order(rounded.size());
    if (permute_heads) {
      const int64_t d = rows / permute_heads, half = d / 2;
      for (int64_t h = 0; h < permute_heads; ++h)
        for (int64_t i = 0; i < half; ++i)
          for (int64_t j = 0; j < 2; ++j)
            std::memcpy(&hf_order[size_t((h * d + j * half + i) * cols)],
                        &rounded[size_t((h * d + 2 * i + j) * cols)], size_t(cols) * 4);
    } else {
      hf_order = rounded;
    }
    Tensor e = Tensor::empty(t.shape(), DType::F32, Device::CPU);
    std::memcpy(e.data<float>(), hf_order.data(), hf_order.size() * 4);
    out.expected[name] = e;
    if (gguf == v.skip_tensor) return;
    std::vector<uint64_t> ne = t.shape().ndim == 2 ? std::vector<uint64_t>{uint64_t(cols), uint64_t(rows)}
                                                   : std::vector<uint64_t>{uint64_t(rows)};
    b.add_tensor(gguf, ne, type, bytes);
  };
  tensor("token_embd.weight", "model.embed_tokens.weight", Q8, 0);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string g = str("blk.", l, "."), h = str("model.layers.", l, ".");
    tensor(g + "attn_norm.weight", h + "input_layernorm.weight", F32, 0);
    tensor(g + "attn_q.weight", h + "self_attn.q_proj.weight", F16, c.num_heads);
    tensor(g + "attn_k.weight", h + "self_attn.k_proj.weight", F16, c.num_kv_heads);
    tensor(g + "attn_v.weight", h + "self_attn.v_proj.weight", Q8, 0);
    tensor(g + "attn_output.weight", h + "self_attn.o_proj.weight", Q8, 0);
    if (c.attention_bias) {
      tensor(g + "attn_q.bias", h + "self_attn.q_proj.bias", F32, c.num_heads);
      tensor(g + "attn_k.bias", h + "self_attn.k_proj.bias", F32, c.num_kv_heads);
      tensor(g + "attn_v.bias", h + "self_attn.v_proj.bias", F32, 0);
      tensor(g + "attn_output.bias", h + "self_attn.o_proj.bias", F32, 0);
    }
    if (c.qk_norm()) {
      tensor(g + "attn_q_norm.weight", h + "self_attn.q_norm.weight", F32, 0);
      tensor(g + "attn_k_norm.weight", h + "self_attn.k_norm.weight", F32, 0);
    }
    tensor(g + "ffn_norm.weight", h + "post_attention_layernorm.weight", F32, 0);
    tensor(g + "ffn_gate.weight", h + "mlp.gate_proj.weight", Q8, 0);
    tensor(g + "ffn_up.weight", h + "mlp.up_proj.weight", Q8, 0);
    tensor(g + "ffn_down.weight", h + "mlp.down_proj.weight", F16, 0);
  }
  tensor("output_norm.weight", "model.norm.weight", F32, 0);
  if (!c.tie_word_embeddings) tensor("output.weight", "lm_head.weight", F32, 0);
  if (v.rope_freqs_tensor) b.add_tensor("rope_freqs.weight", {4}, F32, std::string(16, '\0'));
  out.bytes = b.build();
  return out;
}

std::string write_file(const TempDir& dir, const std::string& bytes) {
  std::string path = dir / "tiny.gguf";
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

// The message load_model throws for this variant ("" when it loads).
std::string load_error(const Variant& v) {
  TempDir dir;
  const std::string path = write_file(dir, tiny_gguf(v).bytes);
  try {
    load_model(path);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);  // names the file
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data<float>(), b.data<float>(), size_t(a.numel()) * 4) == 0;
}

}  // namespace

// The dense part of a config read from GGUF against the HF config of the same model.
static void check_same_dense_config(const ModelConfig& c, const ModelConfig& hf) {
  CHECK(c.num_layers == hf.num_layers);
  CHECK(c.hidden_size == hf.hidden_size);
  CHECK(c.intermediate_size == hf.intermediate_size);
  CHECK(c.num_heads == hf.num_heads);
  CHECK(c.num_kv_heads == hf.num_kv_heads);
  CHECK(c.head_dim == hf.head_dim);
  CHECK(c.vocab_size == hf.vocab_size);
  CHECK(c.rope_theta == hf.rope_theta);
  CHECK(c.rms_norm_eps == hf.rms_norm_eps);
  CHECK(c.tie_word_embeddings == hf.tie_word_embeddings);
  CHECK(c.attention_bias == hf.attention_bias);
  CHECK(c.max_position_embeddings == hf.max_position_embeddings);
  CHECK(c.bos_token_id == hf.bos_token_id);
  CHECK(c.eos_token_ids == hf.eos_token_ids);
}

TEST_CASE("GGUF tensor names map to Hugging Face names") {
  CHECK(gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight");
  CHECK(gguf_to_hf_name("output.weight") == "lm_head.weight");
  CHECK(gguf_to_hf_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight");
  CHECK(gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight");
  CHECK(gguf_to_hf_name("blk.3.attn_k_norm.weight") == "model.layers.3.self_attn.k_norm.weight");
  CHECK(gguf_to_hf_name("blk.x.ffn_up.weight") == "");
  CHECK(gguf_to_hf_name("rope_freqs.weight") == "");
  // Qwen3-MoE: the router is one tensor; a 3-D expert tensor is E of them.
  CHECK(gguf_to_hf_name("blk.1.ffn_gate_inp.weight") == "model.layers.1.mlp.gate.weight");
  CHECK(hf_to_gguf_name("model.layers.1.mlp.gate.weight") == "blk.1.ffn_gate_inp.weight");
  CHECK(gguf_to_hf_name("blk.0.ffn_gate_exps.weight") == "");
  CHECK(gguf_expert_to_hf_name("blk.0.ffn_gate_exps.weight", 0) == "model.layers.0.mlp.experts.0.gate_proj.weight");
  CHECK(gguf_expert_to_hf_name("blk.2.ffn_up_exps.weight", 7) == "model.layers.2.mlp.experts.7.up_proj.weight");
  CHECK(gguf_expert_to_hf_name("blk.3.ffn_down_exps.weight", 12) == "model.layers.3.mlp.experts.12.down_proj.weight");
  CHECK(gguf_expert_to_hf_name("blk.0.ffn_up.weight", 0) == "");
  CHECK(gguf_expert_to_hf_name("blk.x.ffn_up_exps.weight", 0) == "");
}

TEST_CASE("tiny Llama / Qwen3 GGUF: config, weights and logits equal the safetensors model") {
  for (const char* name : {"llama", "qwen3_untied_bias"}) {
    INFO("fixture ", name);
    Variant v;
    v.model_dir = std::string("tests/fixtures/model/") + name;
    TinyGGUF tiny = tiny_gguf(v);
    TempDir dir;
    LoadedModel m = load_model(write_file(dir, tiny.bytes));
    const ModelConfig& hf = tiny.config;
    const ModelConfig& c = m.config;
    CHECK(c.model_type == hf.model_type);
    check_same_dense_config(c, hf);
    CHECK_FALSE(c.prepends_bos());  // tokenizer.ggml.add_bos_token = false

    // Every weight is the safetensors weight rounded through its GGUF type, in HF row order.
    REQUIRE(m.weights.size() == tiny.expected.size());
    for (const auto& [param, want] : tiny.expected) {
      INFO(param);
      REQUIRE(m.weights.count(param));
      CHECK(same_bits(m.weights.at(param), want));
    }
    // Hence the same logits, bit for bit, as the HF model with those weights.
    SafetensorsFile ref = SafetensorsFile::open(v.model_dir + "/reference.safetensors");
    DecoderBatch batch;
    batch.ids = ref.get("input_ids");
    Tensor from_gguf = Decoder(m.config, m.weights).logits(batch);
    Tensor from_hf = Decoder(hf, tiny.expected).logits(batch);
    CHECK(same_bits(from_gguf, from_hf));
    // And the rounding matters: the unrounded model differs (so the comparison can fail).
    CHECK_FALSE(same_bits(from_gguf, Decoder(hf, load_weights(v.model_dir, hf)).logits(batch)));
  }
  // A llama config.json alone implies a BOS; the GGUF vocabulary above said no.
  CHECK(ModelConfig::from_file(kLlamaDir + "/config.json").prepends_bos());
}

TEST_CASE("tiny GGUF: tokenizer and chat template from metadata") {
  TempDir dir;
  LoadedModel m = load_model(write_file(dir, tiny_gguf().bytes));
  REQUIRE(m.tokenizer.has_value());
  const Tokenizer& tok = *m.tokenizer;
  const TinyVocab vocab;
  CHECK(tok.vocab_size() == int64_t(vocab.tokens.size()));
  CHECK(tok.bos_id == 1);
  CHECK(tok.eos_id == 2);
  CHECK(tok.pad_id == 0);
  // Merges apply ("Ġ t" -> "Ġt", "h e" -> "he", "Ġt he" -> "Ġthe"); control tokens match whole.
  const std::string text = "Say the<|im_end|>\nthe end!";
  std::vector<int32_t> ids = tok.encode(text);
  std::vector<int32_t> want = {vocab.id("S"), vocab.id("a"), vocab.id("y"), vocab.id("Ġthe"), vocab.id("<|im_end|>"),
                               vocab.id("Ċ"), vocab.id("t"), vocab.id("he"), vocab.id("Ġ"),  vocab.id("e"),
                               vocab.id("n"), vocab.id("d"), vocab.id("!")};
  CHECK(ids == want);
  CHECK(tok.decode(ids) == text);
  // A byte without a token (this vocabulary has no control characters) is dropped, as
  // HF's BPE does without an unk token; its neighbours still merge ("h" + "e").
  CHECK(tok.encode("t\x01he\x02") == std::vector<int32_t>{vocab.id("t"), vocab.id("he")});

  // The template's literal system turn becomes the default system message.
  const ChatFormat& chat = m.chat_format();
  CHECK(chat.kind == ChatTemplateKind::ChatML);
  CHECK(chat.default_system == "You are a tiny test model");
  RenderedChat r = chat.render(tok, {{"user", "hi"}}, true);
  CHECK(r.text == "<|im_start|>system\nYou are a tiny test model<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                  "<|im_start|>assistant\n");
  RenderedChat own = chat.render(tok, {{"system", "Be brief"}, {"user", "hi"}}, false);
  CHECK(own.text == "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
}

TEST_CASE("chat formats recognised from Jinja templates") {
  ChatFormat qwen = ChatFormat::from_template(
      "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
      "{%- endif %}...{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}",
      "qwen");
  CHECK(qwen.kind == ChatTemplateKind::Qwen3);
  CHECK(qwen.default_system.empty());
  // Escaped newlines inside the literal, Qwen2.5 style.
  ChatFormat qwen25 = ChatFormat::from_template(
      "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.<|im_end|>\\n' }}{%- endif %}"
      "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
      "qwen25");
  CHECK(qwen25.kind == ChatTemplateKind::ChatML);
  CHECK(qwen25.default_system == "You are Qwen, created by Alibaba Cloud.");
  CHECK_THROWS_WITH_AS(ChatFormat::from_template("{{ bos_token }}[INST] {{ message['content'] }} [/INST]", "x.gguf"),
                       "x.gguf: chat template is not ChatML-style (no <|im_start|> / <|im_end|>); only ChatML and "
                       "Qwen3 templates are built in",
                       Error);
}

TEST_CASE("GGUF model: unsupported or broken files are clear errors") {
  Variant missing;
  missing.skip_key = "llama.block_count";
  CHECK(contains(load_error(missing), "no metadata key 'llama.block_count'"));

  Variant scaled;
  scaled.extra_strings = {{"llama.rope.scaling.type", "longrope"}};
  CHECK(contains(load_error(scaled),
                 "metadata key 'llama.rope.scaling.type' is 'longrope'; supported RoPE scaling: none, linear, yarn"));

  Variant arch;
  arch.architecture = "mamba";
  CHECK(contains(load_error(arch), "metadata key 'general.architecture' is 'mamba'; supported architectures: llama, qwen3, qwen3moe"));

  Variant partial;
  partial.rope_dims = 4;
  CHECK(contains(load_error(partial), "metadata key 'llama.rope.dimension_count' is 4 but heads are 8 wide; partial "
                                      "RoPE is not implemented"));

  Variant freqs;
  freqs.rope_freqs_tensor = true;
  CHECK(contains(load_error(freqs), "unexpected tensor 'rope_freqs.weight' (not a parameter of this llama model; it "
                                    "carries RoPE scaling, which is not implemented)"));

  Variant no_tensor;
  no_tensor.skip_tensor = "blk.1.ffn_down.weight";
  CHECK(contains(load_error(no_tensor), "missing tensor model.layers.1.mlp.down_proj.weight (expected [32, 64])"));

  Variant spm;
  spm.tokenizer_model = "llama";
  CHECK(contains(load_error(spm), "metadata key 'tokenizer.ggml.model' is 'llama'; only byte-level BPE ('gpt2') "
                                  "vocabularies are supported"));

  CHECK(load_error(Variant{}).empty());  // the unmodified file loads

  CHECK_THROWS_WITH_AS(load_model("/nonexistent/model.gguf"), "/nonexistent/model.gguf: no such file or directory",
                       Error);
}

// The GGUF at `path` loaded with NF4 projections (each quantized as it streams in, no
// projection left dense) gives the NF4 bytes of a dense load quantized afterwards.
static void check_nf4_load_is_quantizing_after(const std::string& path) {
  LoadedModel streamed = load_model(path, WeightLoad::qlora(true)), dense = load_model(path);
  for (const auto& [param, t] : streamed.weights) CHECK_FALSE(is_projection_weight(param));
  Decoder a = build_decoder(streamed, {}, true), b = build_decoder(dense, {}, true);
  const std::vector<Linear*> la = a.linears(), lb = b.linears();
  REQUIRE(la.size() == lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    CAPTURE(la[i]->name());
    CHECK(same_nf4(*la[i]->nf4(), *lb[i]->nf4()));
  }
}

TEST_CASE("tiny Llama / Qwen3 GGUF loaded with NF4 projections: each decoded tensor quantized as read, the same "
          "base as quantizing after the load") {
  for (const char* name : {"llama", "qwen3_untied_bias"}) {
    INFO("fixture ", name);
    Variant v;
    v.model_dir = std::string("tests/fixtures/model/") + name;
    TempDir dir;
    check_nf4_load_is_quantizing_after(write_file(dir, tiny_gguf(v).bytes));
  }
}

TEST_CASE("load_model: a Hugging Face directory gives the same model as load_weights") {
  const std::string dir = "tests/fixtures/model/qwen3_tied";
  LoadedModel m = load_model(dir);
  const ModelConfig c = ModelConfig::from_file(dir + "/config.json");
  CHECK(m.config.summary() == c.summary());
  TensorMap w = load_weights(dir, c);
  REQUIRE(m.weights.size() == w.size());
  for (const auto& [name, t] : w) CHECK(same_bits(m.weights.at(name), t));
  REQUIRE(m.tokenizer.has_value());  // tokenizer.json is there
  CHECK(m.tokenizer->encode("hello world") == Tokenizer::from_file(dir + "/tokenizer.json").encode("hello world"));
  CHECK(m.chat_format().kind == ChatTemplateKind::Qwen3);  // no template file: the qwen3 default

  TempDir empty;
  CHECK_THROWS_WITH_AS(load_model(empty.path), (empty.path + "/config.json: cannot open").c_str(), Error);
}

// ------------------------------------------------------------ Qwen3-MoE (qwen3moe)

namespace {

const std::string kMoeDir = "tests/fixtures/gguf_moe";  // tools/ref/make_gguf_moe_fixtures.py

// What to change when rebuilding the fixture's F32 file (bad-input tests).
struct MoeEdit {
  std::map<std::string, uint32_t> u32_keys;  // keys set (added or replaced) to these values
  std::map<std::string, bool> bool_keys;
  std::string skip_tensor;
  std::string fewer_experts_tensor;          // a 3-D expert tensor cut to its first `experts` slices
  int64_t experts = 0;
  std::string dense_tensor;                  // an added [48, 32] F32 tensor
};

// tiny_f32.gguf re-emitted key by key and tensor by tensor through GGUFBuilder, edited.
std::string edited_moe_gguf(const MoeEdit& edit) {
  const GGUFFile f = GGUFFile::open(kMoeDir + "/tiny_f32.gguf");
  GGUFBuilder b;
  for (const std::string& key : f.keys()) {
    const GGUFValue& v = f.value(key);
    if (edit.u32_keys.count(key) || edit.bool_keys.count(key)) continue;
    if (v.type == GGUFValueType::U32) b.add<uint32_t>(key, GGUFValueType::U32, uint32_t(f.get_i64(key)));
    else if (v.type == GGUFValueType::F32) b.add<float>(key, GGUFValueType::F32, float(f.get_f64(key)));
    else if (v.type == GGUFValueType::BOOL) b.add<uint8_t>(key, GGUFValueType::BOOL, uint8_t(f.get_bool(key)));
    else if (v.type == GGUFValueType::STRING) b.add_string(key, f.get_string(key));
    else if (v.type == GGUFValueType::ARRAY && v.elem_type == GGUFValueType::STRING)
      b.add_string_array(key, f.get_string_array(key));
    else if (v.type == GGUFValueType::ARRAY && v.elem_type == GGUFValueType::I32) {
      std::vector<int32_t> ints;
      for (int64_t x : f.get_int_array(key)) ints.push_back(int32_t(x));
      b.add_i32_array(key, ints);
    } else {
      FAIL("metadata key '", key, "' has a type this rebuild does not write");
    }
  }
  for (const auto& [key, value] : edit.u32_keys) b.add<uint32_t>(key, GGUFValueType::U32, value);
  for (const auto& [key, value] : edit.bool_keys) b.add<uint8_t>(key, GGUFValueType::BOOL, uint8_t(value));
  for (const GGUFTensorInfo& t : f.tensors()) {
    if (t.name == edit.skip_tensor) continue;
    std::vector<uint64_t> ne(t.ne.begin(), t.ne.end());
    std::string bytes(reinterpret_cast<const char*>(f.tensor_data(t.name)), t.nbytes);
    if (t.name == edit.fewer_experts_tensor) {  // the outermost dim (ne[2]) counts experts
      bytes.resize(bytes.size() / ne[2] * uint64_t(edit.experts));
      ne[2] = uint64_t(edit.experts);
    }
    b.add_tensor(t.name, ne, uint32_t(t.type), bytes);
  }
  if (!edit.dense_tensor.empty())
    b.add_tensor(edit.dense_tensor, {32, 48}, uint32_t(GGMLType::F32), std::string(32 * 48 * 4, '\0'));
  return b.build();
}

// The message load_model throws for this edit ("" when it loads).
std::string moe_load_error(const MoeEdit& edit) {
  TempDir dir;
  const std::string path = write_file(dir, edited_moe_gguf(edit));
  try {
    load_model(path);
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK(contains(message, path));                            // names the file
    CHECK(message.find('\n') == std::string::npos);            // on one line
    return message;
  }
  return "";
}

// max over positions of max_v |a - b| / max_v |b|: the logits [B, T, V] error relative to each row's scale.
double max_relative_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const int64_t V = a.shape()[a.ndim() - 1], rows = a.numel() / V;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a.data<float>() + r * V;
    const float* y = b.data<float>() + r * V;
    double err = 0, scale = 0;
    for (int64_t v = 0; v < V; ++v) {
      err = std::max(err, std::fabs(double(x[v]) - y[v]));
      scale = std::max(scale, std::fabs(double(y[v])));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

}  // namespace

TEST_CASE("tiny Qwen3-MoE GGUF (qwen3moe, F32 and Q8_0): config equals the HF model's, logits those of "
          "transformers and llama.cpp") {
  const ModelConfig hf = ModelConfig::from_file(kMoeDir + "/config.json");
  REQUIRE(hf.is_moe());
  SafetensorsFile ref = SafetensorsFile::open(kMoeDir + "/reference.safetensors");
  DecoderBatch batch;
  batch.ids = ref.get("input_ids");  // [2, 13]
  for (const char* type : {"f32", "q8_0"}) {
    const std::string path = kMoeDir + "/tiny_" + type + ".gguf";
    INFO(path);
    const LoadedModel m = load_model(path);
    const ModelConfig& c = m.config;
    CHECK(c.model_type == "qwen3_moe");
    check_same_dense_config(c, hf);
    CHECK(c.moe.num_experts == hf.moe.num_experts);
    CHECK(c.moe.experts_per_token == hf.moe.experts_per_token);
    CHECK(c.moe.expert_intermediate_size == hf.moe.expert_intermediate_size);
    CHECK(c.moe.norm_topk_prob == hf.moe.norm_topk_prob);  // true: llama.cpp's qwen3moe renormalises
    CHECK(c.moe.decoder_sparse_step == hf.moe.decoder_sparse_step);
    CHECK(c.moe.mlp_only_layers == hf.moe.mlp_only_layers);
    CHECK(m.weights.size() == parameter_specs(hf).size());

    const Tensor logits = Decoder(c, m.weights).logits(batch);
    if (std::string(type) == "f32") {
      const double vs_hf = max_relative_error(logits, ref.get("logits"));
      const double vs_llama = max_relative_error(logits, ref.get("llamacpp_f32_logits"));
      MESSAGE("qwen3moe F32 GGUF logits: max relative error ", vs_hf, " vs transformers, ", vs_llama, " vs llama.cpp");
      CHECK(vs_hf <= 1e-4);
      CHECK(vs_llama <= 1e-4);
    } else {
      // Against transformers on the file's own (dequantized) weights: the decoding is exact; against
      // the f32 model: what Q8_0 costs (0.032 measured by transformers itself).
      const double vs_rounded = max_relative_error(logits, ref.get("q8_0_logits"));
      const double vs_f32 = max_relative_error(logits, ref.get("logits"));
      MESSAGE("qwen3moe Q8_0 GGUF logits: max relative error ", vs_rounded, " vs transformers on the Q8_0 weights, ",
              vs_f32, " vs the f32 model");
      CHECK(vs_rounded <= 1e-4);
      CHECK(vs_f32 <= 0.05);
    }
  }
}

TEST_CASE("tiny Qwen3-MoE GGUF loaded with NF4 projections: every expert quantized, the same base as quantizing "
          "after the load") {
  const std::string path = kMoeDir + "/tiny_q8_0.gguf";
  CHECK(load_model(path, WeightLoad::qlora(true)).nf4.count("model.layers.1.mlp.experts.7.down_proj.weight"));
  check_nf4_load_is_quantizing_after(path);
}

TEST_CASE("Qwen3-MoE GGUF: inconsistent expert counts and missing MoE tensors are one-line errors") {
  CHECK(moe_load_error({}).empty());  // the rebuilt file loads

  MoeEdit fewer;
  fewer.fewer_experts_tensor = "blk.0.ffn_gate_exps.weight";
  fewer.experts = 6;
  CHECK(contains(moe_load_error(fewer), "tensor 'blk.0.ffn_gate_exps.weight' holds 6 experts, expected 8 (metadata "
                                        "key 'qwen3moe.expert_count')"));

  MoeEdit no_router;
  no_router.skip_tensor = "blk.1.ffn_gate_inp.weight";
  CHECK(contains(moe_load_error(no_router),
                 "missing tensor 'blk.1.ffn_gate_inp.weight' (layer 1 is a mixture-of-experts block)"));

  MoeEdit too_many_used;
  too_many_used.u32_keys = {{"qwen3moe.expert_used_count", 9}};
  CHECK(contains(moe_load_error(too_many_used),
                 "metadata key 'qwen3moe.expert_used_count' is 9, more than qwen3moe.expert_count (8)"));

  MoeEdit dense;  // llama.cpp's qwen3moe has no dense layer (mlp_only_layers): refused, not mapped
  dense.dense_tensor = "blk.1.ffn_gate.weight";
  CHECK(contains(moe_load_error(dense), "unexpected tensor 'blk.1.ffn_gate.weight' (not a parameter of this qwen3_moe "
                                        "model; llama.cpp's qwen3moe has experts in every layer, no dense MLP)"));

  MoeEdit unnormalised;
  unnormalised.bool_keys = {{"qwen3moe.expert_weights_norm", false}};
  CHECK(contains(moe_load_error(unnormalised), "metadata key 'qwen3moe.expert_weights_norm' is false, but llama.cpp's "
                                               "qwen3moe always renormalises the top-k weights"));
  MoeEdit normalised;
  normalised.bool_keys = {{"qwen3moe.expert_weights_norm", true}};
  CHECK(moe_load_error(normalised).empty());

  MoeEdit sigmoid;  // gguf-py's ExpertGatingFuncType.SIGMOID
  sigmoid.u32_keys = {{"qwen3moe.expert_gating_func", 2}};
  CHECK(contains(moe_load_error(sigmoid),
                 "metadata key 'qwen3moe.expert_gating_func' is 2; only 1 (softmax) is implemented"));

  MoeEdit no_width;  // expert_feed_forward_length is required (the experts' shapes)
  no_width.u32_keys = {{"qwen3moe.expert_feed_forward_length", 0}};
  CHECK(contains(moe_load_error(no_width), "metadata key 'qwen3moe.expert_feed_forward_length' must be > 0, got 0"));
}

// ------------------------------------------------------------ SmolLM2 vs transformers

namespace {

const std::string kSmolPath = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kSmolFixtures = "tests/fixtures/smollm2/";

// The downloaded model, loaded once for all SmolLM2 tests; nullptr (and a
// "skipped" line: one per test, each calls this once, which make test's summary counts)
// when it has not been downloaded.
const LoadedModel* smollm2() {
  static std::optional<LoadedModel> model;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (std::filesystem::exists(kSmolPath)) model = load_model(kSmolPath);
  }
  if (!model) std::printf("skipped: SmolLM2 GGUF not downloaded (run make model)\n");
  return model ? &*model : nullptr;
}

const Decoder* smollm2_decoder() {
  static std::optional<Decoder> decoder;
  if (!decoder && smollm2()) decoder.emplace(smollm2()->config, smollm2()->weights);
  return decoder ? &*decoder : nullptr;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

std::vector<int32_t> ids_of(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

}  // namespace

TEST_CASE("SmolLM2 GGUF: config and tokenizer ids equal transformers' on 200 strings") {
  const LoadedModel* m = smollm2();
  if (!m) return;
  CHECK(m->config.model_type == "llama");
  CHECK(m->config.num_layers == 30);
  CHECK(m->config.head_dim == 64);
  CHECK(m->config.tie_word_embeddings);
  REQUIRE(m->tokenizer.has_value());
  nlohmann::json fx = read_json(kSmolFixtures + "tokenizer.json");
  const auto& strings = fx.at("strings");
  const auto& ids = fx.at("ids");
  REQUIRE(strings.size() == ids.size());
  CHECK(strings.size() >= 200);
  size_t matched = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string s = strings[i].get<std::string>();
    std::vector<int32_t> got = m->tokenizer->encode(s), want = ids[i].get<std::vector<int32_t>>();
    if (got == want) ++matched;
    else FAIL_CHECK("string ", i, " '", s, "' tokenizes differently");
  }
  MESSAGE("SmolLM2 tokenizer: ", matched, " / ", strings.size(), " strings identical to transformers");
}

TEST_CASE("SmolLM2 GGUF: chat renderings equal transformers' apply_chat_template") {
  const LoadedModel* m = smollm2();
  if (!m) return;
  nlohmann::json fx = read_json(kSmolFixtures + "chat.json");
  REQUIRE(fx.size() >= 5);
  for (const auto& c : fx) {
    std::vector<ChatMessage> messages;
    for (const auto& msg : c.at("messages")) messages.push_back({msg.at("role"), msg.at("content")});
    RenderedChat r = m->chat_format().render(*m->tokenizer, messages, c.at("add_generation_prompt").get<bool>());
    CHECK(r.text == c.at("text").get<std::string>());
    CHECK(r.ids == c.at("ids").get<std::vector<int32_t>>());
  }
}

TEST_CASE("SmolLM2 GGUF: logits within 1e-4 of transformers, 32 greedy tokens identical") {
  const Decoder* model = smollm2_decoder();
  if (!model) return;
  SafetensorsFile ref = SafetensorsFile::open(kSmolFixtures + "logits.safetensors");
  const int64_t V = model->config().vocab_size;
  double worst_rel = 0, worst_lse = 0;
  for (int p = 0; p < 3; ++p) {
    INFO("prompt ", p);
    const std::string k = str("p", p, ".");
    std::vector<int32_t> prompt = ids_of(ref.get(k + "ids"));
    const int64_t T = int64_t(prompt.size());
    DecoderBatch batch;
    batch.ids = Tensor::from_ids(prompt, {1, T});
    Tensor logits = model->logits(batch);  // [1, T, V]
    Tensor top_values = ref.get(k + "top_values"), top_indices = ref.get(k + "top_indices"), lse = ref.get(k + "logsumexp");
    const int64_t K = top_values.shape()[1];
    for (int64_t t = 0; t < T; ++t) {
      const float* row = logits.data<float>() + t * V;
      const float* want = top_values.data<float>() + t * K;
      const int32_t* idx = top_indices.data<int32_t>() + t * K;
      // Max error over the reference's top-K logits, relative to the row's largest |logit|.
      double err = 0, scale = 0;
      for (int64_t j = 0; j < K; ++j) {
        err = std::max(err, std::fabs(double(row[idx[j]]) - want[j]));
        scale = std::max(scale, std::fabs(double(want[j])));
      }
      worst_rel = std::max(worst_rel, err / scale);
      // Every other logit is below the reference's K-th (up to the same tolerance)...
      float kth = want[K - 1];
      int64_t above = 0;
      for (int64_t v = 0; v < V; ++v) above += row[v] > kth + 1e-4 * scale;
      CHECK(above <= K);
      // ... and the whole row's log-sum-exp matches.
      double m = row[0], sum = 0;
      for (int64_t v = 0; v < V; ++v) m = std::max(m, double(row[v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - m);
      double ours = m + std::log(sum), theirs = lse.data<float>()[t];
      worst_lse = std::max(worst_lse, std::fabs(ours - theirs) / std::max(1.0, std::fabs(theirs)));
    }
    GenerateOptions gen;
    gen.max_new_tokens = 32;  // no stop ids: all 32, as in the reference
    CHECK(generate(*model, prompt, gen) == ids_of(ref.get(k + "greedy")));
  }
  MESSAGE("SmolLM2 logits vs transformers: max relative error ", worst_rel, " (top-256 per position), logsumexp ",
          worst_lse);
  CHECK(worst_rel <= 1e-4);
  CHECK(worst_lse <= 1e-4);
}
