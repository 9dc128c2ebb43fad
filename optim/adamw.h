// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), with
// the exact arithmetic of torch.optim.AdamW's single-tensor path (foreach=False),
// fp32 parameters, gradients and states. For each parameter tensor, at its step t:
//
//   p  <- p * (1 - lr * wd)                         decoupled weight decay
//   m  <- m + (1 - b1) * (g - m)                    (= b1 m + (1 - b1) g, torch's lerp)
//   v  <- v * b2 + (1 - b2) * g * g
//   p  <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// The update is a function over raw spans of one tensor (adamw_update_span), so
// the paged variant — states kept in pinned host memory and streamed through a
// GPU pool — and a CUDA kernel share the per-tensor structure and the scalars
// (AdamWScalars) computed once per tensor in double, as torch does.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "autograd/var.h"

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
AdamWScalars adamw_scalars(const AdamWConfig& cfg, double lr, int64_t step);

// One tensor's update, in place over n elements of param, exp_avg, exp_avg_sq.
void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s);

class AdamW {
 public:
  // params: the trainable leaves (f32, CPU). Their names key the saved state;
  // an unnamed parameter is called "param.<index>". Names must be unique.
  AdamW(std::vector<Var> params, AdamWConfig cfg);

  // Updates every parameter that has a gradient (those without one are skipped
  // and their step count does not advance, as in torch) with learning rate lr.
  void step(double lr);
  void zero_grad();

  const std::vector<Var>& params() const { return params_; }
  const AdamWConfig& config() const { return cfg_; }
  int64_t step_count(size_t i) const { return state_[i].step; }

  // Checkpoint state: "<name>.exp_avg", "<name>.exp_avg_sq" (f32, the parameter's
  // shape) and "<name>.step" (i64 [1]) per parameter. load_state checks that every
  // entry is present with the right shape and dtype.
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);

 private:
  struct ParamState {
    std::string name;
    Tensor exp_avg, exp_avg_sq;  // f32, MemCategory::Optimizer; allocated at the first step
    int64_t step = 0;
  };
  void ensure_state(size_t i);
  std::vector<Var> params_;
  std::vector<ParamState> state_;
  AdamWConfig cfg_;
};

}  // namespace nq
