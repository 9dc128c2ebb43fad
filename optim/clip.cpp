// Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_ semantics). The
// norm is kernels::global_grad_norm's: per-tensor norms accumulated in double and
// rounded to f32, as torch's f32 norm kernels produce an f32 result; the total is
// the norm of the norms.
#include "optim/clip.h"

#include <cmath>

#include "kernels/kernels.h"

namespace nq {

float grad_global_norm(const std::vector<Var>& params) {
  std::vector<Tensor> grads;
  for (const Var& p : params) {
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    NQ_CHECK(g.dtype() == DType::F32 && g.device() == Device::CPU,
             "grad_global_norm: gradient of ", p.name(), " is ", g.desc(), ", expected f32 cpu");
    grads.push_back(g);
  }
  return float(kernels::global_grad_norm(grads));  // the CPU's value is an f32 (see kernels.h)
}

float clip_scale(double norm, double max_norm) {
  NQ_CHECK(max_norm > 0.0 && std::isfinite(max_norm), "clip: max_norm must be > 0, got ", max_norm);
  const float coef = float(max_norm) / (float(norm) + 1e-6f);
  return coef < 1.0f ? coef : 1.0f;  // torch clamps to 1.0 (multiplying by 1 changes nothing)
}

float clip_grad_norm(const std::vector<Var>& params, float max_norm) {
  const float total = grad_global_norm(params);
  const float coef = clip_scale(total, max_norm);
  if (!std::isfinite(total) || coef == 1.0f) return total;
  for (const Var& p : params) {
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    float* x = g.data<float>();
    for (int64_t i = 0, n = g.numel(); i < n; ++i) x[i] *= coef;
  }
  return total;
}

}  // namespace nq
