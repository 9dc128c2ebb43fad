// Batched GEMM on BLAS (see matmul.h). With beta = 0 BLAS never reads C, so an
// uninitialised (NaN-poisoned) output is fine; K = 0 is an empty sum.
#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>

namespace nq::cpu {

static void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0f, a, lda, b, ldb, beta, c, N);
}
static void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, 1.0, a, lda, b, ldb, beta, c, N);
}

template <typename T>
void matmul(const T* a, const T* b, T* c, int64_t batch, int64_t M, int64_t N, int64_t K, bool trans_a,
            bool trans_b, bool accumulate) {
  if (M == 0 || N == 0) return;
  for (int64_t i = 0; i < batch; ++i) {
    T* ci = c + i * M * N;
    if (K == 0) {
      if (!accumulate) std::fill(ci, ci + M * N, T(0));
      continue;
    }
    gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
         a + i * M * K, int(trans_a ? M : K), b + i * K * N, int(trans_b ? K : N), accumulate ? T(1) : T(0), ci);
  }
}

template void matmul<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, bool, bool, bool);
template void matmul<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t, bool, bool,
                             bool);

}  // namespace nq::cpu
