// model/: the decoder against transformers (tests/fixtures/model, written by
// tools/ref/make_model_fixtures.py): logits, loss, the gradient of every
// parameter (with and without checkpointing), greedy generation, KV-cache
// logits against the full forward, packed rows against separate rows, and the
// errors for bad configs and checkpoints.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <fstream>
#include <numeric>

#include "autograd/ops.h"
#include "model/adapters.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "model/weights.h"
#include "formats/safetensors.h"
#include "training/batch.h"
#include "tests/temp_dir.h"

using namespace nq;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = "tests/fixtures/model/";
const char* kModels[] = {"qwen3_tied", "qwen3_untied_bias", "llama"};

// max_i |a_i - b_i| / max_i |b_i|
double max_rel_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::fabs(double(x[i]) - y[i]));
    scale = std::max(scale, std::fabs(double(y[i])));
  }
  return diff / scale;
}
// ||a - b|| / ||b||
double norm_rel_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  std::vector<float> x = a.to_vector(), y = b.to_vector();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    norm += double(y[i]) * y[i];
  }
  return std::sqrt(diff / norm);
}

std::vector<int32_t> ids_of(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

// ids only (logits), or with labels as the DecoderBatch carries them (already shifted).
DecoderBatch batch_of(Tensor ids, Tensor shifted_labels = Tensor(), int64_t n_targets = 0) {
  DecoderBatch b;
  b.ids = std::move(ids);
  b.labels = std::move(shifted_labels);
  b.n_targets = n_targets;
  return b;
}
// The reference batch: HF labels = ids (transformers shifts them inside; we shift once, here).
DecoderBatch reference_batch(const SafetensorsFile& ref) {
  return hf_decoder_batch(ref.get("input_ids"), ref.get("input_ids"));
}

// Loss and every parameter's gradient, by HF name.
std::map<std::string, Tensor> loss_and_grads(const Decoder& model, const DecoderBatch& batch, float* loss) {
  for (Var p : model.parameters()) p.zero_grad();
  Var l = model.forward_loss(batch);
  *loss = l.value().to_vector()[0];
  backward(l);
  std::map<std::string, Tensor> grads;
  for (const Var& p : model.parameters()) grads[p.name()] = p.grad();
  return grads;
}

// A scratch copy of a fixture model directory, to break on purpose.
// (A TempDir: mkdtemp names it, so concurrent test runs never share one.)
struct ScratchDir {
  TempDir dir;
  fs::path path{dir.path};
  explicit ScratchDir(const std::string& model) {
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(kFixtures + model + "/" + f, path / f);
  }
  std::string str() const { return path.string(); }
  void write(const std::string& file, const std::string& text) const { std::ofstream(path / file, std::ios::binary) << text; }
  std::string read(const std::string& file) const {
    std::ifstream in(path / file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

std::string replace(std::string s, const std::string& from, const std::string& to) {
  size_t at = s.find(from);
  REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("decoder logits and loss match transformers") {
  for (const char* name : kModels) {
    std::string model_name = name;
    CAPTURE(model_name);
    Decoder model = Decoder::load(kFixtures + name);
    SafetensorsFile ref = SafetensorsFile::open(kFixtures + name + "/reference.safetensors");
    DecoderBatch batch = reference_batch(ref);
    Tensor logits = model.logits(batch);
    CHECK(logits.shape() == ref.entry("logits").shape);
    const double logits_err = max_rel_error(logits, ref.get("logits"));
    CHECK(logits_err <= 1e-4);

    float loss = model.forward_loss(batch).value().to_vector()[0];
    float want = ref.get("loss").to_vector()[0];
    CHECK(std::fabs(loss - want) / want <= 1e-5);
    MESSAGE(model_name, " vs transformers: logits max rel err ", logits_err, ", loss rel err ",
            std::fabs(loss - want) / want);

    // Right-padded row, labels -100 on the padding: only counted tokens contribute.
    DecoderBatch padded = hf_decoder_batch(ref.get("padded_ids"), ref.get("padded_labels"));
    float padded_loss = model.forward_loss(padded).value().to_vector()[0];
    float padded_want = ref.get("padded_loss").to_vector()[0];
    CHECK(std::fabs(padded_loss - padded_want) / padded_want <= 1e-5);

    // hf_decoder_batch's shift and count are the HF shift written out: position t's
    // target is label t+1, none at the end of a row.
    std::vector<int32_t> labels = ids_of(ref.get("padded_labels")), targets(labels.size());
    const int64_t T = ref.entry("padded_labels").shape[1];
    int64_t counted = 0;
    for (size_t n = 0; n < labels.size(); ++n) {
      targets[n] = (n + 1) % T ? labels[n + 1] : kernels::kIgnoreIndex;
      counted += targets[n] != kernels::kIgnoreIndex;
    }
    CHECK(ids_of(padded.labels) == targets);
    CHECK(padded.n_targets == counted);
    DecoderBatch shifted = batch_of(ref.get("padded_ids"), Tensor::from_ids(targets, {2, T}), counted);
    CHECK(model.forward_loss(shifted).value().to_vector()[0] == padded_loss);
  }
}

TEST_CASE("decoder with a PEFT LoRA adapter (dense and NF4 base) matches peft's logits") {
  Decoder model = Decoder::load(kFixtures + "qwen3_untied_bias");
  SafetensorsFile ref = SafetensorsFile::open(kFixtures + "qwen3_untied_bias/reference.safetensors");
  DecoderBatch batch = reference_batch(ref);
  Tensor base = model.logits(batch);
  load_peft_adapter(kFixtures + "qwen3_untied_bias/adapter", model);
  Tensor adapted = model.logits(batch);
  CHECK(max_rel_error(adapted, ref.get("adapter_logits")) <= 1e-4);
  CHECK(max_rel_error(base, ref.get("adapter_logits")) > 1e-2);  // the adapter does change the output
  // KV-cache generation goes through the same Linear, so it sees the adapter too.
  std::vector<int32_t> row = ids_of(ref.get("input_ids").slice(0, 1));
  KVCache cache(model.config(), int64_t(row.size()));
  Tensor cached = forward_cached(model, row, cache);
  CHECK(max_rel_error(cached, adapted.view({2 * int64_t(row.size()), model.config().vocab_size}).slice(0, row.size())) <= 1e-5);
  // With an NF4 base the decoder computes what a dense model holding the dequantized
  // weights (and the same adapter) computes.
  for (Linear* l : model.linears()) l->quantize_nf4();
  TensorMap dequantized = load_weights(kFixtures + "qwen3_untied_bias", model.config());
  for (Linear* l : model.linears()) dequantized[l->name() + ".weight"] = l->dense_weight();
  Decoder reference(model.config(), dequantized);
  load_peft_adapter(kFixtures + "qwen3_untied_bias/adapter", reference);
  Tensor nf4_logits = model.logits(batch);
  CHECK(max_rel_error(nf4_logits, reference.logits(batch)) <= 1e-5);
  CHECK(max_rel_error(nf4_logits, adapted) > 1e-3);  // and the 4-bit rounding is visible
}

TEST_CASE("decoder: bad batches are clear errors") {
  Decoder model = Decoder::load(kFixtures + "llama");
  Tensor ids = Tensor::from_ids({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK_THROWS_WITH_AS(model.logits(batch_of(Tensor::from_ids({1, 256, 3}, {1, 3}))),
                       "batch: token id 256 at row 0, column 1 is outside the vocabulary [0, 256)", Error);
  CHECK_THROWS_WITH_AS(model.logits(batch_of(Tensor::from_ids({1, 2, 3}, {3}))),
                       "batch: ids must be i32 [B, T], got i32[3] cpu", Error);
  CHECK_THROWS_WITH_AS(model.forward_loss(batch_of(ids)), "batch: labels is missing", Error);
  CHECK_THROWS_WITH_AS(model.forward_loss(batch_of(ids, Tensor::from_ids({1, 2, 3}, {1, 3}))),
                       "batch: labels must be [2, 3] like ids, got i32[1, 3] cpu", Error);
  CHECK_THROWS_WITH_AS(model.forward_loss(batch_of(ids, Tensor::from_ids({1, 2, 3, 4, -5, 6}, {2, 3}))),
                       "batch: label -5 is neither -100 nor a token id in [0, 256)", Error);
  // A count that disagrees with the labels (e.g. a hand-made batch that forgot it).
  CHECK_THROWS_WITH_AS(model.forward_loss(batch_of(ids, Tensor::from_ids({1, 2, -100, 4, 5, -100}, {2, 3}))),
                       "batch: n_targets is 0 but 4 labels are counted (make batches with training/batch.h's "
                       "decoder_batch or hf_decoder_batch)",
                       Error);
  CHECK_NOTHROW(model.forward_loss(batch_of(ids, Tensor::from_ids({1, 2, -100, 4, 5, -100}, {2, 3}), 4)));
  DecoderBatch b = batch_of(ids);
  b.positions = Tensor::from_ids({0, 1, 2}, {1, 3});
  CHECK_THROWS_WITH_AS(model.logits(b), "batch: positions must be [2, 3] like ids, got i32[1, 3] cpu", Error);
}

TEST_CASE("decoder gradients of every parameter match transformers, with and without checkpointing") {
  for (const char* name : kModels) {
    std::string model_name = name;
    CAPTURE(model_name);
    DecoderOptions opts;
    opts.train_all = true;
    opts.ce_chunk_rows = 7;  // several chunks, the last one partial
    Decoder model = Decoder::load(kFixtures + name, opts);
    SafetensorsFile ref = SafetensorsFile::open(kFixtures + name + "/reference.safetensors");
    DecoderBatch batch = reference_batch(ref);

    int64_t expected = 0;
    for (const std::string& n : ref.names()) expected += n.rfind("grad.", 0) == 0;
    CHECK(int64_t(model.parameters().size()) == expected);

    float loss_ckpt = 0, loss_plain = 0;
    model.options().checkpointing = true;
    auto with_ckpt = loss_and_grads(model, batch, &loss_ckpt);
    model.options().checkpointing = false;
    auto without = loss_and_grads(model, batch, &loss_plain);
    CHECK(loss_ckpt == loss_plain);
    double worst_grad_err = 0;
    for (const auto& [pname, grad] : with_ckpt) {
      CAPTURE(pname);
      REQUIRE(grad.defined());
      Tensor want = ref.get("grad." + pname);
      const double err = norm_rel_error(grad, want);
      worst_grad_err = std::max(worst_grad_err, err);
      CHECK(err <= 1e-3);
      // Recomputing a layer runs the same kernels on the same inputs: bit-identical.
      CHECK(max_rel_error(without.at(pname), grad) == 0.0);
    }
    MESSAGE(model_name, " vs transformers: worst parameter gradient ||a-b||/||b|| ", worst_grad_err, " over ",
            with_ckpt.size(), " parameters");
  }
}

TEST_CASE("greedy generation reproduces transformers' generate(do_sample=False)") {
  for (const char* name : kModels) {
    std::string model_name = name;
    CAPTURE(model_name);
    Decoder model = Decoder::load(kFixtures + name);
    SafetensorsFile ref = SafetensorsFile::open(kFixtures + name + "/reference.safetensors");
    GenerateOptions opts;
    opts.max_new_tokens = ref.entry("greedy_ids").shape.numel();
    std::vector<int32_t> streamed;
    std::vector<int32_t> out =
        generate(model, ids_of(ref.get("prompt_ids")), opts, [&](int32_t id) { streamed.push_back(id); });
    CHECK(out == ids_of(ref.get("greedy_ids")));
    CHECK(streamed == out);

    // A stop token ends generation before it is emitted (at its first occurrence).
    opts.stop_ids = {out[3]};
    std::vector<int32_t> stopped = generate(model, ids_of(ref.get("prompt_ids")), opts);
    CHECK(stopped == std::vector<int32_t>(out.begin(), std::find(out.begin(), out.end(), out[3])));
  }
}

TEST_CASE("KV-cache logits equal the full forward, prefill and token by token") {
  Decoder model = Decoder::load(kFixtures + "qwen3_untied_bias");
  SafetensorsFile ref = SafetensorsFile::open(kFixtures + "qwen3_untied_bias/reference.safetensors");
  std::vector<int32_t> ids = ids_of(ref.get("input_ids").slice(0, 1));  // row 0, 17 tokens
  const int64_t T = int64_t(ids.size()), V = model.config().vocab_size;
  Tensor full = model.logits(batch_of(Tensor::from_ids(ids, {1, T}))).view({T, V});

  KVCache cache(model.config(), 3);  // grows twice on the way (3 -> 10 -> 20), keeping what it holds
  Tensor prefill = forward_cached(model, std::vector<int32_t>(ids.begin(), ids.begin() + 10), cache);  // [10, V]
  CHECK(max_rel_error(prefill, full.slice(0, 10)) <= 1e-5);
  for (int64_t t = 10; t < T; ++t) {
    Tensor step = forward_cached(model, {ids[t]}, cache);  // [1, V]
    CHECK(max_rel_error(step, full.slice(t, t + 1)) <= 1e-5);
  }
  CHECK(cache.length() == T);
  CHECK(cache.capacity() == 20);
  CHECK(cache.tokens() == ids);
  // Truncated, the cache recomputes from there: the logits are the full forward's again.
  cache.truncate(12);
  CHECK(cache.tokens() == std::vector<int32_t>(ids.begin(), ids.begin() + 12));
  Tensor again = forward_cached(model, std::vector<int32_t>(ids.begin() + 12, ids.end()), cache);
  CHECK(max_rel_error(again, full.slice(12, T)) <= 1e-5);
  CHECK_THROWS_WITH_AS(cache.truncate(T + 1), "KVCache::truncate: 18 is outside [0, 17]", Error);
}

TEST_CASE("a kept KV cache (chat turns): generate reuses the shared prefix and chooses the tokens a fresh cache chooses") {
  Decoder model = Decoder::load(kFixtures + "qwen3_tied");
  SafetensorsFile ref = SafetensorsFile::open(kFixtures + "qwen3_tied/reference.safetensors");
  const std::vector<int32_t> ids = ids_of(ref.get("input_ids").slice(0, 1));
  GenerateOptions opts;
  opts.max_new_tokens = 6;
  KVCache cache(model.config(), 8);
  const std::vector<int32_t> turn1(ids.begin(), ids.begin() + 8);
  const std::vector<int32_t> reply1 = generate(model, turn1, opts, {}, &cache);
  CHECK(reply1 == generate(model, turn1, opts));
  // The cache holds the prompt and the reply but its last token (never run).
  std::vector<int32_t> held = turn1;
  held.insert(held.end(), reply1.begin(), reply1.end() - 1);
  CHECK(cache.tokens() == held);

  // Turn 2 extends the conversation: everything cached is reused.
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), reply1.begin(), reply1.end());
  turn2.insert(turn2.end(), ids.begin() + 8, ids.end());
  CHECK(reusable_prefix(cache, turn2) == int64_t(held.size()));
  CHECK(generate(model, turn2, opts, {}, &cache) == generate(model, turn2, opts));

  // A prompt that parts from the cached text at token 4 (an earlier turn rendered
  // differently) is recomputed from there.
  std::vector<int32_t> turn3 = turn2;
  turn3[4] = turn3[4] == 1 ? 2 : 1;
  CHECK(reusable_prefix(cache, turn3) == 4);
  CHECK(generate(model, turn3, opts, {}, &cache) == generate(model, turn3, opts));
  // The same prompt again: all but its last token are reused.
  CHECK(reusable_prefix(cache, turn3) == int64_t(turn3.size()) - 1);
}

TEST_CASE("a packed row with segment ids and restarted positions equals separate rows") {
  Decoder model = Decoder::load(kFixtures + "qwen3_tied");
  SafetensorsFile ref = SafetensorsFile::open(kFixtures + "qwen3_tied/reference.safetensors");
  std::vector<int32_t> ids = ids_of(ref.get("input_ids"));  // [2, 17]
  const int64_t T = 17, A = 6, V = model.config().vocab_size;  // pack row0[:A] and row1[:T-A]
  std::vector<int32_t> packed, positions, segments;
  for (int64_t t = 0; t < T; ++t) {
    bool first = t < A;
    packed.push_back(first ? ids[t] : ids[T + t - A]);
    positions.push_back(int32_t(first ? t : t - A));
    segments.push_back(first ? 0 : 1);
  }
  DecoderBatch batch = batch_of(Tensor::from_ids(packed, {1, T}));
  batch.positions = Tensor::from_ids(positions, {1, T});
  batch.segment_ids = Tensor::from_ids(segments, {1, T});
  Tensor got = model.logits(batch).view({T, V});
  Tensor first = model.logits(batch_of(Tensor::from_ids({ids.begin(), ids.begin() + A}, {1, A}))).view({A, V});
  Tensor second = model.logits(batch_of(Tensor::from_ids({ids.begin() + T, ids.begin() + 2 * T - A}, {1, T - A})))
                      .view({T - A, V});
  CHECK(max_rel_error(got.slice(0, A), first) <= 1e-5);
  CHECK(max_rel_error(got.slice(A, T), second) <= 1e-5);
}

TEST_CASE("trainer batches (training/batch.h): packed and padded rows give the same loss and gradients") {
  DecoderOptions opts;
  opts.train_all = true;
  Decoder model = Decoder::load(kFixtures + "llama", opts);
  SafetensorsFile ref = SafetensorsFile::open(kFixtures + "llama/reference.safetensors");
  std::vector<int32_t> ids = ids_of(ref.get("input_ids"));  // 2 x 17
  // Three samples; the middle one trains only on its second half (a prompt + completion).
  Sample a{{ids.begin(), ids.begin() + 6}, std::vector<uint8_t>(6, 1)};
  Sample b{{ids.begin() + 6, ids.begin() + 17}, {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}};
  Sample c{{ids.begin() + 17, ids.begin() + 26}, std::vector<uint8_t>(9, 1)};
  auto run = [&](const nq::Batch& tb) {
    DecoderBatch db = decoder_batch(tb, Device::CPU);  // the trainer's batch: labels shifted, counted
    float loss = 0;
    auto grads = loss_and_grads(model, db, &loss);
    return std::make_pair(loss, grads);
  };
  auto [padded_loss, padded_grads] = run(make_batch({{&a}, {&b}, {&c}}, 11, 0));
  auto [packed_loss, packed_grads] = run(make_batch({{&a, &b}, {&c}}, 17, 0));
  CHECK(std::fabs(packed_loss - padded_loss) <= 1e-5 * padded_loss);
  for (const auto& [name, grad] : padded_grads) {
    CAPTURE(name);
    CHECK(norm_rel_error(packed_grads.at(name), grad) <= 1e-4);
  }
}

TEST_CASE("sampling: greedy, top-k, top-p and seeded reproducibility") {
  std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, -1.0f};
  SamplingOptions o;
  CHECK(sample_token(logits.data(), 5, o, 0) == 1);
  o.greedy = false;
  o.seed = 7;
  o.top_k = 1;  // only the argmax survives
  for (uint64_t s = 0; s < 20; ++s) CHECK(sample_token(logits.data(), 5, o, s) == 1);
  o.top_k = 2;  // tokens 1 and 3, about equally likely
  int count[5] = {};
  for (uint64_t s = 0; s < 2000; ++s) count[sample_token(logits.data(), 5, o, s)]++;
  CHECK(count[1] + count[3] == 2000);
  CHECK(count[1] > 800);
  CHECK(count[3] > 800);
  o.top_k = 0;
  o.top_p = 0.5f;  // p(1) ~ 0.46 < 0.5, so {1, 3} are kept
  for (int& c : count) c = 0;
  for (uint64_t s = 0; s < 2000; ++s) count[sample_token(logits.data(), 5, o, s)]++;
  CHECK(count[1] + count[3] == 2000);
  // Same seed and step, same token; the empirical frequencies follow softmax(logits / T).
  o.top_p = 1.0f;
  o.temperature = 2.0f;
  CHECK(sample_token(logits.data(), 5, o, 11) == sample_token(logits.data(), 5, o, 11));
  for (int& c : count) c = 0;
  const int draws = 20000;
  for (uint64_t s = 0; s < draws; ++s) count[sample_token(logits.data(), 5, o, s)]++;
  double z = 0;
  for (float l : logits) z += std::exp(l / 2.0);
  for (int i = 0; i < 5; ++i) CHECK(std::fabs(count[i] / double(draws) - std::exp(logits[i] / 2.0) / z) < 0.015);
  o.temperature = 0.0f;
  CHECK_THROWS_WITH_AS(sample_token(logits.data(), 5, o, 0), "sampling: temperature must be > 0, got 0", Error);
}

TEST_CASE("config: presets, HF fields, both rope_theta layouts") {
  ModelConfig c = ModelConfig::preset("qwen3-0.6b");
  CHECK(c.hidden_size == 1024);
  CHECK(c.num_layers == 28);
  CHECK(c.head_dim == 128);
  CHECK(c.tie_word_embeddings);
  // Each preset's size agrees with its parameter list and with the Qwen3 model cards
  // ("Number of Parameters: 0.6B, Non-Embedding: 0.44B", ...), to the digits printed there.
  struct Card { std::string name; double total, total_step, non_embedding, non_embedding_step; };
  for (const Card& card : {Card{"qwen3-0.6b", 0.6, 0.1, 0.44, 0.01}, Card{"qwen3-1.7b", 1.7, 0.1, 1.4, 0.1},
                           Card{"qwen3-4b", 4.0, 0.1, 3.6, 0.1}, Card{"qwen3-8b", 8.2, 0.1, 6.95, 0.01}}) {
    CAPTURE(card.name);
    ModelConfig p = ModelConfig::preset(card.name);
    int64_t listed = 0;
    for (const ParamSpec& s : parameter_specs(p)) listed += s.shape.numel();
    CHECK(p.num_parameters() == listed);
    const double embeddings = double(p.vocab_size * p.hidden_size) * (p.tie_word_embeddings ? 1 : 2);
    CHECK(std::fabs(listed / 1e9 - card.total) <= card.total_step / 2);
    CHECK(std::fabs((listed - embeddings) / 1e9 - card.non_embedding) <= card.non_embedding_step / 2);
  }
  CHECK_FALSE(ModelConfig::preset("qwen3-8b").tie_word_embeddings);
  CHECK_THROWS_WITH_AS(ModelConfig::preset("qwen3-99b"),
                       "unknown model preset \"qwen3-99b\" (known: qwen3-0.6b, qwen3-1.7b, qwen3-235b-a22b, qwen3-30b-a3b, qwen3-4b, qwen3-8b)", Error);

  ModelConfig llama = ModelConfig::from_file(kFixtures + "llama/config.json");
  CHECK(llama.head_dim == 8);  // hidden / heads
  CHECK_FALSE(llama.qk_norm());
  CHECK(llama.torch_dtype == "bfloat16");
  // transformers 4 layout: top-level rope_theta, rope_scaling null, torch_dtype, eos list.
  ModelConfig old = ModelConfig::from_json(
      R"({"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rope_theta": 1000000,
          "rope_scaling": null, "torch_dtype": "bfloat16", "eos_token_id": [5, 7], "use_sliding_window": false})",
      "old.json");
  CHECK(old.rope_theta == 1000000.0f);
  CHECK(old.head_dim == 128);  // Qwen3Config's default
  CHECK(old.eos_token_ids == std::vector<int32_t>{5, 7});
}

TEST_CASE("config: unsupported or malformed config.json is a clear error") {
  const std::string base = R"({"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96,
      "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100)";
  auto parse = [&](const std::string& extra) { return ModelConfig::from_json(base + extra + "}", "cfg.json"); };
  CHECK_NOTHROW(parse(""));
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(replace(base + "}", "qwen3", "mistral"), "cfg.json"),
                       "cfg.json: model_type \"mistral\" is not supported (qwen3, llama, qwen3_moe)", Error);
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(R"({"model_type": "qwen3",})", "cfg.json"),
                       doctest::Contains("cfg.json: invalid JSON: "), Error);  // the '}' after a trailing comma
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(replace(base + "}", "\"vocab_size\": 100", "\"x\": 1"), "cfg.json"),
                       "cfg.json: missing field \"vocab_size\"", Error);
  CHECK_THROWS_WITH_AS(parse(R"(, "use_sliding_window": true)"),
                       "cfg.json: use_sliding_window is true; sliding-window attention is not implemented", Error);
  CHECK_THROWS_WITH_AS(parse(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})"),
                       "cfg.json: \"rope_scaling.rope_type\" \"llama3\" is not supported (default, linear, yarn)",
                       Error);  // the supported scalings: tests/test_rope_scaling.cpp
  CHECK_THROWS_WITH_AS(parse(R"(, "mlp_bias": true)"), "cfg.json: mlp_bias is true; MLP biases are not implemented",
                       Error);
  CHECK_THROWS_WITH_AS(parse(R"(, "hidden_act": "gelu")"), "cfg.json: hidden_act \"gelu\" is not supported (silu)", Error);
  CHECK_THROWS_WITH_AS(parse(R"(, "num_key_value_heads": 3)"),
                       "cfg.json: num_attention_heads (4) must be a multiple of num_key_value_heads (3)", Error);
  CHECK_THROWS_WITH_AS(parse(R"(, "head_dim": "128")"), "cfg.json: \"head_dim\" must be an integer, got a string (\"128\")", Error);
  CHECK_THROWS_WITH_AS(ModelConfig::from_file("no/such/config.json"), "no/such/config.json: cannot open", Error);
}

