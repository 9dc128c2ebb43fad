// LoRA linear over an NF4 or dense base as one fused autograd op (see lora_linear.h).
//
// Forward (x flattened to [N, in]):
//   xd = dropout(x)            [N, in]   (mask from Philox: seed, offset)
//   h  = xd A^T                [N, r]
//   y  = base(x) + s * h B^T   [N, out]
// Backward, given gy = dL/dy [N, out]:
//   dB = s * gy^T h            [out, r]
//   gh = s * gy B              [N, r]
//   dA = gh^T xd               [r, in]
//   dX = base^T(gy) + dropout_backward(gh A)   [N, in]
// On the GPU, A and B stay f32 master weights; each forward makes working
// copies in x's dtype (bf16) and the gradients come back f32. An NF4 base runs
// the fused CUDA kernels (kernels/cuda/lora.cu: the bypass rides in the NF4
// GEMM's pass), a dense base the same kernels:: calls as the CPU.
#include "lora/lora_linear.h"

#include <cmath>

#include "kernels/kernels.h"
#include "quant/nf4_linear.h"
#include "runtime/rng.h"
#ifdef NQ_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace nq {

float LoraConfig::scaling() const {
  NQ_CHECK(r > 0, "lora: rank r must be positive, got ", r);
  return use_rslora ? alpha / std::sqrt(float(r)) : alpha / float(r);
}

static LoraLinear make_adapter(int64_t out, int64_t in, const LoraConfig& cfg, const std::string& name) {
  NQ_CHECK(cfg.dropout >= 0.0f && cfg.dropout < 1.0f, "lora ", name, ": dropout must be in [0, 1), got ", cfg.dropout);
  LoraLinear l;
  l.in = in;
  l.out = out;
  l.scaling = cfg.scaling();
  l.dropout = cfg.dropout;
  // A ~ U(-1/sqrt(in), 1/sqrt(in)): kaiming_uniform with a = sqrt(5) has
  // gain sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / in) = 1 / sqrt(in).
  Tensor a = Tensor::empty({cfg.r, in}, DType::F32, Device::CPU, MemCategory::LoRA);
  const uint64_t seed = rng_state().seed, offset = rng_reserve(uint64_t(a.numel()));
  const float bound = 1.0f / std::sqrt(float(in));
  float* pa = a.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) pa[i] = (2.0f * philox_uniform(seed, offset, uint64_t(i)) - 1.0f) * bound;
  l.A = Var(a, true, name + ".lora_A.weight");
  l.B = Var(Tensor::zeros({out, cfg.r}, DType::F32, Device::CPU, MemCategory::LoRA), true, name + ".lora_B.weight");
  return l;
}

LoraLinear make_lora_linear(std::shared_ptr<const Nf4Tensor> base, const LoraConfig& cfg, const std::string& name) {
  NQ_CHECK(base != nullptr, "lora ", name, ": null NF4 base");
  LoraLinear l = make_adapter(base->out, base->in, cfg, name);
  l.nf4_base = std::move(base);
  return l;
}

LoraLinear make_lora_linear(Tensor dense_base, const LoraConfig& cfg, const std::string& name) {
  NQ_CHECK(dense_base.defined() && dense_base.ndim() == 2 && dense_base.dtype() == DType::F32, "lora ", name,
           ": dense base must be an f32 [out, in] matrix, got ",
           dense_base.defined() ? dense_base.desc() : std::string("undefined"));
  LoraLinear l = make_adapter(dense_base.size(0), dense_base.size(1), cfg, name);
  l.dense_base = std::move(dense_base);
  return l;
}

