// AdamW: the per-tensor scalars, the span loop, and the CPU optimizer over a
// list of Vars (states and checkpoints: adamw_state.h). The per-element arithmetic is in
// adamw_update.h. Results match torch in fp32 up to its sqrt: torch's CPU sqrt
// goes through MKL's vector math, which is not always correctly rounded.
#include "optim/adamw.h"

#include <cmath>

#include "optim/clip.h"

namespace nq {

AdamWScalars adamw_scalars(const AdamWConfig& cfg, double lr, int64_t step) {
  // torch keeps beta/lr as Python floats (double) and converts each scalar to
  // f32 when it multiplies an f32 tensor; the bias corrections stay in double
  // until then.
  double b1 = cfg.beta1, b2 = cfg.beta2;
  double bias_correction1 = 1.0 - std::pow(b1, double(step));
  double bias_correction2 = 1.0 - std::pow(b2, double(step));
  AdamWScalars s;
  s.decay = float(1.0 - lr * double(cfg.weight_decay));
  s.one_minus_beta1 = float(1.0 - b1);
  s.beta2 = float(b2);
  s.one_minus_beta2 = float(1.0 - b2);
  s.bias_correction2_sqrt = float(std::sqrt(bias_correction2));
  s.eps = float(cfg.eps);
  s.neg_step_size = float(-(lr / bias_correction1));
  return s;
}

void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s, float grad_scale) {
  // g * grad_scale is rounded to f32 (no FMA contraction: -ffp-contract=off), as torch's
  // grad.mul_(coef) stores it; x * 1.0f == x, so grad_scale = 1 uses g as it is.
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) adamw_update_element(param[i], grad[i] * grad_scale, exp_avg[i], exp_avg_sq[i], s);
}

AdamW::AdamW(std::vector<Var> params, AdamWConfig cfg)
    : AdamWOptimizer(std::move(params), cfg, "AdamW", Device::CPU,
                     "the CPU optimizer needs f32 cpu master weights (PagedAdamW, optim/paged_adamw.h, on cuda)") {
  for (size_t i = 0; i < params_.size(); ++i) {
    state_[i].exp_avg = Tensor::zeros(params_[i].shape(), DType::F32, Device::CPU, MemCategory::Optimizer);
    state_[i].exp_avg_sq = Tensor::zeros(params_[i].shape(), DType::F32, Device::CPU, MemCategory::Optimizer);
  }
}

void AdamW::step(double lr, float grad_scale) {
  for (size_t i : params_with_grad(lr)) {
    const Var& p = params_[i];
    Moments& st = state_[i];
    st.step += 1;
    adamw_update_span(p.value().data<float>(), p.grad().data<float>(), st.exp_avg.data<float>(),
                      st.exp_avg_sq.data<float>(), p.value().numel(), adamw_scalars(cfg_, lr, st.step), grad_scale);
  }
}

double AdamW::grad_global_norm() const { return nq::grad_global_norm(params_); }

}  // namespace nq
