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
// and a CUDA kernel run the same arithmetic. The states and their checkpoint
// form are optim/adamw_state.h's; this class walks the parameters on the CPU.
#pragma once
#include <vector>

#include "optim/adamw_state.h"

namespace nq {

class AdamW : public AdamWOptimizer {
 public:
  // params: the trainable leaves (f32, CPU). Their names key the saved state;
  // an unnamed parameter is called "param.<index>". Names must be unique.
  AdamW(std::vector<Var> params, AdamWConfig cfg);

  // grad_scale == 1 is plain AdamW; otherwise each element's gradient is
  // g * grad_scale rounded to f32 first, so step(lr, clip_scale(norm, max))
  // equals clip_grad_norm(params, max) followed by step(lr) bit for bit.
  void step(double lr, float grad_scale = 1.0f) override;
  double grad_global_norm() const override;  // optim/clip.h's, over params()
};

}  // namespace nq
