// What AdamW (CPU, optim/adamw.h) and PagedAdamW (GPU, optim/paged_adamw.h)
// share beyond the Optimizer interface: the hyperparameters and their checks,
// the per-parameter moments m (exp_avg), v (exp_avg_sq) and step count, and
// their checkpoint form, one format for both devices:
//   "<name>.exp_avg", "<name>.exp_avg_sq"  f32, the parameter's shape
//   "<name>.step"                          i64 [1]
// Each subclass allocates the moments where its update runs (CPU memory,
// pinned host memory, GPU memory) and implements step() and grad_global_norm().
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/adamw_math.h"
#include "optim/optimizer.h"

namespace nq {

class AdamWOptimizer : public Optimizer {
 public:
  const AdamWConfig& config() const { return cfg_; }
  int64_t step_count(size_t i) const { return state_[i].step; }
  // Host copies of the moments (pageable memory, MemCategory::Optimizer) and the step counts.
  OptimizerState state_dict() const override;
  // Checks every entry (present, shape, dtype, step >= 0) before changing anything,
  // then copies the moments to wherever this optimizer keeps them.
  void load_state_dict(const OptimizerState& state) override;

 protected:
  // The Optimizer checks plus the hyperparameters' (betas in [0, 1), eps and weight decay >= 0).
  AdamWOptimizer(std::vector<Var> params, AdamWConfig cfg, const char* who, Device device, const char* requirement);

  struct Moments {
    Tensor exp_avg, exp_avg_sq;  // f32, the parameter's shape, MemCategory::Optimizer (allocated by the subclass)
    int64_t step = 0;
  };
  std::vector<Moments> state_;  // one per parameter
  AdamWConfig cfg_;
};

}  // namespace nq
