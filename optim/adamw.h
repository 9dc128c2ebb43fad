// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), with
// the exact arithmetic of torch.optim.AdamW's single-tensor path (foreach=False),
// fp32 parameters, gradients and states. For each parameter tensor, at its step t:
//
//   p  <- p * (1 - lr * wd)                         decoupled weight decay
//   m  <- m + (1 - b1) * (g - m)                    (= b1 m + (1 - b1) g, torch's lerp)
//   v  <- v * b2 + (1 - b2) * g * g
//   p  <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// The update itself is in optim/adamw_update.h: per-tensor scalars computed
// once in double (as torch does) and a per-element function over raw spans, so
// the paged variant (states in pinned host memory streamed through a GPU pool)
// and a CUDA kernel run the same arithmetic. This class holds the states and
// walks the parameters.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "optim/adamw_update.h"

namespace nq {

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
