// AdamW: the per-tensor scalars, the span loop, and the CPU optimizer over a
// list of Vars (states and checkpoints: adamw_state.h). The per-element arithmetic is in
// adamw_update.h. Results match torch in fp32 up to its sqrt: torch's CPU sqrt
// goes through MKL's vector math, which is not always correctly rounded.
#include "optim/adamw.h"

#include <cmath>

#include "kernels/kernels.h"
#include "optim/clip.h"

namespace nq {

AdamW::AdamW(std::vector<Var> params, AdamWConfig cfg)
    : AdamWOptimizer(std::move(params), cfg, "AdamW", Device::CPU,
                     "the CPU optimizer needs f32 cpu master weights (PagedAdamW, optim/paged_adamw.h, on cuda)") {
  for (size_t i = 0; i < params_.size(); ++i) {
    state_[i].exp_avg = Tensor::zeros(params_[i].shape(), DType::F32, Device::CPU, MemCategory::Optimizer);
    state_[i].exp_avg_sq = Tensor::zeros(params_[i].shape(), DType::F32, Device::CPU, MemCategory::Optimizer);
  }
}

void AdamW::step(double lr, float grad_scale) {
  for (size_t i : params_with_grad(lr)) {
    const Var& p = params_[i];
    Moments& st = state_[i];
    st.step += 1;
    Tensor param = p.value();
    kernels::adamw_update(param, p.grad(), st.exp_avg, st.exp_avg_sq, adamw_scalars(cfg_, lr, st.step), grad_scale);
  }
}

double AdamW::grad_global_norm() const { return nq::grad_global_norm(params_); }

}  // namespace nq
