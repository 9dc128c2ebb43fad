// The Qwen3-MoE router's top-k softmax (transformers' Qwen3MoeTopKRouter after its
// linear), per row of logits l [N, E]:
//   p = softmax(l);  experts e [N, k] = the indices of the k largest p, largest first
//   (ties: the lower index first); weights w_j = p_{e_j}, or p_{e_j} / sum_m p_{e_m}
//   when renormalize (norm_topk_prob).
// A row holding a NaN has every p NaN (the sum is NaN): its experts are 0..k-1 and its
// weights NaN, so the indices stay in range whatever the input.
// Backward, given g = dL/dw [N, k] and G [E] = g scattered to the selected experts (0 elsewhere):
//   not renormalized (w_j = p_{e_j}, dp_a/dl_i = p_a (delta_ai - p_i)):
//     dl_i = sum_j g_j p_{e_j} (delta_{e_j i} - p_i) = p_i (G_i - sum_e G_e p_e)
//   renormalized (w = softmax over the selected logits alone: the full sum cancels):
//     dl_{e_j} = w_j (g_j - sum_m g_m w_m),  dl_i = 0 for an i not selected.
#pragma once
#include <cstdint>

namespace nq::cpu {

// logits [N, E] -> experts [N, k], weights [N, k]; 1 <= k <= E.
template <typename T>
void moe_route_forward(const T* logits, int64_t N, int64_t E, int64_t k, bool renormalize, int32_t* experts,
                       T* weights);
// The weights [N, k] of a given selection experts [N, k] (the forward after its top-k;
// the gradient check holds the selection fixed with it).
template <typename T>
void moe_route_weights(const T* logits, const int32_t* experts, int64_t N, int64_t E, int64_t k, bool renormalize,
                       T* weights);
// grad_weights [N, k] -> grad_logits [N, E] (every element written). experts: distinct
// indices in [0, E) per row (the forward's); weights: the forward's (read when renormalize).
template <typename T>
void moe_route_backward(const T* grad_weights, const T* logits, const int32_t* experts, const T* weights, int64_t N,
                        int64_t E, int64_t k, bool renormalize, T* grad_logits);

}  // namespace nq::cpu
