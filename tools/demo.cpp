// demo: the engine end to end on a toy problem, until the real fine-tuning job
// exists. A one-layer causal transformer over characters (embedding -> RMSNorm
// -> GQA attention with RoPE -> residual -> RMSNorm -> SwiGLU MLP -> residual
// -> RMSNorm -> lm_head fused with cross-entropy) learns to continue a short
// built-in text with Adam written inline; the loss falls from ln(vocab) towards
// zero, then the model greedily completes a prompt.
//
//   ./demo [--steps N] [--lr X] [--seed S] [--checkpoint]   (flags: training/flags.h)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "kernels/kernels.h"
#include "runtime/rng.h"
#include "tools/cli.h"
#include "training/flags.h"

using namespace nq;

namespace {

const char* kText =
    "Low-rank adaptation freezes the pretrained weights and learns a small update B A beside each "
    "linear layer. QLoRA stores the frozen weights in four bits, as NF4 blocks of sixty-four values "
    "with one absmax each, and dequantizes them tile by tile when a matmul needs them. Only the "
    "adapters receive gradients, so the optimizer state is tiny and a large model fits on one GPU. ";

struct Options {
  int64_t steps = 300;
  float lr = 3e-3f;
  uint64_t seed = 1;
  bool checkpoint = false;
};

// false: --help was printed.
bool parse_args(int argc, char** argv, Options* o) {
  FlagTable t(
      "usage: ./demo [--steps N] [--lr X] [--seed S] [--checkpoint]\n"
      "Trains a one-layer character transformer on a built-in text with the nanoqlora engine\n"
      "(CPU, fp32) and prints the loss as it falls.\n");
  t.add("steps", &o->steps, "optimizer steps");
  t.add("lr", &o->lr, "Adam learning rate", "X");
  t.add("seed", &o->seed, "seed for initialisation and batches", "S");
  t.add("checkpoint", &o->checkpoint, "recompute the transformer block in backward (gradient checkpointing)");
  if (!t.parse(argc, argv)) return false;
  NQ_CHECK(o->steps > 0, "--steps: must be positive");
  NQ_CHECK(o->lr > 0, "--lr: must be positive");
  return true;
}

// Model sizes: D hidden, Hq query heads sharing Hkv kv heads of Dh, MLP width F.
constexpr int64_t D = 64, Hq = 4, Hkv = 2, Dh = 16, F = 128, B = 8, T = 48;
constexpr float kEps = 1e-6f, kTheta = 10000.0f;

struct Model {
  Var embed, norm1, wq, wk, wv, wo, norm2, w_gate, w_up, w_down, norm_out, lm_head;
  std::vector<Var> params() const {
    return {embed, norm1, wq, wk, wv, wo, norm2, w_gate, w_up, w_down, norm_out, lm_head};
  }
};

Var init_param(Shape s, std::mt19937& gen, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(size_t(s.numel()));
  for (float& x : v) x = dist(gen);
  return Var(Tensor::from_vector(v, s), true);
}
Var ones_param(int64_t n) { return Var(Tensor::full({n}, 1.0f), true); }

Model init_model(int64_t vocab, std::mt19937& gen) {
  float s = 1.0f / std::sqrt(float(D));
  return Model{init_param({vocab, D}, gen, 1.0f), ones_param(D),
               init_param({Hq * Dh, D}, gen, s), init_param({Hkv * Dh, D}, gen, s),
               init_param({Hkv * Dh, D}, gen, s), init_param({D, Hq * Dh}, gen, s),
               ones_param(D), init_param({F, D}, gen, s), init_param({F, D}, gen, s),
               init_param({D, F}, gen, 1.0f / std::sqrt(float(F))), ones_param(D),
               init_param({vocab, D}, gen, s)};
}

// The transformer block: x [n*t, D] -> [n*t, D].
Var block(const Model& m, const Var& x, const Tensor& positions, int64_t n, int64_t t) {
  const int64_t N = n * t;
  static const RopeTable kRope = rope_table(kTheta, Dh);  // inv_freq = theta^(-2i/Dh), unscaled
  Var h = rmsnorm(x, m.norm1, kEps);
  Var q = rope(reshape(linear(h, m.wq), {N, Hq, Dh}), positions, kRope);   // [N, Hq, Dh]
  Var k = rope(reshape(linear(h, m.wk), {N, Hkv, Dh}), positions, kRope);  // [N, Hkv, Dh]
  Var v = reshape(linear(h, m.wv), {N, Hkv, Dh});
  Var attn = reshape(attention(q, k, v, n, t), {N, Hq * Dh});
  Var x2 = add(x, linear(attn, m.wo));
  Var mlp = linear(swiglu(linear(rmsnorm(x2, m.norm2, kEps), m.w_gate), linear(rmsnorm(x2, m.norm2, kEps), m.w_up)),
                   m.w_down);
  return add(x2, mlp);
}

// ids [n*t] -> final hidden states [n*t, D]
Var forward(const Model& m, const Tensor& ids, int64_t n, int64_t t, bool use_checkpoint) {
  std::vector<int32_t> pos(size_t(n * t));
  for (int64_t i = 0; i < n * t; ++i) pos[i] = int32_t(i % t);
  Tensor positions = Tensor::from_ids(pos, {n * t});
  Var x = embedding(m.embed, ids);
  // checkpoint() keeps the function for the re-run in backward: capture by value
  // what dies with this frame (positions, n, t); the model outlives the step.
  auto run_block = [&m, positions, n, t](const std::vector<Var>& in) { return block(m, in[0], positions, n, t); };
  Var y = use_checkpoint ? checkpoint(run_block, {x}) : run_block({x});
  return rmsnorm(y, m.norm_out, kEps);
}

// Adam (no weight decay), state kept beside each parameter.
struct Adam {
  float lr = 3e-3f, beta1 = 0.9f, beta2 = 0.99f, eps = 1e-8f;
  int64_t step = 0;
  std::vector<std::vector<float>> m, v;
  void update(std::vector<Var>& params) {
    if (m.empty())
      for (Var& p : params) { m.emplace_back(p.value().numel(), 0.0f); v.emplace_back(p.value().numel(), 0.0f); }
    ++step;
    float c1 = 1 - std::pow(beta1, float(step)), c2 = 1 - std::pow(beta2, float(step));
    for (size_t i = 0; i < params.size(); ++i) {
      float* w = params[i].value().data<float>();
      const float* g = params[i].grad().data<float>();
      for (int64_t j = 0; j < params[i].value().numel(); ++j) {
        m[i][j] = beta1 * m[i][j] + (1 - beta1) * g[j];
        v[i][j] = beta2 * v[i][j] + (1 - beta2) * g[j] * g[j];
        w[j] -= lr * (m[i][j] / c1) / (std::sqrt(v[i][j] / c2) + eps);
      }
      params[i].zero_grad();
    }
  }
};

int run(const Options& opt) {
  std::string text = kText;
  std::map<char, int32_t> to_id;
  std::string chars;
  for (char c : text)
    if (!to_id.count(c)) { to_id[c] = int32_t(chars.size()); chars += c; }
  const int64_t vocab = int64_t(chars.size());
  std::vector<int32_t> ids;
  for (char c : text) ids.push_back(to_id[c]);

  std::mt19937 gen(uint32_t(opt.seed));
  rng_seed(opt.seed);
  Model model = init_model(vocab, gen);
  std::vector<Var> params = model.params();
  Adam adam;
  adam.lr = opt.lr;
  std::uniform_int_distribution<int64_t> start_dist(0, int64_t(ids.size()) - T - 1);
  std::printf("demo: %zu characters, vocab %lld, D=%lld, heads %lld/%lld, batch %lldx%lld, %lld steps%s\n",
              text.size(), (long long)vocab, (long long)D, (long long)Hq, (long long)Hkv, (long long)B, (long long)T,
              (long long)opt.steps, opt.checkpoint ? ", checkpointed" : "");
  std::printf("initial loss should be near ln(%lld) = %.3f\n", (long long)vocab, std::log(double(vocab)));

  for (int64_t step = 1; step <= opt.steps; ++step) {
    std::vector<int32_t> inputs, labels;  // labels = inputs shifted by one
    for (int64_t b = 0; b < B; ++b) {
      int64_t s = start_dist(gen);
      inputs.insert(inputs.end(), ids.begin() + s, ids.begin() + s + T);
      labels.insert(labels.end(), ids.begin() + s + 1, ids.begin() + s + T + 1);
    }
    Var h = forward(model, Tensor::from_ids(inputs, {B * T}), B, T, opt.checkpoint);
    Var loss = linear_cross_entropy(h, model.lm_head, Tensor::from_ids(labels, {B * T}), 128);
    backward(loss);
    adam.update(params);
    if (step == 1 || step % 25 == 0 || step == opt.steps)
      std::printf("step %4lld  loss %.4f\n", (long long)step, loss.value().to_vector()[0]);
  }

  // Greedy completion: re-run the whole prefix each time (no KV cache here).
  NoGrad no_grad;
  std::string out = "Only the ";
  for (int i = 0; i < 80; ++i) {
    std::vector<int32_t> prefix;
    for (char c : out.substr(out.size() > size_t(T) ? out.size() - T : 0)) prefix.push_back(to_id.count(c) ? to_id[c] : 0);
    int64_t t = int64_t(prefix.size());
    Tensor h = forward(model, Tensor::from_ids(prefix, {t}), 1, t, false).value();
    Tensor logits = kernels::matmul(h.slice(t - 1, t), model.lm_head.value(), false, true);  // [1, vocab]
    std::vector<float> z = logits.to_vector();
    out += chars[size_t(std::max_element(z.begin(), z.end()) - z.begin())];
  }
  std::printf("completion: \"%s\"\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return nq::cli::run_main([&] {
    Options opt;
    return parse_args(argc, argv, &opt) ? run(opt) : 0;
  });
}
