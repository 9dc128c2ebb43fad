// Row-major GEMM through cuBLASLt, shared by matmul.cu, cross_entropy.cu and
// the benchmarks: C = alpha * op(A) @ op(B) + beta * C, fp32 accumulation.
//   A [M, K] (stored [K, M] when trans_a), B [K, N] (stored [N, K] when trans_b),
//   C [M, N]; `batch` matrices each, `stride_*` elements apart (0 = 1 matrix).
// Supported types: A, B both bf16, both f16 or both f32; C the 16-bit type or f32
// (the combinations cuBLASLt accepts: bf16 x bf16 -> bf16/f32, f16 x f16 -> f16/f32,
// f32 x f32 -> f32).
#pragma once
#include <cstdint>
#include <string>

#include "runtime/dtype.h"

namespace nq::kernels::cuda {

struct GemmArgs {
  const void* a; DType a_type; bool trans_a;
  const void* b; DType b_type; bool trans_b;
  void* c; DType c_type;
  int64_t m, n, k;
  float alpha = 1.0f, beta = 0.0f;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
};

// Runs on the default stream; throws nq::Error naming the failing cuBLASLt call.
void gemm(const GemmArgs& g);

// The cuBLASLt library the GEMMs use, opened on first use (matmul.cu says why it
// is not linked); throws nq::Error listing the paths tried when it cannot be opened.
std::string cublaslt_library();

}  // namespace nq::kernels::cuda
