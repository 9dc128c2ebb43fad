// LoRA over an NF4 base on the CPU (see lora_nf4.h), as plain f32 steps.
#include "kernels/cpu/lora_nf4.h"

#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/nf4_matmul.h"

namespace nq::cpu {

namespace {

// c [M, N] = op(a) op(b), op = transpose when the flag is set (2-D, f32).
Tensor mm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  const int64_t N = trans_b ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty({M, N});
  matmul(a.data<float>(), b.data<float>(), c.data<float>(), 1, M, N, K, trans_a, trans_b, false);
  return c;
}
Tensor scaled(const Tensor& a, float s) {
  Tensor out = Tensor::empty(a.shape());
  scale(a.data<float>(), s, out.data<float>(), a.numel());
  return out;
}
// dropout(t) with the layer's mask (t itself when p = 0); the same function is its backward.
Tensor dropped(const Tensor& t, const kernels::LoraParams& lora) {
  if (lora.dropout <= 0.0f) return t;
  Tensor out = Tensor::empty(t.shape());
  dropout_apply(t.data<float>(), out.data<float>(), t.numel(), lora.dropout, lora.seed, lora.offset);
  return out;
}
// y [M, out] = x [M, in] W^T, W dequantized kNf4CpuTileRows rows at a time.
Tensor base_forward(const Tensor& x2, const Nf4Tensor& w) {
  Tensor y = Tensor::empty({x2.size(0), w.out});
  if (x2.size(0) == 0) return y;
  Tensor tile = Tensor::empty({std::min(kernels::kNf4CpuTileRows, w.out), w.in}, DType::F32, Device::CPU,
                              MemCategory::Workspace);
  nf4_matmul(x2.data<float>(), w, y.data<float>(), x2.size(0), kernels::kNf4CpuTileRows, tile.data<float>());
  return y;
}
Tensor base_dx(const Tensor& dy2, const Nf4Tensor& w) {
  Tensor dx = Tensor::zeros({dy2.size(0), w.in});
  if (dy2.size(0) == 0) return dx;
  Tensor tile = Tensor::empty({std::min(kernels::kNf4CpuTileRows, w.out), w.in}, DType::F32, Device::CPU,
                              MemCategory::Workspace);
  nf4_matmul_dx(dy2.data<float>(), w, dx.data<float>(), dy2.size(0), kernels::kNf4CpuTileRows, tile.data<float>());
  return dx;
}

}  // namespace

Tensor lora_nf4_forward(const Tensor& x, const Nf4Tensor& w, const kernels::LoraParams& lora, Tensor* u) {
  const int64_t M = x.numel() / w.in;
  const Tensor x2 = x.view({M, w.in});
  Tensor y = base_forward(x2, w);                               // [M, out]
  Tensor h = mm(dropped(x2, lora), lora.a, false, true);        // u = xd A^T [M, r]
  const Tensor hs = scaled(h, lora.scale);
  matmul(hs.data<float>(), lora.b.data<float>(), y.data<float>(), 1, M, w.out, lora.a.size(0), false, true,
         /*accumulate=*/true);                                  // y += (s u) B^T
  if (u) *u = h;
  Shape out_shape = x.shape();
  out_shape.dims[out_shape.ndim - 1] = w.out;
  return y.view(out_shape);
}

void lora_nf4_backward(const Tensor& dy, const Tensor& x, const Tensor& u, const Nf4Tensor& w,
                       const kernels::LoraParams& lora, Tensor* dx, Tensor* grad_a, Tensor* grad_b) {
  const int64_t M = x.numel() / w.in;
  const Tensor x2 = x.view({M, w.in}), dy2 = dy.view({M, w.out});
  if (grad_b) *grad_b = scaled(mm(dy2, u, true, false), lora.scale);  // [out, r]
  const Tensor v = scaled(mm(dy2, lora.b, false, false), lora.scale);  // s dy B [M, r]
  if (grad_a) *grad_a = mm(v, dropped(x2, lora), true, false);         // [r, in]
  if (!dx) return;
  const Tensor vxd = mm(v, lora.a, false, false);                      // [M, in]
  Tensor d = base_dx(dy2, w);                                          // dy W [M, in]
  const Tensor bypass = dropped(vxd, lora);
  add_inplace(d.data<float>(), bypass.data<float>(), d.numel());
  *dx = d.view(x.shape());
}

}  // namespace nq::cpu
