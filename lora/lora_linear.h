// LoRA: a trainable low-rank bypass beside a frozen linear layer.
//
//   y = base(x) + s * B (A (dropout(x)))      x [N, in] -> y [N, out]
//   A [r, in], B [out, r] (f32, trainable), s = alpha / r  (rsLoRA: alpha / sqrt(r))
//
// The base is a frozen NF4 weight (QLoRA, quant/nf4.h) or a dense weight
// W [out, in], owned by the layer (model/linear.h) and passed to the op: a
// LoraLinear is the adapter alone. The whole layer is ONE autograd op: its
// backward returns dX (through the base and the bypass), dA and dB, and saves
// only h = A(dropout(x)) [N, r] besides x (the dropout mask is recomputed from
// its Philox offset). Over an NF4 base it is kernels::lora_nf4_forward /
// _backward on any device; over a dense base, kernels:: matmuls.
// PEFT's initialisation: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
// drawn from the process's Philox stream (runtime/rng.h); B = 0, so a fresh
// adapter leaves the model unchanged.
#pragma once
#include <memory>
#include <string>

#include "autograd/var.h"
#include "quant/nf4.h"

namespace nq {

// The LoRA settings everything starts from (./train's flags, an AdapterConfig, the
// memory plan of ./inspect plan): the seed's PEFT LoraConfig(r=16, lora_alpha=32,
// lora_dropout=0.05, target_modules="all-linear"). PEFT's own default rank is 8;
// the project follows the seed. Defined here once; the others take theirs from these.
inline constexpr int64_t kDefaultLoraRank = 16;
inline constexpr double kDefaultLoraAlpha = 32;
inline constexpr double kDefaultLoraDropout = 0.05;
inline constexpr const char* kDefaultLoraTargets = "all-linear";

struct LoraConfig {
  int64_t r = kDefaultLoraRank;
  float alpha = float(kDefaultLoraAlpha);
  float dropout = float(kDefaultLoraDropout);
  bool use_rslora = false;
  float scaling() const;  // alpha / r, or alpha / sqrt(r) with rsLoRA
};

// The adapter of one linear layer of shape [out, in].
struct LoraLinear {
  int64_t in = 0, out = 0;
  Var A, B;  // [r, in], [out, r]: the trainable parameters (f32 masters)
  float scaling = 1.0f;
  float dropout = 0.0f;  // on x, in training mode only (is_training(), autograd/var.h)
};

// Makes the adapter for a base of shape [out, in]; `name` prefixes the
// parameter names ("<name>.lora_A.weight", "<name>.lora_B.weight", as PEFT).
LoraLinear make_lora_linear(int64_t out, int64_t in, const LoraConfig& cfg, const std::string& name);

// The fused op: x [..., in] -> [..., out]; gradients for x, A and B. The base
// is NF4 or dense W [out, in] (f32 on the cpu, bf16 on the GPU), frozen, on x's device.
Var lora_linear(const Var& x, const std::shared_ptr<const Nf4Tensor>& nf4_base, const LoraLinear& layer);
Var lora_linear(const Var& x, const Tensor& dense_base, const LoraLinear& layer);
// A MoE layer's experts as one op: x [M, in] with its rows grouped by expert (expert e owns
// rows [offsets[e], offsets[e+1])), expert e's frozen NF4 base bases[e] and adapter *layers[e]
// (all one rank) -> [M, out]: kernels::lora_nf4_grouped_forward / _backward (a fixed number of
// GPU launches whatever E). The dropout mask is one Philox range over all of x: the same
// mask as expert-by-expert ranges reserved one after the other (identical whenever each
// expert's rows x in is a multiple of Philox's 4-wide blocks, as for every real model).
// Gradients for x and every expert's A and B; an expert without rows gets none (as when it
// runs alone and is never called).
Var lora_grouped_linear(const Var& x, std::vector<std::shared_ptr<const Nf4Tensor>> bases,
                        const std::vector<const LoraLinear*>& layers, std::vector<int64_t> offsets);

}  // namespace nq
