// The parameter bookkeeping every optimizer shares (see optimizer.h).
#include "optim/optimizer.h"

#include <cmath>
#include <set>

namespace nq {

Optimizer::Optimizer(std::vector<Var> params, const char* who, Device device, const char* requirement)
    : who_(who), device_(device), params_(std::move(params)) {
  std::set<std::string> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Var& p = params_[i];
    NQ_CHECK(p.defined(), who_, ": parameter ", i, " is undefined");
    std::string name = p.name().empty() ? str("param.", i) : p.name();
    NQ_CHECK(p.value().dtype() == DType::F32 && p.value().device() == device_, who_, ": parameter ", name, " is ",
             p.value().desc(), "; ", requirement);
    NQ_CHECK(seen.insert(name).second, who_, ": two parameters are named ", name);
    names_.push_back(std::move(name));
  }
}

std::vector<size_t> Optimizer::params_with_grad(double lr) const {
  NQ_CHECK(std::isfinite(lr) && lr >= 0.0, who_, ": learning rate must be finite and >= 0, got ", lr);
  std::vector<size_t> todo;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Var& p = params_[i];
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    NQ_CHECK(g.shape() == p.shape() && g.dtype() == DType::F32 && g.device() == device_, who_, ": gradient of ",
             names_[i], " is ", g.desc(), ", parameter is ", p.value().desc());
    todo.push_back(i);
  }
  return todo;
}

void Optimizer::zero_grad() {
  for (Var& p : params_) p.zero_grad();
}

void Optimizer::fill_missing_grads() {
  for (Var& p : params_)
    if (!p.grad().defined()) p.impl()->grad = Tensor::zeros(p.shape(), DType::F32, p.value().device());
}

}  // namespace nq
