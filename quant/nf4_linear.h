// y = x W^T and dX = dY W for a frozen NF4 weight W [out, in], on the CPU.
//
// W is never dequantized as a whole: `tile_rows` output rows of W at a time are
// dequantized into a scratch buffer [tile_rows, in] (MemCategory::Workspace)
// and multiplied with cblas_sgemm, so peak extra memory is one tile
// (tile_rows * in * 4 bytes) instead of out * in * 4 bytes.
//   forward:  y[:, r0:r1]  = x  @ W[r0:r1, :]^T    x [N, in]  -> y [N, out]
//   backward: dX          += dY[:, r0:r1] @ W[r0:r1, :]         dY [N, out] -> dX [N, in]
// W is frozen (QLoRA): no gradient for it.
// On the GPU (x a CUDA tensor, the Nf4Tensor's tensors moved there by
// model/device.h) the same op runs the CUDA NF4 GEMM (kernels/cuda/nf4_matmul.cu),
// which dequantizes W tile by tile in shared memory instead.
#pragma once
#include <memory>

#include "autograd/var.h"
#include "kernels/cuda/nf4.h"
#include "quant/nf4.h"

namespace nq {

constexpr int64_t kNf4DefaultTileRows = 128;

// x [N, in] f32 (any leading dims, flattened) -> [N, out].
Tensor nf4_linear_forward(const Tensor& x, const Nf4Tensor& w, int64_t tile_rows = kNf4DefaultTileRows);
// grad_y [N, out] -> grad_x [N, in].
Tensor nf4_linear_backward(const Tensor& grad_y, const Nf4Tensor& w, int64_t tile_rows = kNf4DefaultTileRows);

// The GPU kernels' view of an NF4 weight whose tensors are all on the GPU
// (device pointers, bitsandbytes layout); errors name the tensor still on the cpu.
kernels::cuda::Nf4Weight nf4_device_view(const Nf4Tensor& w);

// The autograd op: gradient for x only (CPU or GPU, by x's device).
Var nf4_linear(const Var& x, std::shared_ptr<const Nf4Tensor> w, int64_t tile_rows = kNf4DefaultTileRows);

}  // namespace nq
