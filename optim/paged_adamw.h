// Paged AdamW: AdamW (optim/adamw.h, the same per-element update) for
// parameters on the GPU whose optimizer states live in host memory.
//
// The states m (exp_avg) and v (exp_avg_sq) of every parameter are f32 tensors
// in pinned host memory. Each step cuts every (parameter, gradient, m, v) into
// pages of page_elems = page_bytes / 8 elements (a page holds m and v) and runs
// them through a fixed pool of n_pages GPU buffers, three streams deep:
//
//   upload   stream:  m, v of page i    host -> pool slot i % n_pages
//   compute  stream:  AdamW on page i   (param and grad are on the GPU already)
//   download stream:  m, v of page i    pool slot -> host
//
// Events order the three per slot (upload waits for the slot's previous
// download, compute for the upload, download for the compute), so page i's
// update overlaps page i+1's upload and page i-1's download, and the GPU memory
// the optimizer takes is the pool: n_pages * page_bytes, whatever the model size.
// Elements are independent, so the result is bit-identical to the unpaged GPU
// update (paged = false: m, v on the GPU, one launch per tensor), which runs the
// same kernel (kernels/cuda/adamw_span.h) on whole tensors.
//
// bitsandbytes' paged optimizers get the same effect from CUDA unified memory
// (the driver pages states out under memory pressure); here the paging is
// explicit, so its cost and its memory bound are visible.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "optim/adamw_state.h"

namespace nq {

struct PagedAdamWOptions {
  bool paged = true;                        // false: states on the GPU (the reference mode)
  int64_t page_bytes = int64_t(8) << 20;    // one GPU page: m and v of page_bytes / 8 elements (./train --optim-page-mb)
  int n_pages = 4;                          // pool size in pages (./train --optim-pages)
  size_t pool_bytes() const { return size_t(page_bytes) * size_t(n_pages); }
};

class PagedAdamW : public AdamWOptimizer {
 public:
  // params: trainable f32 leaves on a CUDA device, uniquely named (an unnamed one
  // is "param.<index>"). Throws for CPU parameters (use AdamW) and in CPU builds.
  PagedAdamW(std::vector<Var> params, AdamWConfig cfg, PagedAdamWOptions options = {});
  ~PagedAdamW() override;

  // Updates every parameter with a gradient (others keep their step count, as in
  // torch), using grad * grad_scale. Returns when the update and the state
  // downloads are complete.
  void step(double lr, float grad_scale = 1.0f) override;
  // The L2 norm of all gradients on the GPU (kernels/cuda/grad_norm.cu).
  double grad_global_norm() const override;

  const PagedAdamWOptions& options() const { return options_; }

 private:
  struct Pipeline;  // the pool, streams and events (CUDA builds only)
  void step_paged(const std::vector<size_t>& todo, const std::vector<AdamWScalars>& scalars, float grad_scale);
  PagedAdamWOptions options_;
  std::unique_ptr<Pipeline> pipeline_;
};

}  // namespace nq
