// Causal GQA attention on the CPU (math in attention.h). The forward keeps one
// row of scores per query (never the [T, T] matrix) with the max subtracted
// before exp; the backward recomputes p_ij from the saved log-sum-exp.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace nq::cpu {

// a . b with eight partial sums: eight independent chains of adds the compiler
// turns into one vector register, where a single running sum is a serial chain
// (and IEEE order forbids reordering it). Most of attention's time is here.
template <typename F> static F dot(const F* a, const F* b, int64_t n) {
  F part[8] = {};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (int l = 0; l < 8; ++l) part[l] += a[d + l] * b[d + l];
  F s = 0;
  for (; d < n; ++d) s += a[d] * b[d];
  for (int l = 0; l < 8; ++l) s += part[l];
  return s;
}

// y += alpha x. __restrict__: y never overlaps x, so the compiler may vectorize
// (without it, it must assume a write to y can change x and goes element by element).
template <typename F> static void axpy(F* __restrict__ y, F alpha, const F* __restrict__ x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// May query i (token index b*T + i) see key j <= i? Only within its own segment.
static bool visible(const int32_t* segment_ids, int64_t row, int64_t i, int64_t j) {
  return !segment_ids || segment_ids[row + j] == segment_ids[row + i];
}

// Threads only pay for themselves above ~1M multiply-adds (B * Hq * T^2/2 * Dh).
static bool worth_threads(int64_t B, int64_t T, int64_t Hq, int64_t Dh) { return B * Hq * T * T * Dh / 2 > (1 << 20); }

template <typename F>
void attention_forward(const F* q, const F* k, const F* v, const int32_t* segment_ids, F* o, F* lse, int64_t B,
                       int64_t T, int64_t Hq, int64_t Hkv, int64_t Dh) {
  const F scale = F(1) / std::sqrt(F(Dh));
  const int64_t group = Hq / Hkv;
#pragma omp parallel if (worth_threads(B, T, Hq, Dh))
  {
    std::vector<F> scores(T);  // s_ij for this query, j <= i
#pragma omp for collapse(3) schedule(dynamic, 16)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < T; ++i) {
          const int64_t row = b * T, g = h / group;
          const F* qi = q + ((row + i) * Hq + h) * Dh;
          F max_s = -std::numeric_limits<F>::infinity();
          for (int64_t j = 0; j <= i; ++j) {
            if (!visible(segment_ids, row, i, j)) continue;
            scores[j] = scale * dot(qi, k + ((row + j) * Hkv + g) * Dh, Dh);
            max_s = std::max(max_s, scores[j]);
          }
          F* oi = o + ((row + i) * Hq + h) * Dh;
          std::fill(oi, oi + Dh, F(0));
          F denom = 0;
          for (int64_t j = 0; j <= i; ++j) {
            if (!visible(segment_ids, row, i, j)) continue;
            F p = std::exp(scores[j] - max_s);
            denom += p;
            axpy(oi, p, v + ((row + j) * Hkv + g) * Dh, Dh);  // o_i += p_ij v_j
          }
          for (int64_t d = 0; d < Dh; ++d) oi[d] /= denom;  // j = i is always visible: denom >= 1
          lse[(row + i) * Hq + h] = max_s + std::log(denom);
        }
  }
}

template <typename F>
void attention_backward(const F* grad_o, const F* q, const F* k, const F* v, const F* o, const F* lse,
                        const int32_t* segment_ids, F* grad_q, F* grad_k, F* grad_v, int64_t B, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t Dh) {
  const F scale = F(1) / std::sqrt(F(Dh));
  const int64_t group = Hq / Hkv;
  std::fill(grad_q, grad_q + B * T * Hq * Dh, F(0));
  std::fill(grad_k, grad_k + B * T * Hkv * Dh, F(0));
  std::fill(grad_v, grad_v + B * T * Hkv * Dh, F(0));
  // One thread per (batch row, kv head): it owns dk, dv of that kv head and dq
  // of the query heads that read it, so no two threads write the same element.
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (worth_threads(B, T, Hq, Dh))
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t h = g * group; h < (g + 1) * group; ++h)
        for (int64_t i = 0; i < T; ++i) {
          const int64_t row = b * T, qi_off = ((row + i) * Hq + h) * Dh;
          const F *qi = q + qi_off, *doi = grad_o + qi_off;
          F* dqi = grad_q + qi_off;
          const F Di = dot(doi, o + qi_off, Dh), lse_i = lse[(row + i) * Hq + h];
          for (int64_t j = 0; j <= i; ++j) {
            if (!visible(segment_ids, row, i, j)) continue;
            const int64_t kj_off = ((row + j) * Hkv + g) * Dh;
            const F *kj = k + kj_off, *vj = v + kj_off;
            F p = std::exp(scale * dot(qi, kj, Dh) - lse_i);
            F ds = p * (dot(doi, vj, Dh) - Di);
            axpy(grad_v + kj_off, p, doi, Dh);        // dv_j += p_ij do_i
            axpy(dqi, scale * ds, kj, Dh);            // dq_i += scale ds_ij k_j
            axpy(grad_k + kj_off, scale * ds, qi, Dh);  // dk_j += scale ds_ij q_i
          }
        }
}

#define NQ_INSTANTIATE(F)                                                                                       \
  template void attention_forward<F>(const F*, const F*, const F*, const int32_t*, F*, F*, int64_t, int64_t,   \
                                     int64_t, int64_t, int64_t);                                               \
  template void attention_backward<F>(const F*, const F*, const F*, const F*, const F*, const F*,              \
                                      const int32_t*, F*, F*, F*, int64_t, int64_t, int64_t, int64_t, int64_t);
NQ_INSTANTIATE(float)
NQ_INSTANTIATE(double)
#undef NQ_INSTANTIATE

}  // namespace nq::cpu
