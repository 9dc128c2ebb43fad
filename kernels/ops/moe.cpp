// Registrations: the Qwen3-MoE router's top-k softmax (moe_route), and the experts' dense
// products (grouped_matmul, its weight gradient grouped_weight_grad). moe_route: logits [N, E] ->
// p = softmax in f32, experts [N, k] (the k largest p), weights [N, k] = p[experts]
// (renormalized to sum 1 with norm_topk_prob); backward grad_weights -> grad_logits.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "kernels/cpu/moe_route.h"
#include "kernels/kernels.h"
#include "kernels/ops/ops.h"
#include "runtime/philox.h"

namespace nq::kernels::registry::family {

namespace {

Dims route(int64_t tokens, int64_t experts, int64_t top_k, bool renormalize) {
  Dims d;
  d.tokens = tokens; d.experts = experts; d.top_k = top_k; d.renormalize = renormalize;
  return d;
}
// Each {tokens, experts, top_k} with and without renormalization.
std::vector<Dims> both_ways(std::initializer_list<std::array<int64_t, 3>> shapes) {
  std::vector<Dims> out;
  for (const auto& s : shapes)
    for (bool renormalize : {false, true}) out.push_back(route(s[0], s[1], s[2], renormalize));
  return out;
}

// Logits without ties: row n is -kSpacing (rank + 1/2) + noise, rank a random permutation of
// 0..E-1 (Fisher-Yates on the Philox stream), |noise| < kSpacing / 5, so the values are never
// zero and neighbours are at least 0.6 kSpacing apart. The top 32 lie in [-4, 0], where the
// bf16 step is at most 2^-6 = kSpacing / 8: the selected experts stay distinct in every dtype
// (ties further down, bf16 at E = 512, are never selected).
constexpr float kSpacing = 0.125f;
Tensor distinct_logits(int64_t N, int64_t E, uint64_t seed) {
  Tensor logits = Tensor::empty({N, E});
  float* l = logits.data<float>();
  std::vector<int64_t> rank(E);
  for (int64_t n = 0; n < N; ++n) {
    std::iota(rank.begin(), rank.end(), int64_t(0));
    for (int64_t i = E - 1; i > 0; --i) {
      int64_t j = std::min<int64_t>(i, int64_t(philox_uniform(seed, uint64_t(n * E), uint64_t(i)) * float(i + 1)));
      std::swap(rank[i], rank[j]);
    }
    for (int64_t e = 0; e < E; ++e) {
      float noise = (philox_uniform(seed + 1, uint64_t(n * E), uint64_t(e)) - 0.5f) * 0.4f * kSpacing;
      l[n * E + e] = -kSpacing * (float(rank[e]) + 0.5f) + noise;
    }
  }
  return logits;
}

// The naive loops in double: softmax, a sort of the indices by (p descending, index
// ascending), renormalization; the backward from the softmax's Jacobian, summed term by term.
struct NaiveRoute {
  std::vector<double> weights, grad_logits;
  std::vector<int32_t> experts;
};
NaiveRoute naive_route(const std::vector<double>& logits, const std::vector<double>& grad_weights, int64_t N,
                       int64_t E, int64_t k, bool renormalize) {
  NaiveRoute out{std::vector<double>(N * k), std::vector<double>(N * E, 0.0), std::vector<int32_t>(N * k)};
  for (int64_t n = 0; n < N; ++n) {
    const double* l = logits.data() + n * E;
    double max = *std::max_element(l, l + E), sum = 0;
    std::vector<double> p(E);
    for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(l[e] - max);
    for (double& v : p) v /= sum;
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double selected = 0;
    for (int64_t j = 0; j < k; ++j) selected += p[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      out.experts[n * k + j] = order[j];
      out.weights[n * k + j] = renormalize ? p[order[j]] / selected : p[order[j]];
    }
    // dL/dl_i = sum_j g_j dw_j/dl_i. Not renormalized: w_j = p_{e_j}, dp_a/dl_i = p_a (delta_ai - p_i).
    // Renormalized: w = softmax over the selected logits, dw_j/dl_{e_m} = w_j (delta_jm - w_m).
    const double* g = grad_weights.data() + n * k;
    double* dl = out.grad_logits.data() + n * E;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t a = order[j];
      if (renormalize) {
        const double wj = out.weights[n * k + j];
        for (int64_t m = 0; m < k; ++m) dl[order[m]] += g[j] * wj * ((j == m) - out.weights[n * k + m]);
      } else {
        for (int64_t i = 0; i < E; ++i) dl[i] += g[j] * p[a] * ((a == i) - p[i]);
      }
    }
  }
  return out;
}

// grouped_matmul's shape: d.tokens rows a [tokens, k] among d.experts weights w_e [n, k].
// Inputs: [0] a, [1] dy [tokens, n], [2] the row bounds (expert_row_bounds), then the E w_e.
// Expert e's scale is 1 + e / 4.
Dims grouped_dense(int64_t tokens, int64_t experts, int64_t n, int64_t k) {
  Dims d;
  d.tokens = tokens; d.experts = experts; d.n = n; d.k = k;
  return d;
}
constexpr size_t kFirstWeight = 3;
std::vector<float> expert_scales(int64_t E) {
  std::vector<float> s;
  for (int64_t e = 0; e < E; ++e) s.push_back(1.0f + float(e) / 4);
  return s;
}
std::vector<Tensor> expert_weights(const std::vector<Tensor>& in, const Dims& d) {
  return std::vector<Tensor>(in.begin() + kFirstWeight, in.begin() + kFirstWeight + size_t(d.experts));
}
GroupedReference naive_grouped(const std::vector<double>& a, const std::vector<double>& w_all,
                               const std::vector<double>& dy, const std::vector<int64_t>& bounds, const Dims& d) {
  const std::vector<float> s = expert_scales(d.experts);
  return grouped_reference(a, w_all, dy, bounds, std::vector<double>(s.begin(), s.end()), d.n, d.k);
}
std::vector<double> concat(const std::vector<Tensor>& ts) {
  std::vector<double> all;
  for (const Tensor& t : ts) {
    const std::vector<double> v = doubles(t);
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

}  // namespace

void register_moe(std::vector<Op>& ops) {
  Op op;
  op.name = "moe_route";
  op.dims = {"tokens", "experts", "top-k"};
  op.bench = route(4096, 128, 8, true);  // Qwen3-30B-A3B: 128 experts, 8 per token, norm_topk_prob
  // Awkward E and k: k = E, k = 1 (renormalized: weights exactly 1, gradient exactly 0), E below,
  // at and above a warp, not a multiple of 32, and the GPU's limits (512 experts, top-32).
  op.shapes = [](Mode mode) {
    return pick(mode, both_ways({{3, 8, 2}, {5, 5, 5}, {17, 128, 8}, {4, 3, 1}, {7, 33, 4}, {2, 512, 32}}),
                both_ways({{3, 8, 2}, {2, 5, 5}, {2, 128, 8}, {4, 3, 1}, {2, 33, 4}}),
                both_ways({{1, 8, 2}, {7, 5, 5}, {33, 128, 8}, {9, 3, 1}, {13, 33, 4}, {6, 200, 16}, {5, 512, 32}}));
  };
  op.inputs = [](const Dims& d, uint64_t seed) {  // logits, grad_weights
    return std::vector<Input>{{distinct_logits(d.tokens, d.experts, seed)},
                              {random_normal({d.tokens, d.top_k}, seed + 2)}};
  };
  Tol in_act = by_dtype();
  in_act.in_act_dtype = true;  // weights and grad_logits: the logits' dtype
  op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                  Tensor experts;
                  Tensor weights = kernels::moe_route_forward(in[0], d.top_k, d.renormalize, &experts);
                  return std::vector<Tensor>{weights, experts};
                },
                {in_act, bit_exact()},  // the same selection on every device
                [](const Dims& d, double act) {
                  // logits read once, weights and experts written; the softmax and k scans of the row
                  return Cost{act * d.tokens * d.experts + (act + 4) * d.tokens * d.top_k,
                              double(4 + d.top_k) * d.tokens * d.experts};
                }};
  op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>& fwd, const Dims& d) {
                   return std::vector<Tensor>{
                       kernels::moe_route_backward(in[1], in[0], fwd[1], fwd[0], d.renormalize)};
                 },
                 {in_act},
                 [](const Dims& d, double act) {
                   // grad_weights, experts, weights read, grad_logits written; without renormalization
                   // the logits are read again (p recomputed)
                   const double rows = double(d.tokens) * d.experts;
                   return Cost{(2 * act + 4) * d.tokens * d.top_k + act * rows * (d.renormalize ? 1 : 2),
                               d.renormalize ? 4.0 * d.tokens * d.top_k : 7.0 * rows};
                 }};
  op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
    NaiveRoute want = naive_route(doubles(in[0]), doubles(in[1]), d.tokens, d.experts, d.top_k, d.renormalize);
    return std::vector<Expected>{{0, want.weights, 2e-6},
                                 {1, std::vector<double>(want.experts.begin(), want.experts.end()), 0},
                                 {2, want.grad_logits, 1e-5}};
  };
  op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
    GradProblem p;
    p.names = {"logits"};
    p.x = values({doubles(in[0])});
    auto x = p.x;
    auto r = std::make_shared<std::vector<double>>(doubles(in[1]));
    const int64_t N = d.tokens, E = d.experts, k = d.top_k;
    const bool renormalize = d.renormalize;
    // The selection at the unperturbed logits, held fixed while the check perturbs them
    // (the loss is then smooth; the inputs' spacing keeps a +-1e-6 step from changing it anyway).
    auto experts = std::make_shared<std::vector<int32_t>>(N * k);
    {
      std::vector<double> w(N * k);
      cpu::moe_route_forward((*x)[0].data(), N, E, k, renormalize, experts->data(), w.data());
    }
    auto weights_at_x = [x, experts, N, E, k, renormalize] {
      std::vector<double> w(N * k);
      cpu::moe_route_weights((*x)[0].data(), experts->data(), N, E, k, renormalize, w.data());
      return w;
    };
    // grad_logits [N, E] of the cotangent r for a selection and its weights
    auto gradient = [x, r, N, E, k, renormalize](const std::vector<int32_t>& chosen, const std::vector<double>& w) {
      std::vector<double> g(N * E);
      cpu::moe_route_backward(r->data(), (*x)[0].data(), chosen.data(), w.data(), N, E, k, renormalize, g.data());
      return g;
    };
    p.loss = [weights_at_x, r] { return dot(weights_at_x(), *r); };
    p.grad = [weights_at_x, gradient, experts] {
      return std::vector<std::vector<double>>{gradient(*experts, weights_at_x())};
    };
    // The double kernels' weights (selection included: other experts give other weights) and
    // gradient against the naive loops.
    p.double_vs_naive = [x, r, gradient, N, E, k, renormalize] {
      std::vector<int32_t> chosen(N * k);
      std::vector<double> kernel(N * k);
      cpu::moe_route_forward((*x)[0].data(), N, E, k, renormalize, chosen.data(), kernel.data());
      std::vector<double> g = gradient(chosen, kernel);
      kernel.insert(kernel.end(), g.begin(), g.end());
      NaiveRoute want = naive_route((*x)[0], *r, N, E, k, renormalize);
      want.weights.insert(want.weights.end(), want.grad_logits.begin(), want.grad_logits.end());
      return std::make_pair(kernel, want.weights);
    };
    return p;
  };
  ops.push_back(op);

  {  // the experts' dense products (their LoRA factors): y_e = s_e a_e w_e^T; backward
     // dx_e = s_e dy_e w_e and dW_e = s_e dy_e^T a_e (grouped_weight_grad)
    Op op;
    op.name = "grouped_matmul";
    op.dims = {"tokens", "experts", "n", "k"};
    op.bench = grouped_dense(16384, 128, 16, 2048);  // Qwen3-30B-A3B: u = x_e A_e^T at r 16, 2048 tokens x top 8
    // one expert; rows split across 64-row tiles; an expert without rows (always); n and k
    // not multiples of a tile; more experts than rows
    op.shapes = [](Mode mode) {
      return pick(mode, {grouped_dense(1, 1, 1, 1), grouped_dense(9, 3, 5, 37), grouped_dense(40, 4, 16, 20)},
                  {grouped_dense(4, 3, 3, 5), grouped_dense(7, 2, 5, 9)},
                  {grouped_dense(1, 1, 3, 37), grouped_dense(17, 3, 16, 40), grouped_dense(200, 5, 130, 72),
                   grouped_dense(5, 8, 16, 64), grouped_dense(150, 4, 8, 200)});
    };
    op.inputs = [](const Dims& d, uint64_t seed) {
      std::vector<Input> in{{random_normal({d.tokens, d.k}, seed + 1)}, {random_normal({d.tokens, d.n}, seed + 2)},
                            expert_row_bounds(d.tokens, d.experts, seed + 3)};
      for (int64_t e = 0; e < d.experts; ++e) in.push_back({random_normal({d.n, d.k}, seed + 10 + uint64_t(e), 0.1f)});
      return in;
    };
    op.forward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                    return std::vector<Tensor>{kernels::grouped_matmul(in[0], expert_weights(in, d), row_bounds(in[2]),
                                                                       false, expert_scales(d.experts))};
                  },
                  {tile16_bound()},
                  [](const Dims& d, double act) {
                    return Cost{act * double(d.tokens * (d.k + d.n) + d.experts * d.n * d.k),
                                2.0 * d.tokens * d.n * d.k, d.tokens, d.n, d.k, 1};
                  }};
    op.backward = {[](const std::vector<Tensor>& in, const std::vector<Tensor>&, const Dims& d) {
                     const std::vector<int64_t> bounds = row_bounds(in[2]);
                     const std::vector<float> s = expert_scales(d.experts);
                     return std::vector<Tensor>{kernels::grouped_matmul(in[1], expert_weights(in, d), bounds, true, s),
                                                kernels::grouped_weight_grad(in[1], in[0], bounds, s)};
                   },
                   {tile16_bound(), f32_bound()},
                   [](const Dims& d, double act) {
                     return Cost{act * double(2 * d.tokens * (d.k + d.n) + d.experts * d.n * d.k) +
                                     4.0 * d.experts * d.n * d.k,
                                 4.0 * d.tokens * d.n * d.k, d.tokens, d.k, d.n, 1};
                   }};
    op.naive = [](const std::vector<Tensor>& in, const Dims& d) {
      const GroupedReference want = naive_grouped(doubles(in[0]), concat(expert_weights(in, d)), doubles(in[1]),
                                              row_bounds(in[2]), d);
      return std::vector<Expected>{{0, want.y, 1e-5}, {1, want.dx, 1e-5}, {2, want.dw, 1e-5}};
    };
    // L = sum(y * dy): dL/da = dx, dL/dW_e = dW_e
    op.grad = [](const std::vector<Tensor>& in, const Dims& d) {
      GradProblem p;
      p.names = {"a", "w"};
      p.x = values({doubles(in[0]), concat(expert_weights(in, d))});
      auto x = p.x;
      auto dy = std::make_shared<std::vector<double>>(doubles(in[1]));
      const std::vector<int64_t> bounds = row_bounds(in[2]);
      p.loss = [x, dy, bounds, d] { return dot(naive_grouped((*x)[0], (*x)[1], *dy, bounds, d).y, *dy); };
      p.grad = [x, dy, bounds, d] {
        const GroupedReference g = naive_grouped((*x)[0], (*x)[1], *dy, bounds, d);
        return std::vector<std::vector<double>>{g.dx, g.dw};
      };
      return p;
    };
    ops.push_back(op);
  }
}

}  // namespace nq::kernels::registry::family
