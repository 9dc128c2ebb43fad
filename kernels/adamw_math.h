// The arithmetic of one AdamW update, shared by the CPU kernel
// (kernels/cpu/adamw.cpp) and the CUDA kernel (kernels/cuda/adamw_span.cu),
// which kernels::adamw_update (kernels/kernels.h) dispatches between: the
// per-tensor scalars, computed once in double as torch does, and the
// per-element update. Formulas and torch's order of operations: docs/optim.md.
#pragma once
#include <cmath>
#include <cstdint>

#include "runtime/half.h"  // NQ_HD

namespace nq {

// Hyperparameters are doubles, like the Python floats torch keeps them as:
// 1 - 0.999 in double, then rounded to f32, differs from 1 - 0.999f.
struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// The per-tensor scalars of one update, computed in double and rounded to f32
// where torch rounds them (Python floats become f32 when they meet f32 tensors).
struct AdamWScalars {
  float decay;               // 1 - lr * wd
  float one_minus_beta1;     // lerp weight
  float beta2, one_minus_beta2;
  float bias_correction2_sqrt;  // sqrt(1 - b2^t)
  float eps;
  float neg_step_size;       // -lr / (1 - b1^t)
};

// The scalars of the update at step `step` (1 for the first) with learning rate lr.
// torch keeps beta/lr as Python floats (double) and converts each scalar to f32
// when it multiplies an f32 tensor; the bias corrections stay in double until then.
inline AdamWScalars adamw_scalars(const AdamWConfig& cfg, double lr, int64_t step) {
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

// One element's update, in torch's order of operations (torch/optim/adam.py,
// _single_tensor_adam, decoupled_weight_decay=True). NQ_HD: the CUDA kernel runs
// exactly this arithmetic. torch's CPU lerp_ and addcmul_ use fused
// multiply-adds; so do we.
NQ_HD void adamw_update_element(float& param, float grad, float& exp_avg, float& exp_avg_sq, const AdamWScalars& s) {
  float p = param * s.decay;                                         // param.mul_(1 - lr*wd)
  float m = fmaf(s.one_minus_beta1, grad - exp_avg, exp_avg);        // exp_avg.lerp_(g, 1-b1)
  float v = fmaf(s.one_minus_beta2 * grad, grad, exp_avg_sq * s.beta2);  // mul_(b2).addcmul_(g, g, 1-b2)
  float denom = sqrtf(v) / s.bias_correction2_sqrt + s.eps;          // (v.sqrt() / bc2_sqrt).add_(eps)
  param = p + s.neg_step_size * m / denom;                           // addcdiv_(m, denom, -step_size)
  exp_avg = m;
  exp_avg_sq = v;
}

}  // namespace nq