TEST_CASE("weights: missing tensor, wrong shape, unexpected tensor, truncated file") {
  {
    ScratchDir dir("qwen3_untied_bias");
    // Tied config over an untied checkpoint: lm_head.weight is skipped, the model loads.
    dir.write("config.json", replace(dir.read("config.json"), "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true"));
    CHECK_NOTHROW(Decoder::load(dir.str()));
    // Without biases in the config, the bias tensors are unexpected.
    dir.write("config.json", replace(dir.read("config.json"), "\"attention_bias\": true", "\"attention_bias\": false"));
    CHECK_THROWS_WITH_AS(Decoder::load(dir.str()),
                         (dir.str() + ": unexpected tensor model.layers.0.self_attn.k_proj.bias in " + dir.str() +
                          "/model.safetensors (not a parameter of this qwen3 config)").c_str(),
                         Error);
  }
  {
    ScratchDir dir("qwen3_tied");
    // A wider MLP in the config than in the file: the shape error names expected and found.
    dir.write("config.json", replace(dir.read("config.json"), "\"intermediate_size\": 48", "\"intermediate_size\": 50"));
    CHECK_THROWS_WITH_AS(Decoder::load(dir.str()),
                         (dir.str() + "/model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape [48, 32], "
                                      "expected [50, 32]").c_str(),
                         Error);
  }
  {
    ScratchDir dir("qwen3_tied");
    // Untied config over a tied checkpoint: lm_head.weight is missing.
    dir.write("config.json", replace(dir.read("config.json"), "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"));
    CHECK_THROWS_WITH_AS(Decoder::load(dir.str()),
                         (dir.str() + ": missing tensor lm_head.weight (expected [1024, 32])").c_str(), Error);
  }
  {
    ScratchDir dir("llama");
    std::string bytes = dir.read("model.safetensors");
    dir.write("model.safetensors", bytes.substr(0, bytes.size() - 100));
    try {
      Decoder::load(dir.str());
      FAIL("a truncated safetensors file loaded");
    } catch (const Error& e) {
      // The reader (formats/safetensors.h) names the file, the tensor and the cause.
      const std::string msg = e.what();
      CHECK(msg.rfind(dir.str() + "/model.safetensors: tensor '", 0) == 0);
      CHECK(msg.find("file truncated?") != std::string::npos);
    }
  }
}

