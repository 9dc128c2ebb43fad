// Linear::forward (see linear.h).
#include "model/linear.h"

#include "autograd/ops.h"

namespace nq {

Linear::Linear(std::string name, Var weight, Var bias)
    : name_(std::move(name)), weight_(std::move(weight)), bias_(std::move(bias)) {
  NQ_CHECK(weight_.defined() && weight_.shape().ndim == 2, "Linear ", name_, ": weight must be [out, in], got ",
           weight_.defined() ? weight_.shape().str() : "none");
  NQ_CHECK(!bias_.defined() || bias_.shape() == Shape{weight_.shape()[0]}, "Linear ", name_, ": bias must be [",
           weight_.shape()[0], "], got ", bias_.shape().str());
}

Var Linear::forward(const Var& x) const {
  NQ_CHECK(x.shape().ndim == 2 && x.shape()[1] == in_features(), "Linear ", name_, ": input must be [N, ",
           in_features(), "], got ", x.shape().str());
  return linear(x, weight_, bias_);
}

}  // namespace nq
