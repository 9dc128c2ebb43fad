// Linear: the one place where the decoder computes a projection y = x W^T + b.
//
// Every q/k/v/o/gate/up/down projection of the decoder is a Linear that knows
// its Hugging Face module name ("model.layers.0.self_attn.q_proj"), so that
// adapters can target it by name. Today the frozen base weight is a dense f32
// Var [out, in]; the QLoRA work puts the NF4 base and the LoRA bypass
// (y += scale * (x A^T) B^T) inside forward(), and nothing else in the model
// has to change.
#pragma once
#include <string>

#include "autograd/var.h"

namespace nq {

class Linear {
 public:
  Linear() = default;
  // weight [out, in]; bias [out] or undefined.
  Linear(std::string name, Var weight, Var bias = Var());

  Var forward(const Var& x) const;  // x [N, in] -> [N, out]

  const std::string& name() const { return name_; }
  int64_t in_features() const { return weight_.shape()[1]; }
  int64_t out_features() const { return weight_.shape()[0]; }
  const Var& weight() const { return weight_; }
  const Var& bias() const { return bias_; }

 private:
  std::string name_;  // HF module name, without ".weight"
  Var weight_, bias_;
};

}  // namespace nq
