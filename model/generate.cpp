// KV-cache attention, cached forward, sampling and the generation loop (see generate.h).
#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "autograd/ops.h"
#include "kernels/kernels.h"
#include "runtime/philox.h"

namespace nq {

KVCache::KVCache(const ModelConfig& config, int64_t capacity)
    : capacity_(capacity), num_heads_(config.num_heads), num_kv_heads_(config.num_kv_heads), head_dim_(config.head_dim) {
  NQ_CHECK(capacity > 0, "KVCache: capacity must be > 0, got ", capacity);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    keys_.push_back(Tensor::empty({capacity, num_kv_heads_, head_dim_}));
    values_.push_back(Tensor::empty({capacity, num_kv_heads_, head_dim_}));
  }
}

void KVCache::reserve(int64_t n) {
  if (n <= capacity_) return;
  const int64_t grown = std::max(n, 2 * capacity_), row = num_kv_heads_ * head_dim_;
  for (std::vector<Tensor>* cache : {&keys_, &values_})
    for (Tensor& t : *cache) {
      Tensor bigger = Tensor::empty({grown, num_kv_heads_, head_dim_});
      std::copy_n(t.data<float>(), length_ * row, bigger.data<float>());
      t = bigger;
    }
  capacity_ = grown;
}

void KVCache::truncate(int64_t n) {
  NQ_CHECK(n >= 0 && n <= length_, "KVCache::truncate: ", n, " is outside [0, ", length_, "]");
  length_ = n;
  tokens_.resize(size_t(n));
}

Tensor KVCache::attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t n = q.size(0), Hq = num_heads_, Hkv = num_kv_heads_, Dh = head_dim_;
  NQ_CHECK(q.shape() == (Shape{n, Hq, Dh}) && k.shape() == (Shape{n, Hkv, Dh}) && v.shape() == k.shape(),
           "KVCache::attend: expected q [n, ", Hq, ", ", Dh, "], k/v [n, ", Hkv, ", ", Dh, "], got ", q.desc(), ", ",
           k.desc(), ", ", v.desc());
  NQ_CHECK(length_ + n <= capacity_, "KVCache: ", length_ + n, " tokens exceed its capacity of ", capacity_);
  // Store the new keys/values after the cached ones.
  const int64_t row = Hkv * Dh;
  std::copy_n(k.data<float>(), n * row, keys_[layer].data<float>() + length_ * row);
  std::copy_n(v.data<float>(), n * row, values_[layer].data<float>() + length_ * row);

  const float* Q = q.data<float>();
  const float* K = keys_[layer].data<float>();
  const float* V = values_[layer].data<float>();
  Tensor out = Tensor::empty({n, Hq, Dh});
  float* O = out.data<float>();
  const float scale = 1.0f / std::sqrt(float(Dh));
  const int64_t group = Hq / Hkv;  // query heads per kv head
#pragma omp parallel for collapse(2)
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t visible = length_ + t + 1;  // causal: keys at positions 0..length+t
      const float* qv = Q + (t * Hq + h) * Dh;
      const int64_t g = h / group;
      std::vector<float> score(visible);
      float max_score = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {  // score_j = q . k_j / sqrt(Dh)
        const float* kv = K + (j * Hkv + g) * Dh;
        float s = 0;
        for (int64_t d = 0; d < Dh; ++d) s += qv[d] * kv[d];
        score[j] = s * scale;
        max_score = std::max(max_score, score[j]);
      }
      float denom = 0;
      for (float& s : score) denom += (s = std::exp(s - max_score));  // softmax, stable
      float* ov = O + (t * Hq + h) * Dh;
      std::fill_n(ov, Dh, 0.0f);
      for (int64_t j = 0; j < visible; ++j) {  // o = sum_j p_j v_j
        const float p = score[j] / denom;
        const float* vv = V + (j * Hkv + g) * Dh;
        for (int64_t d = 0; d < Dh; ++d) ov[d] += p * vv[d];
      }
    }
  }
  return out;
}

void KVCache::advance(const std::vector<int32_t>& ids) {
  length_ += int64_t(ids.size());
  tokens_.insert(tokens_.end(), ids.begin(), ids.end());
}

