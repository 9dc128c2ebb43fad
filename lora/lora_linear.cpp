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
// A and B stay f32 master weights; each forward makes working copies in x's
// dtype (bf16 on the GPU; the same tensors on the cpu) and the gradients come
// back f32. An NF4 base is kernels::lora_nf4_forward / _backward (the bypass
// rides in the NF4 product on the GPU), a dense base the kernels:: matmuls below.
#include "lora/lora_linear.h"

#include <cmath>

#include "kernels/kernels.h"
#include "runtime/rng.h"

namespace nq {

float LoraConfig::scaling() const {
  NQ_CHECK(r > 0, "lora: rank r must be positive, got ", r);
  return use_rslora ? alpha / std::sqrt(float(r)) : alpha / float(r);
}

LoraLinear make_lora_linear(int64_t out, int64_t in, const LoraConfig& cfg, const std::string& name) {
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

// What both bases share: the checks, the working copies of A and B in x's dtype,
// the scaling and the dropout mask's Philox range (reserved here, once per forward).
static kernels::LoraParams bypass_params(const Tensor& xv, const LoraLinear& layer) {
  NQ_CHECK(xv.ndim() >= 1 && xv.size(-1) == layer.in, "lora_linear: x ", xv.shape().str(),
           " does not match the layer [", layer.out, ", ", layer.in, "] (last dim must be ", layer.in, ")");
  NQ_CHECK(layer.A.value().device() == xv.device(), "lora_linear: x is ", xv.desc(), " but the adapter is ",
           layer.A.value().desc(), " (move the model with to_device)");
  kernels::LoraParams lp;
  lp.dropout = is_training() ? layer.dropout : 0.0f;  // dropout in training only (autograd/var.h)
  lp.scale = layer.scaling;
  lp.seed = rng_state().seed;
  lp.offset = lp.dropout > 0.0f ? rng_reserve(uint64_t(xv.numel())) : 0;
  lp.a = kernels::cast(layer.A.value(), xv.dtype());  // [r, in] working copy
  lp.b = kernels::cast(layer.B.value(), xv.dtype());  // [out, r] working copy
  return lp;
}

Var lora_linear(const Var& x, const std::shared_ptr<const Nf4Tensor>& nf4_base, const LoraLinear& layer) {
  NQ_CHECK(nf4_base && nf4_base->out == layer.out && nf4_base->in == layer.in, "lora_linear: the NF4 base ",
           nf4_base ? str("[", nf4_base->out, ", ", nf4_base->in, "]") : std::string("(null)"),
           " does not match the adapter [", layer.out, ", ", layer.in, "]");
  const Tensor xv = x.value();
  const kernels::LoraParams lp = bypass_params(xv, layer);
  Tensor u;  // [N, r], saved for the backward
  Tensor y = kernels::lora_nf4_forward(xv, *nf4_base, lp, &u);
  const std::shared_ptr<const Nf4Tensor> w = nf4_base;  // kept alive by the backward
  const bool need_dx = x.requires_grad();               // e.g. false right after the frozen embedding
  return record("lora_linear", std::move(y), {x, layer.A, layer.B},
                [=](const Tensor& grad_y) -> std::vector<Tensor> {
                  Tensor dx, dA, dB;  // dA [r, in], dB [out, r] f32
                  kernels::lora_nf4_backward(grad_y, xv, u, *w, lp, need_dx ? &dx : nullptr, &dA, &dB);
                  return {dx, dA, dB};
                });
}

Var lora_grouped_linear(const Var& x, std::vector<std::shared_ptr<const Nf4Tensor>> bases,
                        const std::vector<const LoraLinear*>& layers, std::vector<int64_t> offsets) {
  NQ_CHECK(!bases.empty() && bases.size() == layers.size() && offsets.size() == bases.size() + 1,
           "lora_grouped_linear: ", bases.size(), " bases, ", layers.size(), " adapters and ", offsets.size(),
           " row bounds (expected E, E and E + 1)");
  const Tensor xv = x.value();
  // Expert 0's checks and working copies, and one dropout mask over all of x (one Philox
  // range, reserved here), which the experts share.
  const kernels::LoraParams first = bypass_params(xv, *layers[0]);
  kernels::GroupedLoraParams lp;
  lp.dropout = first.dropout;
  lp.seed = first.seed;
  lp.offset = first.offset;
  std::vector<const Nf4Tensor*> w;
  std::vector<Var> inputs{x};
  for (size_t e = 0; e < bases.size(); ++e) {
    const LoraLinear& layer = *layers[e];
    NQ_CHECK(bases[e] && bases[e]->out == layer.out && bases[e]->in == layer.in, "lora_grouped_linear: expert ", e,
             "'s NF4 base does not match its adapter [", layer.out, ", ", layer.in, "]");
    NQ_CHECK(layer.dropout == layers[0]->dropout, "lora_grouped_linear: expert ", e, "'s dropout ", layer.dropout,
             " is not expert 0's ", layers[0]->dropout, " (the experts share one mask)");
    lp.a.push_back(e == 0 ? first.a : kernels::cast(layer.A.value(), xv.dtype()));
    lp.b.push_back(e == 0 ? first.b : kernels::cast(layer.B.value(), xv.dtype()));
    lp.scale.push_back(layer.scaling);
    w.push_back(bases[e].get());
    inputs.push_back(layer.A);
    inputs.push_back(layer.B);
  }
  Tensor u;  // [M, r], saved for the backward
  Tensor y = kernels::lora_nf4_grouped_forward(xv, w, lp, offsets, &u);
  const bool need_dx = x.requires_grad();
  return record("lora_grouped_linear", std::move(y), std::move(inputs),
                [=, bases = std::move(bases), offsets = std::move(offsets)](const Tensor& grad_y) {
                  Tensor dx;
                  std::vector<Tensor> dA, dB;  // [E]: [r, in], [out, r] f32
                  kernels::lora_nf4_grouped_backward(grad_y, xv, u, w, lp, offsets, need_dx ? &dx : nullptr, &dA, &dB);
                  std::vector<Tensor> grads{dx};
                  for (size_t e = 0; e < dA.size(); ++e) {
                    grads.push_back(dA[e]);
                    grads.push_back(dB[e]);
                  }
                  return grads;
                });
}

Var lora_linear(const Var& x, const Tensor& dense_base, const LoraLinear& layer) {
  NQ_CHECK(dense_base.defined() && dense_base.shape() == (Shape{layer.out, layer.in}), "lora_linear: the dense base ",
           dense_base.defined() ? dense_base.desc() : std::string("(undefined)"), " does not match the adapter [",
           layer.out, ", ", layer.in, "]");
  const Tensor& xv = x.value();
  const kernels::LoraParams lp = bypass_params(xv, layer);
  const int64_t N = xv.numel() / layer.in;
  Shape out_shape = xv.shape();
  out_shape.dims[out_shape.ndim - 1] = layer.out;
  const Tensor x2 = xv.view({N, layer.in});  // [N, in]

  const float p = lp.dropout, s = lp.scale;
  const uint64_t seed = lp.seed, offset = lp.offset;
  auto dropped = [=](const Tensor& t) { return p > 0.0f ? kernels::dropout_forward(t, p, seed, offset) : t; };

  // y = x W^T + s * (xd A^T) B^T
  Tensor y = kernels::matmul(x2, dense_base, false, true);
  const Tensor A = lp.a, B = lp.b;
  Tensor h = kernels::matmul(dropped(x2), A, false, true);  // [N, r]
  kernels::matmul_into(y, kernels::scale(h, s), B, false, true, /*accumulate=*/true);

  // Saved for backward: x, h and the weights (the mask is recomputed from its offset).
  const Tensor dense = dense_base;
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
                  Tensor dX = kernels::matmul(gy, dense);                                  // [N, in]
                  kernels::add_inplace(dX, p > 0.0f ? kernels::dropout_backward(gxd, p, seed, offset) : gxd);
                  return {dX.view(xv.shape()), dA, dB};
                });
}

}  // namespace nq
