// LoRA over an NF4 base on the CPU (kernels.h's lora_nf4_forward / _backward,
// f32), composed of the CPU kernels: nf4_matmul's tile loop for the base, BLAS
// for the bypass, the Philox dropout mask recomputed in the backward.
//   xd = dropout(x)                [M, in]
//   u  = xd A^T                    [M, r]   (saved)
//   y  = x W^T + (s u) B^T         [M, out]
// Backward, given dy [M, out]:
//   dB = s (dy^T u)                [out, r]
//   v  = s (dy B)                  [M, r]
//   dA = v^T xd                    [r, in]
//   dx = dy W + dropout_backward(v A)   [M, in]
// The caller (kernels/dispatch.cpp) checks shapes and devices.
#pragma once
#include "kernels/kernels.h"

namespace nq::cpu {

Tensor lora_nf4_forward(const Tensor& x, const Nf4Tensor& w, const kernels::LoraParams& lora, Tensor* u);
void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Tensor& w,
                       const kernels::LoraParams& lora, Tensor* dx, Tensor* grad_a, Tensor* grad_b);

}  // namespace nq::cpu
