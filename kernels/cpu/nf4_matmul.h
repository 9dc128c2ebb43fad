// Matmuls against a frozen NF4 weight W [out, in] (quant/nf4.h) on the CPU,
// dequantizing W tile by tile: `tile_rows` output rows of W at a time are
// dequantized into `tile` [tile_rows, in] f32 and multiplied with cblas_sgemm,
// so the extra memory is one tile (tile_rows * in * 4 bytes), never out * in * 4.
//   nf4_matmul:    y[:, r0:r1]  = x [N, in] @ W[r0:r1, :]^T          -> y [N, out]
//   nf4_matmul_dx: dx          += dy[:, r0:r1] @ W[r0:r1, :]         -> dx [N, in] (zeroed first)
// for each tile [r0, r1) of rows of W. The caller (kernels/dispatch.cpp) checks
// shapes and provides `tile`, at least min(tile_rows, out) * in floats.
#pragma once
#include <cstdint>

#include "quant/nf4.h"

namespace nq::cpu {

void nf4_matmul(const float* x, const Nf4Tensor& w, float* y, int64_t N, int64_t tile_rows, float* tile);
void nf4_matmul_dx(const float* dy, const Nf4Tensor& w, float* dx, int64_t N, int64_t tile_rows, float* tile);

}  // namespace nq::cpu