Tensor forward_cached(const Decoder& model, const std::vector<int32_t>& ids, KVCache& cache) {
  NoGrad no_grad;
  TrainingMode eval_mode(false);  // inference: no LoRA dropout, even if called while training
  const ModelConfig& c = model.config();
  const int64_t n = int64_t(ids.size());
  NQ_CHECK(n > 0, "forward_cached: no tokens");
  for (int32_t id : ids) NQ_CHECK(id >= 0 && id < c.vocab_size, "generate: token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");
  cache.reserve(cache.length() + n);
  std::vector<int32_t> pos(n);
  std::iota(pos.begin(), pos.end(), int32_t(cache.length()));
  Tensor positions = Tensor::from_ids(pos, {n});

  Var x = model.embed(Tensor::from_ids(ids, {n}));  // [n, D]
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto cached = [&cache, i](const Var& q, const Var& k, const Var& v) {
      return Var(cache.attend(i, q.value(), k.value(), v.value()));
    };
    x = model.layer_forward(i, x, positions, cached);
  }
  cache.advance(ids);
  Var h = model.final_norm(x);                                              // [n, D]
  return kernels::matmul(h.value(), model.lm_head().value(), false, true);  // [n, V]
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& o, uint64_t step) {
  if (o.greedy) return int32_t(std::max_element(logits, logits + vocab) - logits);  // first maximum, as torch
  NQ_CHECK(o.temperature > 0, "sampling: temperature must be > 0, got ", o.temperature);
  NQ_CHECK(o.top_p > 0 && o.top_p <= 1, "sampling: top_p must be in (0, 1], got ", o.top_p);
  NQ_CHECK(o.top_k >= 0, "sampling: top_k must be >= 0, got ", o.top_k);

  // Tokens by decreasing logit; top-k keeps a prefix.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;

  // Softmax of logits / temperature over the kept tokens.
  std::vector<double> prob(keep);
  const double top = logits[order[0]] / o.temperature;
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += (prob[i] = std::exp(logits[order[i]] / o.temperature - top));
  // Top-p: the smallest prefix whose probability mass reaches top_p (at least one token).
  double mass = 0;
  for (int64_t i = 0; i < keep; ++i) {
    mass += prob[i] / total;
    if (mass >= o.top_p) { keep = i + 1; break; }
  }
  double kept_total = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);

  // Inverse-CDF draw with the step's Philox number.
  const double u = philox_uniform(o.seed, step, 0) * kept_total;
  double cdf = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cdf += prob[i];
    if (u < cdf) return order[i];
  }
  return order[keep - 1];
}

int64_t reusable_prefix(const KVCache& cache, const std::vector<int32_t>& prompt) {
  // Run at least the prompt's last token: its logits choose the first new token.
  const std::vector<int32_t>& held = cache.tokens();
  const int64_t limit = std::min(int64_t(held.size()), int64_t(prompt.size()) - 1);
  int64_t n = 0;
  while (n < limit && held[size_t(n)] == prompt[size_t(n)]) ++n;
  return n;
}

std::vector<int32_t> generate(const Decoder& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token, KVCache* reuse) {
  NQ_CHECK(!prompt.empty(), "generate: the prompt is empty");
  NQ_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0");
  const int64_t V = model.config().vocab_size;
  std::optional<KVCache> own;
  KVCache& cache = reuse ? *reuse : own.emplace(model.config(), int64_t(prompt.size()) + options.max_new_tokens);
  const int64_t common = reusable_prefix(cache, prompt);
  cache.truncate(common);
  std::vector<int32_t> out;
  Tensor logits = forward_cached(model, std::vector<int32_t>(prompt.begin() + std::ptrdiff_t(common), prompt.end()),
                                 cache);  // prefill: [prompt - common, V]
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const float* last = logits.data<float>() + (logits.size(0) - 1) * V;
    const int32_t next = sample_token(last, V, options.sampling, uint64_t(step));
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end()) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (step + 1 < options.max_new_tokens) logits = forward_cached(model, {next}, cache);
  }
  return out;
}

}  // namespace nq