TEST_CASE("weights: a sharded checkpoint (model.safetensors.index.json) loads like the single file") {
  ScratchDir dir("qwen3_untied_bias");
  SafetensorsFile single = SafetensorsFile::open(dir.str() + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> shard[2];
  std::string index = "{\"metadata\": {}, \"weight_map\": {";
  int k = 0;
  for (const std::string& name : single.names()) {
    const int s = k % 2;
    shard[s].push_back({name, single.get(name).clone()});
    index += str(k++ ? ", " : "", "\"", name, "\": \"model-0000", s + 1, "-of-00002.safetensors\"");
  }
  index += "}}";
  for (int s = 0; s < 2; ++s) save_safetensors(str(dir.str(), "/model-0000", s + 1, "-of-00002.safetensors"), shard[s]);
  fs::remove(dir.path / "model.safetensors");
  dir.write("model.safetensors.index.json", index);
  TensorMap sharded = load_weights(dir.str(), ModelConfig::from_file(dir.str() + "/config.json"));
  CHECK(sharded.size() == single.names().size());
  for (const std::string& name : single.names()) CHECK(max_rel_error(sharded.at(name), single.get(name)) == 0.0);
}

TEST_CASE("weights: F16 checkpoints are converted to f32") {
  ScratchDir dir("llama");
  SafetensorsFile bf16 = SafetensorsFile::open(dir.str() + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> f16;
  for (const std::string& name : bf16.names()) f16.push_back({name, bf16.get(name).to_dtype(DType::F16)});
  save_safetensors(dir.str() + "/model.safetensors", f16);
  ModelConfig config = ModelConfig::from_file(dir.str() + "/config.json");
  TensorMap loaded = load_weights(dir.str(), config);
  for (const auto& [name, t] : f16) {
    CAPTURE(name);
    CHECK(loaded.at(name).dtype() == DType::F32);
    std::vector<float> want = t.to_vector(), got = loaded.at(name).to_vector();
    CHECK(got == want);  // every f16 value is exact in f32
  }
}

TEST_CASE("random weights of a config have the checkpoint's names and shapes") {
  ModelConfig c = ModelConfig::from_file(kFixtures + "qwen3_untied_bias/config.json");
  TensorMap a = random_weights(c, 1), b = random_weights(c, 1), other = random_weights(c, 2);
  SafetensorsDir file = SafetensorsDir::open(kFixtures + "qwen3_untied_bias");
  CHECK(a.size() == file.names().size());
  for (const std::string& name : file.names()) {
    std::string model_name = name;
    CAPTURE(model_name);
    REQUIRE(a.count(name));
    CHECK(a.at(name).shape() == file.file_of(name).entry(name).shape);
  }
  const Tensor& q = a.at("model.layers.0.self_attn.q_proj.weight");
  CHECK(max_rel_error(q, b.at("model.layers.0.self_attn.q_proj.weight")) == 0.0);
  CHECK(max_rel_error(q, other.at("model.layers.0.self_attn.q_proj.weight")) > 0.1);
  std::vector<float> w = q.to_vector();
  double mean = std::accumulate(w.begin(), w.end(), 0.0) / w.size(), var = 0;
  for (float x : w) var += (x - mean) * (x - mean);
  CHECK(std::fabs(mean) < 0.002);
  CHECK(std::fabs(std::sqrt(var / w.size()) - 0.02) < 0.002);
  Decoder model(c, a);
  CHECK(model.parameters().size() == a.size());
}
