// Text generation with a KV cache: the prompt is run once (prefill), then one
// token at a time, each step attending to the keys/values cached from all
// earlier positions instead of recomputing them.
//
// The layers are the decoder's own (Decoder::layer_forward, so a LoRA inside
// Linear is applied here too); only attention differs: KVCache::attend appends
// the new k, v of a layer and attends the new queries over the whole cache.
// Inference only (runs under NoGrad, in eval mode: no LoRA dropout), one sequence, on the CPU.
//
// A cache remembers which tokens it holds, so a chat can keep it across turns:
// each turn's prompt (the whole conversation re-rendered) starts with the tokens
// already cached, and generate() runs only what follows their longest common
// prefix (an earlier turn rendered differently, e.g. Qwen3 dropping a thinking
// block, is recomputed from where the texts part).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/decoder.h"

namespace nq {

class KVCache {
 public:
  // capacity: tokens held before the cache grows (it doubles, copying what it holds)
  KVCache(const ModelConfig& config, int64_t capacity);

  int64_t length() const { return length_; }  // tokens cached (= position of the next token)
  int64_t capacity() const { return capacity_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // the ids cached, [length()]

  void reserve(int64_t n);      // capacity for at least n tokens
  void truncate(int64_t n);     // forget all but the first n tokens (n <= length())

  // q [n, Hq, Dh] at positions length()..length()+n-1; k, v [n, Hkv, Dh] of the
  // same tokens are stored in `layer`'s cache. Returns causal GQA attention over
  // the cache, [n, Hq, Dh]. The length moves on only with advance().
  Tensor attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v);
  void advance(const std::vector<int32_t>& ids);  // after every layer has seen these new tokens

 private:
  int64_t capacity_, num_heads_, num_kv_heads_, head_dim_, length_ = 0;
  std::vector<Tensor> keys_, values_;  // per layer [capacity, Hkv, Dh]
  std::vector<int32_t> tokens_;
};

// Runs `ids` (the tokens following those in the cache; it grows as needed) and
// returns their logits [n, V].
Tensor forward_cached(const Decoder& model, const std::vector<int32_t>& ids, KVCache& cache);

struct SamplingOptions {
  bool greedy = true;        // argmax; otherwise sample with the settings below
  float temperature = 1.0f;  // logits / temperature
  int64_t top_k = 0;         // keep the k most likely tokens (0 = all)
  float top_p = 1.0f;        // then the smallest set whose probability reaches top_p
  uint64_t seed = 0;         // Philox seed: step s draws philox_uniform(seed, s, 0)
};

// Picks the next token from logits [V] (HF order: temperature, top-k, top-p).
int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& options, uint64_t step);

struct GenerateOptions {
  int64_t max_new_tokens = 256;  // ./generate --max-new-tokens's default too
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // eos, <|im_end|>: generation ends on any (it is not returned)
};

// How many of `prompt`'s first tokens `cache` already holds and generate() will
// reuse: their longest common prefix, short of the prompt's last token.
int64_t reusable_prefix(const KVCache& cache, const std::vector<int32_t>& prompt);

// The new tokens after `prompt`. on_token(id) is called as each one is chosen (streaming).
// With `cache`, the prompt's prefix already in it is reused (at least the last prompt
// token is run again, for its logits), and it holds prompt + reply afterwards but for
// the last token chosen; without, a cache is made for this call.
std::vector<int32_t> generate(const Decoder& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token = {}, KVCache* cache = nullptr);

}  // namespace nq
