// NF4 matmuls on the CPU, W dequantized tile by tile (see nf4_matmul.h).
#include "kernels/cpu/nf4_matmul.h"

#include <cblas.h>

#include <algorithm>

#include "runtime/error.h"

namespace nq::cpu {

// Runs fn(r0, r1) for each tile of rows [r0, r1) of W after dequantizing them into tile [r1-r0, in].
template <typename Fn>
static void for_each_tile(const Nf4Tensor& w, int64_t tile_rows, float* tile, Fn fn) {
  NQ_CHECK(tile_rows > 0, "nf4_matmul: tile_rows must be positive, got ", tile_rows);
  const int64_t rows = std::min(tile_rows, w.out);
  for (int64_t r0 = 0; r0 < w.out; r0 += rows) {
    const int64_t r1 = std::min(w.out, r0 + rows);
    dequantize_nf4_rows(w, r0, r1, tile);
    fn(r0, r1);
  }
}

void nf4_matmul(const float* x, const Nf4Tensor& w, float* y, int64_t N, int64_t tile_rows, float* tile) {
  if (N == 0) return;
  for_each_tile(w, tile_rows, tile, [&](int64_t r0, int64_t r1) {
    // y[:, r0:r1] = x [N, in] @ tile^T [in, r1-r0]   (ldc = out: a column slice of y)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(r1 - r0), int(w.in), 1.0f, x, int(w.in), tile,
                int(w.in), 0.0f, y + r0, int(w.out));
  });
}

void nf4_matmul_dx(const float* dy, const Nf4Tensor& w, float* dx, int64_t N, int64_t tile_rows, float* tile) {
  std::fill(dx, dx + N * w.in, 0.0f);
  if (N == 0) return;
  for_each_tile(w, tile_rows, tile, [&](int64_t r0, int64_t r1) {
    // dx [N, in] += dy[:, r0:r1] [N, r1-r0] @ tile [r1-r0, in]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(w.in), int(r1 - r0), 1.0f, dy + r0,
                int(w.out), tile, int(w.in), 1.0f, dx, int(w.in));
  });
}

}  // namespace nq::cpu
