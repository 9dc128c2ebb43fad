// Global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_ (norm_type 2):
//
//   total = || (||g_1||_2, ..., ||g_n||_2) ||_2          (= the L2 norm of all gradients as one vector)
//   coef  = min(max_norm / (total + 1e-6), 1)
//   g_i  <- g_i * coef                                   for every gradient
//
// Clipping bounds the size of one update when a batch produces an outlier
// gradient, without changing its direction. The trainer does not rescale the
// gradients: it passes coef to Optimizer::step as grad_scale (optim/optimizer.h),
// which multiplies each element by it on the device the update runs on.
#pragma once
#include <vector>

#include "autograd/var.h"

namespace nq {

// The L2 norm of all defined gradients of `params` taken together (f32 cpu grads).
float grad_global_norm(const std::vector<Var>& params);

// coef = min(max_norm / (norm + 1e-6), 1), in f32 as torch computes it from its
// f32 norm: the factor to scale every gradient by. max_norm must be > 0.
float clip_scale(double norm, double max_norm);

// Scales the gradients in place so their global norm is at most max_norm and
// returns the norm before clipping. A non-finite norm is returned as is and
// the gradients are left untouched (the trainer decides to skip the step).
float clip_grad_norm(const std::vector<Var>& params, float max_norm);

}  // namespace nq
