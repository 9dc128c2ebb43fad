// The optimizer as the trainer sees it, whichever device the parameters and
// the optimizer's states live on: AdamW (optim/adamw.h) implements it, with its
// moments on the host, on the GPU or paged through a GPU pool, one checkpoint form.
//
// One step of the trainer, on either device:
//
//   norm  = optimizer.grad_global_norm()            || all gradients ||_2, before clipping
//   scale = clip_scale(norm, max_norm)              min(max_norm / (norm + 1e-6), 1)   (optim/clip.h)
//   optimizer.step(lr, scale)                       AdamW with g * scale in place of g
//   optimizer.zero_grad()
//
// Folding the clipping factor into the update (instead of rescaling every
// gradient in place first) saves a pass over the gradients; the arithmetic is
// the same: g * scale is rounded to f32 before the update uses it, as torch's
// grad.mul_(coef) stores it, and scale == 1 leaves g untouched.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "autograd/var.h"

namespace nq {

// The checkpoint form of an optimizer's state: named host tensors.
using OptimizerState = std::map<std::string, Tensor>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // The trainable parameters, and the name each one's state is saved under
  // (the Var's name, or "param.<index>" when it has none).
  const std::vector<Var>& params() const { return params_; }
  const std::string& param_name(size_t i) const { return names_[i]; }

  // The L2 norm of all defined gradients taken together (what trainers log as grad_norm).
  virtual double grad_global_norm() const = 0;
  // Updates every parameter that has a gradient (those without one are skipped
  // and keep their step count, as in torch), using grad * grad_scale.
  virtual void step(double lr, float grad_scale = 1.0f) = 0;
  void zero_grad();
  // Gives every parameter without a gradient a zero one, so that step() moves it by its
  // moments like the others. A Qwen3-MoE expert that saw no token this step has no
  // gradient; in PEFT's fused expert tensor (one parameter for all experts) its slice has
  // a zero gradient and AdamW still updates it: the trainer calls this before step().
  void fill_missing_grads();

  // Host copies of the states, and loading them back (every entry is checked
  // before anything changes). A state saved on one device loads on the other.
  virtual OptimizerState state_dict() const = 0;
  virtual void load_state_dict(const OptimizerState& state) = 0;

 protected:
  // Checks that every parameter is defined, f32 on `device` and uniquely named.
  // Errors start with `who` ("AdamW") and end with `requirement` (what to use instead).
  Optimizer(std::vector<Var> params, const char* who, Device device, const char* requirement);
  // The indices of the parameters that have a gradient, each gradient checked
  // (the parameter's shape, f32, on the device); lr checked (finite, >= 0).
  std::vector<size_t> params_with_grad(double lr) const;

  const char* who_;
  Device device_;
  std::vector<Var> params_;
  std::vector<std::string> names_;
};

}  // namespace nq
