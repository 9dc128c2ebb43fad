// Causal self-attention with grouped-query heads (GQA), exact (no dropout).
// For batch row b, query head h (reading kv head g = h / (Hq / Hkv)), query i:
//   s_ij = scale * q_i . k_j   for keys j <= i of the same segment, scale = Dh^-1/2
//   lse_i = log sum_j exp(s_ij),  p_ij = exp(s_ij - lse_i),  o_i = sum_j p_ij v_j
// Backward (the flash-attention form, from q, k, v, o, lse only):
//   D_i = dO_i . o_i,  dP_ij = dO_i . v_j,  dS_ij = p_ij (dP_ij - D_i)
//   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i p_ij dO_i
#pragma once
#include <cstdint>

namespace nq::cpu {

// q [B*T, Hq, Dh], k, v [B*T, Hkv, Dh], segment_ids [B*T] or null -> o [B*T, Hq, Dh], lse [B*T, Hq]
template <typename F>
void attention_forward(const F* q, const F* k, const F* v, const int32_t* segment_ids, F* o, F* lse, int64_t B,
                       int64_t T, int64_t Hq, int64_t Hkv, int64_t Dh);
// grad_o, o like q; lse [B*T, Hq] -> grad_q like q, grad_k, grad_v like k (all written)
template <typename F>
void attention_backward(const F* grad_o, const F* q, const F* k, const F* v, const F* o, const F* lse,
                        const int32_t* segment_ids, F* grad_q, F* grad_k, F* grad_v, int64_t B, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t Dh);

}  // namespace nq::cpu
