// Chunked linear + cross-entropy (math in cross_entropy.h).
#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace nq::cpu {

template <typename T>
double linear_cross_entropy(const T* h, const T* w, const int32_t* labels, int64_t N, int64_t D, int64_t V,
                            int64_t chunk_rows, T* logits, T* grad_h, T* grad_w, int64_t* count) {
  int64_t counted = 0;
  for (int64_t n = 0; n < N; ++n) counted += labels[n] != kIgnoreIndex;
  *count = counted;
  const bool want_grad = grad_h || grad_w;
  const T inv_count = counted ? T(1) / T(counted) : T(0);
  std::vector<double> row_loss(size_t(N), 0.0);  // summed in order at the end (deterministic)
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, N - r0);
    const T* h_chunk = h + r0 * D;
    matmul(h_chunk, w, logits, 1, rows, V, D, false, true, false);  // z = h w^T, [rows, V]
#pragma omp parallel for if (rows * V > (1 << 14))
    for (int64_t r = 0; r < rows; ++r) {
      T* z = logits + r * V;
      const int32_t y = labels[r0 + r];
      if (y == kIgnoreIndex) {
        if (want_grad) std::fill(z, z + V, T(0));
        continue;
      }
      const T max_z = *std::max_element(z, z + V), z_y = z[y];
      T sum_exp = 0;
      if (want_grad) {  // keep e = exp(z - max) in place: one exp per logit (the costliest part of the loss)
        for (int64_t c = 0; c < V; ++c) sum_exp += (z[c] = std::exp(z[c] - max_z));
      } else {
        for (int64_t c = 0; c < V; ++c) sum_exp += std::exp(z[c] - max_z);
      }
      row_loss[r0 + r] = double(max_z + std::log(sum_exp) - z_y);
      if (!want_grad) continue;
      const T scale = inv_count / sum_exp;
      for (int64_t c = 0; c < V; ++c) z[c] *= scale;  // softmax / count
      z[y] -= inv_count;                              // - onehot / count
    }
    if (grad_h) matmul(logits, w, grad_h + r0 * D, 1, rows, D, V, false, false, false);  // dh = dz w
    if (grad_w) matmul(logits, h_chunk, grad_w, 1, V, D, rows, true, false, true);      // dw += dz^T h
  }
  double loss_sum = 0;
  for (double l : row_loss) loss_sum += l;
  return counted ? loss_sum / double(counted) : 0.0;
}

template double linear_cross_entropy<float>(const float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                            int64_t, float*, float*, float*, int64_t*);
template double linear_cross_entropy<double>(const double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                             int64_t, double*, double*, double*, int64_t*);

}  // namespace nq::cpu
