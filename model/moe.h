// The mixture-of-experts MLP of a Qwen3-MoE sparse layer (transformers' Qwen3MoeSparseMoeBlock),
// written with the differentiable ops of autograd/:
//
//   logits = h W_router^T                                   // [N, E], the router frozen (16/32-bit)
//   w, experts = top-k of softmax(logits) (f32)             // [N, k] each; w / sum(w) when norm_topk_prob
//   y[n] = sum_j w[n, j] * expert_{experts[n, j]}(h[n])     // [N, D]
//   expert_e(x) = down_e(silu(gate_e(x)) * up_e(x))         // SwiGLU of width I, NF4 base + LoRA each
//
// Tokens are grouped by expert: the N*k (token, slot) pairs sorted by expert (ties by token,
// then slot), h's rows gathered in that order [N*k, D], expert e run once on its contiguous
// rows (one grouped NF4 op per projection over all experts when their bases are NF4:
// grouped(); else row_segments), the rows gathered back into slot order and combined with
// the weights as one batched product [N, 1, k] x [N, k, D]. The gradient reaches h through the experts
// and through the routing weights (the router's softmax), although the router is frozen.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/var.h"
#include "model/config.h"
#include "model/linear.h"

namespace nq {

// The order the experts see the tokens in: rows of the grouped [N*k, D] input.
struct ExpertGrouping {
  std::vector<int32_t> token_of_row;  // [N*k]: the token whose hidden state row r is
  std::vector<int32_t> row_of_slot;   // [N*k]: the row of token n's j-th choice, at n*k + j
  std::vector<int64_t> offsets;       // [E+1]: expert e's rows are [offsets[e], offsets[e+1])
};
// From the chosen experts [N, k] (row-major ids in [0, E)): a counting sort, stable.
ExpertGrouping group_by_expert(const std::vector<int32_t>& experts, int64_t N, int64_t k, int64_t E);

// The load-balancing loss of one forward (transformers' load_balancing_loss_func, the Switch
// Transformer's eqs. 4-6), over every sparse layer l and counted row n (not padding):
//   p_{l,n} = softmax(logits_{l,n}) [E],  c_e = the top-k choices of expert e (all layers and rows),
//   R = the counted rows times the sparse layers,
//   aux = E * sum_e (c_e / R) (sum_{l,n} p_{l,n,e} / R)
// c is a count (no gradient); the gradient reaches each layer's logits through p:
//   d aux / d logits_{l,n,i} = (E / R^2) p_{l,n,i} (c_i - sum_e c_e p_{l,n,e}),
// which needs c of every layer: known once the forward has run all of them. So each layer's
// router logits pass through tap() (the identity) and add_layer() counts its choices; tap's
// backward adds that term times dL/d(aux); loss() records aux on the last layer's output, so
// its backward (which learns dL/d(aux)) runs before any layer's. A checkpointed layer's re-run in backward adds
// nothing to the statistics (they are sealed by loss()).
class RouterLoss : public std::enable_shared_from_this<RouterLoss> {  // made by std::make_shared
 public:
  // counted[n] != 0 for the rows that count (the batch's non-padding tokens).
  RouterLoss(int64_t num_experts, int64_t top_k, std::vector<uint8_t> counted);
  // A sparse layer's router logits [N, E] as an identity op whose backward adds aux's gradient.
  Var tap(const Var& logits);
  // Adds the layer's statistics (logits [N, E], chosen experts [N, k]), until loss() seals them.
  void add_layer(const Tensor& logits, const Tensor& chosen);
  // aux [1] f32 (0 when no row counted), recorded on `anchor`; seals the statistics.
  Var loss(const Var& anchor);

 private:
  Tensor logits_grad(const Tensor& logits) const;  // [N, E]: d aux / d logits times dL/d(aux)
  int64_t E_, k_;
  std::vector<uint8_t> counted_;
  std::vector<double> choices_, prob_sum_;  // [E]: c, and the sum of p over layers and counted rows
  double rows_ = 0;                         // R
  bool sealed_ = false;
  float grad_ = 0;                          // dL/d(aux), set by loss()'s backward
};

struct MoeExperts {
  Var router;                                      // [E, D]  mlp.gate.weight
  std::vector<Linear> gate_proj, up_proj, down_proj;  // expert e: [I, D], [I, D], [D, I]  mlp.experts.e.*

  bool empty() const { return gate_proj.empty(); }
  int64_t num_experts() const { return int64_t(gate_proj.size()); }
  // Every expert's base NF4 without bias, and in each projection either no adapter or one
  // of a single rank on every expert (QLoRA on all-linear, LoRA on attention only): each
  // projection is then one grouped op over all the experts' rows (nf4_grouped_linear,
  // lora_grouped_linear: one NF4 launch each way on the GPU) instead of one per expert.
  bool grouped() const;
  // h [N, D] -> [N, D] (see the top of this file). With a RouterLoss the router's statistics
  // and the load-balancing loss's gradient go through it.
  Var forward(const Var& h, const MoeConfig& config, RouterLoss* router_loss = nullptr) const;
};

}  // namespace nq
