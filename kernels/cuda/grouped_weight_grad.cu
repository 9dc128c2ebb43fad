// The weight gradient of a grouped product (kernels.h's grouped_weight_grad): per expert,
//   g[e] [P, Q] = s_e a[rows_e]^T b[rows_e]      a [M, P], b [M, Q] (rows grouped by expert), g f32
// i.e. the experts' LoRA gradients dB_e = s_e dy_e^T u_e and dA_e = v_e^T dropout(x)_e, all
// experts in ONE launch. Grid (Q / 64, P / 64, E): a block owns one 64 x 64 tile of one
// expert's g and walks that expert's rows 16 at a time: both 16-row slabs are staged in
// shared memory as f32, then each of the 256 threads accumulates a 4 x 4 block of the tile
// in registers (CUDA cores, f32). The products are small next to the base's (P or Q is the
// rank r, 16 by default: 2 M P Q flops), so this favours one launch over tensor cores; an
// expert without rows writes zeros.
//   ./bench grouped_matmul_bwd --tokens 16384 --experts 128 --n 16 --k 2048   (its dW output)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

constexpr int kGradTile = 64, kGradRows = 16, kGradThreads = 256;  // 16 x 16 threads, 4 x 4 each

struct GroupedRows {
  int64_t row0, row_end;
  float scale;
};

template <typename T>
__global__ void __launch_bounds__(kGradThreads)
    grouped_weight_grad_kernel(float* g, const T* a, const T* b, const GroupedRows* experts, int64_t P, int64_t Q) {
  __shared__ float a_slab[kGradRows][kGradTile];  // a[rows, p0 : p0 + 64]
  __shared__ float b_slab[kGradRows][kGradTile];  // b[rows, q0 : q0 + 64]
  const GroupedRows ex = experts[blockIdx.z];
  const int64_t p0 = int64_t(blockIdx.y) * kGradTile, q0 = int64_t(blockIdx.x) * kGradTile;
  const int tp = threadIdx.x / 16, tq = threadIdx.x % 16;  // this thread's 4 x 4: rows p0 + 4 tp.., cols q0 + 4 tq..
  float acc[4][4] = {};
  for (int64_t r0 = ex.row0; r0 < ex.row_end; r0 += kGradRows) {
    for (int i = threadIdx.x; i < kGradRows * kGradTile; i += kGradThreads) {
      const int rr = i / kGradTile, c = i % kGradTile;
      const int64_t row = r0 + rr;
      const bool live = row < ex.row_end;
      a_slab[rr][c] = live && p0 + c < P ? to_f32(a[row * P + p0 + c]) : 0.0f;
      b_slab[rr][c] = live && q0 + c < Q ? to_f32(b[row * Q + q0 + c]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kGradRows; ++rr)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a_slab[rr][tp * 4 + i] * b_slab[rr][tq * 4 + j];
    __syncthreads();
  }
  float* ge = g + int64_t(blockIdx.z) * P * Q;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t p = p0 + tp * 4 + i, q = q0 + tq * 4 + j;
      if (p < P && q < Q) ge[p * Q + q] = ex.scale * acc[i][j];
    }
}

Tensor grouped_weight_grad(const Tensor& a, const Tensor& b, const std::vector<int64_t>& offsets,
                           const std::vector<float>& scales) {
  const int64_t E = int64_t(scales.size()), P = a.size(1), Q = b.size(1);
  Tensor g = Tensor::empty({E, P, Q}, DType::F32, Device::CUDA);
  if (P == 0 || Q == 0) return g;
  NQ_CHECK(E <= 65535, "grouped_weight_grad: ", E, " experts exceed the grid (gridDim.z <= 65535)");
  std::vector<GroupedRows> experts(static_cast<size_t>(E));
  for (size_t e = 0; e < size_t(E); ++e) experts[e] = {offsets[e], offsets[e + 1], scales[e]};
  const Tensor rows = upload_table(experts);
  const auto* rows_dev = static_cast<const GroupedRows*>(rows.raw());
  dispatch_float(a, "grouped_weight_grad", [&](auto tag) {
    using T = decltype(tag);
    dim3 grid(unsigned((Q + kGradTile - 1) / kGradTile), unsigned((P + kGradTile - 1) / kGradTile), unsigned(E));
    const dim3 block(kGradThreads);
    grouped_weight_grad_kernel<T><<<grid, block>>>(ptr<float>(g), ptr<T>(a), ptr<T>(b), rows_dev, P, Q);
    NQ_LAUNCH_CHECK();
  });
  return g;
}

}  // namespace nq::kernels::cuda
