// Embedding lookup: out[n, :] = table[ids[n], :]. Its backward scatters the
// output gradient back into the rows it was read from, adding when a token
// appears several times: grad_table[ids[n], :] += grad_out[n, :].
#pragma once
#include <cstdint>

namespace nq::cpu {

// table [V, D], ids [N] (each in [0, V), checked by the caller) -> out [N, D]
template <typename T> void embedding_forward(const T* table, const int32_t* ids, T* out, int64_t N, int64_t D);
// grad_out [N, D] -> grad_table [V, D] (zeroed here, then scatter-added)
template <typename T>
void embedding_backward(const T* grad_out, const int32_t* ids, T* grad_table, int64_t N, int64_t V, int64_t D);

}  // namespace nq::cpu
