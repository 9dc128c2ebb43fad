// lm_head fused with cross-entropy, chunked over rows (the Liger-Kernel idea).
// For row n with label y != kIgnoreIndex (-100), logits z = w h_n (V values):
//   loss_n = logsumexp(z) - z_y,   dloss_n/dz = softmax(z) - onehot(y)
// loss = mean over counted rows. Per chunk of rows the [chunk, V] logits are
// computed, turned into d(loss)/dz in place, and immediately pushed through the
// lm_head's backward (dh = dz w, dw += dz^T h), so the [N, V] logits never exist.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"  // kIgnoreIndex

namespace nq::cpu {

using kernels::kIgnoreIndex;

// h [N, D], w [V, D], labels [N] (each in [0, V) or kIgnoreIndex) -> mean loss (0 when no
// row counts). grad_h [N, D] is written, grad_w [V, D] accumulated into; both
// may be null (no gradient). *count = number of counted rows. `logits` is the
// caller's workspace of min(chunk_rows, N) * V elements.
template <typename T>
double linear_cross_entropy(const T* h, const T* w, const int32_t* labels, int64_t N, int64_t D, int64_t V,
                            int64_t chunk_rows, T* logits, T* grad_h, T* grad_w, int64_t* count);

}  // namespace nq::cpu
