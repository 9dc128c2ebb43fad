#include "optim/adamw_state.h"

namespace nq {

void put_adamw_state(OptimizerState& out, const std::string& name, Tensor exp_avg, Tensor exp_avg_sq, int64_t step) {
  out[name + ".exp_avg"] = std::move(exp_avg);
  out[name + ".exp_avg_sq"] = std::move(exp_avg_sq);
  Tensor s = Tensor::empty({1}, DType::I64);
  s.data<int64_t>()[0] = step;
  out[name + ".step"] = s;
}

std::vector<int64_t> check_adamw_state(const OptimizerState& state,
                                       const std::vector<std::pair<std::string, Shape>>& params, const char* who) {
  auto find = [&](const std::string& key, const Shape& shape, DType dtype) -> const Tensor& {
    auto it = state.find(key);
    NQ_CHECK(it != state.end(), who, ": missing ", key);
    NQ_CHECK(it->second.shape() == shape && it->second.dtype() == dtype, who, ": ", key, " is ", it->second.desc(),
             ", expected ", dtype_name(dtype), shape.str());
    return it->second;
  };
  std::vector<int64_t> steps;
  for (const auto& [name, shape] : params) {
    find(name + ".exp_avg", shape, DType::F32);
    find(name + ".exp_avg_sq", shape, DType::F32);
    int64_t step = find(name + ".step", Shape{1}, DType::I64).data<int64_t>()[0];
    NQ_CHECK(step >= 0, who, ": ", name, ".step is negative (", step, ")");
    steps.push_back(step);
  }
  return steps;
}

}  // namespace nq
