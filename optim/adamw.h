// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), with
// the exact arithmetic of torch.optim.AdamW's single-tensor path (foreach=False),
// fp32 parameters, gradients and states. For each parameter tensor, at its step t:
//
//   p  <- p * (1 - lr * wd)                         decoupled weight decay
//   m  <- m + (1 - b1) * (g - m)                    (= b1 m + (1 - b1) g, torch's lerp)
//   v  <- v * b2 + (1 - b2) * g * g
//   p  <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// The update itself is kernels::adamw_update (kernels/kernels.h; its arithmetic
// kernels/adamw_math.h): per-tensor scalars computed once in double, as torch
// does, and one per-element function, the same on the CPU and the GPU.
//
// One class; where it keeps the moments m (exp_avg) and v (exp_avg_sq) is a
// policy, AdamWPlacement, chosen by the trainer from --optim and the device:
//   Host    parameters on the CPU, moments in CPU memory (the CPU run)
//   Device  parameters on the GPU, moments in GPU memory, one update launch per
//           tensor (./train --optim adamw on a GPU)
//   Paged   parameters on the GPU, moments in pinned host memory streamed through
//           a fixed pool of GPU pages (./train --optim paged_adamw, the default on a GPU)
// Paged: each step cuts every (parameter, gradient, m, v) into pages of
// page_elems = page_bytes / 8 elements (a page holds m and v) and runs them
// through n_pages GPU slots, three streams deep:
//
//   upload   stream:  m, v of page i    host -> pool slot i % n_pages
//   compute  stream:  AdamW on page i   (param and grad are on the GPU already)
//   download stream:  m, v of page i    pool slot -> host
//
// Events order the three per slot (upload waits for the slot's previous
// download, compute for the upload, download for the compute), so page i's
// update overlaps page i+1's upload and page i-1's download, and the GPU memory
// the optimizer takes is the pool: n_pages * page_bytes, whatever the model size.
// Elements are independent, so Paged is bit-identical to Device (the same kernel
// on whole tensors). bitsandbytes' paged optimizers get the same effect from CUDA
// unified memory (the driver pages states out under memory pressure); here the
// paging is explicit, so its cost and its memory bound are visible.
//
// The checkpoint form is the same for every placement, so a state saved on one
// device loads on the other:
//   "<name>.exp_avg", "<name>.exp_avg_sq"  f32, the parameter's shape
//   "<name>.step"                          i64 [1]
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/adamw_math.h"
#include "optim/optimizer.h"

namespace nq {

enum class AdamWPlacement { Host, Device, Paged };

struct AdamWOptions {
  AdamWPlacement placement = AdamWPlacement::Host;
  // Paged only: the GPU page pool.
  int64_t page_bytes = int64_t(8) << 20;  // one GPU page: m and v of page_bytes / 8 elements (./train --optim-page-mb)
  int n_pages = 4;                        // pool size in pages (./train --optim-pages)
  size_t pool_bytes() const { return size_t(page_bytes) * size_t(n_pages); }
};

class AdamW : public Optimizer {
 public:
  // params: the trainable leaves, f32 on the CPU (Host) or on a CUDA device (Device,
  // Paged), uniquely named (an unnamed one is "param.<index>"; the names key the
  // saved state). Device and Paged need a CUDA build.
  AdamW(std::vector<Var> params, AdamWConfig cfg, AdamWOptions options = {});
  ~AdamW() override;

  // Updates every parameter with a gradient (others keep their step count, as in
  // torch). grad_scale == 1 is plain AdamW; otherwise each element's gradient is
  // g * grad_scale rounded to f32 first, so step(lr, clip_scale(norm, max))
  // equals clip_grad_norm(params, max) followed by step(lr) bit for bit. On the
  // GPU it returns when the update (and, Paged, the state downloads) are complete.
  void step(double lr, float grad_scale = 1.0f) override;
  double grad_global_norm() const override;  // kernels::global_grad_norm over the gradients

  // Host copies of the moments (pageable memory, MemCategory::Optimizer) and the step counts.
  OptimizerState state_dict() const override;
  // Checks every entry (present, shape, dtype, step >= 0) before changing anything,
  // then copies the moments to wherever this optimizer keeps them.
  void load_state_dict(const OptimizerState& state) override;

  const AdamWConfig& config() const { return cfg_; }
  const AdamWOptions& options() const { return options_; }
  int64_t step_count(size_t i) const { return state_[i].step; }

 private:
  struct Moments {
    Tensor exp_avg, exp_avg_sq;  // f32, the parameter's shape, MemCategory::Optimizer
    int64_t step = 0;
  };
  struct Pipeline;  // Paged: the pool, streams and events
  void step_paged(const std::vector<size_t>& todo, const std::vector<AdamWScalars>& scalars, float grad_scale);

  AdamWConfig cfg_;
  AdamWOptions options_;
  std::vector<Moments> state_;  // one per parameter
  std::unique_ptr<Pipeline> pipeline_;
};

}  // namespace nq
