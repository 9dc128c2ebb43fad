// AdamW with its moments on the host, on the GPU, or paged through a GPU pool
// (see adamw.h). Every placement runs kernels::adamw_update (kernels/kernels.h)
// with the per-tensor scalars adamw_scalars() (kernels/adamw_math.h).
#include "optim/adamw.h"

#include <algorithm>

#include "kernels/kernels.h"
#include "runtime/cuda_runtime.h"

namespace nq {

namespace {

const char* placement_requirement(AdamWPlacement p) {
  switch (p) {
    case AdamWPlacement::Host: return "Host placement needs f32 cpu master weights (Device or Paged on cuda)";
    case AdamWPlacement::Device: return "Device placement needs f32 cuda master weights (Host on the cpu)";
    case AdamWPlacement::Paged: return "Paged placement needs f32 cuda master weights (Host on the cpu)";
  }
  return "";
}

}  // namespace

// Paged: n_pages slots of m and v on the GPU, and three streams with an event per slot each.
struct AdamW::Pipeline {
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

AdamW::AdamW(std::vector<Var> params, AdamWConfig cfg, AdamWOptions options)
    : Optimizer(std::move(params), "AdamW", options.placement == AdamWPlacement::Host ? Device::CPU : Device::CUDA,
                placement_requirement(options.placement)),
      cfg_(cfg),
      options_(options),
      state_(params_.size()) {
  NQ_CHECK(cfg.beta1 >= 0.0 && cfg.beta1 < 1.0 && cfg.beta2 >= 0.0 && cfg.beta2 < 1.0, who_,
           ": betas must be in [0, 1), got (", cfg.beta1, ", ", cfg.beta2, ")");
  NQ_CHECK(cfg.eps >= 0.0, who_, ": eps must be >= 0, got ", cfg.eps);
  NQ_CHECK(cfg.weight_decay >= 0.0, who_, ": weight_decay must be >= 0, got ", cfg.weight_decay);
  const bool paged = options_.placement == AdamWPlacement::Paged;
  NQ_CHECK(options_.placement == AdamWPlacement::Host || cuda_built(), who_,
           ": Device and Paged placement keep the moments on or through the GPU; this build has no CUDA");
  if (paged) {
    NQ_CHECK(options_.n_pages >= 2, who_, ": the page pool needs at least 2 pages to overlap copies, got ",
             options_.n_pages);
    NQ_CHECK(options_.page_bytes >= 4096 && options_.page_bytes % 8 == 0, who_,
             ": page_bytes must be a multiple of 8 and >= 4096, got ", options_.page_bytes);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const Shape& shape = params_[i].shape();
    for (Tensor* t : {&state_[i].exp_avg, &state_[i].exp_avg_sq})
      *t = paged ? pinned_zeros(shape, DType::F32, MemCategory::Optimizer)
                 : Tensor::zeros(shape, DType::F32, device_, MemCategory::Optimizer);
  }
  if (paged) pipeline_ = std::make_unique<Pipeline>(options_.page_bytes / 8, options_.n_pages);
}

AdamW::~AdamW() = default;

void AdamW::step(double lr, float grad_scale) {
  const std::vector<size_t> todo = params_with_grad(lr);
  std::vector<AdamWScalars> scalars;
  for (size_t i : todo) scalars.push_back(adamw_scalars(cfg_, lr, ++state_[i].step));
  if (options_.placement == AdamWPlacement::Paged) {
    step_paged(todo, scalars, grad_scale);
    return;
  }
  for (size_t k = 0; k < todo.size(); ++k) {  // Host, Device: whole tensors where the moments are
    Moments& st = state_[todo[k]];
    const Var& p = params_[todo[k]];
    Tensor param = p.value();
    kernels::adamw_update(param, p.grad(), st.exp_avg, st.exp_avg_sq, scalars[k], grad_scale);
  }
}

void AdamW::step_paged(const std::vector<size_t>& todo, const std::vector<AdamWScalars>& scalars,
                       float grad_scale) {
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
    const Tensor param = p.value().view({n}), grad = p.grad().view({n});  // [n] flat
    for (int64_t begin = 0; begin < n; begin += pl.page_elems, ++page) {
      const int s = int(page % n_slots);
      const int64_t count = std::min(pl.page_elems, n - begin);
      const size_t bytes = size_t(count) * sizeof(float);
      float* host_m = st.exp_avg.data<float>() + begin;
      float* host_v = st.exp_avg_sq.data<float>() + begin;
      Tensor dev_m = pl.slot_m[s].slice(0, count), dev_v = pl.slot_v[s].slice(0, count);  // [count] of the slot
      // upload: once the slot's previous page is back on the host
      if (pl.slot_used[s]) pl.downloaded[s]->wait_in(pl.upload);
      device_copy_async(dev_m.raw(), Device::CUDA, host_m, Device::CPU, bytes, pl.upload);
      device_copy_async(dev_v.raw(), Device::CUDA, host_v, Device::CPU, bytes, pl.upload);
      pl.uploaded[s]->record(pl.upload);
      // compute: once the page is on the GPU
      pl.uploaded[s]->wait_in(pl.compute);
      Tensor param_page = param.slice(begin, begin + count);
      kernels::adamw_update(param_page, grad.slice(begin, begin + count), dev_m, dev_v, scalars[k], grad_scale,
                            &pl.compute);
      pl.computed[s]->record(pl.compute);
      // download: once the update is done
      pl.computed[s]->wait_in(pl.download);
      device_copy_async(host_m, Device::CPU, dev_m.raw(), Device::CUDA, bytes, pl.download);
      device_copy_async(host_v, Device::CPU, dev_v.raw(), Device::CUDA, bytes, pl.download);
      pl.downloaded[s]->record(pl.download);
      pl.slot_used[s] = true;
    }
  }
  // The parameters are read next by kernels on the default stream, and the host
  // states by state_dict(): wait for both streams.
  pl.compute.synchronize();
  pl.download.synchronize();
}

double AdamW::grad_global_norm() const {
  std::vector<Tensor> grads;
  for (const Var& p : params_)
    if (p.grad().defined()) grads.push_back(p.grad());
  return kernels::global_grad_norm(grads);
}

OptimizerState AdamW::state_dict() const {
  auto host_copy = [](const Tensor& t) {
    Tensor h = Tensor::empty(t.shape(), DType::F32, Device::CPU, MemCategory::Optimizer);
    h.copy_from(t);
    return h;
  };
  OptimizerState out;
  for (size_t i = 0; i < state_.size(); ++i) {
    const std::string& name = names_[i];
    out[name + ".exp_avg"] = host_copy(state_[i].exp_avg);
    out[name + ".exp_avg_sq"] = host_copy(state_[i].exp_avg_sq);
    Tensor step = Tensor::empty({1}, DType::I64);
    step.data<int64_t>()[0] = state_[i].step;
    out[name + ".step"] = step;
  }
  return out;
}

void AdamW::load_state_dict(const OptimizerState& state) {
  const std::string where = str(who_, "::load_state_dict");
  auto find = [&](const std::string& key, const Shape& shape, DType dtype) -> const Tensor& {
    auto it = state.find(key);
    NQ_CHECK(it != state.end(), where, ": missing ", key);
    NQ_CHECK(it->second.shape() == shape && it->second.dtype() == dtype, where, ": ", key, " is ", it->second.desc(),
             ", expected ", dtype_name(dtype), shape.str());
    return it->second;
  };
  // Validate everything before changing anything, so a bad file leaves the optimizer intact.
  std::vector<int64_t> steps;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = names_[i];
    find(name + ".exp_avg", params_[i].shape(), DType::F32);
    find(name + ".exp_avg_sq", params_[i].shape(), DType::F32);
    const int64_t step = find(name + ".step", Shape{1}, DType::I64).data<int64_t>()[0];
    NQ_CHECK(step >= 0, where, ": ", name, ".step is negative (", step, ")");
    steps.push_back(step);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    state_[i].exp_avg.copy_from(state.at(names_[i] + ".exp_avg"));
    state_[i].exp_avg_sq.copy_from(state.at(names_[i] + ".exp_avg_sq"));
    state_[i].step = steps[i];
  }
}

}  // namespace nq
