// Paged AdamW: states in pinned host memory, streamed through a GPU page pool
// (see paged_adamw.h for the pipeline). The per-tensor scalars are
// adamw_scalars() and the per-element update adamw_update_element(), shared
// with the CPU AdamW.
#include "optim/paged_adamw.h"

#include <algorithm>

#include "kernels/kernels.h"
#include "runtime/cuda_runtime.h"

namespace nq {

#ifdef NQ_CUDA
// The GPU side of the pipeline: n_pages slots of m and v, and three streams.
struct PagedAdamW::Pipeline {
  int64_t page_elems;
  std::vector<Tensor> slot_m, slot_v;  // [page_elems] f32 on the GPU each, Optimizer category
  CudaStream upload, compute, download;
  std::vector<std::unique_ptr<CudaEvent>> uploaded, computed, downloaded;  // one per slot
  std::vector<bool> slot_used;  // downloaded[s] has been recorded at least once

  Pipeline(int64_t elems, int n_pages) : page_elems(elems), slot_used(size_t(n_pages), false) {
    for (int s = 0; s < n_pages; ++s) {
      slot_m.push_back(Tensor::empty({elems}, DType::F32, Device::CUDA, MemCategory::Optimizer));
      slot_v.push_back(Tensor::empty({elems}, DType::F32, Device::CUDA, MemCategory::Optimizer));
      uploaded.push_back(std::make_unique<CudaEvent>());
      computed.push_back(std::make_unique<CudaEvent>());
      downloaded.push_back(std::make_unique<CudaEvent>());
    }
  }
};
#else
struct PagedAdamW::Pipeline {};
#endif

PagedAdamW::PagedAdamW(std::vector<Var> params, AdamWConfig cfg, PagedAdamWOptions options)
    : AdamWOptimizer(std::move(params), cfg, "PagedAdamW", Device::CUDA,
                     "the paged optimizer needs f32 cuda master weights (use AdamW, optim/adamw.h, on the cpu)"),
      options_(options) {
  NQ_CHECK(options_.n_pages >= 2, "PagedAdamW: the pool needs at least 2 pages to overlap copies, got ",
           options_.n_pages);
  NQ_CHECK(options_.page_bytes >= 4096 && options_.page_bytes % 8 == 0,
           "PagedAdamW: page_bytes must be a multiple of 8 and >= 4096, got ", options_.page_bytes);
  for (size_t i = 0; i < params_.size(); ++i) {
    const Shape& shape = params_[i].shape();
    for (Tensor* t : {&state_[i].exp_avg, &state_[i].exp_avg_sq})
      *t = options_.paged ? pinned_zeros(shape, DType::F32, MemCategory::Optimizer)
                          : Tensor::zeros(shape, DType::F32, Device::CUDA, MemCategory::Optimizer);
  }
#ifdef NQ_CUDA
  if (options_.paged) pipeline_ = std::make_unique<Pipeline>(options_.page_bytes / 8, options_.n_pages);
#endif
}

PagedAdamW::~PagedAdamW() = default;

void PagedAdamW::step(double lr, float grad_scale) {
  const std::vector<size_t> todo = params_with_grad(lr);
  std::vector<AdamWScalars> scalars;
  for (size_t i : todo) scalars.push_back(adamw_scalars(cfg_, lr, ++state_[i].step));
#ifdef NQ_CUDA
  if (options_.paged) {
    step_paged(todo, scalars, grad_scale);
    return;
  }
  for (size_t k = 0; k < todo.size(); ++k) {  // unpaged: whole tensors, states on the GPU
    Moments& st = state_[todo[k]];
    const Var& p = params_[todo[k]];
    Tensor param = p.value();
    kernels::adamw_update(param, p.grad(), st.exp_avg, st.exp_avg_sq, scalars[k], grad_scale);
  }
#endif
}

void PagedAdamW::step_paged(const std::vector<size_t>& todo, const std::vector<AdamWScalars>& scalars,
                            float grad_scale) {
#ifdef NQ_CUDA
  Pipeline& pl = *pipeline_;
  const int n_slots = int(pl.slot_m.size());
  // The gradients were written by kernels on the default stream: the compute stream waits for them.
  CudaEvent grads_ready;
  grads_ready.record_on_default_stream();
  grads_ready.wait_in(pl.compute);
  int64_t page = 0;
  for (size_t k = 0; k < todo.size(); ++k) {
    const Moments& st = state_[todo[k]];
    const Var& p = params_[todo[k]];
    const int64_t n = p.value().numel();
    for (int64_t begin = 0; begin < n; begin += pl.page_elems, ++page) {
      const int s = int(page % n_slots);
      const int64_t count = std::min(pl.page_elems, n - begin);
      const size_t bytes = size_t(count) * sizeof(float);
      float* host_m = st.exp_avg.data<float>() + begin;
      float* host_v = st.exp_avg_sq.data<float>() + begin;
      float* dev_m = pl.slot_m[s].data<float>();
      float* dev_v = pl.slot_v[s].data<float>();
      // upload: once the slot's previous page is back on the host
      if (pl.slot_used[s]) pl.downloaded[s]->wait_in(pl.upload);
      device_copy_async(dev_m, Device::CUDA, host_m, Device::CPU, bytes, pl.upload);
      device_copy_async(dev_v, Device::CUDA, host_v, Device::CPU, bytes, pl.upload);
      pl.uploaded[s]->record(pl.upload);
      // compute: once the page is on the GPU
      pl.uploaded[s]->wait_in(pl.compute);
      Tensor param = p.value().view({n}).slice(begin, begin + count);
      Tensor m = pl.slot_m[s].slice(0, count), v = pl.slot_v[s].slice(0, count);
      kernels::adamw_update(param, p.grad().view({n}).slice(begin, begin + count), m, v, scalars[k], grad_scale,
                            &pl.compute);
      pl.computed[s]->record(pl.compute);
      // download: once the update is done
      pl.computed[s]->wait_in(pl.download);
      device_copy_async(host_m, Device::CPU, dev_m, Device::CUDA, bytes, pl.download);
      device_copy_async(host_v, Device::CPU, dev_v, Device::CUDA, bytes, pl.download);
      pl.downloaded[s]->record(pl.download);
      pl.slot_used[s] = true;
    }
  }
  // The parameters are read next by kernels on the default stream, and the host
  // states by state_dict(): wait for both streams.
  pl.compute.synchronize();
  pl.download.synchronize();
#endif
}

double PagedAdamW::grad_global_norm() const {
  std::vector<Tensor> grads;
  for (const Var& p : params_)
    if (p.grad().defined()) grads.push_back(p.grad());
  return kernels::global_grad_norm(grads);
}

}  // namespace nq