#ifdef NQ_CUDA
// The NF4-base op on the GPU: kernels/cuda/lora.cu's forward and backward.
static Var lora_nf4_linear_cuda(const Var& x, const LoraLinear& layer) {
  const Tensor xv = x.value();
  const std::shared_ptr<const Nf4Tensor> nf4 = layer.nf4_base;  // keeps the device tensors alive
  const kernels::cuda::Nf4Weight w = nf4_device_view(*nf4);
  kernels::cuda::LoraParams lp;
  lp.a = kernels::cast(layer.A.value(), xv.dtype());  // [r, in] working copy
  lp.b = kernels::cast(layer.B.value(), xv.dtype());  // [out, r] working copy
  lp.scale = layer.scaling;
  lp.dropout = is_training() ? layer.dropout : 0.0f;  // dropout in training only (autograd/var.h)
  lp.seed = rng_state().seed;
  lp.offset = lp.dropout > 0.0f ? rng_reserve(uint64_t(xv.numel())) : 0;
  Tensor u;  // [N, r], saved for the backward
  Tensor y = kernels::cuda::lora_nf4_forward(xv, w, lp, &u);
  const bool need_dx = x.requires_grad();
  return record("lora_linear", std::move(y), {x, layer.A, layer.B},
                [=](const Tensor& grad_y) -> std::vector<Tensor> {
                  Tensor dx, dA, dB;  // dA [r, in], dB [out, r] f32
                  kernels::cuda::lora_nf4_backward(grad_y, xv, u, w, lp, need_dx ? &dx : nullptr, &dA, &dB);
                  (void)nf4;
                  return {dx, dA, dB};
                });
}
#endif

Var lora_linear(const Var& x, const LoraLinear& layer) {
  const Tensor& xv = x.value();
  NQ_CHECK(xv.ndim() >= 1 && xv.size(-1) == layer.in, "lora_linear: x ", xv.shape().str(),
           " does not match the layer [", layer.out, ", ", layer.in, "] (last dim must be ", layer.in, ")");
  NQ_CHECK(layer.A.value().device() == xv.device(), "lora_linear: x is ", xv.desc(), " but the adapter is ",
           layer.A.value().desc(), " (move the model with to_device)");
#ifdef NQ_CUDA
  if (layer.nf4_base && xv.device() == Device::CUDA) return lora_nf4_linear_cuda(x, layer);
#endif
  const int64_t N = xv.numel() / layer.in;
  Shape out_shape = xv.shape();
  out_shape.dims[out_shape.ndim - 1] = layer.out;
  const Tensor x2 = xv.view({N, layer.in});  // [N, in]

  const float p = is_training() ? layer.dropout : 0.0f, s = layer.scaling;  // dropout in training only (autograd/var.h)
  const uint64_t seed = rng_state().seed, offset = p > 0.0f ? rng_reserve(uint64_t(x2.numel())) : 0;
  auto dropped = [=](const Tensor& t) { return p > 0.0f ? kernels::dropout_forward(t, p, seed, offset) : t; };

  // y = base(x) + s * (xd A^T) B^T
  Tensor y = layer.nf4_base ? nf4_linear_forward(x2, *layer.nf4_base) : kernels::matmul(x2, layer.dense_base, false, true);
  // Working copies of the f32 masters in x's dtype (the same tensors on the cpu).
  const Tensor A = kernels::cast(layer.A.value(), xv.dtype()), B = kernels::cast(layer.B.value(), xv.dtype());
  Tensor h = kernels::matmul(dropped(x2), A, false, true);  // [N, r]
  kernels::matmul_into(y, kernels::scale(h, s), B, false, true, /*accumulate=*/true);

  // Saved for backward: x, h and the weights (the mask is recomputed from its offset).
  const Tensor dense = layer.dense_base;
  const std::shared_ptr<const Nf4Tensor> nf4 = layer.nf4_base;
  const int64_t out = layer.out;
  const bool need_dx = x.requires_grad();  // e.g. false right after the frozen embedding
  return record("lora_linear", y.view(out_shape), {x, layer.A, layer.B},
                [=](const Tensor& grad_y) -> std::vector<Tensor> {
                  const Tensor gy = grad_y.view({N, out});                                 // [N, out]
                  Tensor dB = kernels::cast(kernels::scale(kernels::matmul(gy, h, true, false), s),
                                            DType::F32);                                   // [out, r]
                  Tensor gh = kernels::scale(kernels::matmul(gy, B), s);                   // [N, r]
                  Tensor dA = kernels::cast(kernels::matmul(gh, dropped(x2), true, false), DType::F32);  // [r, in]
                  if (!need_dx) return {Tensor(), dA, dB};
                  Tensor gxd = kernels::matmul(gh, A);                                     // [N, in]
                  Tensor dX = nf4 ? nf4_linear_backward(gy, *nf4) : kernels::matmul(gy, dense);  // [N, in]
                  kernels::add_inplace(dX, p > 0.0f ? kernels::dropout_backward(gxd, p, seed, offset) : gxd);
                  return {dX.view(xv.shape()), dA, dB};
                });
}

}  // namespace nq
