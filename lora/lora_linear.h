// LoRA: a trainable low-rank bypass beside a frozen linear layer.
//
//   y = base(x) + s * B (A (dropout(x)))      x [N, in] -> y [N, out]
//   A [r, in], B [out, r] (f32, trainable), s = alpha / r  (rsLoRA: alpha / sqrt(r))
//
// The base is a frozen NF4 weight (QLoRA, quant/nf4_linear.h) or a dense weight
// W [out, in]. The whole layer is ONE autograd op: its backward returns dX
// (through the base and the bypass), dA and dB, and saves only h = A(dropout(x))
// [N, r] besides x (the dropout mask is recomputed from its Philox offset).
// PEFT's initialisation: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
// drawn from the process's Philox stream (runtime/rng.h); B = 0, so a fresh
// adapter leaves the model unchanged.
#pragma once
#include <memory>
#include <string>

#include "autograd/var.h"
#include "quant/nf4.h"

namespace nq {

struct LoraConfig {
  int64_t r = 8;
  float alpha = 16.0f;
  float dropout = 0.0f;
  bool use_rslora = false;
  float scaling() const;  // alpha / r, or alpha / sqrt(r) with rsLoRA
};

struct LoraLinear {
  int64_t in = 0, out = 0;
  std::shared_ptr<const Nf4Tensor> nf4_base;  // either this (QLoRA) ...
  Tensor dense_base;                          // ... or this: W [out, in] f32, frozen
  Var A, B;                                   // [r, in], [out, r]: the trainable parameters
  float scaling = 1.0f;
  float dropout = 0.0f;  // on x, in training mode only (is_training(), autograd/var.h)
};

// Makes the adapter for a base of shape [out, in]; `name` prefixes the
// parameter names ("<name>.lora_A.weight", "<name>.lora_B.weight", as PEFT).
LoraLinear make_lora_linear(std::shared_ptr<const Nf4Tensor> base, const LoraConfig& cfg, const std::string& name);
LoraLinear make_lora_linear(Tensor dense_base, const LoraConfig& cfg, const std::string& name);

// The fused op: x [..., in] -> [..., out]; gradients for x, A and B.
Var lora_linear(const Var& x, const LoraLinear& layer);

}  // namespace nq
