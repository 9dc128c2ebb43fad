// MoE routing forward/backward (math in moe_route.h). Rows are independent, so
// threads split rows; each thread keeps one row's p [E] (and selection keys) in its
// own scratch. The top-k is k scans of the row (k <= E, a few dozen at most): each
// takes the largest key not yet taken, the first one of equal keys, which is the
// lower index.
#include "kernels/cpu/moe_route.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace nq::cpu {

namespace {

// p [E] = softmax(l [E]); returns the sum of exp(l - max) (NaN when the row holds a NaN).
template <typename T> T softmax_row(const T* l, int64_t E, T* p) {
  T max = l[0];
  for (int64_t e = 1; e < E; ++e) max = std::max(max, l[e]);
  T sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(l[e] - max));
  for (int64_t e = 0; e < E; ++e) p[e] = p[e] / sum;
  return sum;
}

// w [k] = p[experts], divided by their sum (in the order largest first) when renormalize.
template <typename T> void weights_of_row(const T* p, const int32_t* experts, int64_t k, bool renormalize, T* w) {
  T total = 0;
  for (int64_t j = 0; j < k; ++j) total += (w[j] = p[experts[j]]);
  if (renormalize)
    for (int64_t j = 0; j < k; ++j) w[j] = w[j] / total;
}

constexpr int64_t kParallelElems = 1 << 15;

}  // namespace

template <typename T>
void moe_route_forward(const T* logits, int64_t N, int64_t E, int64_t k, bool renormalize, int32_t* experts,
                       T* weights) {
#pragma omp parallel if (N * E > kParallelElems)
  {
    std::vector<T> p(E), key(E);
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      const T sum = softmax_row(logits + n * E, E, p.data());
      // Selection keys: p, taken ones set to -1 (below every p); a NaN row's keys are all
      // equal, so its experts are 0..k-1.
      const bool nan_row = std::isnan(sum);
      for (int64_t e = 0; e < E; ++e) key[e] = nan_row ? T(0) : p[e];
      int32_t* chosen = experts + n * k;
      for (int64_t j = 0; j < k; ++j) {
        int64_t best = 0;
        T best_key = T(-2);
        for (int64_t e = 0; e < E; ++e)
          if (key[e] > best_key) {
            best_key = key[e];
            best = e;
          }
        chosen[j] = int32_t(best);
        key[best] = T(-1);
      }
      weights_of_row(p.data(), chosen, k, renormalize, weights + n * k);
    }
  }
}

template <typename T>
void moe_route_weights(const T* logits, const int32_t* experts, int64_t N, int64_t E, int64_t k, bool renormalize,
                       T* weights) {
#pragma omp parallel if (N * E > kParallelElems)
  {
    std::vector<T> p(E);
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      softmax_row(logits + n * E, E, p.data());
      weights_of_row(p.data(), experts + n * k, k, renormalize, weights + n * k);
    }
  }
}

template <typename T>
void moe_route_backward(const T* grad_weights, const T* logits, const int32_t* experts, const T* weights, int64_t N,
                        int64_t E, int64_t k, bool renormalize, T* grad_logits) {
#pragma omp parallel if (N * E > kParallelElems)
  {
    std::vector<T> p(renormalize ? 0 : E);
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      const T* g = grad_weights + n * k;
      const int32_t* chosen = experts + n * k;
      T* out = grad_logits + n * E;
      if (renormalize) {  // dl_{e_j} = w_j (g_j - sum_m g_m w_m), 0 elsewhere
        const T* w = weights + n * k;
        T dot = 0;
        for (int64_t j = 0; j < k; ++j) dot += g[j] * w[j];
        std::fill(out, out + E, T(0));
        for (int64_t j = 0; j < k; ++j) out[chosen[j]] = w[j] * (g[j] - dot);
      } else {  // dl_i = p_i (G_i - dot), dot = sum_j g_j p_{e_j}
        softmax_row(logits + n * E, E, p.data());
        T dot = 0;
        for (int64_t j = 0; j < k; ++j) dot += g[j] * p[chosen[j]];
        for (int64_t i = 0; i < E; ++i) out[i] = -p[i] * dot;
        for (int64_t j = 0; j < k; ++j) out[chosen[j]] = p[chosen[j]] * (g[j] - dot);
      }
    }
  }
}

template void moe_route_forward<float>(const float*, int64_t, int64_t, int64_t, bool, int32_t*, float*);
template void moe_route_forward<double>(const double*, int64_t, int64_t, int64_t, bool, int32_t*, double*);
template void moe_route_weights<float>(const float*, const int32_t*, int64_t, int64_t, int64_t, bool, float*);
template void moe_route_weights<double>(const double*, const int32_t*, int64_t, int64_t, int64_t, bool, double*);
template void moe_route_backward<float>(const float*, const float*, const int32_t*, const float*, int64_t, int64_t,
                                        int64_t, bool, float*);
template void moe_route_backward<double>(const double*, const double*, const int32_t*, const double*, int64_t,
                                         int64_t, int64_t, bool, double*);

}  // namespace nq::cpu
