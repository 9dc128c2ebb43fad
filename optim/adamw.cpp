// AdamW: the per-tensor scalars, the span loop, and the optimizer over a list
// of Vars (state, skipping, checkpoints). The per-element arithmetic is in
// adamw_update.h. Results match torch in fp32 up to its sqrt: torch's CPU sqrt
// goes through MKL's vector math, which is not always correctly rounded.
#include "optim/adamw.h"
#include "optim/adamw_state.h"

#include <cmath>
#include <set>

namespace nq {

AdamWScalars adamw_scalars(const AdamWConfig& cfg, double lr, int64_t step) {
  // torch keeps beta/lr as Python floats (double) and converts each scalar to
  // f32 when it multiplies an f32 tensor; the bias corrections stay in double
  // until then.
  double b1 = cfg.beta1, b2 = cfg.beta2;
  double bias_correction1 = 1.0 - std::pow(b1, double(step));
  double bias_correction2 = 1.0 - std::pow(b2, double(step));
  AdamWScalars s;
  s.decay = float(1.0 - lr * double(cfg.weight_decay));
  s.one_minus_beta1 = float(1.0 - b1);
  s.beta2 = float(b2);
  s.one_minus_beta2 = float(1.0 - b2);
  s.bias_correction2_sqrt = float(std::sqrt(bias_correction2));
  s.eps = float(cfg.eps);
  s.neg_step_size = float(-(lr / bias_correction1));
  return s;
}

void adamw_update_span(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                       const AdamWScalars& s) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) adamw_update_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], s);
}

AdamW::AdamW(std::vector<Var> params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  NQ_CHECK(cfg.beta1 >= 0.0 && cfg.beta1 < 1.0 && cfg.beta2 >= 0.0 && cfg.beta2 < 1.0,
           "AdamW: betas must be in [0, 1), got (", cfg.beta1, ", ", cfg.beta2, ")");
  NQ_CHECK(cfg.eps >= 0.0, "AdamW: eps must be >= 0, got ", cfg.eps);
  NQ_CHECK(cfg.weight_decay >= 0.0, "AdamW: weight_decay must be >= 0, got ", cfg.weight_decay);
  std::set<std::string> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Var& p = params_[i];
    NQ_CHECK(p.defined(), "AdamW: parameter ", i, " is undefined");
    std::string name = p.name().empty() ? str("param.", i) : p.name();
    NQ_CHECK(p.value().dtype() == DType::F32 && p.value().device() == Device::CPU,
             "AdamW: parameter ", name, " is ", p.value().desc(), "; the CPU optimizer needs f32 cpu master weights");
    NQ_CHECK(seen.insert(name).second, "AdamW: two parameters are named ", name);
    state_.push_back({name, Tensor(), Tensor(), 0});
  }
}

void AdamW::ensure_state(size_t i) {
  ParamState& st = state_[i];
  if (st.exp_avg.defined()) return;
  const Shape& shape = params_[i].shape();
  st.exp_avg = Tensor::zeros(shape, DType::F32, Device::CPU, MemCategory::Optimizer);
  st.exp_avg_sq = Tensor::zeros(shape, DType::F32, Device::CPU, MemCategory::Optimizer);
}

void AdamW::step(double lr) {
  NQ_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW: learning rate must be finite and >= 0, got ", lr);
  for (size_t i = 0; i < params_.size(); ++i) {
    const Var& p = params_[i];
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    NQ_CHECK(g.shape() == p.shape() && g.dtype() == DType::F32 && g.device() == Device::CPU,
             "AdamW: gradient of ", state_[i].name, " is ", g.desc(), ", parameter is ", p.value().desc());
    ensure_state(i);
    ParamState& st = state_[i];
    st.step += 1;
    adamw_update_span(p.value().data<float>(), g.data<float>(), st.exp_avg.data<float>(),
                      st.exp_avg_sq.data<float>(), p.value().numel(), adamw_scalars(cfg_, lr, st.step));
  }
}

void AdamW::zero_grad() {
  for (Var& p : params_) p.zero_grad();
}

std::map<std::string, Tensor> AdamW::state_dict() const {
  OptimizerState out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamState& st = state_[i];
    const Shape& shape = params_[i].shape();
    // A parameter that never had a gradient saves zero moments (what it would start from).
    put_adamw_state(out, st.name, st.exp_avg.defined() ? st.exp_avg.clone() : Tensor::zeros(shape),
                    st.exp_avg_sq.defined() ? st.exp_avg_sq.clone() : Tensor::zeros(shape), st.step);
  }
  return out;
}

void AdamW::load_state_dict(const std::map<std::string, Tensor>& state) {
  // Validate everything before changing anything, so a bad file leaves the optimizer intact.
  std::vector<std::pair<std::string, Shape>> expected;
  for (size_t i = 0; i < params_.size(); ++i) expected.emplace_back(state_[i].name, params_[i].shape());
  const std::vector<int64_t> steps = check_adamw_state(state, expected, "AdamW::load_state_dict");
  for (size_t i = 0; i < params_.size(); ++i) {
    ParamState& st = state_[i];
    ensure_state(i);
    st.exp_avg.copy_from(state.at(st.name + ".exp_avg"));
    st.exp_avg_sq.copy_from(state.at(st.name + ".exp_avg_sq"));
    st.step = steps[i];
  }
}

}  // namespace nq
