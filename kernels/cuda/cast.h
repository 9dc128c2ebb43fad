// dtype conversion on the GPU (kernels/cuda/cast.cu): f32, bf16, f16, one
// rounding to nearest even, the same as runtime/half.h on the host. Used for
// the 16-bit working copies of f32 LoRA master weights. Called through
// kernels::cast (kernels/kernels.h), which checks the arguments.
#pragma once
#include "runtime/tensor.h"

namespace nq::kernels::cuda {
Tensor cast(const Tensor& x, DType dtype);  // x f32, bf16 or f16 on the GPU -> a new tensor of `dtype`
}  // namespace nq::kernels::cuda
