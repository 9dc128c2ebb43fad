// Linear::forward and its NF4 / LoRA variants (see linear.h).
#include "model/linear.h"

#include "autograd/ops.h"

namespace nq {

Linear::Linear(std::string name, Var weight, Var bias)
    : name_(std::move(name)), weight_(std::move(weight)), bias_(std::move(bias)) {
  NQ_CHECK(weight_.defined() && weight_.shape().ndim == 2, "Linear ", name_, ": weight must be [out, in], got ",
           weight_.defined() ? weight_.shape().str() : "none");
  out_ = weight_.shape()[0];
  in_ = weight_.shape()[1];
  check_bias();
}

Linear::Linear(std::string name, std::shared_ptr<const Nf4Tensor> weight, Var bias)
    : name_(std::move(name)), bias_(std::move(bias)) {
  NQ_CHECK(weight != nullptr, "Linear ", name_, ": no NF4 weight");
  out_ = weight->out;
  in_ = weight->in;
  nf4_ = std::move(weight);
  check_bias();
}

void Linear::check_bias() const {
  NQ_CHECK(!bias_.defined() || bias_.shape() == Shape{out_}, "Linear ", name_, ": bias must be [", out_, "], got ",
           bias_.defined() ? bias_.shape().str() : "none");
}

Var Linear::forward(const Var& x) const {
  NQ_CHECK(x.shape().ndim == 2 && x.shape()[1] == in_, "Linear ", name_, ": input must be [N, ", in_, "], got ",
           x.shape().str());
  if (!lora_ && !nf4_) return linear(x, weight_, bias_);
  Var y;  // [N, out]: the base, with the adapter's bypass over it when one is attached
  if (!lora_) y = nf4_linear(x, nf4_);
  else if (nf4_) y = lora_linear(x, nf4_, *lora_);
  else y = lora_linear(x, weight_.value(), *lora_);
  return bias_.defined() ? add_bias(y, bias_) : y;
}

void Linear::quantize_nf4(int64_t blocksize) {
  if (nf4_) return;
  const Tensor& w = weight_.value();
  set_nf4(std::make_shared<Nf4Tensor>(nq::quantize_nf4(w.data<float>(), out_, in_, blocksize, true, name_ + ".weight")));
}

void Linear::set_nf4(std::shared_ptr<const Nf4Tensor> weight) {
  NQ_CHECK(weight && weight->out == out_ && weight->in == in_, "Linear ", name_, ": NF4 weight [",
           weight ? weight->out : 0, ", ", weight ? weight->in : 0, "] does not match [", out_, ", ", in_, "]");
  nf4_ = std::move(weight);
  weight_ = Var();  // frees the dense copy
}

void Linear::attach_lora(const LoraConfig& cfg) {
  lora_ = make_lora_linear(out_, in_, cfg, name_);
}

Tensor Linear::dense_weight() const { return nf4_ ? dequantize_nf4(*nf4_) : weight_.value(); }

}  // namespace nq
