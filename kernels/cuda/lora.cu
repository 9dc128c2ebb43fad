// The LoRA bypass over a frozen NF4 base, forward and backward, in few passes:
//   y = x W^T + s * (dropout(x) A^T) B^T        x [M, in], W [out, in] NF4,
//                                               A [r, in], B [out, r], s = alpha / r
// Forward (2 launches + dropout):
//   xd = dropout(x)                      (skipped when p = 0)
//   u  = xd A^T         [M, r]           cuBLASLt; saved for the backward
//   y  = [x | u] [W | s B]^T             one NF4 GEMM pass (nf4_matmul.cu with a
//                                        low-rank term): y is written once
// Backward:
//   v  = dy B           [M, r]           cuBLASLt
//   dB = s dy^T u       [out, r] f32     cuBLASLt, alpha = s
//   dA = s v^T xd       [r, in] f32      cuBLASLt, alpha = s (xd recomputed from Philox)
//   dx = dy W + s v A                    one NF4 dx GEMM pass when p = 0; with dropout
//                                        the bypass term needs the mask: dx = dy W,
//                                        then dx += dropout_backward(s v A)
// Why not fuse u into the NF4 kernel too: u is [M, r] with r ~ 16, a GEMM of
// 2 M r in FLOPs reading x once more (x is M x in bf16: the same bytes the NF4
// GEMM reads), so the saving would be one read of x against a kernel that must
// also reduce over the full `in` before its epilogue.
//   ./bench lora_nf4 --m 4096 --n 4096 --k 4096   (M, out, in; r = 16)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ops.h"

namespace nq::kernels::cuda {

static Tensor dropped(const Tensor& x, const LoraParams& lora) {
  return lora.dropout > 0.0f ? dropout_forward(x, lora.dropout, lora.seed, lora.offset) : x;
}

static void check_lora(const Tensor& x, const Nf4Weight& w, const LoraParams& lora, const char* op) {
  int64_t r = lora.a.size(0);
  NQ_CHECK(lora.a.ndim() == 2 && lora.b.ndim() == 2 && lora.a.size(1) == w.in && lora.b.size(0) == w.out &&
               lora.b.size(1) == r && x.size(-1) == w.in,
           op, ": x ", x.shape().str(), ", A ", lora.a.shape().str(), ", B ", lora.b.shape().str(),
           " do not fit W [", w.out, ", ", w.in, "]");
  NQ_CHECK(lora.a.dtype() == x.dtype() && lora.b.dtype() == x.dtype(), op, ": A ", lora.a.desc(), " and B ",
           lora.b.desc(), " must have the dtype of x ", x.desc());
}

Tensor lora_nf4_forward(const Tensor& x, const Nf4Weight& w, const LoraParams& lora, Tensor* u_saved) {
  check_lora(x, w, lora, "lora_nf4_forward");
  int64_t M = x.numel() / w.in;
  Tensor x2 = x.view({M, w.in});
  Tensor u = matmul(dropped(x2, lora), lora.a, false, true);  // [M, r]
  if (u_saved) *u_saved = u;
  LowRankTerm term{u, lora.b, lora.scale};
  return nf4_matmul(x, w, &term);
}

void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Weight& w, const LoraParams& lora,
                       Tensor* dx, Tensor* grad_a, Tensor* grad_b) {
  check_lora(x, w, lora, "lora_nf4_backward");
  int64_t M = x.numel() / w.in, r = lora.a.size(0);
  NQ_CHECK(u.shape() == (Shape{M, r}) && u.dtype() == x.dtype() && dy.numel() == M * w.out,
           "lora_nf4_backward: dy ", dy.shape().str(), " and saved u ", u.desc(), " do not fit x ", x.shape().str(),
           " (expected u [", M, ", ", r, "], dy [..., ", w.out, "])");
  Tensor dy2 = dy.view({M, w.out}), x2 = x.view({M, w.in});
  Tensor v = matmul(dy2, lora.b, false, false);  // [M, r]
  if (grad_b) {
    *grad_b = Tensor::empty({w.out, r}, DType::F32, Device::CUDA);
    GemmArgs g{dy2.raw(), dy2.dtype(), true, u.raw(), u.dtype(), false, grad_b->raw(), DType::F32, w.out, r, M};
    g.alpha = lora.scale;
    gemm(g);
  }
  if (grad_a) {
    Tensor xd = dropped(x2, lora);
    *grad_a = Tensor::empty({r, w.in}, DType::F32, Device::CUDA);
    GemmArgs g{v.raw(), v.dtype(), true, xd.raw(), xd.dtype(), false, grad_a->raw(), DType::F32, r, w.in, M};
    g.alpha = lora.scale;
    gemm(g);
  }
  if (!dx) return;
  if (lora.dropout == 0.0f) {
    LowRankTerm term{v, lora.a, lora.scale};
    *dx = nf4_matmul_dx(dy, w, &term);
    return;
  }
  *dx = nf4_matmul_dx(dy, w);
  Tensor bypass = Tensor::empty({M, w.in}, x.dtype(), Device::CUDA);
  GemmArgs g{v.raw(), v.dtype(), false, lora.a.raw(), lora.a.dtype(), false, bypass.raw(), x.dtype(), M, w.in, r};
  g.alpha = lora.scale;
  gemm(g);
  Tensor masked = dropout_backward(bypass, lora.dropout, lora.seed, lora.offset).view(dx->shape());
  add_inplace(*dx, masked);
}

}  // namespace nq::kernels::cuda
