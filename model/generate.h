// Text generation with a KV cache: the prompt is run once (prefill), then one
// token at a time, each step attending to the keys/values cached from all
// earlier positions instead of recomputing them.
//
// The layers are the decoder's own (Decoder::layer_forward, so a LoRA inside
// Linear is applied here too); only attention differs: KVCache::attend appends
// the new k, v of a layer and attends the new queries over the whole cache.
// Inference only (runs under NoGrad), one sequence, on the CPU.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/decoder.h"

namespace nq {

class KVCache {
 public:
  KVCache(const ModelConfig& config, int64_t capacity);  // capacity: max tokens held

  int64_t length() const { return length_; }  // tokens cached (= position of the next token)
  int64_t capacity() const { return capacity_; }

  // q [n, Hq, Dh] at positions length()..length()+n-1; k, v [n, Hkv, Dh] of the
  // same tokens are stored in `layer`'s cache. Returns causal GQA attention over
  // the cache, [n, Hq, Dh]. The length moves on only with advance().
  Tensor attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v);
  void advance(int64_t n);  // after every layer has seen the n new tokens

 private:
  int64_t capacity_, num_heads_, num_kv_heads_, head_dim_, length_ = 0;
  std::vector<Tensor> keys_, values_;  // per layer [capacity, Hkv, Dh]
};

// Runs `ids` (the tokens following those in the cache) and returns their logits [n, V].
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
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // eos, <|im_end|>: generation ends on any (it is not returned)
};

// The new tokens after `prompt`. on_token(id) is called as each one is chosen (streaming).
std::vector<int32_t> generate(const Decoder& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace nq
