// Linear: the one place where the decoder computes a projection y = x W^T + b.
//
// Every q/k/v/o/gate/up/down projection of the decoder is a Linear that knows
// its Hugging Face module name ("model.layers.0.self_attn.q_proj"), so that
// adapters can target it by name. The frozen base weight W [out, in] is either
// dense f32 or NF4 (QLoRA: quantize_nf4() replaces the dense copy, which is
// then freed); the Linear holds the one copy of it. With a LoRA adapter
// attached (the adapter alone: A, B, scaling, dropout), forward() is the fused
// LoRA op over this base (lora/lora_linear.h): y = base(x) + s * (dropout(x) A^T) B^T.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "autograd/var.h"
#include "lora/lora_linear.h"
#include "quant/nf4.h"

namespace nq {

class Linear {
 public:
  Linear() = default;
  // weight [out, in]; bias [out] or undefined.
  Linear(std::string name, Var weight, Var bias = Var());
  // An NF4 base from the start (a bitsandbytes checkpoint): no dense copy ever exists.
  Linear(std::string name, std::shared_ptr<const Nf4Tensor> weight, Var bias = Var());

  Var forward(const Var& x) const;  // x [N, in] -> [N, out]

  // QLoRA base: NF4 with double quantization (bitsandbytes layout). The dense
  // weight is dropped (an attached adapter keeps working: it holds no base).
  void quantize_nf4(int64_t blocksize = 64);
  void set_nf4(std::shared_ptr<const Nf4Tensor> weight);  // e.g. from a bitsandbytes checkpoint
  // Attaches a fresh adapter of this layer's shape (PEFT init: A ~ U(+-1/sqrt(in)) from the RNG stream, B = 0).
  void attach_lora(const LoraConfig& cfg);
  void detach_lora() { lora_.reset(); }

  const std::string& name() const { return name_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool is_nf4() const { return nf4_ != nullptr; }
  const Var& weight() const { return weight_; }  // dense base (undefined when NF4)
  const std::shared_ptr<const Nf4Tensor>& nf4() const { return nf4_; }
  Tensor dense_weight() const;                   // [out, in] f32: the dense base, or NF4 dequantized
  const Var& bias() const { return bias_; }
  bool has_lora() const { return lora_.has_value(); }
  LoraLinear& lora() { return *lora_; }
  const LoraLinear& lora() const { return *lora_; }

 private:
  void check_bias() const;  // bias undefined or [out]

  std::string name_;  // HF module name, without ".weight"
  int64_t in_ = 0, out_ = 0;
  Var weight_, bias_;
  std::shared_ptr<const Nf4Tensor> nf4_;
  std::optional<LoraLinear> lora_;
};

}  // namespace nq
