// The AdamW hyperparameter checks and the checkpoint form of its state (see adamw_state.h).
#include "optim/adamw_state.h"

namespace nq {

AdamWOptimizer::AdamWOptimizer(std::vector<Var> params, AdamWConfig cfg, const char* who, Device device,
                               const char* requirement)
    : Optimizer(std::move(params), who, device, requirement), state_(params_.size()), cfg_(cfg) {
  NQ_CHECK(cfg.beta1 >= 0.0 && cfg.beta1 < 1.0 && cfg.beta2 >= 0.0 && cfg.beta2 < 1.0, who_,
           ": betas must be in [0, 1), got (", cfg.beta1, ", ", cfg.beta2, ")");
  NQ_CHECK(cfg.eps >= 0.0, who_, ": eps must be >= 0, got ", cfg.eps);
  NQ_CHECK(cfg.weight_decay >= 0.0, who_, ": weight_decay must be >= 0, got ", cfg.weight_decay);
}

OptimizerState AdamWOptimizer::state_dict() const {
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

void AdamWOptimizer::load_state_dict(const OptimizerState& state) {
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
