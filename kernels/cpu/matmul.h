// Matrix multiply on the CPU through BLAS (cblas_sgemm / cblas_dgemm):
//   C[b] = op(A[b]) @ op(B[b])  (+ C[b] when accumulate), b < batch,
// op(A) [M, K] (A stored [K, M] when trans_a), op(B) [K, N] (B stored [N, K]
// when trans_b), C [M, N]; all row-major and contiguous.
#pragma once
#include <cstdint>

namespace nq::cpu {

template <typename T>
void matmul(const T* a, const T* b, T* c, int64_t batch, int64_t M, int64_t N, int64_t K, bool trans_a,
            bool trans_b, bool accumulate);

}  // namespace nq::cpu
